"""Asking: store the question, stream the upstream's answer, store the answer.

Every database step is its own short unit of work: the user's message is committed
before the upstream is called (with `STORE_WHILE_ASKING`, a new conversation's while it
is), the answer in another unit of work after it, and no session is held while the
upstream talks.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from models.db import Database
from models.entities import DEFAULT_TITLE, utcnow
from models.repository import Statements
from models.statuses import FINISHED, IN_PROGRESS, INTERRUPTED
from services import tokens
from services.answer_leases import AnswerLeases
from services.context_window import ContextFitter
from services.errors import (
    ConversationNotFound,
    DatabaseUnavailable,
    InvalidRequest,
    ParentNotFound,
    UpstreamError,
    UpstreamNotConfigured,
)
from services.metrics import Metrics
from services.providers.base import ChatMessage, Provider, ReplyChunk, ReplyRequest, Sampling
from services.providers.fallback import check_served
from services.titles import TitleWriter
from services.unit_of_work import UnitOfWork


@dataclass(frozen=True)
class Said:
    """A message as the caller wrote it (one of a response's input items), with the id it gets."""

    role: str
    """`user`, `assistant`, `system` or `developer`."""
    content: str
    id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass(frozen=True)
class Question:
    """A validated `ask`, or a response's request (`/v1/responses`)."""

    prompt: str
    conversation_id: uuid.UUID | None = None
    parent_id: uuid.UUID | None = None
    model: str | None = None
    inputs: tuple[Said, ...] | None = None
    """A response's input messages, stored in this order under the parent (none: answer the
    parent itself); None for `ask`, whose `prompt` is the one user message."""
    instructions: str | None = None
    """Sent first as a system message, for this answer only: never stored as a message."""
    sampling: Sampling = Sampling()
    store: bool = True
    """False: answer from the stored context and keep nothing."""
    record: dict[str, Any] | None = None
    """Kept with the answer as it is (what `/v1/responses` gives back about it)."""

    def said(self) -> tuple[Said, ...]:
        """The messages this question adds (a new id for `prompt` on each call)."""
        return (Said("user", self.prompt),) if self.inputs is None else self.inputs


@dataclass(frozen=True)
class Turn:
    """A stored user message, ready to be answered."""

    conversation_id: uuid.UUID
    user_message_id: uuid.UUID
    request: ReplyRequest
    wants_title: bool
    store: bool = True
    record: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    """How the context was fitted into the model's window, when it did not fit whole."""


@dataclass
class Answer:
    """An assistant answer, complete or so far."""

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    model: str
    text: str = ""
    finish_details: str | None = None
    upstream_conversation_id: str | None = None
    upstream_message_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    upstream: str | None = None
    """Which of the configured upstreams answered (None with a single one)."""
    upstream_seconds: float = 0.0
    """Time spent waiting on the upstream so far (for the Server-Timing header)."""
    created_at: datetime | None = None
    """When its row was first written (None until then, or ever with `store=False`)."""
    stored: bool = field(default=False, repr=False)

    @property
    def end_turn(self) -> bool:
        return self.finish_details == "stop"

    def add(self, chunk: ReplyChunk) -> None:
        self.text += chunk.delta
        self.model = chunk.model or self.model
        self.finish_details = chunk.finish_reason or self.finish_details
        self.upstream_conversation_id = chunk.upstream_conversation_id or self.upstream_conversation_id
        self.upstream_message_id = chunk.upstream_message_id or self.upstream_message_id
        self.upstream = chunk.upstream or self.upstream
        if chunk.prompt_tokens is not None:
            self.prompt_tokens = chunk.prompt_tokens
        if chunk.completion_tokens is not None:
            self.completion_tokens = chunk.completion_tokens


@dataclass(frozen=True)
class AnswerEvent:
    """One step of a streamed answer: the answer so far and the text just added."""

    answer: Answer
    delta: str


def _storable(chunk: ReplyChunk) -> ReplyChunk:
    """PostgreSQL cannot keep NUL in text: an upstream that sends one gets U+FFFD instead."""
    if "\x00" not in chunk.delta:
        return chunk
    return replace(chunk, delta=chunk.delta.replace("\x00", "\ufffd"))


@contextmanager
def _naming_the_conversation(conversation_id: uuid.UUID) -> Iterator[None]:
    """Failures after the question was stored (the upstream's, the database's) carry its
    conversation, so the client can go on from it."""
    try:
        yield
    except (UpstreamError, DatabaseUnavailable) as error:
        error.details.setdefault("conversation_id", str(conversation_id))
        raise


def _context(path: Sequence[Any]) -> list[ChatMessage]:
    """What the upstream sees: the dialogue's messages with text, root and empty nodes left out.

    Imported tool messages, tool calls and other non-dialogue content have no text here.
    """
    return [
        ChatMessage(
            role="system" if m.role == "developer" else m.role, content=m.content, upstream_id=m.upstream_id, node_id=m.id
        )
        for m in path
        if m.role in ("system", "developer", "user", "assistant") and m.content
    ]


def _details(turn: Turn, answer: Answer) -> dict[str, Any] | None:
    """What an answer's metadata adds: the upstream that wrote it, how its context was fitted."""
    details: dict[str, Any] = {}
    if answer.upstream:
        details["upstream"] = answer.upstream
    if turn.context:
        details["context"] = turn.context
    return details or None


@dataclass(frozen=True)
class _Node:
    """A message of the path that is not read back from the database (just written)."""

    id: uuid.UUID
    role: str | None
    content: str
    upstream_id: str | None = None


class AskService:
    """Answers questions, in whole or as a stream of events."""

    def __init__(
        self,
        db: Database,
        provider: Provider | None,
        *,
        metrics: Metrics,
        titles: TitleWriter,
        unconfigured_reason: str = "",
        system_prompt: str = "",
        max_prompt_chars: int | None = None,
        leases: AnswerLeases | None = None,
        context: ContextFitter | None = None,
        store_while_asking: bool = False,
    ) -> None:
        self._db = db
        self._store_while_asking = store_while_asking and not (context is not None and context.stores_summaries)
        """`STORE_WHILE_ASKING`: a new conversation's upstream is asked as its question is written.
        Not when fitting the context may store a summary on the path (`CONTEXT_STRATEGY=summarize`):
        the path must exist first."""
        self._context = context
        """Fits each request into its model's window (None: the whole path is sent)."""
        self.leases = leases or AnswerLeases(db)
        self._provider = provider
        self._metrics = metrics
        self._titles = titles
        self._unconfigured_reason = unconfigured_reason
        self._system_prompt = system_prompt
        self._max_prompt_chars = max_prompt_chars

    def ask(self, owner: str, question: Question) -> Answer:
        """Store the question, wait for the whole answer, store it, and return it."""
        answer = None
        for event in self.ask_stream(owner, question, write_early=False):
            answer = event.answer
        assert answer is not None  # ask_stream always ends with a final event
        return answer

    def ask_stream(self, owner: str, question: Question, *, write_early: bool = True) -> Iterator[AnswerEvent]:
        """Store the question now; the returned iterator answers it.

        The answer's row is written in progress (under this process's lease) as soon as the
        first text arrives, or without `write_early` once the answer has taken `save_every`
        seconds (a quick answer is then written once, at its end); its text is saved again as
        it grows (by `AnswerLeases`, every `save_every` seconds), and finished at the end.
        So a crash loses at most about `save_every` seconds of any answer.
        Closing the iterator early cancels the upstream call and keeps the text so far,
        marked interrupted.
        """
        said = question.said()
        size = sum(len(message.content) for message in said)
        if self._max_prompt_chars is not None and size > self._max_prompt_chars:
            name = "prompt" if question.inputs is None else "input"
            raise InvalidRequest(
                f"{name}: at most {self._max_prompt_chars} characters (MAX_PROMPT_CHARS); this one has {size}.",
                param=name,
            )
        provider = self._require_provider()
        check_served(provider, question.model or provider.default_model)
        if question.conversation_id is None:
            turn, reply = self._start_conversation(owner, question, said, provider)
        else:
            turn, reply = self._store_follow_up(owner, question, said, provider), None
        return self._answer(turn, provider, reply, write_early=write_early)

    def _require_provider(self) -> Provider:
        if self._provider is None:
            raise UpstreamNotConfigured(self._unconfigured_reason)
        return self._provider

    # -- the question --------------------------------------------------------

    def _start_conversation(
        self, owner: str, question: Question, said: Sequence[Said], provider: Provider
    ) -> tuple[Turn, Iterator[ReplyChunk] | None]:
        """A new conversation with the question's messages (nothing stored with `store=False`),
        and its reply when it was asked for already.

        The question is stored before the upstream is asked, as the API promises. With
        `STORE_WHILE_ASKING` the upstream is asked first (a new conversation's context is
        known before it is stored) and the conversation written, in one statement, while the
        upstream works on the answer; if the write fails, the upstream's request is let go (its
        connection closed) and the ask fails with nothing kept."""
        conversation_id, path, nodes = self._first_nodes([(m.id, m.role, m.content) for m in said])
        overlap = question.store and self._store_while_asking
        if question.store and not overlap:
            self._write_conversation(owner, conversation_id, nodes)
        turn = self._turn(conversation_id, question, path, said, DEFAULT_TITLE, None, provider)
        if not overlap:
            return turn, None
        reply = provider.stream_reply(turn.request)
        try:
            self._write_conversation(owner, conversation_id, nodes)
        except BaseException:
            reply.close()  # type: ignore[attr-defined]
            raise
        return turn, reply

    def _write_conversation(self, owner: str, conversation_id: uuid.UUID, nodes: list[dict[str, Any]]) -> None:
        """A new conversation and its first nodes, in one statement."""
        with UnitOfWork(self._db, one_statement=True) as uow:
            self._add_conversation(uow.statements, owner, utcnow(), conversation_id, nodes)
            uow.commit()

    def _store_follow_up(self, owner: str, question: Question, said: Sequence[Said], provider: Provider) -> Turn:
        """Store the question's messages under its parent (nothing with `store=False`)."""
        assert question.conversation_id is not None
        now = utcnow()
        with UnitOfWork(self._db) as uow:
            repo = uow.conversations
            if question.store:
                found = repo.claim(owner, question.conversation_id, now)
            else:
                found = repo.owned(owner, question.conversation_id)
            if found is None:
                raise ConversationNotFound(f"Conversation {question.conversation_id} does not exist.")
            parent_id = question.parent_id or found.current_node_id
            path = list(repo.path(question.conversation_id, parent_id)) if parent_id else []
            if not path:
                raise ParentNotFound(f"Message {parent_id} is not part of conversation {question.conversation_id}.")
            if question.store:
                chain = [(message.id, message.role, message.content) for message in said]
                repo.add_chain(question.conversation_id, path[-1].id, chain, status=FINISHED, created_at=now)
            uow.commit()
        return self._turn(question.conversation_id, question, path, said, found.title, found.upstream_id, provider)

    def _turn(
        self,
        conversation_id: uuid.UUID,
        question: Question,
        path: Sequence[Any],
        said: Sequence[Said],
        title: str,
        upstream_id: str | None,
        provider: Provider,
    ) -> Turn:
        """The question to answer: its messages after `path`, the request for them (its context
        fitted), and whether the conversation wants a title."""
        path = [*path, *(_Node(message.id, message.role, message.content) for message in said)]
        messages = _context(path)
        if question.instructions:
            messages.insert(0, ChatMessage(role="system", content=question.instructions))
        request = ReplyRequest(
            messages=messages,
            model=question.model or provider.default_model,
            user_message_id=str(path[-1].id),
            upstream_conversation_id=upstream_id,
            upstream_parent_id=path[-2].upstream_id if len(path) > 1 else None,
            sampling=question.sampling,
        )
        fitted = None
        if self._context is not None:
            request, fitted = self._context.fit(request, path, keep=question.store)
        wants_title = (
            question.store
            and self._titles.enabled
            and title == DEFAULT_TITLE
            and not any(m.role == "assistant" for m in path)
        )
        context = fitted.details() if fitted else None
        return Turn(conversation_id, path[-1].id, request, wants_title, question.store, question.record, context)

    def new_conversation(
        self,
        repo: Statements,
        owner: str,
        now: datetime,
        *,
        keep: bool = True,
        chain: Sequence[tuple[uuid.UUID, str, str]] = (),
    ) -> tuple[uuid.UUID, list[Any]]:
        """A conversation with its root node and system node, as ChatGPT makes them, and the
        messages `chain` `(id, role, content)` under them, all written in one go unless `keep`
        is False; its id and the root and system nodes."""
        conversation_id, path, nodes = self._first_nodes(chain)
        if keep:
            self._add_conversation(repo, owner, now, conversation_id, nodes)
        return conversation_id, path

    def _first_nodes(
        self, chain: Sequence[tuple[uuid.UUID, str, str]]
    ) -> tuple[uuid.UUID, list[Any], list[dict[str, Any]]]:
        """A new conversation's id, its root and system nodes, and the rows of those nodes and
        of the messages `chain` `(id, role, content)` under them, to be written."""
        conversation_id, root, system = uuid.uuid4(), _Node(uuid.uuid4(), None, ""), _Node(
            uuid.uuid4(), "system", self._system_prompt
        )
        nodes = [
            {"id": root.id, "parent_id": None, "role": None, "content": "", "end_turn": None},
            {"id": system.id, "parent_id": root.id, "role": "system", "content": system.content, "end_turn": True},
        ]
        parent_id = system.id
        for message_id, role, content in chain:
            nodes.append({"id": message_id, "parent_id": parent_id, "role": role, "content": content, "end_turn": None})
            parent_id = message_id
        return conversation_id, [root, system], nodes

    @staticmethod
    def _add_conversation(
        repo: Statements, owner: str, now: datetime, conversation_id: uuid.UUID, nodes: list[dict[str, Any]]
    ) -> None:
        repo.add_conversation(
            id=conversation_id,
            owner=owner,
            title=DEFAULT_TITLE,
            created_at=now,
            updated_at=now,
            current_node_id=nodes[1]["id"],
            nodes=nodes,
        )

    # -- the answer ----------------------------------------------------------

    def _answer(
        self, turn: Turn, provider: Provider, reply: Iterator[ReplyChunk] | None, *, write_early: bool
    ) -> Iterator[AnswerEvent]:
        """`reply`: the answer's chunks when they were asked for already, else they are asked for here."""
        answer = Answer(turn.conversation_id, uuid.uuid4(), turn.request.model)
        with _naming_the_conversation(turn.conversation_id):
            yield from self._stream_answer(
                turn, provider, answer, reply if reply is not None else provider.stream_reply(turn.request),
                write_early=write_early,
            )
        if turn.wants_title:
            self._titles.submit(turn.conversation_id, replace(
                turn.request, upstream_conversation_id=answer.upstream_conversation_id
            ), answer.text)

    def _stream_answer(
        self, turn: Turn, provider: Provider, answer: Answer, chunks: Iterator[ReplyChunk], *, write_early: bool
    ) -> Iterator[AnswerEvent]:
        finished = False
        first_save = time.perf_counter() + (0.0 if write_early else self.leases.save_every)
        try:
            waited_since = time.perf_counter()
            for chunk in map(_storable, chunks):
                answer.upstream_seconds += time.perf_counter() - waited_since
                if chunk.delta and not answer.text:
                    first_token = self._metrics.upstream_first_token_seconds
                    first_token.labels(provider.name).observe(answer.upstream_seconds)
                answer.add(chunk)
                if turn.store and answer.text and (answer.stored or time.perf_counter() >= first_save):
                    self._save_progress(turn, answer)
                if chunk.delta:
                    yield AnswerEvent(replace(answer), chunk.delta)
                waited_since = time.perf_counter()
            finished = answer.finish_details is not None
        except UpstreamError as error:
            self._metrics.upstream_errors.labels(provider.name, error.code).inc()
            raise
        finally:
            chunks.close()
            self._metrics.upstream_seconds.labels(provider.name).observe(answer.upstream_seconds)
            if not finished and answer.text:
                answer.finish_details = "interrupted"
            try:
                if answer.stored or answer.text or finished:
                    self._estimate_usage(turn, answer)
                    if turn.store:
                        self._save_answer(turn, answer, FINISHED if finished else INTERRUPTED)
                    self._metrics.observe_tokens(provider.name, answer.prompt_tokens, answer.completion_tokens)
            finally:
                self.leases.let_go(answer.message_id)
        if not finished:
            unfinished = UpstreamError("The upstream ended the answer without finishing it.")
            self._metrics.upstream_errors.labels(provider.name, unfinished.code).inc()
            raise unfinished
        yield AnswerEvent(replace(answer), "")

    def _save_progress(self, turn: Turn, answer: Answer) -> None:
        """The first text makes the answer's row (in progress, under this process's lease);
        later text is saved with the leases' next round."""
        if answer.stored:
            self.leases.note(answer.message_id, answer.text)
        else:
            self._save_answer(turn, answer, IN_PROGRESS)
            self.leases.hold(answer.message_id)

    @staticmethod
    def _estimate_usage(turn: Turn, answer: Answer) -> None:
        """Count with a tokenizer what the upstream did not report."""
        if answer.prompt_tokens is None:
            answer.prompt_tokens = tokens.count_prompt(turn.request.messages)
        if answer.completion_tokens is None:
            answer.completion_tokens = tokens.count_text(answer.text)

    def _save_answer(self, turn: Turn, answer: Answer, status: str) -> None:
        """Insert or finish the answer's row and move the conversation's current node to it
        (nothing is kept if the conversation was deleted while the upstream answered)."""
        now = utcnow()
        moved: dict[str, Any] = {"current_node_id": answer.message_id, "updated_at": now}
        if answer.upstream_conversation_id:
            moved["upstream_id"] = answer.upstream_conversation_id
        row = {
            "id": answer.message_id,
            "content": answer.text,
            "status": status,
            "end_turn": answer.end_turn if status != IN_PROGRESS else None,
            "model": answer.model,
            "finish_details": answer.finish_details,
            "upstream_id": answer.upstream_message_id,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "response_fields": turn.record,
            "answer_details": _details(turn, answer),
            "lease_expires_at": self.leases.expiry(now) if status == IN_PROGRESS else None,
        }
        if not answer.stored:
            row.update(conversation_id=turn.conversation_id, parent_id=turn.user_message_id,
                       role="assistant", created_at=now)
        mirrored = bool(answer.upstream_message_id)  # the upstream keeps messages under our ids
        with UnitOfWork(self._db, one_statement=not mirrored) as uow:
            repo = uow.conversations if mirrored else uow.statements
            if not repo.place_answer(turn.conversation_id, moved, row, new=not answer.stored):
                return
            if mirrored:
                uow.conversations.update_message(turn.user_message_id, upstream_id=turn.request.user_message_id)
            uow.commit()
        if not answer.stored:
            answer.created_at = now
        answer.stored = True
