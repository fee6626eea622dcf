"""The machine's yardstick for the asks phase: a lean server doing the service's storage
work per ask and nothing else (the "lean references" of issue 16, kept so that every run
shows them).

Per ask (`POST /` with `{"prompt": ...}`), as the service does for a new conversation:
one durable transaction that writes the conversation, its root node, its (empty) system node
and the question (one statement); the upstream asked as the service asks it (streamed, usage
included) and read to its end; one durable transaction that writes the answer and moves the
conversation's current node to it (one statement); the answer as JSON. Nothing else: no validation beyond
reading the JSON, no keys, no request log, no metrics, no answer leases, no titles, no
search indexing, no error handling. It runs as the service does: gunicorn with gevent
workers, one per CPU, psycopg2 made cooperative, each worker keeping its connections to
PostgreSQL and to the upstream open.

So its figures beside the service's say how much of a target the machine leaves to the
service at all: if the lean server misses one too, no cut in the service's own work
reaches it on this machine.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import psycopg2.extras
from sqlalchemy.engine import make_url

from bench.processes import PROJECT_ROOT, Child, passed_through, start_http_server
from fakes.net import free_port
from models.pg_wait import timed_connection

HEALTH = "/healthz"
NEW_CONVERSATION = """
    WITH conversation AS (
        INSERT INTO conversations (id, owner, title, created_at, updated_at, current_node_id)
        VALUES (%(conversation)s, '', 'New chat', %(now)s, %(now)s, %(question)s)
    )
    INSERT INTO messages (id, conversation_id, parent_id, role, content, status, created_at) VALUES
        (%(root)s, %(conversation)s, NULL, NULL, '', 'finished_successfully', %(now)s),
        (%(system)s, %(conversation)s, %(root)s, 'system', '', 'finished_successfully', %(now)s),
        (%(question)s, %(conversation)s, %(system)s, 'user', %(prompt)s, 'finished_successfully', %(now)s)
"""
PLACE_ANSWER = """
    WITH answer AS (
        INSERT INTO messages (id, conversation_id, parent_id, role, content, status, end_turn, model,
                              prompt_tokens, completion_tokens, created_at)
        VALUES (%(answer)s, %(conversation)s, %(question)s, 'assistant', %(text)s, 'finished_successfully',
                true, %(model)s, %(prompt_tokens)s, %(completion_tokens)s, %(now)s)
    )
    UPDATE conversations SET current_node_id = %(answer)s, updated_at = %(now)s WHERE id = %(conversation)s
"""


class _Kept:
    """Connections of one kind, kept open between uses; with a `limit`, at most that many at
    once (a use waits for one beyond it). One that fails is dropped."""

    def __init__(self, connect: Callable[[], Any], limit: int | None = None) -> None:
        self._connect = connect
        self._idle: list[Any] = []
        # Cooperative under gunicorn's gevent worker, which patches threading.
        self._free: AbstractContextManager[Any] = threading.BoundedSemaphore(limit) if limit else nullcontext()

    @contextmanager
    def one(self) -> Iterator[Any]:
        with self._free:
            connection = self._idle.pop() if self._idle else self._connect()
            yield connection
            self._idle.append(connection)


def _database() -> Any:
    connection = psycopg2.connect(os.environ["LEAN_DSN"], connection_factory=timed_connection(30.0))
    connection.autocommit = True  # each statement its own (durable) transaction
    return connection


_UPSTREAM = urlsplit(os.environ.get("LEAN_UPSTREAM", "http://127.0.0.1/v1"))
_MODEL = os.environ.get("LEAN_MODEL", "")
_HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {os.environ.get('LEAN_KEY', '')}"}
DATABASE_CONNECTIONS = 10
"""Per worker: the statements in flight at once, which hold a connection only while they run.
The service beside it keeps its own pool open, and PostgreSQL allows 100 connections by default."""
_databases = _Kept(_database, DATABASE_CONNECTIONS)
_upstreams = _Kept(lambda: http.client.HTTPConnection(_UPSTREAM.hostname, _UPSTREAM.port, timeout=30))
psycopg2.extras.register_uuid()


def _execute(statement: str, parameters: dict[str, Any]) -> None:
    """One statement, on a connection held for it alone (as the service holds one per unit of work)."""
    with _databases.one() as database, database.cursor() as cursor:
        cursor.execute(statement, parameters)


def _answer(prompt: str) -> tuple[str, dict[str, Any]]:
    """The upstream's streamed answer to `prompt`, read to its end: its text and its usage."""
    body = json.dumps({
        "model": _MODEL, "messages": [{"role": "user", "content": prompt}],
        "stream": True, "stream_options": {"include_usage": True},
    })
    with _upstreams.one() as upstream:
        upstream.request("POST", f"{_UPSTREAM.path}/chat/completions", body, _HEADERS)
        lines = upstream.getresponse().read().split(b"\n")
    text, usage = [], {}
    for line in lines:
        if line.startswith(b"data: {"):
            event = json.loads(line[6:])
            text += [choice["delta"].get("content") or "" for choice in event["choices"]]
            usage = event.get("usage") or usage
    return "".join(text), usage


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI application: `GET /healthz`, and an ask at any other path."""
    if environ["PATH_INFO"] == HEALTH:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    prompt = json.loads(environ["wsgi.input"].read())["prompt"]
    ids = {name: uuid.uuid4() for name in ("conversation", "root", "system", "question", "answer")}
    _execute(NEW_CONVERSATION, {**ids, "prompt": prompt, "now": datetime.now(UTC)})
    text, usage = _answer(prompt)
    _execute(PLACE_ANSWER, {
        **ids, "text": text, "model": _MODEL, "now": datetime.now(UTC),
        "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
    })
    out = json.dumps({"conversation_id": str(ids["conversation"]), "message_id": str(ids["answer"]),
                      "content": text}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]


def start(work_dir: Path, *, database_url: str, upstream_url: str, model: str, api_key: str,
          timeout: float = 60.0) -> Child:
    """The lean server on a free port of 127.0.0.1, on the service's database (its tables
    made by the service's migrations), once it answers."""
    port = free_port()
    env = {
        **passed_through(),
        "PYTHONPATH": str(PROJECT_ROOT),
        "LEAN_DSN": make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False),
        "LEAN_UPSTREAM": upstream_url, "LEAN_MODEL": model, "LEAN_KEY": api_key,
    }
    args = [
        sys.executable, "-m", "gunicorn", "--worker-class", "gevent", "--workers", str(os.cpu_count() or 1),
        "--worker-connections", "4000", "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
        "bench.lean_reference:app",
    ]
    return start_http_server("lean-reference", args, env, work_dir, cwd=PROJECT_ROOT,
                             url=f"http://127.0.0.1:{port}", health=HEALTH, timeout=timeout)
