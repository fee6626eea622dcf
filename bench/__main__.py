"""`uv run python -m bench`: the service's overhead, measured on this machine in one run.

Starts a fake OpenAI upstream with a fixed latency, makes a PostgreSQL database, runs
`python app.py` on it (titles on, as a user runs it; once more with titles off), drives
it with wrk and with an asyncio client holding SSE streams open, prints every figure (the
median of three interleaved runs) beside its floor and its target, the titles-off asks
beside a lean reference doing the same storage and nothing else (what the machine allows),
optionally beside LiteLLM's proxy under the same load (`--litellm PATH`), and cleans up
(processes and database) however it ends. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from sqlalchemy.engine import make_url

from bench import lean_reference, litellm_proxy
from bench.context import measure as measure_budget
from bench.loadgen import LoadResult, Wrk, ensure_wrk
from bench.processes import Child, start_fake_upstream, start_service, wait_quiet
from bench.report import Row, Section, Target, beside, render, summary
from bench.runs import REPEATS, Runs, interleaved, median, p50, p99
from bench.search import search_sections
from bench.seed import create_database, drop_database, list_cursor, seed, titled
from bench.streams import StreamRun, run_streams
from fakes.net import free_port, raise_fd_limit

MODEL = "gpt-4o-mini"
PROMPT = "Hello there, how are you today?"
ANSWER = " ".join(["The quick brown fox jumps over the lazy dog."] * 6)
"""54 words: split by the fake upstream into as many stream chunks as asked, up to 54."""
UPSTREAM_KEY = "sk-bench"
STREAM_CHUNKS = 8


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-url", default=os.environ.get(
        "BENCH_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"),
        help="server to make the bench database on (default: %(default)s)")
    parser.add_argument("--latency-ms", type=float, default=60.0, help="upstream latency (default: 60)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help=f"length of each wrk run; every figure is the median of {REPEATS} (default: 5)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="wrk connections for the ask latency and throughput (default: 50)")
    parser.add_argument("--throughput-connections", type=int, default=128,
                        help="wrk connections for a second ask throughput, with more in flight (default: 128)")
    parser.add_argument("--streams", type=int, default=2000, help="SSE streams to hold open (default: 2000)")
    parser.add_argument("--stream-rate", type=float, default=50.0, help="streams opened per second (default: 50)")
    parser.add_argument("--conversations", type=int, default=100_000, help="conversations stored (default: 100000)")
    parser.add_argument("--history-messages", type=int, default=1000, help="messages in the long one (default: 1000)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the service, e.g. --env WORKERS=1 (repeatable)")
    parser.add_argument("--search-messages", type=int, default=1_000_000,
                        help="messages seeded for the search phase, ten per conversation (default: 1000000)")
    parser.add_argument("--only", default="budget,reading,asks,streams,search",
                        help="comma-separated phases to run: budget, reading, asks, streams, search (default: all)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs and print where")
    parser.add_argument("--litellm", type=litellm_proxy.executable, metavar="PATH",
                        help="a `litellm` executable (from a throwaway virtualenv): run its proxy under the same "
                             "asks load and print its figures beside ours")
    return parser.parse_args(argv)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def upstream_body(prompt: str) -> dict:
    """What the service sends upstream for a new conversation (empty system prompt)."""
    return {
        "messages": [{"role": "user", "content": prompt}],
        "model": MODEL,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def service_env(database_url: str, upstream_url: str, extra: list[str], *, titles: bool) -> dict[str, str]:
    """The service's settings: defaults, on a free port, the bench database and upstream; then
    `extra` (`--env NAME=VALUE`); titles on or off as asked, whatever `extra` says."""
    env = {
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "DATABASE_URL": database_url,
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_BASE_URL": upstream_url,
        "OPENAI_MODEL": MODEL,
        # What a developer's .env may have set that would change what is measured.
        "LLM_PROVIDER": "openai",
        "SYSTEM_PROMPT": "",
        "RATE_LIMIT": "",
        "MAX_STREAMS_PER_KEY": "0",
        "REDIS_URL": "",
    }
    for item in extra:
        key, _, value = item.partition("=")
        env[key] = value
    env["GENERATE_TITLES"] = "true" if titles else "false"
    return env


def completion_body(prompt: str) -> dict:
    """A client's non-streamed Chat Completions request: what LiteLLM gets, and sends on as it is."""
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}


