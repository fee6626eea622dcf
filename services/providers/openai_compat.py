"""Any OpenAI-compatible Chat Completions endpoint, through a lean HTTP client
(`services/providers/upstream_http.py`)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from services.errors import (
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from services.providers.base import CompletionEvent, CompletionRequest, ReplyChunk, ReplyRequest
from services.providers.deadline import Deadline, retry_after_seconds, within
from services.providers.upstream_http import (
    Sent,
    UpstreamHttp,
    UpstreamHttpError,
    UpstreamStatus,
    UpstreamTimedOut,
)

TITLE_INSTRUCTION = (
    "Write a title of at most six words for the conversation below. "
    "Answer with the title only, no quotes, no punctuation at the end."
)
MAX_TITLE_LENGTH = 80
KEEP_ALIVE_CONNECTIONS = 100
"""Idle upstream connections kept for the next answers."""


def upstream_failure(error: UpstreamHttpError) -> UpstreamError:
    """The client's failure (after its retries) as a domain error."""
    if isinstance(error, UpstreamTimedOut):
        return UpstreamTimeout("The upstream did not answer in time; try again.")
    if not isinstance(error, UpstreamStatus):
        return UpstreamError("Could not reach the upstream (connection failed or was cut).")
    if error.status == 401:
        return UpstreamError("The upstream refused the API key; check OPENAI_API_KEY.", upstream_status=401)
    if error.status == 429:
        wait = retry_after_seconds(error.headers)
        return UpstreamRateLimited(
            f"The upstream is limiting this service's requests (429): {error.message}",
            **({"retry_after": math.ceil(wait)} if wait is not None else {}),
        )
    return UpstreamError(f"The upstream answered {error.status}: {error.message}", upstream_status=error.status)


def timed_out(error: UpstreamTimedOut, deadline: Deadline) -> UpstreamError:
    """The answer's deadline passed, or one wait within it was too long."""
    return deadline.expired() if deadline.left() <= 0 else upstream_failure(error)


PASSED_ON = {400: InvalidRequest, 404: NotFound, 409: InvalidRequest, 413: InvalidRequest, 422: InvalidRequest}
"""Upstream refusals that are about the client's request, passed on as its own error (429 too)."""


def passed_on(error: UpstreamHttpError) -> ServiceError:
    """For a request the client wrote (`/v1/chat/completions`): the upstream's refusal of it,
    with the upstream's message, `param`, `code` and status (429 with its Retry-After), and
    `upstream_status` in its details (it is the upstream's, not this service's); the
    upstream's other failures (its key, its faults) as `upstream_failure`."""
    if not isinstance(error, UpstreamStatus):
        return upstream_failure(error)
    status = error.status
    detail = error.body if isinstance(error.body, dict) else {}
    param = detail.get("param") if isinstance(detail.get("param"), str) else None
    refusal: ServiceError
    if status == 429:
        refusal = RateLimited(
            error.message, retry_after=retry_after(error.headers), param=param, upstream_status=status
        )
    elif status in PASSED_ON:
        refusal = PASSED_ON[status](error.message, param=param, upstream_status=status)
    else:
        return upstream_failure(error)
    if isinstance(detail.get("code"), str):
        refusal.code = detail["code"]
    return refusal


def retry_after(headers: Mapping[str, str]) -> int:
    """Whole seconds from a Retry-After header (seconds or an HTTP date); 1 without one."""
    value = headers.get("retry-after", "")
    try:
        return max(math.ceil(float(value)), 0)
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
        return max(math.ceil(moment.timestamp() - time.time()), 0)
    except (TypeError, ValueError):
        return 1


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
    """The answer in a Chat Completions event stream, read to its very end: stopping at
    `[DONE]` before the end of the HTTP body would throw the connection away (so every
    answer would open a new one, and over TLS pay a new handshake)."""
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


