"""One real instance with two gunicorn workers: both agree on keys and limits at once.

Each worker is its own process with its own memory, so anything one worker keeps to
itself (a cached key list, a rate-limit counter, the answers in flight) lets a client
that happens to reach the other worker past it. The tests find out which worker serves
each of their connections (from /proc: the worker process that holds the accepted
socket) and send every step to each worker, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from cli import cli
from tests.conftest import UPSTREAM_KEY
from fakes.openai_upstream import FakeOpenAI, Reply
from tests.helpers import wait_until
from tests.server_process import ServerProcess

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")

RATE_LIMIT = 5


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue(f"{request.param}_url")
    engine = create_engine(url)
    with engine.begin() as connection:
        if engine.dialect.has_table(connection, "api_keys"):
            connection.execute(text("DELETE FROM api_keys"))
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def server(database: str, fake_upstream_server: FakeOpenAI) -> Iterator[ServerProcess]:
    env = {
        "DATABASE_URL": database,
        "WORKERS": "2",
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_BASE_URL": fake_upstream_server.url,
        "GENERATE_TITLES": "false",
        "RATE_LIMIT": f"{RATE_LIMIT}/minute",
        "MAX_STREAMS_PER_KEY": "1",
    }
    with ServerProcess(env) as started:
        yield started
    assert "Traceback" not in started.output, started.output


def keys_command(database: str, *args: str) -> str:
    """`python app.py keys ...` against the server's database (in this process: quicker)."""
    result = CliRunner().invoke(cli, ["keys", *args], env={"DATABASE_URL": database})
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


# -- which worker serves a connection --------------------------------------------------------


def worker_pids(server: ServerProcess) -> set[int]:
    assert server.process is not None
    master = server.process.pid
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                pids.add(int(entry.name))
    return pids


def socket_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server's end of the TCP connection from `client_port`."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
            if local == server_port and remote == client_port:
                return fields[9]
    return None


def serving_pid(server: ServerProcess, connection: http.client.HTTPConnection) -> int | None:
    assert connection.sock is not None
    inode = socket_inode(server.port, connection.sock.getsockname()[1])
    for pid in worker_pids(server):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def connection_per_worker(server: ServerProcess) -> dict[int, http.client.HTTPConnection]:
    """A kept-alive connection to each worker (the kernel picks the worker that accepts)."""
    workers = wait_until(lambda: len(pids := worker_pids(server)) == 2 and pids, timeout=20)
    found: dict[int, http.client.HTTPConnection] = {}
    for _ in range(200):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("GET", "/healthz")  # once answered, the worker has accepted it
        connection.getresponse().read()
        pid = serving_pid(server, connection)
        if pid in workers and pid not in found:
            found[pid] = connection
        else:
            connection.close()
        if len(found) == len(workers):
            return found
    raise AssertionError(f"could not reach every worker: {sorted(found)} of {sorted(workers)}")


def call(
    connection: http.client.HTTPConnection, route: str, body: Any = None, key: str | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    connection.request("POST", f"/api/chat/{route}", json.dumps({} if body is None else body), headers)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def statuses(route: str, key: str | None = None, body: Any = None, *, server: ServerProcess) -> list[int]:
    """The status of the same request sent to each worker, each on a fresh connection."""
    connections = connection_per_worker(server)
    try:
        return [call(connection, route, body, key)[0] for connection in connections.values()]
    finally:
        for connection in connections.values():
            connection.close()


# -- keys ------------------------------------------------------------------------------------


def test_a_key_made_or_revoked_counts_on_the_next_request_in_every_worker(
    server: ServerProcess, database: str
) -> None:
    assert statuses("conversation", server=server) == [200, 200]  # no key yet: open
    alice = keys_command(database, "create", "alice")
    assert statuses("conversation", server=server) == [401, 401]  # the first key closes it
    assert statuses("conversation", alice, server=server) == [200, 200]
    bob = keys_command(database, "create", "bob")
    assert statuses("conversation", bob, server=server) == [200, 200]  # a new key, at once
    keys_command(database, "revoke", "alice")
    assert statuses("conversation", alice, server=server) == [401, 401]  # refused, at once
    assert statuses("conversation", bob, server=server) == [200, 200]


# -- limits ------------------------------------------------------------------------------------


def test_the_rate_limit_is_shared_by_the_workers(server: ServerProcess, database: str) -> None:
    key = keys_command(database, "create", "carol")
    connections = list(connection_per_worker(server).values())
    try:
        answered = [call(connections[n % 2], "conversation", key=key)[0] for n in range(8)]
    finally:
        for connection in connections:
            connection.close()
    assert answered == [200] * RATE_LIMIT + [429] * (8 - RATE_LIMIT)


def open_stream(connection: http.client.HTTPConnection, key: str) -> http.client.HTTPResponse:
    """An answer that has begun streaming: its slot is taken."""
    body = json.dumps({"prompt": "long", "stream": True})
    connection.request("POST", "/api/chat/ask", body,
                       {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    response = connection.getresponse()
    assert response.status == 200
    return response


def test_answers_in_flight_are_capped_across_workers(
    server: ServerProcess, database: str, fake_upstream: FakeOpenAI
) -> None:
    key = keys_command(database, "create", "dave")
    first, second = connection_per_worker(server).values()
    fake_upstream.script(Reply(text="slow answer here", chunks=["slow ", "answer ", "here"], chunk_delay=0.3))
    streaming = open_stream(first, key)
    status, refused = call(second, "ask", {"prompt": "meanwhile"}, key)
    assert status == 429 and refused["error"]["code"] == "rate_limited"
    assert b"[DONE]" in streaming.read()  # the answer ends: the slot comes back
    status, answer = call(second, "ask", {"prompt": "now"}, key)
    assert status == 200 and answer["response"]["message"] == "Echo: now"
    first.close()
    second.close()


def test_a_worker_killed_mid_answer_gives_its_slots_back(
    server: ServerProcess, database: str, fake_upstream: FakeOpenAI
) -> None:
    key = keys_command(database, "create", "erin")
    connections = connection_per_worker(server)
    doomed, survivor = list(connections)
    fake_upstream.script(Reply(text="never finished", chunks=["never ", "finished"], chunk_delay=10))
    open_stream(connections[doomed], key)
    assert call(connections[survivor], "ask", {"prompt": "meanwhile"}, key)[0] == 429
    os.kill(doomed, signal.SIGKILL)
    wait_until(lambda: doomed not in worker_pids(server), timeout=10)
    status, answer = call(connections[survivor], "ask", {"prompt": "after the crash"}, key)
    assert status == 200, answer
    assert answer["response"]["message"] == "Echo: after the crash"
    for connection in connections.values():
        connection.close()
