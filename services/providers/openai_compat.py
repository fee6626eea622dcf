"""Any OpenAI-compatible Chat Completions endpoint, through the official `openai` SDK."""

from __future__ import annotations

from collections.abc import Iterator

import openai

from services.errors import UpstreamError, UpstreamTimeout
from services.providers.base import ReplyChunk, ReplyRequest

TITLE_INSTRUCTION = (
    "Write a title of at most six words for the conversation below. "
    "Answer with the title only, no quotes, no punctuation at the end."
)
MAX_TITLE_LENGTH = 80


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
    ) -> None:
        self.default_model = model
        self._client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=openai.Timeout(read_timeout, connect=connect_timeout),
            max_retries=max_retries,
        )

    def stream_reply(self, request: ReplyRequest) -> Iterator[ReplyChunk]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            stream = self._client.chat.completions.create(
                model=request.model,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            with stream:
                yield from self._chunks(stream)
        except openai.APIError as error:
            raise upstream_failure(error) from error

    @staticmethod
    def _chunks(stream: openai.Stream) -> Iterator[ReplyChunk]:  # type: ignore[type-arg]
        for chunk in stream:
            usage = chunk.usage
            if usage is not None:
                yield ReplyChunk(
                    model=chunk.model,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                )
            for choice in chunk.choices:
                delta = choice.delta.content or ""
                if delta or choice.finish_reason:
                    yield ReplyChunk(
                        delta=delta, finish_reason=choice.finish_reason, model=chunk.model
                    )

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
