"""Any OpenAI-compatible Chat Completions endpoint, through the official `openai` SDK."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx2
import openai

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
from services.providers.deadline import Deadline, opened, retry_after_seconds, within

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
    if isinstance(error, openai.RateLimitError):
        wait = retry_after_seconds(error.response.headers)
        return UpstreamRateLimited(
            f"The upstream is limiting this service's requests: {error.message}",
            **({"retry_after": math.ceil(wait)} if wait is not None else {}),
        )
    if isinstance(error, openai.APIStatusError):
        return UpstreamError(
            f"The upstream answered {error.status_code}: {error.message}",
            upstream_status=error.status_code,
        )
    if isinstance(error, openai.APIConnectionError):
        return UpstreamError("Could not reach the upstream (connection failed or was cut).")
    return UpstreamError(f"The upstream failed: {error}")


PASSED_ON = {400: InvalidRequest, 404: NotFound, 409: InvalidRequest, 413: InvalidRequest, 422: InvalidRequest}
"""Upstream refusals that are about the client's request, passed on as its own error (429 too)."""


def passed_on(error: openai.APIError) -> ServiceError:
    """For a request the client wrote (`/v1/chat/completions`): the upstream's refusal of it,
    with the upstream's message, `param`, `code` and status (429 with its Retry-After), and
    `upstream_status` in its details (it is the upstream's, not this service's); the
    upstream's other failures (its key, its faults) as `upstream_failure`."""
    if not isinstance(error, openai.APIStatusError):
        return upstream_failure(error)
    status = error.status_code
    detail = error.body if isinstance(error.body, dict) else {}
    message = str(detail.get("message") or error.message)
    param = detail.get("param") if isinstance(detail.get("param"), str) else None
    refusal: ServiceError
    if status == 429:
        refusal = RateLimited(
            message, retry_after=retry_after(error.response.headers), param=param, upstream_status=status
        )
    elif status in PASSED_ON:
        refusal = PASSED_ON[status](message, param=param, upstream_status=status)
    else:
        return upstream_failure(error)
    if isinstance(detail.get("code"), str):
        refusal.code = detail["code"]
    return refusal


def retry_after(headers: httpx2.Headers) -> int:
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


def sdk_arguments(body: dict[str, Any]) -> dict[str, Any]:
    """A client's body as the SDK's arguments: what the SDK does not name goes as it is in `extra_body`."""
    fields = {key: value for key, value in body.items() if key not in ("model", "messages", "stream")}
    return {"model": body["model"], "messages": body["messages"], "extra_body": fields}


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
        deadline: float = 120.0,
        max_connections: int = 1000,
    ) -> None:
        self.default_model = model
        self._timeouts = {"read_timeout": read_timeout, "connect_timeout": connect_timeout}
        self._max_retries = max_retries
        self._deadline = deadline
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
        self._answers = self._client.with_options(max_retries=0)
        """For answers, retried here within their deadline (`services/providers/deadline.py`)."""

    def stream_reply(self, request: ReplyRequest) -> Iterator[ReplyChunk]:
        """The answer, retried and cut within UPSTREAM_DEADLINE_SECONDS from now."""
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        deadline = Deadline(self._deadline)

        def send(timeout: httpx2.Timeout) -> Any:
            return self._answers.chat.completions.with_streaming_response.create(
                model=request.model,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
                timeout=timeout,
                **request.sampling.given(),  # type: ignore[arg-type]
            )

        try:
            with opened(send, deadline, max_retries=self._max_retries, **self._timeouts) as response:
                yield from reply_chunks(within(deadline, response.iter_lines()))
        except openai.APITimeoutError as error:
            raise (deadline.expired() if deadline.left() <= 0 else upstream_failure(error)) from error
        except openai.APIError as error:
            raise upstream_failure(error) from error
        except httpx2.TimeoutException as error:
            raise upstream_failure(openai.APITimeoutError(request=error.request)) from error
        except httpx2.TransportError as error:
            raise upstream_failure(openai.APIConnectionError(request=error.request)) from error

    def complete(self, request: CompletionRequest) -> CompletionEvent:
        try:
            with self._client.chat.completions.with_streaming_response.create(
                **sdk_arguments(request.body)
            ) as response:
                data = response.json()
        except openai.APIError as error:
            raise passed_on(error) from error
        except httpx2.TimeoutException as error:
            raise upstream_failure(openai.APITimeoutError(request=error.request)) from error
        except httpx2.TransportError as error:
            raise upstream_failure(openai.APIConnectionError(request=error.request)) from error
        except ValueError as error:
            raise UpstreamError("The upstream's answer is not JSON.") from error
        if not isinstance(data, dict):
            raise UpstreamError("The upstream's answer is not a JSON object.")
        return CompletionEvent(data)

    def stream_completion(self, request: CompletionRequest) -> Iterator[CompletionEvent]:
        try:
            with self._client.chat.completions.with_streaming_response.create(
                **sdk_arguments(request.body), stream=True
            ) as response:
                for chunk in completion_chunks(response.iter_lines()):
                    yield CompletionEvent(chunk)
        except openai.APIError as error:
            raise passed_on(error) from error
        except httpx2.TimeoutException as error:
            raise upstream_failure(openai.APITimeoutError(request=error.request)) from error
        except httpx2.TransportError as error:
            raise upstream_failure(openai.APIConnectionError(request=error.request)) from error

    def list_models(self) -> list[dict[str, Any]]:
        try:
            with self._client.models.with_streaming_response.list() as response:
                data = response.json()
        except openai.APIError as error:
            raise upstream_failure(error) from error
        except httpx2.HTTPError as error:
            raise UpstreamError(f"Could not read the upstream's models: {error}") from error
        except ValueError as error:
            raise UpstreamError("The upstream's list of models is not JSON.") from error
        models = data.get("data") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise UpstreamError("The upstream's list of models has no `data` list.")
        return [model for model in models if isinstance(model, dict) and isinstance(model.get("id"), str)]

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
