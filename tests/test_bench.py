"""The benchmark's own helpers work: SSE parsing, the stream client, wrk's output, seeding, the
table and its summary, medians of interleaved runs, the service's settings (titles on), the
lean reference's storage, and starting LiteLLM's proxy (with a stand-in executable: the real
one is tried by hand).

No timings are checked here; `python -m bench` measures.
"""

from __future__ import annotations

import asyncio
import json
import stat
import sys
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bench import lean_reference, litellm_proxy
from bench.__main__ import ANSWER, MODEL, UPSTREAM_KEY, beside_ours, main, parse_args, service_env, upstream_body
from bench.context import long_path, measure
from bench.loadgen import LoadResult, parse_result
from bench.processes import start_fake_upstream
from bench.report import Row, Section, Target, beside, misses, render, summary
from bench.runs import Runs, interleaved, median, p50, p99
from bench.seed import list_cursor, seed, titled
from bench.streams import event_data, run_streams, split_events
from fakes.openai_upstream import FakeOpenAI, Reply
from models.db import Database


def test_split_events_keeps_the_unfinished_rest() -> None:
    events, rest = split_events(b": keep-alive\n\ndata: {\"a\": 1}\r\n\r\ndata: [DO")
    assert events == [[": keep-alive"], ['data: {"a": 1}']]
    assert rest == b"data: [DO"


def test_event_data_joins_data_lines_and_ignores_comments() -> None:
    assert event_data(["event: error", "data: one", "data:two"]) == "one\ntwo"
    assert event_data([": keep-alive"]) is None


def test_stream_client_times_first_events_and_sees_every_stream_end() -> None:
    samples: list[int] = []
    with FakeOpenAI(record=False) as fake:
        fake.default = lambda body: Reply(text="one two three four", chunks=["one ", "two ", "three four"], chunk_delay=0.3)
        run = asyncio.run(
            run_streams(
                f"{fake.url}/chat/completions",
                count=6,
                rate=200,
                body=upstream_body("hi"),
                sample=lambda: samples.append(len(samples)) or len(samples),
                settle=0.0,
            )
        )
    assert run.completed == 6 and run.failed == 0
    assert len(run.ttfbs) == 6 and all(t > 0 for t in run.ttfbs)
    assert all(o.events == 6 for o in run.outcomes)  # role, 3 pieces, finish, usage
    assert [s.value for s in run.samples] == [1, 2]  # at half, and with every stream open
    assert run.samples[-1].open == 6


def test_parse_result_reads_the_lua_summary() -> None:
    output = (
        "Running 1s test\n"
        'BENCH_RESULT {"requests": 500, "duration_us": 2000000, "p50_us": 1500, "p99_us": 9000, '
        '"max_us": 12000, "connect": 0, "read": 1, "write": 0, "status": 2, "timeout": 0}\n'
    )
    result = parse_result(output)
    assert (result.requests, result.per_second, result.p50_ms, result.p99_ms) == (500, 250.0, 1.5, 9.0)
    assert result.errors == 3


