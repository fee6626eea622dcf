"""API keys, per-key isolation, refusing to serve the network unprotected, headers, CORS, logs."""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, func, select, text
from werkzeug.test import TestResponse

from api.auth import is_loopback, refusal
from app import create_app
from cli import cli
from services.unit_of_work import UnitOfWork
from fakes.net import free_port
from fakes.openai_upstream import FakeOpenAI
from models.entities import ApiKey, Conversation, Message
from models.key_changes import READ_GENERATION
from services.api_keys import ApiKeys
from tests import launcher
from tests.conftest import make_settings
from tests.helpers import check_tree, error_of, ok, post


def new_key(app: Flask, name: str) -> str:
    return ApiKeys(app.services.database).create(name).key


def call(client: FlaskClient, route: str, body: Any = None, key: str | None = None) -> TestResponse:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post(f"/api/chat/{route}", json={} if body is None else body, headers=headers)


def ask_as(client: FlaskClient, key: str, prompt: str = "Hello", **fields: Any) -> dict[str, Any]:
    return ok(call(client, "ask", {"prompt": prompt, **fields}, key))


def snapshot(app: Flask) -> list[tuple[Any, ...]]:
    """Everything stored about conversations, to prove a request changed nothing."""
    with UnitOfWork(app.services.database) as uow:
        conversations = uow.session.execute(
            select(Conversation.id, Conversation.owner, Conversation.title, Conversation.current_node_id)
            .order_by(Conversation.id)
        ).all()
        messages = uow.session.scalar(select(func.count()).select_from(Message))
    return [*conversations, (messages,)]


# -- the keys commands -------------------------------------------------------------------


def run_cli(database_url: str, *args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), env={"DATABASE_URL": database_url})
    return result


def test_create_prints_the_key_once_and_stores_only_its_hash(app: Flask, database_url: str) -> None:
    created = run_cli(database_url, "keys", "create", "alice")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("gpa_") and len(key) >= 40
    assert "not shown again" in created.stderr
    with UnitOfWork(app.services.database) as uow:
        [row] = uow.session.execute(select(ApiKey.__table__)).all()
    assert row.name == "alice"
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in repr(tuple(row))
    listed = run_cli(database_url, "keys", "list")
    assert listed.exit_code == 0
    assert "alice" in listed.output and "active" in listed.output
    assert key not in listed.output and row.key_hash not in listed.output


def test_a_name_has_one_active_key_and_names_are_checked(database_url: str) -> None:
    assert run_cli(database_url, "keys", "create", "alice").exit_code == 0
    again = run_cli(database_url, "keys", "create", "alice")
    assert again.exit_code == 1 and "revoke it first" in again.output
    bad = run_cli(database_url, "keys", "create", "no spaces please")
    assert bad.exit_code == 1 and "key name" in bad.output
    missing = run_cli(database_url, "keys", "revoke", "nobody")
    assert missing.exit_code == 1 and "no key" in missing.output


def test_revoked_key_is_refused_and_a_new_key_for_the_name_keeps_the_conversations(
    app: Flask, client: FlaskClient, database_url: str
) -> None:
    old = new_key(app, "alice")
    answer = ask_as(client, old)
    revoked = run_cli(database_url, "keys", "revoke", "alice")
    assert revoked.exit_code == 0, revoked.output
    assert error_of(call(client, "conversation", {}, old), 401)["code"] == "unauthorized"
    listed = run_cli(database_url, "keys", "list").output
    assert "revoked" in listed
    fresh = run_cli(database_url, "keys", "create", "alice").stdout.strip()
    assert [c["id"] for c in ok(call(client, "conversation", {}, fresh))] == [answer["conversation_id"]]


