"""Prometheus metrics: what the service counts, and how `/metrics` reads them.

One `Metrics` per app. In a single process (tests, waitress) it has its own registry.
Under gunicorn the workers are forked processes: `prepare_multiprocess` (called by
`serve` before the app is built) points prometheus-client at a shared directory, each
worker writes its values there, and `/metrics` adds up every worker's files.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


def prepare_multiprocess(directory: Path | None) -> Path:
    """Make every metric created from now on live in files that forked workers share.

    `directory` is cleared of metric files (`*.db`) first; without one, a new temporary
    directory is used and removed when this process (not a forked worker) exits.
    prometheus-client picks its value store when it is imported (from
    `PROMETHEUS_MULTIPROC_DIR`), which here happens before `serve` runs, so the store is
    chosen again once the variable is set.
    """
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="gpt-api-metrics-"))
        atexit.register(_remove_in_process, directory, os.getpid())
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):  # a previous run's values (nothing else is touched)
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.get_value_class()
    return directory


def _remove_in_process(directory: Path, pid: int) -> None:
    if os.getpid() == pid:  # workers inherit exit handlers; only the server removes it
        shutil.rmtree(directory, ignore_errors=True)


def mark_process_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (open streams); its counters keep counting."""
    multiprocess.mark_process_dead(pid)


class Metrics:
    """The service's instruments. Label values are bounded: routes are URL rules, not paths."""

    def __init__(self) -> None:
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        # In multiprocess mode values live in files, not in a registry.
        registry = None if self.multiprocess else CollectorRegistry()
        self._registry = registry
        self.requests = Counter(
            "gpt_api_http_requests",
            "HTTP requests answered, by route (URL rule), method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "gpt_api_http_request_duration_seconds",
            "Time to the response headers, by route and method.",
            ["route", "method"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self.upstream_first_token_seconds = Histogram(
            "gpt_api_upstream_first_token_seconds",
            "Time from calling the upstream to its first piece of answer, by provider.",
            ["provider"],
            buckets=UPSTREAM_BUCKETS,
            registry=registry,
        )
        self.upstream_seconds = Histogram(
            "gpt_api_upstream_duration_seconds",
            "Time spent waiting on the upstream for a whole answer, by provider.",
            ["provider"],
            buckets=UPSTREAM_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "gpt_api_upstream_errors",
            "Upstream calls that failed, by provider and error code; with the upstream's refusals "
            "that /v1/chat/completions passes on (by their kind).",
            ["provider", "code"],
            registry=registry,
        )
        self.open_streams = Gauge(
            "gpt_api_open_streams",
            "Streamed answers (SSE responses) currently open.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.tokens = Counter(
            "gpt_api_tokens",
            "Tokens of answered requests, by provider and kind: prompt (in) or completion (out).",
            ["provider", "kind"],
            registry=registry,
        )
        self.upstream_requests = Counter(
            "gpt_api_upstream_requests",
            "Requests sent to each configured upstream (UPSTREAMS), probes included.",
            ["upstream"],
            registry=registry,
        )
        self.upstream_failures = Counter(
            "gpt_api_upstream_failures",
            "Requests an upstream (UPSTREAMS) failed, before or after its first token, by error code.",
            ["upstream", "code"],
            registry=registry,
        )
        self.upstream_fallbacks = Counter(
            "gpt_api_upstream_fallbacks",
            "Requests passed over an upstream (UPSTREAMS) to the next: it failed before its first "
            "token (reason failed) or its circuit was open (reason circuit_open).",
            ["upstream", "reason"],
            registry=registry,
        )
        self.upstream_circuit_open = Gauge(
            "gpt_api_upstream_circuit_open",
            "1 while an upstream's circuit breaker is open (it is skipped, or probed), else 0; "
            "the highest of the workers.",
            ["upstream"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.context_truncations = Counter(
            "gpt_api_context_truncations",
            "Requests whose context was shortened to fit the model's window, by strategy.",
            ["strategy"],
            registry=registry,
        )
        self.context_messages_left_out = Counter(
            "gpt_api_context_messages_left_out",
            "Messages left out of requests' contexts (dropped, or summarised), by strategy.",
            ["strategy"],
            registry=registry,
        )
        self.titles_dropped = Counter(
            "gpt_api_titles_dropped",
            "Conversation titles not generated because answers kept the upstream busy, by reason.",
            ["reason"],
            registry=registry,
        )
        self.context_summaries = Counter(
            "gpt_api_context_summaries",
            "Summaries of left-out context (CONTEXT_STRATEGY=summarize): made, reused or failed.",
            ["outcome"],
            registry=registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route, method).observe(seconds)

    def observe_tokens(self, provider: str, prompt: int | None, completion: int | None) -> None:
        if prompt:
            self.tokens.labels(provider, "prompt").inc(prompt)
        if completion:
            self.tokens.labels(provider, "completion").inc(completion)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes, summed over all workers in multiprocess mode."""
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        assert self._registry is not None
        return generate_latest(self._registry)
