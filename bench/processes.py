"""The bench's child processes: the fake upstream and the service, each ended whole.

Every child runs in its own session (process group), so stopping it reaches the
gunicorn master and its workers, and a Ctrl-C in the terminal reaches only the bench,
whose `finally` blocks then stop the children in order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "TMPDIR")


def passed_through(inherited: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`PATH`, the locale and `TMPDIR` of `inherited`, and nothing else: what a server measured
    beside ours gets of the developer's shell (no `DATABASE_URL`, `OPENAI_API_KEY`, ...)."""
    return {name: inherited[name] for name in PASSED_THROUGH if name in inherited}


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of `pids`, added up (VmRSS from /proc/PID/status)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time of `pids`, added up (from /proc/PID/stat)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Child:
    """A started process, its log file, and how to end it."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""
    _stopped: bool = field(default=False, repr=False)

    def pids(self) -> list[int]:
        return descendants(self.process.pid) if self.process.poll() is None else []

    def rss_bytes(self) -> int:
        return rss_bytes(self.pids())

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the process group, then SIGKILL if it is still there after `timeout`."""
        if self._stopped:
            return
        self._stopped = True
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # workers that outlived their master (should not happen) are in the same group
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path, cwd: Path = PROJECT_ROOT) -> Child:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Child(name, process, log_path)


def start_fake_upstream(
    name: str,
    log_dir: Path,
    *,
    latency_ms: float,
    chunks: int,
    chunk_delay_ms: float,
    text: str,
    timeout: float = 30.0,
) -> Child:
    """`python -m fakes.openai_upstream`, once it prints `READY <url>`."""
    args = [
        sys.executable, "-m", "fakes.openai_upstream", "--port", "0", "--text", text,
        "--latency-ms", str(latency_ms), "--chunks", str(chunks), "--chunk-delay-ms", str(chunk_delay_ms),
    ]
    child = _spawn(name, args, {**os.environ, "PYTHONUNBUFFERED": "1"}, log_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in child.log_path.read_text(errors="replace").splitlines():
            if line.startswith("READY "):
                child.url = line.split()[1]
                return child
        if child.process.poll() is not None:
            break
        time.sleep(0.05)
    child.stop()
    raise RuntimeError(f"{name} did not start:\n{child.log_tail()}")


def start_service(name: str, log_dir: Path, env: dict[str, str], *, timeout: float = 60.0) -> Child:
    """`python app.py` with `env` on top of ours, once `GET /healthz` answers."""
    port = int(env["PORT"])
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CHATGPT_"))}
    full_env.update(env)
    child = _spawn(name, [sys.executable, "app.py"], full_env, log_dir)
    child.url = f"http://127.0.0.1:{port}"
    return wait_healthy(child, "/healthz", timeout)


def start_http_server(
    name: str, args: list[str], env: dict[str, str], log_dir: Path, *, cwd: Path, url: str, health: str,
    timeout: float,
) -> Child:
    """Any other server the bench measures: `args` with exactly `env`, in `cwd`, once `health` answers."""
    child = _spawn(name, args, env, log_dir, cwd=cwd)
    child.url = url
    return wait_healthy(child, health, timeout)


def wait_healthy(child: Child, health: str, timeout: float) -> Child:
    """`child` once `GET <its url><health>` answers 200; stopped, with its log, if it does not in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{child.url}{health}", timeout=2) as response:
                if response.status == 200:
                    return child
        except OSError:
            time.sleep(0.1)
    child.stop()
    raise RuntimeError(f"{child.name} did not start:\n{child.log_tail()}")


def wait_quiet(child: Child, *, window: float = 0.5, busy: float = 0.05, timeout: float = 15.0) -> bool:
    """Wait until `child` used under `busy` of one CPU over `window` seconds, that is its
    background work (titles) is done; False if it was still busy after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = child.cpu_seconds()
        time.sleep(window)
        if child.cpu_seconds() - before < busy * window:
            return True
    return False