def completion_chunks(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The `chat.completion.chunk` objects of an event stream as sent, read to its very end
    (see `reply_chunks`); an error event is raised as an `UpstreamError`."""
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
        yield chunk


def without_stream(body: dict[str, Any]) -> dict[str, Any]:
    """A client's body as it goes upstream, whether it streams being decided by the call."""
    return {key: value for key, value in body.items() if key != "stream"}


def clean_title(raw: str) -> str | None:
    """First line of the model's answer, without quotes, or None if nothing is left."""
    lines = raw.strip().splitlines()
    line = lines[0].strip().strip("\"'“”«»").strip() if lines else ""
    return line[:MAX_TITLE_LENGTH] or None


class _Reply(Iterator[ReplyChunk]):
    """The chunks of a sent request's answer, as they arrive."""

    def __init__(self, sent: Sent, deadline: Deadline) -> None:
        self._sent = sent
        self._chunks = self._read(deadline)

    def _read(self, deadline: Deadline) -> Iterator[ReplyChunk]:
        try:
            with self._sent.response() as response:
                yield from reply_chunks(within(deadline, response.lines()))
        except UpstreamTimedOut as error:
            raise timed_out(error, deadline) from error
        except UpstreamHttpError as error:
            raise upstream_failure(error) from error

    def __next__(self) -> ReplyChunk:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()
        self._sent.close()


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
        deadline: float = 120.0,
        max_connections: int = 1000,
    ) -> None:
        self.default_model = model
        self._deadline = deadline
        self._http = UpstreamHttp(
            base_url or "https://api.openai.com/v1",
            api_key,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_retries=max_retries,
            keep_alive=min(max_connections, KEEP_ALIVE_CONNECTIONS),
        )

    def stream_reply(self, request: ReplyRequest) -> Iterator[ReplyChunk]:
        """The answer, retried and cut within UPSTREAM_DEADLINE_SECONDS from now. The request
        is sent at once and its answer read as the chunks are, so the caller may store the
        question meanwhile (`services/asking.py`); closing the chunks, read or not, lets the
        request go."""
        body = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            **request.sampling.given(),
        }
        deadline = Deadline(self._deadline)
        return _Reply(self._http.send("POST", "/chat/completions", body, deadline=deadline), deadline)

    def complete(self, request: CompletionRequest) -> CompletionEvent:
        deadline = Deadline(self._deadline)
        try:
            with self._http.request(
                "POST", "/chat/completions", without_stream(request.body), deadline=deadline
            ) as response:
                data = response.json()
        except UpstreamTimedOut as error:
            raise timed_out(error, deadline) from error
        except UpstreamHttpError as error:
            raise passed_on(error) from error
        except ValueError as error:
            raise UpstreamError("The upstream's answer is not JSON.") from error
        if not isinstance(data, dict):
            raise UpstreamError("The upstream's answer is not a JSON object.")
        return CompletionEvent(data)

    def stream_completion(self, request: CompletionRequest) -> Iterator[CompletionEvent]:
        body = {**without_stream(request.body), "stream": True}
        deadline = Deadline(self._deadline)
        try:
            with self._http.request("POST", "/chat/completions", body, deadline=deadline) as response:
                for chunk in completion_chunks(within(deadline, response.lines())):
                    yield CompletionEvent(chunk)
        except UpstreamTimedOut as error:
            raise timed_out(error, deadline) from error
        except UpstreamHttpError as error:
            raise passed_on(error) from error

    def list_models(self) -> list[dict[str, Any]]:
        try:
            with self._http.request("GET", "/models", deadline=Deadline(self._deadline)) as response:
                data = response.json()
        except UpstreamHttpError as error:
            raise upstream_failure(error) from error
        except ValueError as error:
            raise UpstreamError("The upstream's list of models is not JSON.") from error
        models = data.get("data") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise UpstreamError("The upstream's list of models has no `data` list.")
        return [model for model in models if isinstance(model, dict) and isinstance(model.get("id"), str)]

    def generate_title(self, request: ReplyRequest, answer: str) -> str | None:
        exchange = f"User: {request.messages[-1].content}\n\nAssistant: {answer}"
        body = {
            "model": request.model,
            "messages": [
                {"role": "system", "content": TITLE_INSTRUCTION},
                {"role": "user", "content": exchange[:4000]},
            ],
            "max_tokens": 24,
        }
        try:
            with self._http.request("POST", "/chat/completions", body, deadline=Deadline(self._deadline)) as response:
                data = response.json()
        except UpstreamHttpError as error:
            raise upstream_failure(error) from error
        except ValueError as error:
            raise UpstreamError("The upstream's title is not JSON.") from error
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        return clean_title(content if isinstance(content, str) else "")

    def rename(self, upstream_conversation_id: str, title: str) -> None:
        """The upstream keeps no conversations."""

    def delete(self, upstream_conversation_id: str) -> None:
        """The upstream keeps no conversations."""

    def clear(self) -> None:
        """The upstream keeps no conversations."""
