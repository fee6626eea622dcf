"""`/v1/conversations` and its items through the official `openai` SDK, on both databases:
the same conversations the six routes list, read, rename and delete."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
from flask import Flask
from flask.testing import FlaskClient
from openai.pagination import SyncConversationCursorPage
from openai.types.conversations import Conversation

import services.search
from fakes.chatgpt_backend import FakeChatGPTBackend
from fakes.openai_upstream import FakeOpenAI
from tests.helpers import ok, post
from tests.openai_sdk import (  # noqa: F401
    bare,
    base_url,
    chatgpt_sdk,
    sdk,
    sdk_for,
    stored_rows,
    tree_of,
)
from tests.test_openapi import conforms

MODEL = "gpt-test"


def texts(items: Any) -> list[str]:
    return [item.content[0].text for item in items]


def listed(sdk: openai.OpenAI, **query: Any) -> dict[str, Any]:
    """`GET /v1/conversations` (beyond OpenAI: the SDK has no method for it)."""
    return sdk.get("/conversations", cast_to=object, options={"params": query})  # type: ignore[return-value]


def as_key(client: FlaskClient, sdk: openai.OpenAI) -> FlaskClient:
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {sdk.api_key}"
    return client


def test_create_with_items_and_metadata_then_read_and_relabel(sdk: openai.OpenAI, client: FlaskClient) -> None:
    conversation = sdk.conversations.create(
        items=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hello"}],
        metadata={"project": "x"},
    )
    assert conversation.id.startswith("conv_") and conversation.object == "conversation"
    assert conversation.metadata == {"project": "x"} and conversation.title == "New chat"  # type: ignore[attr-defined]
    assert sdk.conversations.retrieve(conversation.id).model_dump() == conversation.model_dump()
    updated = sdk.conversations.update(conversation.id, metadata={"project": "y", "stage": "2"})
    assert updated.metadata == {"project": "y", "stage": "2"}
    items = sdk.conversations.items.list(conversation.id)
    assert texts(items.data) == ["Hello", "Be terse."] and not items.has_more
    assert [item.role for item in items.data] == ["user", "system"]
    assert items.first_id == items.data[0].id and items.last_id == items.data[1].id
    tree = tree_of(client, sdk, conversation.id)
    assert tree["current_node"] == bare(items.data[0].id)


def test_items_are_the_current_branch_without_the_root_or_the_service_system_message(
    sdk: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    first = sdk.responses.create(model=MODEL, input="One")
    sdk.responses.create(model=MODEL, input="Two", previous_response_id=first.id)
    branch = sdk.responses.create(model=MODEL, input="Other two", previous_response_id=first.id)
    conversation = listed(sdk)["data"][0]["id"]
    items = sdk.conversations.items.list(conversation, order="asc")
    assert texts(items) == ["One", "Echo: One", "Other two", "Echo: Other two"]
    assert items.data[-1].id == "msg_" + branch.id.removeprefix("resp_")
    assert items.data[-1].content[0].type == "output_text" and items.data[0].content[0].type == "input_text"


def test_items_page_with_after_and_the_sdk_follows_the_pages(sdk: openai.OpenAI) -> None:
    conversation = sdk.conversations.create(items=[{"role": "user", "content": f"m{i}"} for i in range(5)])
    page = sdk.conversations.items.list(conversation.id, limit=2)
    assert texts(page.data) == ["m4", "m3"] and page.has_more
    assert texts(page.get_next_page().data) == ["m2", "m1"]
    assert texts(sdk.conversations.items.list(conversation.id, limit=2, order="asc")) == [f"m{i}" for i in range(5)]
    last = sdk.conversations.items.list(conversation.id, limit=2, after=page.data[0].id, order="asc")
    assert last.data == [] and not last.has_more


def test_added_items_continue_the_branch_and_a_response_answers_them(
    sdk: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    conversation = sdk.conversations.create()
    added = sdk.conversations.items.create(
        conversation.id, items=[{"role": "developer", "content": "Use French."}, {"role": "user", "content": "Hi"}]
    )
    assert texts(added.data) == ["Use French.", "Hi"]
    response = sdk.responses.create(model=MODEL, conversation=conversation.id)
    assert response.output_text == "Echo: Hi" and response.conversation.id == conversation.id
    assert fake_upstream.requests[-1].body["messages"] == [
        {"role": "system", "content": "Use French."},
        {"role": "user", "content": "Hi"},
    ]
    assert list(sdk.responses.input_items.list(response.id)) == []
    item = sdk.conversations.items.retrieve(added.data[1].id, conversation_id=conversation.id)
    assert item.role == "user" and texts([item]) == ["Hi"]


def test_a_removed_item_leaves_the_branch_and_its_children_move_up(sdk: openai.OpenAI, client: FlaskClient) -> None:
    conversation = sdk.conversations.create(items=[{"role": "user", "content": t} for t in ("a", "b", "c")])
    a, b, c = sdk.conversations.items.list(conversation.id, order="asc").data
    answered = sdk.conversations.items.delete(b.id, conversation_id=conversation.id)
    assert answered.id == conversation.id
    assert texts(sdk.conversations.items.list(conversation.id, order="asc")) == ["a", "c"]
    mapping = tree_of(client, sdk, conversation.id)["mapping"]
    assert mapping[bare(c.id)]["parent"] == bare(a.id)
    sdk.conversations.items.delete(c.id, conversation_id=conversation.id)
    assert tree_of(client, sdk, conversation.id)["current_node"] == bare(a.id)
    with pytest.raises(openai.NotFoundError):
        sdk.conversations.items.retrieve(b.id, conversation_id=conversation.id)


def test_with_chatgpt_removing_an_item_hides_the_upstream_copy_as_deleting_a_conversation_does(
    chatgpt_sdk: tuple[FakeChatGPTBackend, openai.OpenAI],
) -> None:
    backend, sdk = chatgpt_sdk
    conversation = sdk.conversations.create()
    sdk.responses.create(model="text-davinci-002-render-sha", input="Hello", conversation=conversation.id)
    (upstream,) = backend.conversations.values()
    answer, question = sdk.conversations.items.list(conversation.id).data
    backend.fail_next(500, "busy")
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.conversations.items.delete(question.id, conversation_id=conversation.id)
    assert refused.value.status_code == 502 and upstream.is_visible
    assert len(sdk.conversations.items.list(conversation.id).data) == 2

    sdk.conversations.items.delete(question.id, conversation_id=conversation.id)
    assert upstream.is_visible is False
    sdk.responses.create(model="text-davinci-002-render-sha", input="Next", conversation=conversation.id)
    sent = [r.body for r in backend.requests if r.method == "POST" and r.path == "conversation"][-1]
    assert "conversation_id" not in sent or sent["conversation_id"] is None
    assert sent["messages"][0]["content"]["parts"] == ["Assistant: You said: Hello\n\nUser: Next"]
    (copy,) = [c for c in backend.conversations.values() if c.is_visible]
    sdk.conversations.delete(conversation.id)
    assert copy.is_visible is False


def test_the_caller_s_conversations_are_listed_newest_first_with_a_cursor(sdk: openai.OpenAI) -> None:
    made = [sdk.conversations.create(metadata={"n": str(i)}).id for i in range(3)]
    first = listed(sdk, limit=2)
    assert [c["id"] for c in first["data"]] == made[::-1][:2] and first["has_more"]
    assert first["last_id"] == made[1] and first["data"][0]["metadata"] == {"n": "2"}
    rest = listed(sdk, limit=2, after=first["last_id"])
    assert [c["id"] for c in rest["data"]] == [made[0]] and not rest["has_more"]


def found(sdk: openai.OpenAI, query: str, **params: Any) -> SyncConversationCursorPage[Conversation]:
    """`GET /v1/conversations?query=` as the SDK pages its own lists: iterating the page
    fetches the next ones (`after` = `last_id`) while `has_more`."""
    return sdk.get_api_list(
        "/conversations",
        model=Conversation,
        page=SyncConversationCursorPage[Conversation],
        options={"params": {"query": query, **params}},
    )


def hit_order(client: FlaskClient, sdk: openai.OpenAI, query: str) -> list[str]:
    """The conversations of `POST /api/chat/search`'s hits, in order, each at its first hit."""
    hits = ok(as_key(client, sdk).post("/api/chat/search", json={"query": query, "limit": 100}))
    return list(dict.fromkeys("conv_" + hit["conversation_id"].replace("-", "") for hit in hits))