class Bench:
    def __init__(self, args: argparse.Namespace, work_dir: Path, stack: ExitStack) -> None:
        self.args = args
        self.work_dir = work_dir
        self.stack = stack
        self.wrk = Wrk(ensure_wrk(), work_dir) if {"reading", "asks"} & set(args.only.split(",")) else None
        self.database_url = ""
        self.sizing = "?"
        """The service's own account of its workers and pools, from its log."""

    # -- processes -----------------------------------------------------------

    def upstream(self, name: str, *, chunks: int, chunk_delay_ms: float) -> Child:
        log(f"starting {name} (latency {self.args.latency_ms:g} ms, {chunks} chunks, {chunk_delay_ms:g} ms apart)")
        child = start_fake_upstream(
            name, self.work_dir, latency_ms=self.args.latency_ms, chunks=chunks, chunk_delay_ms=chunk_delay_ms,
            text=ANSWER,
        )
        self.stack.callback(child.stop)
        return child

    def service(self, name: str, upstream: Child, *, titles: bool = True) -> Child:
        """`python app.py` as a user runs it (`service_env`)."""
        env = service_env(self.database_url, upstream.url, self.args.env, titles=titles)
        log(f"starting the service ({name}, titles {'on' if titles else 'off'})")
        child = start_service(name, self.work_dir, env)
        self.stack.callback(child.stop)
        sizing = re.findall(r"\d+ workers x .*", child.log_tail(200))
        if sizing:
            self.sizing = sizing[-1]
        return child

    def database(self) -> None:
        name = f"gpt_api_bench_{uuid.uuid4().hex[:10]}"
        log(f"creating database {name}")
        self.database_url = create_database(self.args.postgres_url, name)

        def drop() -> None:
            log(f"dropping database {name}")
            drop_database(self.args.postgres_url, name)

        self.stack.callback(drop)

    # -- measuring -----------------------------------------------------------

    def load(self, what: str, server: Child, url: str, connections: int, body: dict | None = None,
             method: str = "POST", seconds: float | None = None, settle: bool = False) -> LoadResult:
        """One wrk run. `settle`: wait for the server's work left over from the run (titles) to end,
        and count its CPU, before the next run starts."""
        seconds = seconds or self.args.seconds
        assert self.wrk is not None
        cpu_before = server.cpu_seconds()
        result = self.wrk.run(url, connections=connections, seconds=seconds, body=body, method=method)
        if settle and not wait_quiet(server):
            log(f"{server.name} is still busy after the run: its leftover work spills into the next one")
        cpu_ms = (server.cpu_seconds() - cpu_before) * 1000 / max(result.requests, 1)
        result = replace(result, server_cpu_ms=cpu_ms)
        log(f"{what} c={connections}: p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
            f"{result.per_second:.0f}/s, {result.errors} errors, {server.name} CPU {cpu_ms:.2f} ms/request")
        return result

    def streams(self, what: str, url: str, body: dict | None, *, count: int | None = None,
                method: str = "POST", expect_events: bool = True, first_event_only: bool = False,
                sample: Callable[[], int] | None = None) -> StreamRun:
        run = asyncio.run(run_streams(
            url, count=count or self.args.streams, rate=self.args.stream_rate, body=body, method=method,
            expect_events=expect_events, first_event_only=first_event_only, sample=sample,
        ))
        log(f"{what}: {len(run.ttfbs)} answered, {run.peak_open} open at once, "
            f"TTFB p50 {run.percentile(50) * 1000:.1f} ms p99 {run.percentile(99) * 1000:.1f} ms, "
            f"{run.completed} completed, {run.failed} failed")
        errors = Counter(o.error for o in run.outcomes if o.error)
        for error, times in errors.most_common(3):
            log(f"  {times} x {error}")
        return run

    # -- the run -------------------------------------------------------------

    def run(self, phases: list[str]) -> list[Section]:
        sections = []
        if "budget" in phases:
            sections.append(self.budget())
        if "reading" in phases or "asks" in phases:
            self.database()
            upstream = self.upstream("upstream-ask", chunks=3, chunk_delay_ms=0)
            service = self.service("service-ask", upstream)
            self.load("warm-up", service, f"{service.url}/healthz", self.args.concurrency, method="GET", seconds=2)
            if "reading" in phases:
                sections.append(self.reading(service))
            if "asks" in phases:
                litellm = self.litellm(upstream) if self.args.litellm else None
                sections += self.asks(service, upstream, litellm)
                if litellm is not None:
                    litellm.stop()
                service.stop()
                service = self.service("service-ask-titles-off", upstream, titles=False)
                sections += self.asks_titles_off(service, upstream)
            service.stop()
            upstream.stop()
        if "streams" in phases:
            sections.append(self.streams_phase())
        if "search" in phases:
            sections += self.search_phase()
        return sections

    def litellm(self, upstream: Child) -> Child:
        """LiteLLM's proxy on the same fake upstream (bench/litellm_proxy.py)."""
        path = self.args.litellm
        log(f"starting LiteLLM's proxy {litellm_proxy.version(path) or '(version unknown)'} from {path}")
        child = litellm_proxy.start(path, self.work_dir, model=MODEL, upstream_url=upstream.url, api_key=UPSTREAM_KEY)
        self.stack.callback(child.stop)
        return child

    def budget(self) -> Section:
        """Fitting a long path into its model's window, in this process (bench/context.py)."""
        messages = self.args.history_messages
        log(f"fitting a {messages:,}-message path into the context budget, {REPEATS} times")
        runs = [measure_budget(messages) for _ in range(REPEATS)]
        for run in runs:
            log(f"{run.path_tokens:,} tokens; cold {run.cold_ms:.1f} ms, whole p50 {run.fits_p50_ms:.2f} ms, "
                f"truncated p50 {run.truncated_p50_ms:.2f} ms ({run.left_out} left out)")

        def median_of(field: str) -> float:
            return median(getattr(run, field) for run in runs)

        first = runs[0]
        return Section(f"context budget ({messages:,}-message path of {first.path_tokens:,} tokens, in process, "
                       f"counts cached; median of {REPEATS} runs; target on p50)", [
            Row("path fits the window (gpt-4.1), p50", median_of("fits_p50_ms"), "ms", target=Target(2)),
            Row("path fits the window (gpt-4.1), p99", median_of("fits_p99_ms"), "ms"),
            Row("path over the window (gpt-4, 8,192), p50", median_of("truncated_p50_ms"), "ms", target=Target(2),
                note=f"({first.left_out} messages left out)"),
            Row("path over the window (gpt-4, 8,192), p99", median_of("truncated_p99_ms"), "ms"),
            Row("first fit, every message tokenized", median_of("cold_ms"), "ms"),
        ])

    def search_phase(self) -> list[Section]:
        """Full-text search on a database of its own (it starts before migration 0005)."""
        name = f"gpt_api_bench_search_{uuid.uuid4().hex[:10]}"
        url = create_database(self.args.postgres_url, name)
        try:
            return search_sections(url, self.work_dir, self.args.search_messages, log)
        finally:
            log(f"dropping database {name}")
            drop_database(self.args.postgres_url, name)

    def reading(self, service: Child) -> Section:
        """History of a long conversation, and list pages among many conversations."""
        args = self.args
        log(f"seeding {args.conversations:,} conversations and one of {args.history_messages:,} messages")
        started = time.perf_counter()
        long_id = seed(self.database_url, conversations=args.conversations, long_messages=args.history_messages)
        depth = args.conversations // 2  # the deep list page starts after this many
        cursor = list_cursor(self.database_url, depth - 1)
        log(f"seeded in {time.perf_counter() - started:.1f} s")
        api = f"{service.url}/api/chat"
        runs = interleaved({
            "floor": lambda: self.load("floor /healthz", service, f"{service.url}/healthz", 1, method="GET"),
            "history": lambda: self.load("msg/history", service, f"{api}/msg/history", 1,
                                         {"convo_id": str(long_id)}),
            "first": lambda: self.load("list first page", service, f"{api}/conversation", 1, {"limit": 20}),
            "after": lambda: self.load("list after cursor", service, f"{api}/conversation", 1,
                                       {"limit": 20, "after": str(cursor)}),
            "offset": lambda: self.load("list offset", service, f"{api}/conversation", 1,
                                        {"limit": 20, "offset": depth}),
        })
        floor, history, first, after, offset = (runs[name] for name in ("floor", "history", "first", "after", "offset"))
        stored = f"{args.conversations + 1:,} stored"
        return Section(f"reading (c=1; median of {REPEATS} runs of {args.seconds:g} s each; floor = GET /healthz "
                       "at c=1; target on p50)", [
            Row(f"msg/history, {args.history_messages:,} messages, p50", history.p50_ms, "ms",
                floor.p50_ms, Target(10), _errors(history)),
            Row(f"msg/history, {args.history_messages:,} messages, p99", history.p99_ms, "ms", floor.p99_ms),
            Row(f"list first page, {stored}, p50", first.p50_ms, "ms", floor.p50_ms, Target(5), _errors(first)),
            Row(f"list first page, {stored}, p99", first.p99_ms, "ms", floor.p99_ms),
            Row(f"list page after {depth:,} (after cursor), p50", after.p50_ms, "ms", floor.p50_ms,
                Target(2), _errors(after)),
            Row(f"list page after {depth:,} (after cursor), p99", after.p99_ms, "ms", floor.p99_ms),
            Row(f"list page after {depth:,} (offset), p50", offset.p50_ms, "ms", floor.p50_ms,
                Target(5), _errors(offset)),
            Row(f"list page after {depth:,} (offset), p99", offset.p99_ms, "ms", floor.p99_ms),
        ])

    def asks(self, service: Child, upstream: Child, litellm: Child | None) -> list[Section]:
        """Non-streamed asks through the service (titles on) beside the same requests straight to the
        upstream, and beside LiteLLM's proxy when it runs; each load in rounds with the others."""
        args = self.args
        c, ct = args.concurrency, args.throughput_connections
        health = f"{service.url}/healthz"
        direct_url, direct_body = f"{upstream.url}/chat/completions", upstream_body(PROMPT)
        ask_url, ask_body = f"{service.url}/api/chat/ask", {"prompt": PROMPT}
        self.load("warm-up ask", service, ask_url, c, ask_body, seconds=2, settle=True)
        if litellm is not None:
            self.load("warm-up LiteLLM", litellm, f"{litellm.url}/v1/chat/completions", c,
                      completion_body(PROMPT), seconds=2)

        def block(connections: int, beside_litellm: bool) -> tuple[dict[str, Runs], tuple[int, int]]:
            """The loads at one concurrency, and the conversations they created and how many got a title."""
            loads: dict[str, Callable[[], LoadResult]] = {
                "floor": lambda: self.load("floor /healthz", service, health, connections, method="GET"),
                "direct": lambda: self.load("upstream direct", upstream, direct_url, connections, direct_body),
                "ask": lambda: self.load("ask", service, ask_url, connections, ask_body, settle=True),
            }
            if beside_litellm and litellm is not None:
                proxy = litellm
                loads["litellm direct"] = lambda: self.load(
                    "upstream direct, as LiteLLM asks", upstream, direct_url, connections, completion_body(PROMPT))
                loads["litellm"] = lambda: self.load(
                    "LiteLLM", proxy, f"{proxy.url}/v1/chat/completions", connections, completion_body(PROMPT))
            since = datetime.now(UTC)
            runs = interleaved(loads)
            titles = titled(self.database_url, since, datetime.now(UTC))
            log(f"c={connections}: {titles[1]:,} of {titles[0]:,} new conversations titled")
            return runs, titles

        one, titles_one = block(1, True)
        many, titles_many = block(c, True)
        most, titles_most = block(ct, False)
        ask1, direct1, floor1 = one["ask"], one["direct"], one["floor"]
        ask_c, direct_c, floor_c = many["ask"], many["direct"], many["floor"]
        ask_t, direct_t, floor_t = most["ask"], most["direct"], most["floor"]
        busy = (titles_many[0] + titles_most[0], titles_many[1] + titles_most[1])
        sections = [Section(
            f"ask, not streamed, titles on (upstream latency {args.latency_ms:g} ms; median of {REPEATS} interleaved "
            f"runs of {args.seconds:g} s each; added = via service - direct, within a round; floor = GET /healthz)", [
                Row("direct to upstream p50, c=1", direct1.p50_ms, "ms"),
                Row("via service p50, c=1", ask1.p50_ms, "ms", note=_errors(ask1)),
                Row("added p50, c=1", ask1.minus(direct1, p50), "ms", floor1.p50_ms, Target(4)),
                Row("added p99, c=1", ask1.minus(direct1, p99), "ms", floor1.p99_ms, Target(6)),
                Row(f"direct to upstream p50, c={c}", direct_c.p50_ms, "ms"),
                Row(f"via service p50, c={c}", ask_c.p50_ms, "ms", note=_errors(ask_c)),
                Row(f"added p50, c={c}", ask_c.minus(direct_c, p50), "ms", floor_c.p50_ms, Target(3)),
                Row(f"added p99, c={c}", ask_c.minus(direct_c, p99), "ms", floor_c.p99_ms, Target(15)),
                Row(f"direct to upstream throughput, c={c}", direct_c.per_second, "req/s"),
                Row(f"asks per second, c={c}", ask_c.per_second, "req/s", floor_c.per_second,
                    Target(500, at_least=True), _errors(ask_c)),
                Row(f"service CPU per ask, c={c} (all processes, titles included)", ask_c.server_cpu_ms, "ms",
                    floor_c.server_cpu_ms),
                Row(f"direct to upstream throughput, c={ct}", direct_t.per_second, "req/s"),
                Row(f"asks per second, c={ct}", ask_t.per_second, "req/s", floor_t.per_second,
                    Target(500, at_least=True), _errors(ask_t)),
                Row("service CPU per ask (all processes)", ask_t.server_cpu_ms, "ms", floor_t.server_cpu_ms,
                    note=f"(c={ct}, titles included)"),
                Row("new conversations titled, c=1", _share(titles_one), "%", note=_of(titles_one)),
                Row(f"new conversations titled, c={c} and c={ct} (titles give way under load)", _share(busy), "%",
                    note=_of(busy)),
            ])]
        if litellm is not None:
            sections.append(self.litellm_section(litellm, one, many))
        return sections

    def litellm_section(self, litellm: Child, one: dict[str, Runs], many: dict[str, Runs]) -> Section:
        """LiteLLM's figures, each with ours (titles on) and the ratio beside it."""
        name = f"LiteLLM {litellm_proxy.version(self.args.litellm)}".strip()
        return Section(
            f"{name} proxy beside gpt-api (titles on), same upstream and load ({os.cpu_count()} workers, no "
            f"database: it stores nothing; no key; median of {REPEATS} runs, interleaved with ours; its added = "
            "via LiteLLM - the same request direct)",
            beside_ours("LiteLLM", one, many, self.args.concurrency, theirs="litellm", direct="litellm direct"))

    def asks_titles_off(self, service: Child, upstream: Child) -> list[Section]:
        """The same asks with titles off: what an ask alone costs; and beside them, at 1 and at
        `--concurrency` connections, the lean reference doing the same storage work per ask and
        nothing else (bench/lean_reference.py): how much of each target the machine leaves."""
        args = self.args
        c = args.concurrency
        direct_url, direct_body = f"{upstream.url}/chat/completions", upstream_body(PROMPT)
        ask_url, ask_body = f"{service.url}/api/chat/ask", {"prompt": PROMPT}
        log("starting the lean reference")
        lean = lean_reference.start(self.work_dir, database_url=self.database_url, upstream_url=upstream.url,
                                    model=MODEL, api_key=UPSTREAM_KEY)
        self.stack.callback(lean.stop)
        lean_url = f"{lean.url}/"
        self.load("warm-up ask", service, ask_url, c, ask_body, seconds=2)
        self.load("warm-up lean reference", lean, lean_url, c, ask_body, seconds=2)

        def block(connections: int) -> dict[str, Runs]:
            return interleaved({
                "direct": lambda: self.load("upstream direct", upstream, direct_url, connections, direct_body),
                "ask": lambda: self.load("ask, titles off", service, ask_url, connections, ask_body),
                "lean": lambda: self.load("lean reference", lean, lean_url, connections, ask_body),
            })

        one, many = block(1), block(c)
        lean.stop()
        ask, direct = many["ask"], many["direct"]

        return [Section(f"ask, not streamed, titles off (GENERATE_TITLES=false; median of {REPEATS} interleaved runs "
                        f"of {args.seconds:g} s each)", [
            Row(f"via service p50, c={c}, titles off", ask.p50_ms, "ms", note=_errors(ask)),
            Row(f"added p50, c={c}, titles off", ask.minus(direct, p50), "ms"),
            Row(f"added p99, c={c}, titles off", ask.minus(direct, p99), "ms"),
            Row(f"asks per second, c={c}, titles off", ask.per_second, "req/s",
                target=Target(600, at_least=True), note=_errors(ask)),
            Row(f"service CPU per ask, c={c}, titles off (all processes)", ask.server_cpu_ms, "ms",
                target=Target(2.0)),
        ]), Section(
            f"lean reference beside gpt-api (titles off): the same storage per ask and nothing else, "
            f"gunicorn/gevent with {os.cpu_count()} workers (bench/lean_reference.py); median of {REPEATS} runs, "
            "interleaved with ours and the upstream direct",
            beside_ours("lean", one, many, c, theirs="lean", direct="direct"))]

    def streams_phase(self) -> Section:
        """Thousands of SSE streams open at once, from an upstream whose answers outlast the ramp."""
        args = self.args
        ramp = args.streams / args.stream_rate
        chunk_delay_ms = 1000 * (ramp + 8) / (STREAM_CHUNKS - 1)
        upstream = self.upstream("upstream-stream", chunks=STREAM_CHUNKS, chunk_delay_ms=chunk_delay_ms)
        service = self.service("service-stream", upstream)
        ask_url, body = f"{service.url}/api/chat/ask", {"prompt": PROMPT, "stream": True}
        warm = asyncio.run(run_streams(ask_url, count=50, rate=25, body=body, first_event_only=True))
        log(f"warm-up: {len(warm.ttfbs)} streams answered")
        floor = self.streams("floor /healthz at the same rate", f"{service.url}/healthz", None,
                             count=min(args.streams, 500), method="GET", expect_events=False)
        direct = self.streams("streams straight to the upstream (time to first event only)",
                              f"{upstream.url}/chat/completions", upstream_body(PROMPT), first_event_only=True)
        time.sleep(1)
        idle = service.rss_bytes()
        cpu = service.cpu_seconds()
        run = self.streams("streams via the service", ask_url, body, sample=service.rss_bytes)
        cpu_ms = (service.cpu_seconds() - cpu) * 1000 / args.streams
        if service.process.poll() is not None or cpu_ms < 0:  # it, or a worker, went away
            log(f"the service lost processes during the run:\n{service.log_tail()}")
            cpu_ms = float("nan")
        half, full = run.samples[0], run.samples[-1]
        added = full.open - half.open
        per_stream = (full.value - half.value) / added / 1024 if added > 0 else float("nan")
        return Section(f"streams, titles on ({args.streams:,} opened at {args.stream_rate:g}/s, each answer "
                       f"{STREAM_CHUNKS} chunks {chunk_delay_ms / 1000:.1f} s apart; one run, not {REPEATS}: each "
                       "takes minutes; floor = GET /healthz at that rate)", [
            Row("held open at once", full.open, "", target=Target(2000, at_least=True),
                note=f"({run.completed} ended with [DONE], {run.failed} failed)"),
            Row("TTFB straight to the upstream p50", 1000 * direct.percentile(50), "ms"),
            Row("TTFB via the service p50", 1000 * run.percentile(50), "ms"),
            Row("added TTFB p50", 1000 * (run.percentile(50) - direct.percentile(50)), "ms",
                1000 * floor.percentile(50)),
            Row("added TTFB p99", 1000 * (run.percentile(99) - direct.percentile(99)), "ms",
                1000 * floor.percentile(99), Target(250)),
            Row("service memory, idle", idle / 2**20, "MiB"),
            Row(f"service memory, {half.open:,} open", half.value / 2**20, "MiB"),
            Row(f"service memory, {full.open:,} open", full.value / 2**20, "MiB"),
            Row(f"memory per open stream ({half.open:,} to {full.open:,})", per_stream, "KiB",
                target=Target(100)),
            Row("memory per open stream (idle to all open)", (full.value - idle) / max(full.open, 1) / 1024, "KiB"),
            Row("service CPU per stream", cpu_ms, "ms"),
        ])