def test_adopt_anonymous_hands_earlier_conversations_to_the_first_key(
    app: Flask, client: FlaskClient, database_url: str
) -> None:
    earlier = ok(post(client, "ask", {"prompt": "before keys"}))
    created = run_cli(database_url, "keys", "create", "alice", "--adopt-anonymous")
    assert "1 conversation(s) now belong to 'alice'" in created.stderr
    key = created.stdout.strip()
    assert [c["id"] for c in ok(call(client, "conversation", {}, key))] == [earlier["conversation_id"]]


# -- requests need a key once one exists ----------------------------------------------------


def test_without_keys_the_loopback_service_is_open(client: FlaskClient) -> None:
    assert ok(post(client, "conversation", {})) == []


def bodies(conversation_id: str) -> dict[str, dict[str, Any]]:
    """A body each route would accept, so only the missing key can make it fail."""
    return {
        "/api/chat/ask": {"prompt": "sneaky", "convo_id": conversation_id},
        "/api/chat/conversation": {},
        "/api/chat/msg/history": {"convo_id": conversation_id},
        "/api/chat/change/title": {"convo_id": conversation_id, "title": "taken over"},
        "/api/chat/delete/conversation": {"convo_id": conversation_id},
        "/api/chat/clear/conversations": {},
    }


