"""`/api/chat/ask`: new conversations, continuing, branching, and the upstream's failures."""

from __future__ import annotations

import uuid

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from services.unit_of_work import UnitOfWork
from fakes.openai_upstream import Fail, FakeOpenAI, Hang, Reply, Reset
from models.entities import Message
from tests.helpers import ask, check_tree, error_of, history, ok, post


@pytest.mark.parametrize("settings_overrides", [{}, {"store_while_asking": True}], ids=["stored-first", "store-while-asking"])
def test_new_conversation_answers_in_the_original_shape(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="Hello! How can I assist you today?"))
    answer = ask(client, "Hello")
    assert list(answer) == [
        "author", "citations", "conversation_id", "end_turn", "finish_details",
        "message", "model", "parent_id", "recipient",
    ]
    assert answer["author"] == {"metadata": {}, "name": None, "role": "assistant"}
    assert answer["citations"] == []
    assert answer["end_turn"] is True
    assert answer["finish_details"] == "stop"
    assert answer["message"] == "Hello! How can I assist you today?"
    assert answer["model"] == "gpt-test"
    assert answer["recipient"] == "all"
    uuid.UUID(answer["conversation_id"])
    tree = history(client, answer["conversation_id"])
    assert tree["current_node"] == answer["parent_id"]
    assert tree["mapping"][answer["parent_id"]]["message"]["author"]["role"] == "assistant"