def test_a_query_lists_the_matching_conversations_best_first_each_with_its_best_hit(
    sdk: openai.OpenAI, sdk_for: Callable[[str], openai.OpenAI], client: FlaskClient
) -> None:
    noted = sdk.conversations.create(items=[{"role": "user", "content": "deploy it with helm"}], metadata={"k": "v"})
    ok(post(as_key(client, sdk), "change/title", {"convo_id": bare(noted.id), "title": "Helm notes"}))
    chinese = sdk.conversations.create(items=[{"role": "user", "content": "我们用Helm部署"}])
    sdk.conversations.create(items=[{"role": "user", "content": "nothing to see"}])
    twice = sdk.conversations.create(items=[{"role": "user", "content": "helm, first"}])
    sdk.conversations.items.create(twice.id, items=[{"role": "assistant", "content": "helm charts, second"}])
    sdk_for("bob").conversations.create(items=[{"role": "user", "content": "bob's helm"}])

    page = found(sdk, "helm")
    assert [c.id for c in page.data] == [noted.id, twice.id, chinese.id] and page.has_more is False
    assert page.data[0].model_dump() == {
        **noted.model_dump(), "title": "Helm notes",
        "match": {"item_id": None, "role": None, "snippet": "**Helm** notes", "created_at": noted.created_at},
    }
    newest = sdk.conversations.items.list(twice.id).data[0]
    assert page.data[1].match == {  # type: ignore[attr-defined]
        "item_id": newest.id, "role": "assistant", "snippet": "**helm** charts, second",
        "created_at": page.data[1].match["created_at"],  # type: ignore[attr-defined]
    }
    assert page.data[2].match["snippet"] == "我们用**Helm**部署"  # type: ignore[attr-defined]
    item = sdk.conversations.items.retrieve(page.data[2].match["item_id"], conversation_id=chinese.id)  # type: ignore[attr-defined]
    assert texts([item]) == ["我们用Helm部署"]
    assert [c.id for c in found(sdk, '"helm charts" -first')] == [twice.id]  # one message matches it all
    assert [c.id for c in found(sdk, '"helm charts" -second')] == []
    assert [c.id for c in found(sdk, "helm -charts -first")] == [noted.id, chinese.id]
    assert [c.id for c in found(sdk, "-helm")] == []  # exclusions alone narrow nothing down
    assert [c.id for c in found(sdk_for("carol"), "helm")] == []
    assert "match" not in listed(sdk)["data"][0]  # without a query: the plain list


