"""Any OpenAI-compatible Chat Completions endpoint, through the official `openai` SDK."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import httpx2
import openai

from services.errors import UpstreamError, UpstreamTimeout
from services.providers.base import ReplyChunk, ReplyRequest

TITLE_INSTRUCTION = (
    "Write a title of at most six words for the conversation below. "
    "Answer with the title only, no quotes, no punctuation at the end."
)
MAX_TITLE_LENGTH = 80
KEEP_ALIVE_CONNECTIONS = 100
"""Idle upstream connections kept for the next answers (the SDK's default)."""


def upstream_failure(error: openai.APIError) -> UpstreamError:
    """Turn the SDK's exception (raised after its own retries) into a domain error."""
    if isinstance(error, openai.APITimeoutError):
        return UpstreamTimeout("The upstream did not answer in time; try again.")
    if isinstance(error, openai.AuthenticationError):
        return UpstreamError(
            "The upstream refused the API key; check OPENAI_API_KEY.", upstream_status=401
        )
    if isinstance(error, openai.APIStatusError):
        return UpstreamError(
            f"The upstream answered {error.status_code}: {error.message}",
            upstream_status=error.status_code,
        )
    if isinstance(error, openai.APIConnectionError):
        return UpstreamError("Could not reach the upstream (connection failed or was cut).")
    return UpstreamError(f"The upstream failed: {error}")


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The `data` of each server-sent event in `lines` (an event's data lines joined)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
    if data:
        yield "\n".join(data)


def reply_chunks(lines: Iterable[str]) -> Iterator[ReplyChunk]:
    """The answer in a Chat Completions event stream, read to its very end.

    The SDK's own `Stream` stops reading at `[DONE]` and closes the response before the
    end of the HTTP body, which throws the connection away (openai-python #3440): every
    answer would then open a new connection, and over TLS pay a new handshake. Reading
    on past `[DONE]` hands the connection back to the pool.
    """
    for data in sse_data(lines):
        if data == "[DONE]":
            continue
        try:
            chunk = json.loads(data)
        except ValueError as error:
            raise UpstreamError("The upstream sent an event that is not JSON.") from error
        if not isinstance(chunk, dict):
            raise UpstreamError("The upstream sent an event that is not a JSON object.")
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else None
            raise UpstreamError(f"The upstream failed: {message or 'an error in the stream'}")
        model = chunk.get("model")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            yield ReplyChunk(
                model=model,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
            )
        for choice in chunk.get("choices") or ():
            delta = (choice.get("delta") or {}).get("content") or ""
            finish_reason = choice.get("finish_reason")
            if delta or finish_reason:
                yield ReplyChunk(delta=delta, finish_reason=finish_reason, model=model)


def clean_title(raw: str) -> str | None:
    """First line of the model's answer, without quotes, or None if nothing is left."""
    lines = raw.strip().splitlines()
    line = lines[0].strip().strip("\"'“”«»").strip() if lines else ""
    return line[:MAX_TITLE_LENGTH] or None


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        model: str,
        connect_timeout: float,
        read_timeout: float,
        max_retries: int,
        max_connections: int = 1000,
    ) -> None:
        self.default_model = model
        # One connection per answer in flight: the SDK's default pool (1000) would make
        # the next answers wait once a worker holds that many streams.
        limits = httpx2.Limits(
            max_connections=max_connections,
            max_keepalive_connections=min(max_connections, KEEP_ALIVE_CONNECTIONS),
        )
        self._client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=openai.Timeout(read_timeout, connect=connect_timeout),
            max_retries=max_retries,
            http_client=openai.DefaultHttpxClient(limits=limits),
        )

    def stream_reply(self, request: ReplyRequest) -> Iterator[ReplyChunk]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            with self._client.chat.completions.with_streaming_response.create(
                model=request.model,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
                **request.sampling.given(),  # type: ignore[arg-type]
            ) as response:
                yield from reply_chunks(response.iter_lines())
        except openai.APIError as error:
            raise upstream_failure(error) from error
        except httpx2.TimeoutException as error:
            raise upstream_failure(openai.APITimeoutError(request=error.request)) from error
        except httpx2.TransportError as error:
            raise upstream_failure(openai.APIConnectionError(request=error.request)) from error

    def generate_title(self, request: ReplyRequest, answer: str) -> str | None:
        exchange = f"User: {request.messages[-1].content}\n\nAssistant: {answer}"
        try:
            completion = self._client.chat.completions.create(
                model=request.model,
                messages=[
                    {"role": "system", "content": TITLE_INSTRUCTION},
                    {"role": "user", "content": exchange[:4000]},
                ],
                max_tokens=24,
            )
        except openai.APIError as error:
            raise upstream_failure(error) from error
        content = completion.choices[0].message.content if completion.choices else None
        return clean_title(content or "")

    def rename(self, upstream_conversation_id: str, title: str) -> None:
        """The upstream keeps no conversations."""

    def delete(self, upstream_conversation_id: str) -> None:
        """The upstream keeps no conversations."""

    def clear(self) -> None:
        """The upstream keeps no conversations."""
