"""The chat page's files as the server sends them: where, how, under which policy, and the switch."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from flask.testing import FlaskClient

from app import create_app
from tests.conftest import make_settings
from tests.helpers import error_of

WEB = Path(__file__).resolve().parent.parent / "web"


def page_files(client: FlaskClient) -> list[str]:
    """Every file the page loads: from index.html, and the modules those import."""
    html = client.get("/").get_data(as_text=True)
    found = re.findall(r'(?:src|href)="(/web/[^"]+)"', html)
    pending = [path for path in found if path.endswith(".js")]
    while pending:
        module = pending.pop()
        source = client.get(module).get_data(as_text=True)
        folder = module.rsplit("/", 1)[0]
        for relative in re.findall(r'^import .* from "(\.[^"]+)";$', source, re.MULTILINE):
            path = str(Path(folder, relative)).replace("\\", "/")
            path = re.sub(r"[^/]+/\.\./", "", path)
            if path not in found:
                found.append(path)
                pending.append(path)
    return found


def test_the_page_and_every_file_it_loads_are_served(client: FlaskClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    files = page_files(client)
    assert {
        "/web/app.js",
        "/web/app.css",
        "/web/vendor/marked/marked.esm.js",
        "/web/vendor/dompurify/purify.min.js",
    } <= set(files)
    for path in files:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.mimetype in ("application/javascript", "text/css"), path


def test_the_page_has_a_strict_policy_and_keeps_the_other_security_headers(client: FlaskClient) -> None:
    for path in ("/", "/web/app.js"):
        headers = client.get(path).headers
        policy = headers["Content-Security-Policy"]
        assert (
            "script-src 'self';" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy
        )
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
    html = (WEB / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)  # no inline script
    assert not re.search(r"\son\w+=", html) and "style=" not in html


def test_files_go_gzipped_when_accepted_and_revalidate_by_etag(client: FlaskClient) -> None:
    raw = client.get("/web/app.js", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in raw.headers
    assert raw.data == (WEB / "app.js").read_bytes()
    packed = client.get("/web/app.js", headers={"Accept-Encoding": "gzip, br"})
    assert packed.headers["Content-Encoding"] == "gzip" and packed.headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(packed.data) == raw.data
    assert packed.headers["Cache-Control"] == "no-cache"
    again = client.get(
        "/web/app.js", headers={"Accept-Encoding": "gzip", "If-None-Match": packed.headers["ETag"]}
    )
    assert again.status_code == 304 and again.data == b""


def test_only_files_under_web_are_served(client: FlaskClient) -> None:
    for path in (
        "/web/../config.py",
        "/web/%2e%2e/config.py",
        "/web/nope.js",
        "/web/vendor",
        "/web/..%2fapp.py",
    ):
        error_of(client.get(path), 404)


def test_every_vendored_library_keeps_its_licence() -> None:
    for library in (WEB / "vendor").iterdir():
        if library.is_dir():
            assert list(library.glob("LICENSE*")), library.name


def test_web_ui_false_turns_the_page_off_and_leaves_the_api(database_url: str) -> None:
    app = create_app(make_settings(database_url, None, web_ui=False))
    try:
        client = app.test_client()
        assert error_of(client.get("/"), 404)["code"] == "not_found"
        error_of(client.get("/web/app.js"), 404)
        assert client.post("/api/chat/conversation", json={}).status_code == 200
    finally:
        app.services.close()
