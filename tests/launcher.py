"""`python app.py ARGS` started as a fork of a process that has imported the app already.

A fresh interpreter spends most of a server start or a command importing the app and
loading the tokenizer (about 1.5 s of CPU here), and the suite starts some sixty of them.
One launcher per test process pays that once; each start is then a fork of it that runs
`app.py` as `__main__`, as `python app.py` does after its imports: the same arguments,
environment, working directory, standard streams, signals and exit status (negative for a
signal, as `subprocess` reports it). A test about the interpreter's start itself (importing
the project from elsewhere, what the first lines of output say) starts a fresh `python`.

Run as `python -m tests.launcher`; it reads one JSON request per line on stdin and answers
each on stdout. `start` and `run` are the test side.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Launcher:
    """The test side: one launcher process, started on first use, for this test process."""

    _lock = threading.Lock()
    _process: subprocess.Popen[str] | None = None

    @classmethod
    def ask(cls, **request: Any) -> dict[str, Any]:
        with cls._lock:
            if cls._process is None or cls._process.poll() is not None:
                cls._process = subprocess.Popen(
                    [sys.executable, "-m", "tests.launcher"],
                    cwd=PROJECT_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                )
            assert cls._process.stdin is not None and cls._process.stdout is not None
            cls._process.stdin.write(json.dumps(request) + "\n")
            cls._process.stdin.flush()
            answer = cls._process.stdout.readline()
        if not answer:
            raise RuntimeError("the launcher exited")
        return json.loads(answer)


class LaunchedProcess:
    """What a test needs of `subprocess.Popen`, for a process the launcher forked."""

    def __init__(self, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = Launcher.ask(op="wait", pid=self.pid, timeout=0)["status"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = Launcher.ask(op="wait", pid=self.pid, timeout=timeout)["status"]
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def launchable(env: dict[str, str], cwd: Path) -> bool:
    """Whether a fork behaves as a fresh `python app.py` would: same code, same interpreter
    options (no PYTHON* variable that differs from the launcher's own). Windows has no fork."""
    if not hasattr(os, "fork") or cwd.resolve() != PROJECT_ROOT:
        return False
    return all(env.get(name) == os.environ.get(name) for name in {*env, *os.environ} if name.startswith("PYTHON"))


def start(
    args: list[str], env: dict[str, str], stdout: IO[str], stderr: IO[str], *, cwd: Path = PROJECT_ROOT,
    fresh: bool = False,
) -> subprocess.Popen[str] | LaunchedProcess:
    """`python app.py *args` (or, when `args` start with "-c", other code) with `env`, its
    output appended to the named files `stdout` and `stderr` (they may be one), stdin empty:
    forked from the launcher unless `fresh` or only a fresh interpreter would behave the same."""
    if fresh or args[:1] == ["-c"] or not launchable(env, cwd):
        return subprocess.Popen(
            [sys.executable, *(args if args[:1] == ["-c"] else ["app.py", *args])],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, text=True,
        )
    answer = Launcher.ask(op="start", args=args, env=env, stdout=stdout.name, stderr=stderr.name)
    return LaunchedProcess(answer["pid"], ["app.py", *args])


def run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Like `subprocess.run([python, "app.py", *args], env=env, capture_output=True,
    text=True, timeout=timeout)` from the project's root, through `start`."""
    with tempfile.NamedTemporaryFile("w+") as out, tempfile.NamedTemporaryFile("w+") as err:
        process = start(args, env, out, err)
        try:
            status = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(["app.py", *args], status, out.read(), err.read())


# The launcher's side.


def _serve() -> None:
    """Import what `python app.py` imports, in its order, then answer requests until EOF."""
    from gevent import monkey

    monkey.patch_all()
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()
    import app  # noqa: F401
    import cli  # noqa: F401
    from services import tokens

    tokens.load()
    # gevent patched these; the launcher must never start gevent's loop, which its forks
    # would inherit.
    fork, waitpid, sleep = (monkey.get_original(module, name) for module, name in
                            (("os", "fork"), ("os", "waitpid"), ("time", "sleep")))
    requests, answers = sys.stdin, sys.stdout
    running: set[int] = set()
    for line in requests:
        request = json.loads(line)
        if request["op"] == "start":
            answers.flush()
            pid = fork()
            if pid == 0:
                _run_app(request)
            running.add(pid)
            answer: dict[str, Any] = {"pid": pid}
        else:
            deadline = None if request["timeout"] is None else time.monotonic() + request["timeout"]
            while True:
                done, status = waitpid(request["pid"], os.WNOHANG)
                if done or (deadline is not None and time.monotonic() >= deadline):
                    break
                sleep(0.01)
            if done:
                running.discard(done)
            answer = {"status": os.waitstatus_to_exitcode(status) if done else None}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    for pid in running:  # the test process is gone: so are its servers (never a reaped pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run_app(request: dict[str, Any]) -> None:
    """In the fork: become `python app.py *args` and never return."""
    code = 1
    try:
        os.chdir(PROJECT_ROOT)
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in (
            (0, os.devnull, os.O_RDONLY),
            (1, request["stdout"], os.O_WRONLY | os.O_APPEND | os.O_CREAT),
            (2, request["stderr"], os.O_WRONLY | os.O_APPEND | os.O_CREAT),
        ):
            opened = os.open(path, flags, 0o600)
            os.dup2(opened, fd)
            os.close(opened)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - what the launcher had read ahead is not the app's
        sys.argv = ["app.py", *request["args"]]
        try:
            runpy.run_path("app.py", run_name="__main__")
            code = 0
        except SystemExit as exit_:
            if exit_.code is None or isinstance(exit_.code, int):
                code = exit_.code or 0
            else:
                print(exit_.code, file=sys.stderr)
        except KeyboardInterrupt:
            code = -signal.SIGINT
        except BaseException:  # noqa: BLE001 - printed as the interpreter would
            traceback.print_exc()
        threading._shutdown()  # type: ignore[attr-defined]  # as the interpreter does on exit
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        if code < 0:  # ended by a signal, as a fresh interpreter is by an unhandled SIGINT
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code & 0xFF)


if __name__ == "__main__":
    _serve()
