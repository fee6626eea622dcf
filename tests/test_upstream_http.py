"""The lean client of OpenAI-compatible upstreams keeps what the SDK did: one kept-alive
connection for answer after answer, timeouts, retries of what is worth retrying (with the
upstream's Retry-After), the upstream's error message, and a refused connection told apart
from a slow one. Provider level, against the fake upstream over real HTTP."""

from __future__ import annotations

import ssl
import subprocess
import time
from pathlib import Path

import pytest

from fakes.net import free_port
from fakes.openai_upstream import Fail, FakeOpenAI, Hang, Reply, Reset
from services.errors import UpstreamError, UpstreamRateLimited, UpstreamTimeout
from services.providers.base import ChatMessage, ReplyRequest
from services.providers.openai_compat import OpenAIProvider
from tests.conftest import UPSTREAM_KEY

QUESTION = ReplyRequest(messages=[ChatMessage(role="user", content="Hi")], model="gpt-test", user_message_id="m")


def provider(url: str, *, retries: int = 2, read_timeout: float = 5.0, deadline: float = 30.0) -> OpenAIProvider:
    return OpenAIProvider(
        api_key=UPSTREAM_KEY, base_url=url, model="gpt-test", connect_timeout=2.0,
        read_timeout=read_timeout, max_retries=retries, deadline=deadline,
    )


def text_of(chunks: object) -> str:
    return "".join(chunk.delta for chunk in chunks)  # type: ignore[attr-defined]


def test_answers_share_one_kept_alive_connection() -> None:
    with FakeOpenAI(api_key=UPSTREAM_KEY) as fake:  # its own: no other client's connections
        upstream = provider(fake.url)
        for n in range(5):
            fake.script(Reply(text=f"Answer {n} here"))
            assert text_of(upstream.stream_reply(QUESTION)) == f"Answer {n} here"
        assert len({request.client for request in fake.requests}) == 1  # one connection...
        assert fake.nodelay_flags() == [True]  # ...without Nagle's delay
        assert fake.requests[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_rate_limits_and_server_errors_are_retried_honouring_retry_after(fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Fail(429, "Slow down", headers={"Retry-After": "0.3"}), Fail(503, "Busy"), Reply(text="Here."))
    started = time.monotonic()
    assert text_of(provider(fake_upstream.url).stream_reply(QUESTION)) == "Here."
    assert time.monotonic() - started >= 0.3
    assert len(fake_upstream.requests) == 3


def test_a_refusal_of_the_request_is_not_retried_and_keeps_the_upstreams_message(fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Fail(400, "Bad model name"), Reply())
    with pytest.raises(UpstreamError) as failed:
        list(provider(fake_upstream.url).stream_reply(QUESTION))
    assert failed.value.message == "The upstream answered 400: Bad model name"
    assert len(fake_upstream.requests) == 1


def test_a_rate_limit_that_outlasts_the_retries_carries_the_upstreams_wait(fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(*[Fail(429, "Slow down", headers={"Retry-After": "0"})] * 2)
    with pytest.raises(UpstreamRateLimited) as failed:
        list(provider(fake_upstream.url, retries=1).stream_reply(QUESTION))
    assert failed.value.details["retry_after"] == 0
    assert len(fake_upstream.requests) == 2


def test_a_refused_connection_is_unreachable_not_slow() -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamError) as failed:
        list(provider(f"http://127.0.0.1:{free_port()}/v1", retries=1).stream_reply(QUESTION))
    assert not isinstance(failed.value, UpstreamTimeout)
    assert failed.value.message == "Could not reach the upstream (connection failed or was cut)."
    assert time.monotonic() - started < 2.0  # one backoff of about half a second, no timeout waited


def test_a_silent_upstream_times_out_and_a_reset_one_is_retried(fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Hang())
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        list(provider(fake_upstream.url, retries=0, read_timeout=0.4).stream_reply(QUESTION))
    assert time.monotonic() - started < 2.0
    fake_upstream.script(Reset(), Reply(text="After the reset"))
    assert text_of(provider(fake_upstream.url).stream_reply(QUESTION)) == "After the reset"


def test_a_stream_cut_before_its_finish_ends_without_a_finish_reason(fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(chunks=["Half ", "an ", "answer"], break_after=2))
    chunks = []
    with pytest.raises(UpstreamError):
        for chunk in provider(fake_upstream.url).stream_reply(QUESTION):
            chunks.append(chunk)
    assert text_of(chunks) == "Half an " and not any(chunk.finish_reason for chunk in chunks)


def test_an_https_upstream_is_verified_against_the_systems_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, certificate = tmp_path / "key.pem", tmp_path / "certificate.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True,
    )
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(certificate, key)
    with FakeOpenAI(api_key=UPSTREAM_KEY, ssl_context=served) as fake:
        url = fake.url.replace("127.0.0.1", "localhost")
        with pytest.raises(UpstreamError) as failed:  # a certificate nobody vouches for
            list(provider(url, retries=0).stream_reply(QUESTION))
        assert failed.value.message == "Could not reach the upstream (connection failed or was cut)."
        assert not fake.requests
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate))  # now the system trusts it
        upstream = provider(url)
        for n in range(3):
            fake.script(Reply(text=f"Secret {n}"))
            assert text_of(upstream.stream_reply(QUESTION)) == f"Secret {n}"
        assert len({request.client for request in fake.requests}) == 1  # kept alive under TLS too


def test_a_kept_alive_connection_the_upstream_closed_is_replaced_before_use() -> None:
    port = free_port()
    upstream = provider(f"http://127.0.0.1:{port}/v1", retries=0)
    with FakeOpenAI(port=port) as first:
        for _ in range(2):
            assert text_of(upstream.stream_reply(QUESTION)) == "Echo: Hi"
        assert len({request.client for request in first.requests}) == 1  # kept
    with FakeOpenAI(port=port):  # the kept connection was closed with the first
        assert text_of(upstream.stream_reply(QUESTION)) == "Echo: Hi"  # no retry allowed, none needed


def test_a_key_that_would_break_the_request_head_is_refused_when_the_client_is_made() -> None:
    with pytest.raises(ValueError, match="line break"):
        OpenAIProvider(
            api_key="sk-1\r\nX-Injected: 1", base_url="http://127.0.0.1:1/v1", model="gpt-test",
            connect_timeout=1.0, read_timeout=1.0, max_retries=0, deadline=1.0,
        )