def test_upstream_gets_the_prompt_the_model_and_the_key(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    ask(client, "Hi there", model="gpt-special")
    [request] = fake_upstream.requests
    assert request.body["messages"] == [{"role": "user", "content": "Hi there"}]
    assert request.body["model"] == "gpt-special"
    assert request.headers["authorization"] == "Bearer sk-test-upstream"


@pytest.mark.parametrize("settings_overrides", [{"system_prompt": "Be brief."}])
def test_configured_system_prompt_goes_first(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    answer = ask(client, "Hi")
    ask(client, "Again", convo_id=answer["conversation_id"])
    assert fake_upstream.requests[1].body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Echo: Hi"},
        {"role": "user", "content": "Again"},
    ]
    system = [n for n in history(client, answer["conversation_id"])["mapping"].values()
              if n.get("message", {}).get("author", {}).get("role") == "system"]
    assert system[0]["message"]["content"]["parts"] == ["Be brief."]


def test_convo_id_alone_continues_from_the_current_node(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    first = ask(client, "One")
    second = ask(client, "Two", convo_id=first["conversation_id"])
    assert second["conversation_id"] == first["conversation_id"]
    assert fake_upstream.requests[1].body["messages"] == [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Echo: One"},
        {"role": "user", "content": "Two"},
    ]
    tree = history(client, first["conversation_id"])
    user_two = tree["mapping"][second["parent_id"]]["parent"]
    assert tree["mapping"][user_two]["parent"] == first["parent_id"]
    assert tree["current_node"] == second["parent_id"]


def test_conversation_id_is_an_alias_of_convo_id(client: FlaskClient) -> None:
    first = ask(client, "One")
    second = ask(client, "Two", conversation_id=first["conversation_id"])
    assert second["conversation_id"] == first["conversation_id"]
    same = ask(client, "Three", conversation_id=first["conversation_id"], convo_id=first["conversation_id"])
    assert same["conversation_id"] == first["conversation_id"]


def test_convo_id_and_conversation_id_must_agree(client: FlaskClient) -> None:
    first = ask(client, "One")
    error = error_of(post(client, "ask", {
        "prompt": "x", "convo_id": first["conversation_id"], "conversation_id": str(uuid.uuid4()),
    }), 400)
    assert "convo_id" in error["message"] and "conversation_id" in error["message"]


def test_parent_id_branches_and_sends_only_the_branch(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    first = ask(client, "One")
    ask(client, "Two", convo_id=first["conversation_id"])
    fake_upstream.reset()
    tree = history(client, first["conversation_id"])
    user_one = tree["mapping"][first["parent_id"]]["parent"]
    edited_parent = tree["mapping"][user_one]["parent"]  # the system node: edit-and-resend "One"
    edit = ask(client, "One, edited", convo_id=first["conversation_id"], parent_id=edited_parent)
    regen = ask(client, "Two again", convo_id=first["conversation_id"], parent_id=first["parent_id"])
    assert fake_upstream.requests[0].body["messages"] == [{"role": "user", "content": "One, edited"}]
    assert fake_upstream.requests[1].body["messages"] == [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Echo: One"},
        {"role": "user", "content": "Two again"},
    ]
    tree = history(client, first["conversation_id"])
    check_tree(tree["mapping"])
    assert len(tree["mapping"][edited_parent]["children"]) == 2
    assert len(tree["mapping"][first["parent_id"]]["children"]) == 2
    assert tree["current_node"] == regen["parent_id"]
    assert edit["parent_id"] in tree["mapping"]


def test_parent_id_without_a_conversation_is_a_400(client: FlaskClient) -> None:
    error = error_of(post(client, "ask", {"prompt": "x", "parent_id": str(uuid.uuid4())}), 400)
    assert "parent_id" in error["message"]


def test_parent_from_another_conversation_is_a_404(client: FlaskClient) -> None:
    one = ask(client, "One")
    two = ask(client, "Two")
    error = error_of(post(client, "ask", {
        "prompt": "x", "convo_id": one["conversation_id"], "parent_id": two["parent_id"],
    }), 404)
    assert error["code"] == "parent_not_found"


def test_unknown_conversation_is_a_404_and_stores_nothing(client: FlaskClient, app) -> None:  # type: ignore[no-untyped-def]
    error = error_of(post(client, "ask", {"prompt": "x", "convo_id": str(uuid.uuid4())}), 404)
    assert error["code"] == "conversation_not_found"
    assert count_messages(app) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   \n"}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": ["a"]}, "prompt"),
        ({"prompt": "x", "convo_id": "not-a-uuid"}, "convo_id"),
        ({"prompt": "x", "convo_id": 12}, "convo_id"),
        ({"prompt": "x", "conversation_id": "nope"}, "conversation_id"),
        ({"prompt": "x", "convo_id": str(uuid.uuid4()), "parent_id": "zz"}, "parent_id"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "stream": 1}, "stream"),
        ({"prompt": "x", "model": ""}, "model"),
        ({"prompt": "x", "model": 3}, "model"),
        ({"prompt": "x", "model": "m" * 129}, "model"),
    ],
)
def test_bad_fields_are_400s_naming_the_field(client: FlaskClient, app, body, field) -> None:  # type: ignore[no-untyped-def]
    error = error_of(post(client, "ask", body), 400)
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(f"{field}:")
    assert count_messages(app) == 0


