"""gunicorn's writes of a response: a whole body leaves in the same write as the headers.

Each case is served twice by gunicorn's own parser and response over a socket pair that
keeps every write whole (SOCK_SEQPACKET): by gunicorn's response class, and by the one the
service installs (`serving.send_whole_answers_in_one_write`). The bytes are the same; only
the number of writes may differ.
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Callable, Iterable

import pytest

if sys.platform == "win32":
    pytest.skip("gunicorn serves only off Windows", allow_module_level=True)

from gunicorn.config import Config
from gunicorn.http import RequestParser, wsgi

from serving import send_whole_answers_in_one_write

App = Callable[[dict, Callable], Iterable[bytes]]
BODY = b'{"response": "hello"}'


def app_sending(*pieces: bytes, sized: bool = True) -> App:
    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        headers = [("Content-Type", "application/json")]
        if sized:
            headers.append(("Content-Length", str(sum(map(len, pieces)))))
        start_response("200 OK", headers)
        return list(pieces)

    return app


def writes_of(app: App, request: bytes) -> list[bytes]:
    """What gunicorn writes answering `request` with `app`, one item per write, as its async
    workers do (`wsgi.create`, each item of the body written, then `close`)."""
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with client, server:
        client.sendall(request)
        cfg = Config()
        req = next(iter(RequestParser(cfg, server, ("127.0.0.1", 40000))))
        resp, environ = wsgi.create(req, server, ("127.0.0.1", 40000), ("127.0.0.1", 5000), cfg)
        for item in app(environ, resp.start_response):
            resp.write(item)
        resp.close()
        server.shutdown(socket.SHUT_WR)
        writes = []
        while chunk := client.recv(1 << 16):
            writes.append(chunk)
    return writes


def without_date(data: bytes) -> bytes:
    return re.sub(rb"Date: [^\r]*\r\n", b"", data)


@pytest.fixture
def gunicorns_response(monkeypatch: pytest.MonkeyPatch) -> type:
    monkeypatch.setattr(wsgi, "Response", wsgi.Response)  # put back after the test
    return wsgi.Response  # type: ignore[no-any-return]


POST = b"POST /api/chat/ask HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
HEAD = b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("app", "request_bytes", "writes_before", "writes_after"),
    [
        (app_sending(BODY), POST, 2, 1),  # every JSON answer: headers and body in one write
        (app_sending(b""), POST, 1, 1),  # an empty body: the headers alone, as before
        (app_sending(BODY[:5], BODY[5:]), POST, 3, 3),  # a body in pieces: as before
        (app_sending(BODY, sized=False), POST, 3, 3),  # chunked (a stream): as before
        (app_sending(BODY), HEAD, 1, 1),  # no body on HEAD
    ],
    ids=["whole", "empty", "pieces", "chunked", "head"],
)
def test_a_whole_body_leaves_with_the_headers_and_nothing_else_changes(
    gunicorns_response: type, app: App, request_bytes: bytes, writes_before: int, writes_after: int
) -> None:
    before = writes_of(app, request_bytes)
    send_whole_answers_in_one_write()
    assert wsgi.Response is not gunicorns_response  # what the workers' `wsgi.create` now builds
    after = writes_of(app, request_bytes)

    assert without_date(b"".join(after)) == without_date(b"".join(before))
    assert (len(before), len(after)) == (writes_before, writes_after)
    if writes_after < writes_before:
        head, _, body = after[0].partition(b"\r\n\r\n")
        assert body == BODY and b"Content-Length: %d" % len(BODY) in head