def test_parse_result_without_a_summary_fails() -> None:
    with pytest.raises(RuntimeError, match="no result"):
        parse_result("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_report_marks_each_target() -> None:
    sections = [
        Section("s", [
            Row("fast enough", 2.0, "ms", 0.3, Target(3)),
            Row("too slow", 4.0, "ms", 0.3, Target(3)),
            Row("enough", 600, "req/s", target=Target(500, at_least=True)),
            Row("no target", 1.0, "ms"),
        ])
    ]
    table = render(sections)
    assert "fast enough" in table and "PASS" in table and "<= 3.00 ms" in table
    assert [row.figure for row in misses(sections)] == ["too slow"]


def test_seed_writes_the_rows_the_service_would(postgresql_url: str) -> None:
    """PostgreSQL only: the bench runs on PostgreSQL, and seeds with its SQL (generate_series, md5)."""
    Database(postgresql_url).migrate()
    engine = create_engine(postgresql_url)
    owner = "bench-seed-test"
    try:
        long_id = seed(postgresql_url, conversations=30, long_messages=12, owner=owner)
        with engine.connect() as connection:
            conversations = connection.execute(
                text("SELECT count(*) FROM conversations WHERE owner = :owner"), {"owner": owner}
            ).scalar_one()
            long_messages = connection.execute(
                text("SELECT count(*) FROM messages WHERE conversation_id = :id"), {"id": long_id}
            ).scalar_one()
            chain_ends = connection.execute(
                text(
                    "SELECT count(*) FROM messages m WHERE m.conversation_id = :id AND NOT EXISTS "
                    "(SELECT 1 FROM messages c WHERE c.parent_id = m.id)"
                ),
                {"id": long_id},
            ).scalar_one()
        assert conversations == 31  # and the long one
        assert long_messages == 12
        assert chain_ends == 1  # one chain, root to current node
        assert list_cursor(postgresql_url, 0, owner) == long_id  # the newest
    finally:
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM conversations WHERE owner = :owner"), {"owner": owner})
        engine.dispose()


def test_the_budget_phase_fits_a_long_path_both_ways() -> None:
    assert len(long_path(11)) == 11 and long_path(11)[-1].role == "user"
    run = measure(messages=400, repeats=3)  # about 27,000 tokens: whole for gpt-4.1, over gpt-4's 8,192
    assert run.messages == 400 and run.path_tokens > 8192 and 0 < run.left_out < 400


def _result(p50_ms: float, p99_ms: float = 0.0, requests: int = 100, errors: int = 0,
            cpu_ms: float = 1.0) -> LoadResult:
    """One wrk run's figures, as parse_result and Bench.load make them (one second long)."""
    return LoadResult(requests=requests, seconds=1.0, p50_ms=p50_ms, p99_ms=p99_ms, max_ms=p99_ms, errors=errors,
                      server_cpu_ms=cpu_ms)


def test_interleaved_runs_every_load_once_per_round() -> None:
    order: list[str] = []

    def load(name: str, values: list[float]) -> LoadResult:
        order.append(name)
        return _result(values[len([done for done in order if done == name]) - 1])

    runs = interleaved({
        "direct": lambda: load("direct", [60, 70, 80]),
        "ask": lambda: load("ask", [65, 72, 100]),
    })
    assert order == ["direct", "ask"] * 3
    assert [r.p50_ms for r in runs["ask"].results] == [65, 72, 100]
    assert runs["ask"].p50_ms == 72 and runs["direct"].p50_ms == 70  # medians of three
    # A difference is the median of each round's difference (5, 2, 20), not the medians' (2).
    assert runs["ask"].minus(runs["direct"], p50) == 5


def test_runs_take_medians_and_add_up_errors() -> None:
    runs = Runs((_result(3, 9, requests=200, errors=1, cpu_ms=2.5), _result(1, 30, requests=50, cpu_ms=9.0),
                 _result(2, 10, requests=100, errors=2, cpu_ms=3.0)))
    assert (runs.p50_ms, runs.p99_ms, runs.per_second, runs.server_cpu_ms) == (2, 10, 100, 3.0)
    assert runs.errors == 3
    assert median([]) != median([])  # NaN: nothing measured
    assert median([1.0, float("nan"), 2.0]) != median([1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="not paired"):
        runs.minus(Runs(runs.results[:2]), p99)


def test_summary_counts_passes_and_names_misses() -> None:
    sections = [
        Section("a", [Row("fast", 1.0, "ms", target=Target(4)), Row("no target", 9.0, "ms")]),
        Section("b", [
            Row("asks per second, c=50", 450, "req/s", target=Target(500, at_least=True)),
            Row("unknown", float("nan"), "ms", target=Target(6)),
        ]),
    ]
    assert summary(sections) == "1 of 3 targets PASS; MISS: asks per second, c=50; unknown"
    assert summary(sections[:1]) == "1 of 1 targets PASS, none MISS"
    table = render(sections)
    assert ">= 500 req/s  MISS" in table and "<= 4.00 ms  PASS" in table and "n/a" in table


def test_beside_gives_ours_and_the_ratio_and_which_way_is_better() -> None:
    row = beside("LiteLLM asks per second, c=50", 200, 500, "req/s", higher_is_better=True, note="(3 errors)")
    assert row.value == 200 and row.target is None
    assert row.note == "gpt-api 500 req/s; gpt-api / LiteLLM = 2.50 (higher is better) (3 errors)"
    assert "(lower is better)" in beside("added p50", 10.0, 4.0, "ms", higher_is_better=False).note
    assert "= n/a" in beside("added p50", 0.0, 4.0, "ms", higher_is_better=False).note


def test_beside_ours_compares_each_figure_within_its_rounds() -> None:
    """LiteLLM and the lean reference are compared to the service by the same rows: their added
    latency against the request they send, straight, in the same round; ours against ours."""
    def runs(*p50s: float, cpu_ms: float = 1.0, errors: int = 0) -> Runs:
        return Runs(tuple(_result(p, p + 5, requests=500, errors=errors, cpu_ms=cpu_ms) for p in p50s))

    one = {"direct": runs(60, 61, 62), "ask": runs(66, 67, 69), "lean": runs(64, 64, 65, errors=1)}
    many = {"direct": runs(70, 70, 70), "ask": runs(120, 110, 115, cpu_ms=2.0), "lean": runs(80, 79, 81, cpu_ms=1.0)}
    rows = beside_ours("lean", one, many, 50, theirs="lean", direct="direct")
    assert [row.figure for row in rows] == [
        "lean added p50, c=1", "lean added p99, c=1", "lean asks per second, c=50", "lean added p50, c=50",
        "lean added p99, c=50", "lean CPU per ask, c=50 (all its processes)",
    ]
    assert rows[0].value == 3 and rows[0].note == "gpt-api 6.00 ms; gpt-api / lean = 2.00 (lower is better) (3 errors)"
    assert rows[3].value == 10 and "gpt-api 45.0 ms" in rows[3].note
    assert rows[5].value == 1.0 and "gpt-api / lean = 2.00" in rows[5].note
    assert all(row.target is None for row in rows)


def test_the_service_runs_with_titles_on_unless_asked_off() -> None:
    on = service_env("postgresql://db", "http://127.0.0.1:1/v1", ["GENERATE_TITLES=false", "WORKERS=1"], titles=True)
    off = service_env("postgresql://db", "http://127.0.0.1:1/v1", [], titles=False)
    assert on["GENERATE_TITLES"] == "true" and on["WORKERS"] == "1"
    assert off["GENERATE_TITLES"] == "false"
    assert on["OPENAI_BASE_URL"] == "http://127.0.0.1:1/v1" and on["OPENAI_API_KEY"] == UPSTREAM_KEY
    assert parse_args([]).seconds == 5 and parse_args([]).litellm is None


def test_the_bench_upstream_answers_title_requests(tmp_path: Path) -> None:
    """The fake as the bench starts it answers the service's title request (not streamed) too."""
    upstream = start_fake_upstream("upstream", tmp_path, latency_ms=0, chunks=3, chunk_delay_ms=0, text=ANSWER)
    try:
        body = {"model": MODEL, "max_tokens": 24, "messages": [
            {"role": "system", "content": "Write a title of at most six words."},
            {"role": "user", "content": "User: hello\n\nAssistant: hi"},
        ]}
        request = urllib.request.Request(f"{upstream.url}/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
    finally:
        upstream.stop()
    assert answer["choices"][0]["message"]["content"] == ANSWER


def test_the_lean_reference_stores_each_ask_as_the_service_would(empty_postgresql_url: str, tmp_path: Path) -> None:
    """The bench's yardstick writes what an ask writes: a conversation, its root, the question,
    and the upstream's whole answer as its current node. PostgreSQL only: the bench runs on
    PostgreSQL, and the lean reference speaks psycopg2."""
    upstream = start_fake_upstream("upstream", tmp_path, latency_ms=0, chunks=3, chunk_delay_ms=0, text=ANSWER)
    try:
        lean = lean_reference.start(tmp_path, database_url=empty_postgresql_url, upstream_url=upstream.url,
                                    model=MODEL, api_key=UPSTREAM_KEY)
        try:
            answers = []
            for prompt in ("first", "second"):
                request = urllib.request.Request(f"{lean.url}/", json.dumps({"prompt": prompt}).encode(),
                                                 {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as response:
                    answers.append(json.load(response))
        finally:
            lean.stop()
    finally:
        upstream.stop()
    assert [answer["content"] for answer in answers] == [ANSWER, ANSWER]
    engine = create_engine(empty_postgresql_url)
    try:
        with engine.connect() as connection:
            stored = connection.execute(text(
                "SELECT c.id, c.current_node_id, m.id, m.parent_id, m.role, m.content, m.model, m.completion_tokens "
                "FROM conversations c JOIN messages m ON m.conversation_id = c.id "
                "ORDER BY c.created_at, m.created_at, m.role NULLS FIRST")).all()
    finally:
        engine.dispose()
    for answer, rows in zip(answers, (stored[:4], stored[4:]), strict=True):
        root, system, question, reply = rows  # as the service stores a new conversation
        assert str(root[0]) == answer["conversation_id"] and str(root[1]) == answer["message_id"] == str(reply[2])
        assert (root[3], root[4], root[5]) == (None, None, "")
        assert (system[3], system[4], system[5]) == (root[2], "system", "")
        assert (question[3], question[4]) == (system[2], "user") and question[5] in ("first", "second")
        assert (reply[3], reply[4], reply[5], reply[6]) == (question[2], "assistant", ANSWER, MODEL)
        assert reply[7] is not None  # the upstream's usage, read from the end of its stream
    assert len(stored) == 8


def test_titled_counts_new_conversations_and_their_titles(postgresql_url: str) -> None:
    engine = create_engine(postgresql_url)
    since = datetime(2100, 1, 1, tzinfo=UTC)  # a window no other test writes in
    rows = [("New chat", since), ("Greetings and more", since + timedelta(seconds=1)),
            ("Too late", since + timedelta(seconds=10))]
    insert = text("INSERT INTO conversations (id, owner, title, created_at, updated_at) "
                  "VALUES (gen_random_uuid(), 'bench-titled', :title, :at, :at)")
    try:
        with engine.begin() as connection:
            for title, at in rows:
                connection.execute(insert, {"title": title, "at": at})
        assert titled(postgresql_url, since, since + timedelta(seconds=5)) == (2, 1)
    finally:
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM conversations WHERE owner = 'bench-titled'"))
        engine.dispose()


def test_litellm_takes_only_an_executable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    program = tmp_path / "litellm"
    program.write_text("#!/bin/sh\n")
    with pytest.raises(SystemExit):
        parse_args(["--litellm", str(program)])  # not executable
    assert "is not an executable file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--litellm", str(tmp_path / "missing")])
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    assert parse_args(["--litellm", str(program)]).litellm == program.resolve()
    with pytest.raises(SystemExit, match="asks"):
        main(["--only", "budget", "--litellm", str(program)])


def test_litellm_config_command_and_environment(tmp_path: Path) -> None:
    config = litellm_proxy.config(MODEL, "http://127.0.0.1:9/v1", UPSTREAM_KEY)
    assert config == {"model_list": [{"model_name": MODEL, "litellm_params": {
        "model": f"openai/{MODEL}", "api_base": "http://127.0.0.1:9/v1", "api_key": UPSTREAM_KEY}}]}
    command = litellm_proxy.command(Path("/venv/bin/litellm"), tmp_path / "c.yaml", 4000, 2)
    assert command[0] == "/venv/bin/litellm"
    assert command[command.index("--num_workers") + 1] == "2" and command[command.index("--host") + 1] == "127.0.0.1"
    env = litellm_proxy.environment(tmp_path, {"PATH": "/bin", "DATABASE_URL": "postgresql://x", "OPENAI_API_KEY": "k"})
    assert env["PATH"] == "/bin" and env["HOME"] == str(tmp_path)
    assert "DATABASE_URL" not in env and "OPENAI_API_KEY" not in env  # no database: it stores nothing
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True" and env["LITELLM_TELEMETRY_DISABLED"] == "true"
    (tmp_path / "lib/python3.11/site-packages/litellm-1.2.3.dist-info").mkdir(parents=True)
    assert litellm_proxy.version(tmp_path / "bin" / "litellm") == "1.2.3"
    assert litellm_proxy.version(tmp_path / "elsewhere" / "bin" / "litellm") == ""


STAND_IN = """#!{python}
# Stands in for LiteLLM's CLI: records how it was started, serves /health/liveliness.
import http.server, json, os, sys
args = sys.argv[1:]
with open("started.json", "w") as out:
    config = open(args[args.index("--config") + 1]).read()
    json.dump({{"args": args, "env": dict(os.environ), "config": json.loads(config), "cwd": os.getcwd()}}, out)

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health/liveliness" else 404)
        self.end_headers()

http.server.HTTPServer(("127.0.0.1", int(args[args.index("--port") + 1])), Health).serve_forever()
"""


def test_litellm_start_runs_the_proxy_with_its_config_until_it_answers(tmp_path: Path) -> None:
    program = tmp_path / "venv" / "bin" / "litellm"
    program.parent.mkdir(parents=True)
    program.write_text(STAND_IN.format(python=sys.executable))
    program.chmod(0o755)
    proxy = litellm_proxy.start(program, tmp_path, model=MODEL, upstream_url="http://127.0.0.1:9/v1",
                                api_key=UPSTREAM_KEY, workers=3)
    try:
        assert proxy.url.startswith("http://127.0.0.1:")
        started = json.loads((tmp_path / "litellm" / "started.json").read_text())
    finally:
        proxy.stop()
    assert proxy.process.poll() is not None
    assert started["config"] == litellm_proxy.config(MODEL, "http://127.0.0.1:9/v1", UPSTREAM_KEY)
    assert started["args"][started["args"].index("--num_workers") + 1] == "3"
    assert started["cwd"] == str(tmp_path / "litellm")
    assert "DATABASE_URL" not in started["env"] and started["env"]["LITELLM_TELEMETRY_DISABLED"] == "true"
