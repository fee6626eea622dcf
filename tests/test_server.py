"""The real server: `python app.py` serves, logs, stops cleanly, and data survives a restart."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from fakes.openai_upstream import FakeOpenAI, Reply
from tests.conftest import UPSTREAM_KEY
from tests.helpers import pending_for_search
from tests.server_process import PROJECT_ROOT, ServerProcess

pytestmark = pytest.mark.e2e  # the real server process


def server_env(database_url: str, fake_upstream: FakeOpenAI) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_BASE_URL": fake_upstream.url,
        "GENERATE_TITLES": "false",
    }


def test_data_survives_a_restart(database_url: str, fake_upstream: FakeOpenAI) -> None:
    env = server_env(database_url, fake_upstream)
    engine = create_engine(database_url)
    with ServerProcess(env) as server:
        answer = server.post("ask", {"prompt": "remember me"}).json()["response"]
        # Indexed for search in the background, with no search asking for it (migration 0012).
        deadline = time.monotonic() + 10
        while pending_for_search(engine) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pending_for_search(engine) == 0
    engine.dispose()
    with ServerProcess(env) as server:
        listed = server.post("conversation", {}).json()["response"]
        tree = server.post("msg/history", {"convo_id": answer["conversation_id"]}).json()["response"]
    assert [c["id"] for c in listed] == [answer["conversation_id"]]
    assert tree["current_node"] == answer["parent_id"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly_on_signals_and_logs_each_request(
    database_url: str, fake_upstream: FakeOpenAI, sig: signal.Signals
) -> None:
    server = ServerProcess(server_env(database_url, fake_upstream)).start()
    server.post("ask", {"prompt": "hi"})
    server.post("nope", {})
    assert server.stop(sig) == 0
    assert "POST /api/chat/ask 200" in server.output
    assert "POST /api/chat/nope 404" in server.output
    assert "Traceback" not in server.output
    assert "gunicorn" in server.output.lower()  # a production server, not Flask's


def test_in_flight_answer_finishes_on_sigterm(database_url: str, fake_upstream: FakeOpenAI) -> None:
    import threading

    fake_upstream.script(Reply(text="slow but complete", delay=1.0))
    env = server_env(database_url, fake_upstream)
    server = ServerProcess(env).start()
    result: dict = {}
    asking = threading.Thread(target=lambda: result.update(r=server.post("ask", {"prompt": "x"})))
    asking.start()
    fake_upstream.wait_for_requests(1)
    assert server.stop(signal.SIGTERM) == 0
    asking.join()
    assert result["r"].status_code == 200
    assert result["r"].json()["response"]["message"] == "slow but complete"


def test_serves_without_any_database_configured(tmp_path: Path, fake_upstream: FakeOpenAI) -> None:
    """With DATABASE_URL unset, a fresh checkout makes a SQLite file under its instance/."""
    checkout = tmp_path / "checkout"
    shutil.copytree(PROJECT_ROOT, checkout, ignore=shutil.ignore_patterns(
        ".venv", ".git", "instance", "tests", "bench", "__pycache__", ".env"))
    env = {"OPENAI_API_KEY": UPSTREAM_KEY, "OPENAI_BASE_URL": fake_upstream.url, "GENERATE_TITLES": "false"}
    server = ServerProcess(env, cwd=checkout)
    server.env.pop("DATABASE_URL", None)
    with server:
        assert server.post("ask", {"prompt": "x"}).status_code == 200
        assert len(server.post("conversation", {}).json()["response"]) == 1
    assert (checkout / "instance" / "gpt-api.sqlite3").is_file()


WAITRESS = """
from app import create_app
from serving import serve_with_waitress
from config import Settings

settings = Settings()
serve_with_waitress(create_app(settings), settings)
"""


def test_the_windows_server_serves_and_streams(database_url: str, fake_upstream: FakeOpenAI) -> None:
    """Windows runs waitress (no fork, no gevent); the same code path, on this machine."""
    with ServerProcess(server_env(database_url, fake_upstream), "-c", WAITRESS) as server:
        answer = server.post("ask", {"prompt": "hi"}).json()["response"]
        streamed = server.post("ask", {"prompt": "again", "convo_id": answer["conversation_id"], "stream": True})
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert streamed.text.endswith("data: [DONE]\n\n")
        assert len(server.post("conversation", {}).json()["response"]) == 1
