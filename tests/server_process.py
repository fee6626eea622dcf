"""Run the real service (`python app.py`) as a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from fakes.net import free_port
from tests.launcher import PROJECT_ROOT, LaunchedProcess, start

HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
"""The tests' plain HTTP client: a new connection for each request, as with `httpx.post`,
which would also make a new client, and its TLS context (about 25 ms of CPU), each time."""


class ServerProcess:
    """`python app.py [args]` with the given environment; `url` once `start()` returns.

    `args` may instead start with "-c" to run other Python code as the server. `app.py` is
    forked from the test process's launcher (`tests/launcher.py`) unless `fresh`, or unless
    only a fresh interpreter would behave the same (other code, another directory).
    """

    def __init__(
        self, env: dict[str, str], *args: str, port: int | None = None, cwd: Path = PROJECT_ROOT,
        fresh: bool = False,
    ) -> None:
        self.cwd = cwd
        self.fresh = fresh
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CHATGPT_"))},
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WORKERS": "1",
            **env,
        }
        self.process: subprocess.Popen[str] | LaunchedProcess | None = None
        self.output = ""

    def start(self, timeout: float = 60.0) -> ServerProcess:
        # A file, not a pipe: a busy server would fill a pipe nobody reads and freeze on a log line.
        self._log = tempfile.NamedTemporaryFile(mode="w+")  # noqa: SIM115 - closed with this object
        self.process = start(list(self.args), self.env, self._log, self._log, cwd=self.cwd, fresh=self.fresh)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._collect_output()
                raise RuntimeError(f"server exited early:\n{self.output}")
            try:
                HTTP.post(f"{self.url}/api/chat/conversation", json={}, timeout=1.0)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer in {timeout}s:\n{self.output}")

    def post(self, route: str, body: Any, **kwargs: Any) -> httpx.Response:
        return HTTP.post(f"{self.url}/api/chat/{route}", json=body, timeout=30.0, **kwargs)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig`, wait for the exit, keep the output; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._collect_output()
        return self.process.returncode

    def _collect_output(self) -> None:
        """Everything the server wrote since the last collection."""
        self._log.seek(0)
        self.output += self._log.read()
        self._log.seek(0)
        self._log.truncate()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