def _errors(*results: LoadResult | Runs) -> str:
    count = sum(r.errors for r in results)
    return f"({count} errors)" if count else ""


def _share(counts: tuple[int, int]) -> float:
    created, named = counts
    return 100 * named / created if created else float("nan")


def _of(counts: tuple[int, int]) -> str:
    created, named = counts
    return f"({named:,} of {created:,})"


@contextmanager
def work_directory(keep: bool) -> Iterator[Path]:
    if keep:
        path = Path(tempfile.mkdtemp(prefix="gpt-api-bench-"))
        try:
            yield path
        finally:
            log(f"logs kept in {path}")
    else:
        with tempfile.TemporaryDirectory(prefix="gpt-api-bench-") as path:
            yield Path(path)


PHASES = ("budget", "reading", "asks", "streams", "search")


def beside_ours(them: str, one: dict[str, Runs], many: dict[str, Runs], c: int, *, theirs: str,
                direct: str) -> list[Row]:
    """Their figures at 1 and at `c` connections (`theirs`, added = minus `direct` in the same
    round), each with ours (`ask` minus `direct`) and the ratio."""

    def added(runs: dict[str, Runs], figure: Callable[[LoadResult], float]) -> tuple[float, float]:
        return runs[theirs].minus(runs[direct], figure), runs["ask"].minus(runs["direct"], figure)

    def row(figure: str, their: float, our: float, unit: str, *, higher_is_better: bool, note: str = "") -> Row:
        return beside(f"{them} {figure}", their, our, unit, higher_is_better=higher_is_better, them=them, note=note)

    return [
        row("added p50, c=1", *added(one, p50), "ms", higher_is_better=False, note=_errors(one[theirs])),
        row("added p99, c=1", *added(one, p99), "ms", higher_is_better=False),
        row(f"asks per second, c={c}", many[theirs].per_second, many["ask"].per_second, "req/s",
            higher_is_better=True, note=_errors(many[theirs])),
        row(f"added p50, c={c}", *added(many, p50), "ms", higher_is_better=False),
        row(f"added p99, c={c}", *added(many, p99), "ms", higher_is_better=False),
        row(f"CPU per ask, c={c} (all its processes)", many[theirs].server_cpu_ms, many["ask"].server_cpu_ms, "ms",
            higher_is_better=False),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    phases = [phase for phase in args.only.split(",") if phase]
    if not phases or set(phases) - set(PHASES):
        sys.exit(f"--only takes a comma-separated list of {', '.join(PHASES)}")
    if args.litellm and "asks" not in phases:
        sys.exit("--litellm runs beside the asks phase: add asks to --only")
    if make_url(args.postgres_url).host not in (None, "127.0.0.1", "localhost", "::1"):
        sys.exit("the bench only talks to this machine: --postgres-url must be on 127.0.0.1")
    signal.signal(signal.SIGTERM, _terminate)
    limit = raise_fd_limit()
    if limit < 2 * args.streams + 1000:
        log(f"warning: only {limit} open files allowed; {args.streams} streams need about {2 * args.streams + 1000}")
    started = time.perf_counter()
    with work_directory(args.keep_logs) as work_dir, ExitStack() as stack:
        bench = Bench(args, work_dir, stack)
        sections = bench.run(phases)
    print(f"gpt-api bench: {os.cpu_count()} CPUs, {time.perf_counter() - started:.0f} s; "
          f"service settings: {' '.join(args.env) or 'defaults'}, titles on unless a section says off "
          f"({bench.sizing})")
    print(render(sections))
    print(summary(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