@pytest.mark.parametrize("credentials", [
    None,
    "Bearer gpa_not-a-key",
    "Bearer ",
    "Basic YWxpY2U6c2VjcmV0",
    "gpa_no-scheme",
    "Bearer gpa_x Bearer gpa_y",
])
def test_every_api_route_refuses_a_missing_or_wrong_key_and_changes_nothing(
    app: Flask, client: FlaskClient, fake_upstream: FakeOpenAI, credentials: str | None
) -> None:
    key = new_key(app, "alice")
    conversation = ask_as(client, key)["conversation_id"]
    before = snapshot(app)
    known = bodies(conversation)
    routes = [rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/")]
    assert set(known) <= {rule.rule for rule in routes}
    fake_upstream.reset()
    for rule in routes:
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            headers = {"Authorization": credentials} if credentials is not None else {}
            response = client.open(rule.rule, method=method, json=known.get(rule.rule, {}), headers=headers)
            error = error_of(response, 401)
            assert error["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            for secret in (credentials or "").split():
                if secret not in ("Bearer", "Basic"):
                    assert secret not in response.get_data(as_text=True)
    assert snapshot(app) == before
    assert fake_upstream.requests == []


def test_each_key_sees_only_its_own_conversations(app: Flask, client: FlaskClient) -> None:
    alice, bob = new_key(app, "alice"), new_key(app, "bob")
    mine = ask_as(client, alice, "alice's secret")
    theirs = ask_as(client, bob, "bob's")
    conversation = mine["conversation_id"]
    assert [c["id"] for c in ok(call(client, "conversation", {}, bob))] == [theirs["conversation_id"]]
    for route, body in [
        ("msg/history", {"convo_id": conversation}),
        ("change/title", {"convo_id": conversation, "title": "mine now"}),
        ("delete/conversation", {"convo_id": conversation}),
        ("ask", {"prompt": "continue", "convo_id": conversation}),
        ("ask", {"prompt": "branch", "convo_id": conversation, "parent_id": mine["parent_id"]}),
        ("conversation", {"after": conversation}),
    ]:
        error = error_of(call(client, route, body, bob), 404)
        assert "alice" not in error["message"] and "secret" not in error["message"]
    assert ok(call(client, "clear/conversations", {}, bob)) is None
    assert ok(call(client, "conversation", {}, bob)) == []
    tree = ok(call(client, "msg/history", {"convo_id": conversation}, alice))
    assert tree["title"] != "mine now"
    check_tree(tree["mapping"])
    assert len(tree["mapping"]) == 4  # root, system, alice's question, the answer


def test_conversations_made_without_keys_are_not_visible_to_a_key(app: Flask, client: FlaskClient) -> None:
    anonymous = ok(post(client, "ask", {"prompt": "before keys"}))
    key = new_key(app, "alice")
    assert ok(call(client, "conversation", {}, key)) == []
    error_of(call(client, "msg/history", {"convo_id": anonymous["conversation_id"]}, key), 404)


def test_a_key_made_or_revoked_by_another_process_counts_on_the_next_request(
    app: Flask, client: FlaskClient, database_url: str
) -> None:
    assert ok(post(client, "conversation", {})) == []  # no key: open, and the copy is loaded
    key = run_cli(database_url, "keys", "create", "alice").stdout.strip()
    error_of(post(client, "conversation", {}), 401)
    assert ok(call(client, "conversation", {}, key)) == []
    assert run_cli(database_url, "keys", "revoke", "alice").exit_code == 0
    error_of(call(client, "conversation", {}, key), 401)


def test_unknown_keys_are_refused_without_looking_each_up(app: Flask, client: FlaskClient) -> None:
    """Guessing costs the database what a valid key costs (the generation read), no lookup."""
    key = new_key(app, "alice")
    assert ok(call(client, "conversation", {}, key)) == []  # loads the copy of the keys
    statements: list[str] = []
    engine = app.services.database.engine
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    for n in range(20):
        error_of(call(client, "conversation", {}, f"gpa_guess{n}"), 401)
    assert statements == []


def test_the_key_check_replaces_a_connection_that_postgresql_closed(
    postgresql_url: str, fake_upstream: FakeOpenAI
) -> None:
    app = create_app(make_settings(postgresql_url, fake_upstream.url))
    client = app.test_client()
    try:  # a 401 for an unknown key (not a 503) shows that the generation was read
        error_of(call(client, "conversation", {}, "gpa_unknown"), 401)
        with app.services.database.engine.connect() as connection:
            ended = connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND query = :read"),
                {"read": READ_GENERATION},
            ).scalars().all()
        assert True in ended  # as a restart or an idle timeout would
        error_of(call(client, "conversation", {}, "gpa_unknown"), 401)
    finally:
        app.services.database.dispose()


# -- never open to the network by accident ----------------------------------------------------


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("")
    assert not is_loopback("192.0.2.10")


def test_without_keys_a_non_loopback_server_refuses_every_request(
    database_url: str, fake_upstream: FakeOpenAI
) -> None:
    app = create_app(make_settings(database_url, fake_upstream.url, host="0.0.0.0"))
    try:
        assert "ALLOW_UNAUTHENTICATED" in (refusal(app.services.settings, app.services.keys) or "")
        error = error_of(app.test_client().post("/api/chat/conversation", json={}), 401)
        assert "keys create" in error["message"]
        key = new_key(app, "alice")
        assert refusal(app.services.settings, app.services.keys) is None
        assert ok(call(app.test_client(), "conversation", {}, key)) == []
        ApiKeys(app.services.database).revoke("alice")  # the last key: still closed, not open
        error_of(app.test_client().post("/api/chat/conversation", json={}), 401)
    finally:
        app.services.database.dispose()


def test_allow_unauthenticated_opens_a_non_loopback_server(database_url: str, fake_upstream: FakeOpenAI) -> None:
    settings = make_settings(database_url, fake_upstream.url, host="0.0.0.0", allow_unauthenticated=True)
    app = create_app(settings)
    try:
        assert refusal(settings, app.services.keys) is None
        assert ok(post(app.test_client(), "conversation", {})) == []
    finally:
        app.services.database.dispose()


def test_serve_refuses_a_non_loopback_host_without_keys_and_says_why(database_url: str) -> None:
    env = {"DATABASE_URL": database_url, "HOST": "0.0.0.0", "PORT": str(free_port()), "WORKERS": "1"}
    process = launcher.run([], {**_base_env(), **env}, timeout=60)
    assert process.returncode == 1, process.stdout + process.stderr
    assert "Refusing to serve on 0.0.0.0" in process.stderr
    assert "keys create" in process.stderr and "ALLOW_UNAUTHENTICATED=true" in process.stderr
    assert "Listening at" not in process.stdout + process.stderr


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CHATGPT_"))}


# -- headers, CORS, logs -----------------------------------------------------------------------


def test_security_headers_on_every_answer(app: Flask, client: FlaskClient) -> None:
    answers = [
        post(client, "conversation", {}),
        post(client, "msg/history", {"convo_id": str(uuid.uuid4())}),
        post(client, "conversation", {"limit": "x"}),
        client.post("/nowhere"),
        client.get("/api/chat/ask"),
        client.post("/api/chat/ask", json={"prompt": "x", "stream": True}),
    ]
    for response in answers:
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "no-store" in response.headers["Cache-Control"] or response.mimetype == "text/event-stream"
        assert "Access-Control-Allow-Origin" not in response.headers


def preflight(client: FlaskClient, origin: str) -> TestResponse:
    return client.options("/api/chat/ask", headers={
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    })


def test_cors_is_off_by_default(client: FlaskClient) -> None:
    response = preflight(client, "https://app.example")
    assert "Access-Control-Allow-Origin" not in response.headers
    answer = client.post("/api/chat/conversation", json={}, headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in answer.headers


@pytest.mark.parametrize("settings_overrides", [{"cors_origins": ["https://app.example"]}])
def test_cors_allows_only_the_listed_origins_and_preflights_need_no_key(app: Flask, client: FlaskClient) -> None:
    key = new_key(app, "alice")
    allowed = preflight(client, "https://app.example")
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "authorization" in allowed.headers["Access-Control-Allow-Headers"].lower()
    assert "Access-Control-Allow-Origin" not in preflight(client, "https://evil.example").headers
    answer = client.post("/api/chat/conversation", json={},
                         headers={"Origin": "https://app.example", "Authorization": f"Bearer {key}"})
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
    refused = client.post("/api/chat/conversation", json={}, headers={"Origin": "https://app.example"})
    assert refused.status_code == 401  # a browser may read the refusal, not get past it


def test_keys_never_reach_the_logs(app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    key = new_key(app, "alice")
    wrong = "gpa_" + "w" * 43
    with caplog.at_level(logging.DEBUG):
        ask_as(client, key)
        call(client, "conversation", {"limit": "bad"}, key)
        call(client, "conversation", {}, wrong)
        call(client, "msg/history", {"convo_id": str(uuid.uuid4())}, key)
    text = caplog.text
    assert "POST /api/chat/ask 200" in text and "POST /api/chat/conversation 401" in text
    for secret in (key, wrong, hashlib.sha256(key.encode()).hexdigest(), key[4:20]):
        assert secret not in text


# -- clear with a shared ChatGPT account --------------------------------------------------------


def test_with_keys_clear_deletes_only_the_callers_chatgpt_conversations_upstream(database_url: str) -> None:
    pytest.importorskip("revChatGPT")
    from fakes.chatgpt_backend import FakeChatGPTBackend

    with FakeChatGPTBackend() as backend:
        app = create_app(make_settings(
            database_url, None, llm_provider="chatgpt", chatgpt_access_token=backend.token,
            chatgpt_base_url=backend.url, upstream_read_timeout=3.0,
        ))
        client = app.test_client()
        try:
            alice, bob = new_key(app, "alice"), new_key(app, "bob")
            ask_as(client, alice, "alice one")
            ask_as(client, bob, "bob one")
            ask_as(client, bob, "bob two")
            assert len(backend.conversations) == 3
            assert ok(call(client, "clear/conversations", {}, bob)) is None
            visible = [c for c in backend.conversations.values() if c.is_visible]
            assert len(visible) == 1
            assert not [r for r in backend.requests if r.method == "PATCH" and r.path == "conversations"]
            [kept] = ok(call(client, "conversation", {}, alice))
            assert ok(call(client, "msg/history", {"convo_id": kept["id"]}, alice))["title"]
            assert ok(call(client, "conversation", {}, bob)) == []
        finally:
            app.services.close()  # its background work too (answer leases, titles)