@pytest.mark.parametrize(("batch", "left_out"), [(20, 500), (1, 0)])
def test_pages_of_a_query_follow_each_other_without_repeats_or_gaps(
    sdk: openai.OpenAI, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, batch: int, left_out: int
) -> None:
    """Each conversation once, at its best hit, page after page; also when hits are read one
    at a time and the conversations already met are skipped rather than left out."""
    monkeypatch.setattr(services.search, "CONVERSATION_BATCH", batch)
    monkeypatch.setattr(services.search, "LEFT_OUT_AT_MOST", left_out)
    made = [sdk.conversations.create(items=[{"role": "user", "content": f"needle {n}"}]).id for n in range(7)]
    ok(post(as_key(client, sdk), "change/title", {"convo_id": bare(made[3]), "title": "Needle title"}))
    for again in (made[0], made[4], made[1]):  # newer hits move a conversation forward; its older stay behind
        sdk.conversations.items.create(again, items=[{"role": "user", "content": "needle again 用Needle写"}])
    expected = hit_order(client, sdk, "needle")
    assert expected == [made[i] for i in (3, 1, 4, 0, 6, 5, 2)]
    assert [c.id for c in found(sdk, "needle", limit=100)] == expected
    for limit in (1, 2, 3, 7):
        pages, after = [], None
        for _ in expected:  # no more pages than conversations
            page = found(sdk, "needle", limit=limit, **({"after": after} if after else {}))
            pages.append([c.id for c in page.data])
            if not page.has_more:
                break
            after = page.last_id
        assert [c for p in pages for c in p] == expected, limit
        assert all(len(p) == limit for p in pages[:-1]) and pages[-1]
    assert [c.id for c in found(sdk, "needle", limit=2)] == expected  # the SDK follows the pages itself
    last = found(sdk, "needle", limit=2, after=expected[-1])
    assert last.data == [] and last.has_more is False and last.last_id is None