def test_upstream_error_is_a_502_and_keeps_the_question(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    first = ask(client, "One")
    fake_upstream.script(Fail(500, "model overloaded"))
    error = error_of(post(client, "ask", {"prompt": "Two", "convo_id": first["conversation_id"]}), 502)
    assert error["code"] == "upstream_error"
    assert "model overloaded" in error["message"]
    assert error["conversation_id"] == first["conversation_id"]
    tree = history(client, first["conversation_id"])
    check_tree(tree["mapping"])
    prompts = [n["message"]["content"]["parts"][0] for n in tree["mapping"].values()
               if n.get("message", {}).get("author", {}).get("role") == "user"]
    assert prompts == ["One", "Two"]
    assert tree["current_node"] == first["parent_id"]  # the failed question is a branch to retry


@pytest.mark.parametrize("settings_overrides", [{}, {"store_while_asking": True}], ids=["stored-first", "store-while-asking"])
def test_failed_first_question_keeps_its_conversation(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Fail(503, "busy"))
    error = error_of(post(client, "ask", {"prompt": "One"}), 502)
    conversation = error["conversation_id"]
    retried = ask(client, "One", convo_id=conversation)
    assert retried["conversation_id"] == conversation
    assert fake_upstream.requests[-1].body["messages"] == [{"role": "user", "content": "One"}]


def test_refused_upstream_key_is_a_502_that_says_so(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Fail(401, "Incorrect API key provided"))
    error = error_of(post(client, "ask", {"prompt": "x"}), 502)
    assert "OPENAI_API_KEY" in error["message"]


@pytest.mark.parametrize("settings_overrides", [{"upstream_read_timeout": 0.5}])
def test_upstream_timeout_is_a_504(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Hang())
    error = error_of(post(client, "ask", {"prompt": "x"}), 504)
    assert error["code"] == "upstream_timeout"
    uuid.UUID(error["conversation_id"])


@pytest.mark.parametrize("settings_overrides", [{}, {"store_while_asking": True}], ids=["stored-first", "store-while-asking"])
def test_connection_reset_is_a_502(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reset())
    error = error_of(post(client, "ask", {"prompt": "x"}), 502)
    assert error["code"] == "upstream_error"


@pytest.mark.parametrize("settings_overrides", [
    {"upstream_max_retries": 2}, {"upstream_max_retries": 2, "store_while_asking": True}
], ids=["stored-first", "store-while-asking"])
def test_transient_failures_are_retried(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Fail(429, "slow down", headers={"Retry-After": "0"}), Fail(502), Reply(text="finally"))
    assert ask(client, "x")["message"] == "finally"
    assert len(fake_upstream.requests) == 3


@pytest.mark.parametrize("settings_overrides", [{"upstream_max_retries": 1}])
def test_retries_give_up_with_a_502(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Fail(500), Fail(500), Reply(text="too late"))
    error_of(post(client, "ask", {"prompt": "x"}), 502)
    assert len(fake_upstream.requests) == 2


@pytest.mark.parametrize("settings_overrides", [{}, {"store_while_asking": True}], ids=["stored-first", "store-while-asking"])
def test_answer_cut_mid_way_is_kept_and_marked(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="one two three four", chunks=["one ", "two ", "three ", "four"], break_after=2))
    error = error_of(post(client, "ask", {"prompt": "x"}), 502)
    tree = history(client, error["conversation_id"])
    answers = [n["message"] for n in tree["mapping"].values()
               if n.get("message", {}).get("author", {}).get("role") == "assistant"]
    assert [a["content"]["parts"][0] for a in answers] == ["one two "]
    assert answers[0]["status"] == "finished_partial_completion"
    assert answers[0]["metadata"]["finish_details"] == {"type": "interrupted"}
    assert tree["current_node"] == answers[0]["id"]


def test_finish_reason_length_is_reported(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="cut", finish_reason="length"))
    answer = ask(client, "x")
    assert answer["finish_details"] == "length"
    assert answer["end_turn"] is False


def test_non_ascii_round_trips(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    answer = ask(client, "怎么在github上创建一个pull request 🚀")
    assert answer["message"] == "Echo: 怎么在github上创建一个pull request 🚀"
    assert fake_upstream.requests[0].body["messages"][0]["content"] == "怎么在github上创建一个pull request 🚀"


def test_no_upstream_configured_is_a_503_naming_the_variable(database_url: str) -> None:
    from app import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(database_url, None))
    client = app.test_client()
    error = error_of(post(client, "ask", {"prompt": "x"}), 503)
    assert error["code"] == "upstream_not_configured"
    assert "OPENAI_API_KEY" in error["message"]
    assert ok(post(client, "conversation", {})) == []
    assert count_messages(app) == 0
    app.services.database.dispose()


def count_messages(app) -> int:  # type: ignore[no-untyped-def]
    with UnitOfWork(app.services.database) as uow:
        return uow.session.scalar(select(func.count()).select_from(Message))
