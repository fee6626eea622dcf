"""The tests' launcher (`tests/launcher.py`) answers as a fresh `python app.py` does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests import launcher


@pytest.mark.parametrize("args", [["--help"], ["no-such-command"], ["keys", "list"]])
def test_a_fork_prints_and_exits_as_a_fresh_interpreter(args: list[str], sqlite_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": sqlite_url}
    fresh = subprocess.run(
        [sys.executable, "app.py", *args], cwd=launcher.PROJECT_ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )
    forked = launcher.run(args, env, timeout=60)
    assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the launcher forks: not on Windows")
def test_a_fork_ended_by_a_signal_is_reported_as_popen_reports_it(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}", "HOST": "127.0.0.1", "PORT": "0"}
    with tempfile.NamedTemporaryFile("w+") as output:
        server = launcher.start([], env, output, output)
        assert isinstance(server, launcher.LaunchedProcess)
        server.kill()
        assert server.wait(30) == -signal.SIGKILL
