"""An in-process provider for the fast service tests: it implements the `Provider`
interface and answers from a script, without HTTP."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from services.errors import UpstreamError
from services.providers.base import ReplyChunk, ReplyRequest


@dataclass
class Scripted:
    """One answer: its pieces, and how it ends (`finish`, or None to break off; `error` raised after the pieces)."""

    pieces: tuple[str, ...] = ("Hello", " there")
    finish: str | None = "stop"
    error: UpstreamError | None = None


@dataclass
class ScriptedProvider:
    name: str = "scripted"
    default_model: str = "scripted-model"
    script: deque[Scripted] = field(default_factory=deque)
    requests: list[ReplyRequest] = field(default_factory=list)
    mirrored: list[tuple[str, str]] = field(default_factory=list)

    def answer_with(self, *answers: Scripted) -> None:
        self.script.extend(answers)

    def stream_reply(self, request: ReplyRequest) -> Iterator[ReplyChunk]:
        self.requests.append(request)
        answer = self.script.popleft() if self.script else Scripted()
        return self._chunks(answer)

    @staticmethod
    def _chunks(answer: Scripted) -> Iterator[ReplyChunk]:
        for piece in answer.pieces:
            yield ReplyChunk(delta=piece)
        if answer.error is not None:
            raise answer.error
        if answer.finish is not None:
            yield ReplyChunk(finish_reason=answer.finish, prompt_tokens=7, completion_tokens=2)

    def generate_title(self, request: ReplyRequest, answer: str) -> str | None:
        return f"About {request.messages[-1].content}"

    def rename(self, upstream_conversation_id: str, title: str) -> None:
        self.mirrored.append(("rename", upstream_conversation_id))

    def delete(self, upstream_conversation_id: str) -> None:
        self.mirrored.append(("delete", upstream_conversation_id))

    def clear(self) -> None:
        self.mirrored.append(("clear", ""))
