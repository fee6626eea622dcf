"""Closed-loop HTTP load with wrk: latency percentiles and throughput at a fixed concurrency.

wrk sends each request in one write and reads with epoll, so it is no source of
delayed-ACK stalls itself; a Lua script gives it the method, the JSON body, and prints
its own results as one JSON line at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SCRIPT = """
wrk.method = os.getenv("BENCH_METHOD")
local body = os.getenv("BENCH_BODY")
if body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end
local key = os.getenv("BENCH_BEARER")
if key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
    .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    """Connection errors, timeouts and answers with status >= 400."""
    server_cpu_ms: float = float("nan")
    """CPU time the measured server spent per request (all its processes), when known."""

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def parse_result(output: str) -> LoadResult:
    """The JSON line that the Lua `done` hook printed."""
    for line in output.splitlines():
        if line.startswith("BENCH_RESULT "):
            data = json.loads(line.removeprefix("BENCH_RESULT "))
            errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
            return LoadResult(
                requests=data["requests"],
                seconds=data["duration_us"] / 1e6,
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                max_ms=data["max_us"] / 1000,
                errors=errors,
            )
    raise RuntimeError(f"wrk printed no result:\n{output[-2000:]}")


def ensure_wrk() -> str:
    """The wrk binary; installed from Debian's packages when missing and we may."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: installing it with apt-get (Debian package 'wrk')", flush=True)
        quiet = {"stdout": subprocess.DEVNULL, "check": True, "timeout": 300}
        subprocess.run(["apt-get", "update", "-qq"], **quiet)  # type: ignore[call-overload]
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], **quiet)  # type: ignore[call-overload]
        found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed: `apt-get install wrk` (or your system's package)")
    return found


class Wrk:
    """Runs wrk against 127.0.0.1 with the bench's Lua script."""

    def __init__(self, binary: str, work_dir: Path) -> None:
        self.binary = binary
        self.script = Path(tempfile.mkstemp(suffix=".lua", dir=work_dir)[1])
        self.script.write_text(SCRIPT)

    def run(
        self,
        url: str,
        *,
        connections: int,
        seconds: float,
        body: dict | None = None,
        method: str = "POST",
        bearer: str = "",
    ) -> LoadResult:
        if not url.startswith("http://127.0.0.1:"):
            raise ValueError(f"the bench only sends traffic to 127.0.0.1, not {url}")
        threads = 1 if connections == 1 else 2
        env = {
            **os.environ,
            "BENCH_METHOD": method,
            "BENCH_BODY": json.dumps(body) if body is not None else "",
            "BENCH_BEARER": bearer,
        }
        args = [
            self.binary, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--timeout", "10s", "-s", str(self.script), url,
        ]
        done = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
        return parse_result(done.stdout)
