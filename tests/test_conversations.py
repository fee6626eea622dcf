"""Listing, reading, renaming, deleting and clearing conversations."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from werkzeug.test import TestResponse

from api.schemas import MAX_OFFSET, ConversationListResponse, ConversationTreeResponse
from services.unit_of_work import UnitOfWork
from fakes.openai_upstream import FakeOpenAI, Reply
from models.entities import Conversation, Message
from tests.helpers import ask, check_tree, error_of, history, ok, post


def listing(client: FlaskClient, **body: object) -> list[dict]:
    return ok(post(client, "conversation", body))


def rows(app: Flask, model: type) -> int:
    with UnitOfWork(app.services.database) as uow:
        return uow.session.scalar(select(func.count()).select_from(model))


# -- conversation list -------------------------------------------------------------


def test_list_is_empty_at_first(client: FlaskClient) -> None:
    assert listing(client) == []


def test_list_shape_and_timestamps(client: FlaskClient) -> None:
    answer = ask(client, "Hi")
    [item] = listing(client)
    assert list(item) == ["id", "title", "create_time", "update_time", "mapping", "current_node"]
    assert item["id"] == answer["conversation_id"]
    assert item["title"] == "New chat"
    assert item["mapping"] is None and item["current_node"] is None
    created = datetime.fromisoformat(item["create_time"])
    updated = datetime.fromisoformat(item["update_time"])
    assert item["create_time"].endswith("+00:00") and item["update_time"].endswith("+00:00")
    assert created.utcoffset() == timedelta(0)
    assert created <= updated
    assert abs(datetime.now(created.tzinfo) - updated) < timedelta(minutes=1)


def test_list_is_newest_activity_first(client: FlaskClient) -> None:
    first = ask(client, "first")["conversation_id"]
    second = ask(client, "second")["conversation_id"]
    assert [c["id"] for c in listing(client)] == [second, first]
    ask(client, "more", convo_id=first)
    assert [c["id"] for c in listing(client)] == [first, second]


def test_offset_and_limit_page_through(client: FlaskClient) -> None:
    ids = [ask(client, f"q{i}")["conversation_id"] for i in range(5)]
    newest_first = ids[::-1]
    assert [c["id"] for c in listing(client, limit=2)] == newest_first[:2]
    assert [c["id"] for c in listing(client, offset=2, limit=2)] == newest_first[2:4]
    assert [c["id"] for c in listing(client, offset=4, limit=2)] == newest_first[4:]
    assert listing(client, offset=10) == []


def test_default_limit_is_20(client: FlaskClient, app: Flask) -> None:
    for _ in range(22):
        ask(client, "q")
    assert len(listing(client)) == 20
    assert len(listing(client, limit=100)) == 22


def test_after_cursor_pages_by_keyset(client: FlaskClient) -> None:
    ids = [ask(client, f"q{i}")["conversation_id"] for i in range(5)][::-1]
    page1 = [c["id"] for c in listing(client, limit=2)]
    page2 = [c["id"] for c in listing(client, limit=2, after=page1[-1])]
    page3 = [c["id"] for c in listing(client, limit=2, after=page2[-1])]
    assert page1 + page2 + page3 == ids


def test_after_unknown_conversation_is_a_404(client: FlaskClient) -> None:
    error_of(post(client, "conversation", {"after": str(uuid.uuid4())}), 404)


def test_after_the_last_conversation_is_an_empty_page(client: FlaskClient) -> None:
    """Not a 404: the cursor exists, there is just nothing past it."""
    ask(client, "older")
    ask(client, "newer")
    newer, older = listing(client)
    assert listing(client, after=newer["id"]) == [older]
    assert listing(client, after=older["id"]) == []


def standard_bytes(response: TestResponse) -> bytes:
    """What Flask's own `jsonify` writes for the answer's JSON (the standard library, compact)."""
    return (json.dumps(response.get_json(), ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def test_list_bytes_are_the_standard_librarys_and_the_models(client: FlaskClient) -> None:
    for prompt in ("第一", "second"):
        ask(client, prompt)
    response = post(client, "conversation", {"limit": 20})
    assert len(ok(response)) == 2
    assert response.data == standard_bytes(response)
    assert response.data == ConversationListResponse.model_validate_json(response.data).model_dump_json().encode() + b"\n"


def test_list_ignores_unknown_keys(client: FlaskClient) -> None:
    ask(client, "x")
    assert len(listing(client, prompt="the original README sent this")) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "5"}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": None}, "offset"),
        ({"offset": MAX_OFFSET + 1}, "offset"),
        ({"offset": 2**63}, "offset"),
        ({"offset": 2**64 + 1}, "offset"),
        ({"limit": 2**63}, "limit"),
        ({"limit": 1e300}, "limit"),
        ({"after": "nope"}, "after"),
    ],
)
def test_bad_paging_is_a_400_naming_the_field(client: FlaskClient, body: dict, field: str) -> None:
    assert error_of(post(client, "conversation", body), 400)["message"].startswith(f"{field}:")


def test_the_largest_offset_is_within_every_databases_range(client: FlaskClient) -> None:
    ask(client, "x")
    assert listing(client, offset=MAX_OFFSET) == []


def test_whole_numbers_written_with_a_decimal_point_are_numbers(client: FlaskClient) -> None:
    """JSON has one number type, and JSON Schema counts 16.0 as an integer: so does the service."""
    ids = [ask(client, f"q{i}")["conversation_id"] for i in range(3)]
    assert [c["id"] for c in listing(client, limit=2.0, offset=1.0)] == ids[::-1][1:3]


# -- history ------------------------------------------------------------------------


def test_history_is_chatgpts_export_shape(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="Sure."))
    answer = ask(client, "怎么在github上创建一个pull request")
    tree = history(client, answer["conversation_id"])
    assert list(tree) == ["title", "create_time", "update_time", "mapping", "moderation_results", "current_node"]
    assert tree["title"] == "New chat"
    assert isinstance(tree["create_time"], float) and isinstance(tree["update_time"], float)
    assert tree["create_time"] <= tree["update_time"]
    assert tree["moderation_results"] == []
    assert tree["current_node"] == answer["parent_id"]
    mapping = tree["mapping"]
    check_tree(mapping)
    assert len(mapping) == 4

    root = next(n for n in mapping.values() if n["parent"] is None)
    [system_id] = root["children"]
    system = mapping[system_id]
    assert system["message"]["author"] == {"role": "system", "metadata": {}}
    assert system["message"]["content"] == {"content_type": "text", "parts": [""]}
    [user_id] = system["children"]
    user = mapping[user_id]["message"]
    assert list(user) == ["id", "author", "create_time", "content", "status", "end_turn",
                          "weight", "metadata", "recipient"]
    assert user["id"] == user_id
    assert user["author"] == {"role": "user", "metadata": {}}
    assert user["content"] == {"content_type": "text", "parts": ["怎么在github上创建一个pull request"]}
    assert user["status"] == "finished_successfully"
    assert user["weight"] == 1.0 and user["recipient"] == "all"
    [assistant_id] = mapping[user_id]["children"]
    assert assistant_id == answer["parent_id"]
    assistant = mapping[assistant_id]["message"]
    assert assistant["author"]["role"] == "assistant"
    assert assistant["content"]["parts"] == ["Sure."]
    assert assistant["end_turn"] is True
    assert assistant["metadata"]["model_slug"] == "gpt-test"
    assert assistant["metadata"]["finish_details"] == {"type": "stop"}
    assert user["create_time"] <= assistant["create_time"] <= tree["update_time"]
    assert mapping[assistant_id]["children"] == []


def test_history_accepts_the_conversation_id_alias(client: FlaskClient) -> None:
    answer = ask(client, "x")
    tree = ok(post(client, "msg/history", {"conversation_id": answer["conversation_id"]}))
    assert tree["current_node"] == answer["parent_id"]


def test_history_of_a_deep_branching_conversation_stays_consistent(client: FlaskClient) -> None:
    answer = ask(client, "0")
    conversation = answer["conversation_id"]
    parents = [answer["parent_id"]]
    for i in range(1, 8):
        parents.append(ask(client, str(i), convo_id=conversation, parent_id=parents[i // 2])["parent_id"])
    tree = history(client, conversation)
    check_tree(tree["mapping"])
    assert len(tree["mapping"]) == 2 + 2 * 8
    assert tree["current_node"] == parents[-1]


def test_history_bytes_are_the_standard_librarys_and_the_models(
    app: Flask, client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    """The fast writer changes no byte: the answer is what the standard library writes for its
    JSON, and what the declared model writes (answers with usage and details, branches,
    text that JSON escapes)."""
    fake_upstream.script(Reply(text="Sure: \"quoted\", 好的\n\ttab \u2028 \x7f"), Reply(text="Other"), Reply(text="Third"))
    answer = ask(client, "怎么 \\ \x01")
    conversation = answer["conversation_id"]
    ask(client, "a branch", convo_id=conversation, parent_id=answer["parent_id"])
    ask(client, "another branch", convo_id=conversation, parent_id=answer["parent_id"])
    details = {"upstream": "second", "context": {"messages_left_out": 2, "summarized": False, "cut": True,
                                                 "budget_tokens": 100}}
    with UnitOfWork(app.services.database) as uow:
        uow.session.execute(update(Message).where(Message.id == uuid.UUID(answer["parent_id"])).values(
            answer_details=details))
        uow.commit()
    response = post(client, "msg/history", {"convo_id": conversation})
    tree = ok(response)
    assert tree["mapping"][answer["parent_id"]]["message"]["metadata"] == {
        "model_slug": "gpt-test", "finish_details": {"type": "stop"},
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}, **details, "timestamp_": "absolute",
    }
    assert response.data == standard_bytes(response)
    assert response.data == ConversationTreeResponse.model_validate_json(response.data).model_dump_json().encode() + b"\n"


def test_history_with_a_small_float_in_an_answers_details_is_the_standard_librarys(
    app: Flask, client: FlaskClient
) -> None:
    """Floats of an answer's details count among the tree's numbers (here one pydantic_core
    would write as `1e-6`)."""
    answer = ask(client, "x")
    with UnitOfWork(app.services.database) as uow:
        uow.session.execute(update(Message).where(Message.id == uuid.UUID(answer["parent_id"])).values(
            answer_details={"upstream": "first", "seconds": [1e-06]}))
        uow.commit()
    response = post(client, "msg/history", {"convo_id": answer["conversation_id"]})
    assert b'"seconds":[1e-06]' in response.data
    assert response.data == standard_bytes(response)


def test_history_of_an_imported_message_is_the_standard_librarys(app: Flask, client: FlaskClient) -> None:
    """An imported message is given as the export had it, its keys in its own order, and any
    float written as Python writes it (`1e-05`, where pydantic_core would write `0.00001`)."""
    conversation = ask(client, "x")["conversation_id"]
    tree = history(client, conversation)
    original = {"zeta": [1e-05, 2.5e-07, 1e-4, 1e22], "author": {"role": "tool", "name": "python"}, "id": "kept?",
                "content": {"content_type": "code", "text": "print(1)"}}
    imported = uuid.uuid4()
    with UnitOfWork(app.services.database) as uow:
        uow.conversations.add_message(
            id=imported, conversation_id=uuid.UUID(conversation), parent_id=uuid.UUID(tree["current_node"]),
            role="tool", content="print(1)", original=original, created_at=datetime.now(UTC),
        )
        uow.commit()
    response = post(client, "msg/history", {"convo_id": conversation})
    assert ok(response)["mapping"][str(imported)]["message"] == {**original, "id": str(imported)}
    assert response.data == standard_bytes(response)
    assert b'"zeta":[1e-05,2.5e-07,0.0001,1e+22]' in response.data


def test_history_times_are_each_rows_own_to_the_bit(app: Flask, client: FlaskClient) -> None:
    """On PostgreSQL the server writes the epoch seconds: they are the very floats that
    `datetime.timestamp()` gives, for any microsecond (before 1970 and just after it too)."""
    answer = ask(client, "x")
    conversation_id = uuid.UUID(answer["conversation_id"])
    tree = history(client, answer["conversation_id"])
    rng = random.Random(16)
    base = datetime(1960, 1, 1, tzinfo=UTC)
    moments = [datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=n) for n in (1, 10, 99, 12345)]
    moments += [base + timedelta(microseconds=rng.randrange(150 * 365 * 86_400 * 10**6)) for _ in range(300)]
    with UnitOfWork(app.services.database) as uow:
        uow.conversations.add_chain(
            conversation_id, uuid.UUID(tree["current_node"]),
            [(uuid.uuid4(), "user", f"m{n}") for n in range(len(moments))], created_at=moments[0],
        )
        added = uow.session.scalars(
            select(Message.id).where(Message.conversation_id == conversation_id, Message.content.like("m%"))
        ).all()
        for message_id, moment in zip(added, moments, strict=True):
            uow.session.execute(update(Message).where(Message.id == message_id).values(created_at=moment))
        uow.session.execute(update(Conversation).where(Conversation.id == conversation_id).values(
            created_at=moments[-2], updated_at=moments[-1]))
        uow.commit()
    with UnitOfWork(app.services.database) as uow:
        stored = {str(message.id): message.created_at for message in uow.session.scalars(
            select(Message).where(Message.conversation_id == conversation_id))}
        conversation = uow.session.get(Conversation, conversation_id)
        assert conversation is not None
        created, updated = conversation.created_at, conversation.updated_at
    response = post(client, "msg/history", {"convo_id": answer["conversation_id"]})
    tree = ok(response)
    assert (tree["create_time"], tree["update_time"]) == (created.timestamp(), updated.timestamp())
    shown = {key: node["message"]["create_time"] for key, node in tree["mapping"].items() if "message" in node}
    assert shown == {key: moment.timestamp() for key, moment in stored.items() if key in shown}
    assert len(shown) == len(stored) - 1  # all but the root
    assert response.data == standard_bytes(response)


def test_history_of_a_conversation_made_just_after_1970_is_the_standard_librarys(
    app: Flask, client: FlaskClient
) -> None:
    """Its times are floats the two writers write differently (`1e-05`)."""
    answer = ask(client, "x")
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=10)
    with UnitOfWork(app.services.database) as uow:
        uow.session.execute(update(Conversation).where(Conversation.id == uuid.UUID(answer["conversation_id"]))
                            .values(created_at=moment))
        uow.commit()
    response = post(client, "msg/history", {"convo_id": answer["conversation_id"]})
    assert b'"create_time":1e-05,' in response.data
    assert response.data == standard_bytes(response)


@pytest.mark.parametrize(
    ("body", "status"),
    [({}, 400), ({"convo_id": "x"}, 400), ({"convo_id": None}, 400), ({"convo_id": str(uuid.uuid4())}, 404)],
)
def test_history_errors(client: FlaskClient, body: dict, status: int) -> None:
    error = error_of(post(client, "msg/history", body), status)
    if status == 400:
        assert "convo_id" in error["message"]


# -- title, delete, clear -------------------------------------------------------------


def test_change_title(client: FlaskClient) -> None:
    conversation = ask(client, "x")["conversation_id"]
    assert ok(post(client, "change/title", {"convo_id": conversation, "title": "测试"})) is None
    assert listing(client)[0]["title"] == "测试"
    assert history(client, conversation)["title"] == "测试"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"title": "t"}, None), ({"convo_id": "CONVO"}, "title"), ({"convo_id": "CONVO", "title": ""}, "title"),
     ({"convo_id": "CONVO", "title": "  "}, "title"), ({"convo_id": "CONVO", "title": 7}, "title"),
     ({"convo_id": "CONVO", "title": "x" * 1001}, "title")],
)
def test_change_title_rejects_bad_bodies(client: FlaskClient, body: dict, field: str | None) -> None:
    conversation = ask(client, "x")["conversation_id"]
    body = {k: (conversation if v == "CONVO" else v) for k, v in body.items()}
    error = error_of(post(client, "change/title", body), 400)
    assert (field or "convo_id") in error["message"]
    assert listing(client)[0]["title"] == "New chat"


def test_change_title_of_unknown_conversation_is_a_404(client: FlaskClient) -> None:
    error_of(post(client, "change/title", {"convo_id": str(uuid.uuid4()), "title": "t"}), 404)


def test_delete_removes_the_conversation_and_its_messages(client: FlaskClient, app: Flask) -> None:
    keep = ask(client, "keep")["conversation_id"]
    gone = ask(client, "gone")["conversation_id"]
    ask(client, "more", convo_id=gone)
    assert ok(post(client, "delete/conversation", {"convo_id": gone})) is None
    assert [c["id"] for c in listing(client)] == [keep]
    error_of(post(client, "msg/history", {"convo_id": gone}), 404)
    assert rows(app, Message) == 4  # root, system, question, answer of the kept one
    error_of(post(client, "delete/conversation", {"convo_id": gone}), 404)


def test_delete_rejects_bad_ids(client: FlaskClient) -> None:
    error_of(post(client, "delete/conversation", {"convo_id": "1234"}), 400)
    error_of(post(client, "delete/conversation", {}), 400)


def test_clear_removes_everything(client: FlaskClient, app: Flask) -> None:
    for i in range(3):
        ask(client, f"q{i}")
    assert ok(post(client, "clear/conversations", {})) is None
    assert listing(client) == []
    assert rows(app, Conversation) == 0 and rows(app, Message) == 0


def test_clear_of_nothing_is_fine(client: FlaskClient) -> None:
    assert ok(post(client, "clear/conversations", {})) is None
