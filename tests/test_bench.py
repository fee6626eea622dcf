"""The benchmark's own helpers work: SSE parsing, the stream client, wrk's output, seeding, the table.

No timings are checked here; `python -m bench` measures.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import create_engine, text

from bench.__main__ import upstream_body
from bench.context import long_path, measure
from bench.loadgen import parse_result
from bench.report import Row, Section, Target, misses, render
from bench.seed import list_cursor, seed
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