def test_deleted_items_responses_and_conversations_leave_the_query_s_list(
    sdk: openai.OpenAI, client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    first = sdk.conversations.create(items=[{"role": "user", "content": "ephemeral one"}])
    second = sdk.conversations.create(items=[{"role": "user", "content": "ephemeral two"}])
    walrus = sdk.conversations.items.create(second.id, items=[{"role": "user", "content": "a walrus"}]).data[0]
    assert [c.id for c in found(sdk, "walrus")] == [second.id]
    sdk.conversations.items.delete(walrus.id, conversation_id=second.id)
    assert [c.id for c in found(sdk, "walrus")] == []
    answer = sdk.responses.create(model=MODEL, input="narwhal", conversation=second.id)
    assert found(sdk, "narwhal").data[0].match["item_id"] == "msg_" + answer.id.removeprefix("resp_")  # type: ignore[attr-defined]
    sdk.responses.delete(answer.id)  # the answer, and what is below it
    assert [c.id for c in found(sdk, "narwhal")] == [second.id]  # the question stays
    assert found(sdk, "narwhal").data[0].match["role"] == "user"  # type: ignore[attr-defined]
    assert [c.id for c in found(sdk, "ephemeral")] == [second.id, first.id]
    sdk.conversations.delete(first.id)
    assert [c.id for c in found(sdk, "ephemeral")] == [second.id]
    with pytest.raises(openai.NotFoundError) as raised:
        found(sdk, "ephemeral", after=first.id)
    assert raised.value.body["param"] == "after"  # type: ignore[index]
    ok(post(as_key(client, sdk), "clear/conversations", {}))
    assert [c.id for c in found(sdk, "ephemeral")] == []


def test_a_bad_query_is_a_400_and_a_cursor_not_in_the_list_a_404_naming_it(
    sdk: openai.OpenAI, sdk_for: Callable[[str], openai.OpenAI]
) -> None:
    matching = sdk.conversations.create(items=[{"role": "user", "content": "matching words"}])
    other = sdk.conversations.create(items=[{"role": "user", "content": "unrelated"}])
    bobs = sdk_for("bob").conversations.create(items=[{"role": "user", "content": "matching too"}])
    for params, param in [
        ({"query": ""}, "query"),
        ({"query": "  "}, "query"),
        ({"query": "x" * 1001}, "query"),
        ({"query": "x\x00"}, "query"),
        ({"query": "matching", "limit": 0}, "limit"),
        ({"query": "matching", "limit": 101}, "limit"),
        ({"query": "matching", "after": "conv_nothex"}, "after"),
        ({"query": "matching", "role": "user"}, "role"),
    ]:
        with pytest.raises(openai.BadRequestError) as raised:
            listed(sdk, **params)
        assert raised.value.body["param"] == param, raised.value.body  # type: ignore[index]
    for after in (other.id, bobs.id, "conv_" + "0" * 32):  # not in this query's list, another key's, unknown
        with pytest.raises(openai.NotFoundError) as raised:
            listed(sdk, query="matching", after=after)
        assert raised.value.body["param"] == "after"  # type: ignore[index]
    assert [c["id"] for c in listed(sdk, query="matching", limit=100)["data"]] == [matching.id]


HOSTILE_QUERIES = ["'; DROP TABLE messages; --", "a' OR '1'='1", "%", "_", "\\", "NEAR(a b)", "a AND OR NOT b", '"', "-",
                   "*", "a:*", "' & ! | ( ) : * <-> ", "東" * 300, "🚀", "&limit=1", "?after=x", "#"]


def test_hostile_queries_are_text_through_the_sdk(sdk: openai.OpenAI) -> None:
    kept = sdk.conversations.create(items=[{"role": "user", "content": "a' OR '1'='1 and 50% of C:\\ with &limit=1"}])
    for query in HOSTILE_QUERIES:
        assert isinstance(listed(sdk, query=query)["data"], list), query
    assert [c["id"] for c in listed(sdk, query="a' OR '1'='1")["data"]] == [kept.id]
    assert [c["id"] for c in listed(sdk, query="&limit=1")["data"]] == [kept.id]
    assert [c["id"] for c in listed(sdk, query="50%")["data"]] == [kept.id]
    assert texts(sdk.conversations.items.list(kept.id)) == ["a' OR '1'='1 and 50% of C:\\ with &limit=1"]


def test_the_six_routes_and_v1_share_conversations(sdk: openai.OpenAI, client: FlaskClient) -> None:
    as_key(client, sdk)
    asked = ok(post(client, "ask", {"prompt": "From ask"}))
    made = sdk.conversations.create(items=[{"role": "user", "content": "From v1"}])
    from_ask = "conv_" + asked["conversation_id"].replace("-", "")
    assert {c["id"] for c in listed(sdk)["data"]} == {from_ask, made.id}
    assert texts(sdk.conversations.items.list(from_ask, order="asc")) == ["From ask", "Echo: From ask"]
    assert {c["id"] for c in ok(post(client, "conversation"))} == {asked["conversation_id"], bare(made.id)}
    ok(post(client, "change/title", {"convo_id": bare(made.id), "title": "Renamed"}))
    assert sdk.conversations.retrieve(made.id).title == "Renamed"  # type: ignore[attr-defined]
    deleted = sdk.conversations.delete(from_ask)
    assert deleted.deleted and deleted.id == from_ask and deleted.object == "conversation.deleted"
    assert post(client, "msg/history", {"convo_id": asked["conversation_id"]}).status_code == 404
    with pytest.raises(openai.NotFoundError):
        sdk.conversations.retrieve(from_ask)


def test_limits_on_items_and_metadata_are_400_naming_the_field(sdk: openai.OpenAI, app: Flask) -> None:
    conversation = sdk.conversations.create()
    before = stored_rows(app)
    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: sdk.conversations.create(items=[{"role": "user", "content": "x"}] * 21), "items"),
        (lambda: sdk.conversations.create(metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
        (lambda: sdk.conversations.create(metadata={"k" * 65: "v"}), "metadata"),
        (lambda: sdk.conversations.update(conversation.id, metadata={"k": "v" * 513}), "metadata"),
        (lambda: sdk.conversations.items.create(conversation.id, items=[]), "items"),
        (lambda: sdk.conversations.items.create(conversation.id, items=[{"role": "tool", "content": "x"}]),
         "items[0].role"),
        (lambda: sdk.conversations.items.list(conversation.id, limit=101), "limit"),
        (lambda: sdk.conversations.items.list(conversation.id, include=["message.output_text.logprobs"]), "include"),
        (lambda: sdk.conversations.retrieve("conv_nothex"), "conversation_id"),
        (lambda: sdk.conversations.items.retrieve("msg_x", conversation_id=conversation.id), "item_id"),
        # query parameters a route does not take are refused too, not ignored
        (lambda: sdk.conversations.create(extra_query={"order": "asc"}), "order"),
        (lambda: sdk.conversations.retrieve(conversation.id, extra_query={"include[]": "x"}), "include"),
        (lambda: sdk.conversations.update(conversation.id, metadata={}, extra_query={"x": "1"}), "x"),
        (lambda: sdk.conversations.delete(conversation.id, extra_query={"x": "1"}), "x"),
        (lambda: sdk.responses.create(model=MODEL, input="Hi", extra_query={"background": "true"}), "background"),
    ]
    for call, param in cases:
        with pytest.raises(openai.BadRequestError) as raised:
            call()
        assert raised.value.body["param"] == param, raised.value.body  # type: ignore[index]
    assert stored_rows(app) == before


def test_another_key_s_conversation_is_404_everywhere(
    sdk: openai.OpenAI, sdk_for: Callable[[str], openai.OpenAI]
) -> None:
    mine = sdk.conversations.create(items=[{"role": "user", "content": "Mine"}])
    item = sdk.conversations.items.list(mine.id).data[0]
    bob = sdk_for("bob")
    assert listed(bob)["data"] == []
    for call in (
        lambda: bob.conversations.retrieve(mine.id),
        lambda: bob.conversations.update(mine.id, metadata={}),
        lambda: bob.conversations.delete(mine.id),
        lambda: bob.conversations.items.list(mine.id),
        lambda: bob.conversations.items.create(mine.id, items=[{"role": "user", "content": "x"}]),
        lambda: bob.conversations.items.retrieve(item.id, conversation_id=mine.id),
        lambda: bob.conversations.items.delete(item.id, conversation_id=mine.id),
        lambda: bob.responses.create(model=MODEL, input="x", conversation=mine.id),
    ):
        with pytest.raises(openai.NotFoundError) as raised:
            call()
        assert raised.value.body["type"] == "not_found_error"  # type: ignore[index]
    assert texts(sdk.conversations.items.list(mine.id)) == ["Mine"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_v1_answers_conform_to_the_spec(sdk: openai.OpenAI, client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    v1 = as_key(client, sdk)
    response = v1.post("/v1/responses", json={"input": "Hi", "metadata": {"a": "b"}})
    conforms(spec, "/v1/responses", response)
    answer = response.get_json()["id"]
    conversation = v1.post("/v1/conversations", json={"items": [{"role": "user", "content": "x"}]})
    conforms(spec, "/v1/conversations", conversation)
    path = f"/v1/conversations/{conversation.get_json()['id']}"
    items = v1.get(f"{path}/items")
    item = items.get_json()["data"][0]["id"]
    for route, got in [
        ("/v1/responses/{response_id}", v1.get(f"/v1/responses/{answer}")),
        ("/v1/responses/{response_id}/input_items", v1.get(f"/v1/responses/{answer}/input_items")),
        ("/v1/conversations", v1.get("/v1/conversations")),
        ("/v1/conversations", v1.get("/v1/conversations?query=x")),
        ("/v1/conversations", v1.get("/v1/conversations?query=")),
        ("/v1/conversations/{conversation_id}/items", items),
        ("/v1/conversations/{conversation_id}/items/{item_id}", v1.get(f"{path}/items/{item}")),
        ("/v1/conversations/{conversation_id}/items/{item_id}", v1.get(f"{path}/items/msg_{'0' * 32}")),
        ("/v1/responses/{response_id}", v1.get("/v1/responses/resp_1")),
    ]:
        conforms(spec, route, got, "get")
    conforms(spec, "/v1/conversations/{conversation_id}/items", v1.post(f"{path}/items", json={"items": []}))
    conforms(spec, "/v1/conversations/{conversation_id}", v1.post(path, json={"metadata": None}))
    conforms(spec, "/v1/conversations/{conversation_id}/items/{item_id}", v1.delete(f"{path}/items/{item}"), "delete")
    conforms(spec, "/v1/conversations/{conversation_id}", v1.delete(path), "delete")
    conforms(spec, "/v1/responses/{response_id}", v1.delete(f"/v1/responses/{answer}"), "delete")
