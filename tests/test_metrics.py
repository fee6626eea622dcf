"""`/metrics`: requests by route and status, latencies, the upstream by provider, open streams, tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from fakes.openai_upstream import Fail, FakeOpenAI, Reply
from tests.conftest import UPSTREAM_KEY
from tests.helpers import ask, error_of, post
from tests.server_process import HTTP, ServerProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: FlaskClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return parse(response.get_data(as_text=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_requests_are_counted_by_route_and_status(client: FlaskClient) -> None:
    ask(client, "Hello")
    error_of(post(client, "msg/history", {"convo_id": "00000000-0000-4000-8000-000000000000"}), 404)
    error_of(post(client, "no/such/route"), 404)
    samples = scrape(client)
    requests = "gpt_api_http_requests_total"
    assert value(samples, requests, route="/api/chat/ask", method="POST", status="200") == 1
    assert value(samples, requests, route="/api/chat/msg/history", method="POST", status="404") == 1
    assert value(samples, requests, route="unmatched", method="POST", status="404") == 1
    duration = "gpt_api_http_request_duration_seconds"
    assert value(samples, f"{duration}_count", route="/api/chat/ask", method="POST") == 1
    assert value(samples, f"{duration}_sum", route="/api/chat/ask", method="POST") > 0
    assert value(samples, f"{duration}_bucket", route="/api/chat/ask", method="POST", le="+Inf") == 1


def test_upstream_latency_and_tokens_are_counted_by_provider(
    client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.script(Reply(text="Hi there", usage=(11, 4)), Reply(text="Again", usage=(20, 2)))
    ask(client, "one")
    ask(client, "two")
    samples = scrape(client)
    assert value(samples, "gpt_api_upstream_duration_seconds_count", provider="openai") == 2
    assert value(samples, "gpt_api_upstream_first_token_seconds_count", provider="openai") == 2
    assert value(samples, "gpt_api_tokens_total", provider="openai", kind="prompt") == 31
    assert value(samples, "gpt_api_tokens_total", provider="openai", kind="completion") == 6
    assert value(samples, "gpt_api_upstream_errors_total", provider="openai", code="upstream_error") == 0


def test_upstream_errors_are_counted_by_provider_and_code(
    client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.script(Fail(status=500), Fail(status=503))
    error_of(post(client, "ask", {"prompt": "x"}), 502)
    error_of(post(client, "ask", {"prompt": "y"}), 502)
    samples = scrape(client)
    assert value(samples, "gpt_api_upstream_errors_total", provider="openai", code="upstream_error") == 2
    assert value(samples, "gpt_api_upstream_duration_seconds_count", provider="openai") == 2


def test_open_streams_gauge_follows_each_stream_until_it_closes(
    client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.script(Reply(text="one two three four", chunks=["one ", "two ", "three ", "four"]))
    assert value(scrape(client), "gpt_api_open_streams") == 0
    response = client.post("/api/chat/ask", json={"prompt": "x", "stream": True}, buffered=False)
    body = iter(response.response)
    assert next(body).startswith(b"data: ")  # the stream is open now
    assert value(scrape(client), "gpt_api_open_streams") == 1
    response.close()  # the client goes away mid-answer
    assert value(scrape(client), "gpt_api_open_streams") == 0


@pytest.mark.e2e
def test_workers_share_their_metrics(tmp_path: Path, database_url: str, fake_upstream: FakeOpenAI) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale = metrics_dir / "counter_1.db"
    stale.write_bytes(b"left over from an earlier run")
    env = {
        "DATABASE_URL": database_url,
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_BASE_URL": fake_upstream.url,
        "GENERATE_TITLES": "false",
        "WORKERS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    with ServerProcess(env) as server:
        assert not stale.exists()  # emptied at start
        sent = 0
        # New connections until both workers have counted some (each writes its own file).
        while sent < 24 or (len(list(metrics_dir.glob("counter_*.db"))) < 2 and sent < 400):
            assert HTTP.get(f"{server.url}/healthz", headers={"Connection": "close"}).status_code == 200
            sent += 1
        assert len(list(metrics_dir.glob("counter_*.db"))) == 2
        server.post("ask", {"prompt": "hi"})
        samples = parse(HTTP.get(f"{server.url}/metrics").text)
    requests = "gpt_api_http_requests_total"
    assert value(samples, requests, route="/healthz", method="GET", status="200") == sent
    assert value(samples, requests, route="/api/chat/ask", method="POST", status="200") == 1
    assert value(samples, "gpt_api_tokens_total", provider="openai", kind="prompt") == 7
    assert value(samples, "gpt_api_open_streams") == 0
