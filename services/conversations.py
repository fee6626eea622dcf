"""What the service does with conversations: ask, list, read, rename, delete, clear.

Every database step is its own short unit of work: the user's message is committed
before the upstream is called, the answer in another unit of work after it, and no
session is held while the upstream talks.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, literal, select, tuple_, update
from sqlalchemy.orm import Session

from models.db import Database
from models.entities import DEFAULT_TITLE, Conversation, Message, utcnow
from services import tokens
from services.background import BackgroundTasks
from services.chatgpt_format import conversation_document
from services.errors import (
    ConversationNotFound,
    InvalidRequest,
    ParentNotFound,
    UpstreamError,
    UpstreamNotConfigured,
)
from services.metrics import Metrics
from services.providers.base import ChatMessage, Provider, ReplyChunk, ReplyRequest

log = logging.getLogger(__name__)

FINISHED = "finished_successfully"
IN_PROGRESS = "in_progress"
INTERRUPTED = "finished_partial_completion"


@dataclass(frozen=True)
class Question:
    """A validated `ask`."""

    prompt: str
    conversation_id: uuid.UUID | None = None
    parent_id: uuid.UUID | None = None
    model: str | None = None


@dataclass(frozen=True)
class Turn:
    """A stored user message, ready to be answered."""

    conversation_id: uuid.UUID
    user_message_id: uuid.UUID
    request: ReplyRequest
    wants_title: bool


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
    upstream_seconds: float = 0.0
    """Time spent waiting on the upstream so far (for the Server-Timing header)."""
    stored: bool = field(default=False, repr=False)

    @property
    def end_turn(self) -> bool:
        return self.finish_details == "stop"

    def add(self, chunk: ReplyChunk) -> None:
        self.text += chunk.delta
        self.model = chunk.model or self.model
        self.finish_details = chunk.finish_reason or self.finish_details
        self.upstream_conversation_id = (
            chunk.upstream_conversation_id or self.upstream_conversation_id
        )
        self.upstream_message_id = chunk.upstream_message_id or self.upstream_message_id
        if chunk.prompt_tokens is not None:
            self.prompt_tokens = chunk.prompt_tokens
        if chunk.completion_tokens is not None:
            self.completion_tokens = chunk.completion_tokens


@dataclass(frozen=True)
class AnswerEvent:
    """One step of a streamed answer: the answer so far and the text just added."""

    answer: Answer
    delta: str


@dataclass(frozen=True)
class ConversationSummary:
    id: uuid.UUID
    title: str
    created_at: datetime
    updated_at: datetime


def _path_query(conversation_id: uuid.UUID, message_id: uuid.UUID) -> Select[tuple[Message]]:
    """Messages from the root down to `message_id`, in one recursive query."""
    walk = (
        select(Message.id, Message.parent_id, literal(0).label("depth"))
        .where(Message.id == message_id, Message.conversation_id == conversation_id)
        .cte("walk", recursive=True)
    )
    walk = walk.union_all(
        select(Message.id, Message.parent_id, walk.c.depth + 1).where(
            Message.id == walk.c.parent_id
        )
    )
    return select(Message).join(walk, Message.id == walk.c.id).order_by(walk.c.depth.desc())


def _storable(chunk: ReplyChunk) -> ReplyChunk:
    """PostgreSQL cannot keep NUL in text: an upstream that sends one gets U+FFFD instead."""
    if "\x00" not in chunk.delta:
        return chunk
    return replace(chunk, delta=chunk.delta.replace("\x00", "\ufffd"))


def _context(path: list[Message]) -> list[ChatMessage]:
    """What the upstream sees: the dialogue's messages with text, root and empty nodes left out.

    Imported tool messages, tool calls and other non-dialogue content have no text here.
    """
    return [
        ChatMessage(role=m.role, content=m.content, upstream_id=m.upstream_id)  # type: ignore[arg-type]
        for m in path
        if m.role in ("system", "user", "assistant") and m.content
    ]


class ConversationService:
    def __init__(
        self,
        db: Database,
        provider: Provider | None,
        *,
        unconfigured_reason: str = "",
        system_prompt: str = "",
        generate_titles: bool = True,
        background: BackgroundTasks | None = None,
        metrics: Metrics | None = None,
        max_prompt_chars: int | None = None,
    ) -> None:
        self._db = db
        self._max_prompt_chars = max_prompt_chars
        self._provider = provider
        self._unconfigured_reason = unconfigured_reason
        self._system_prompt = system_prompt
        self._generate_titles = generate_titles
        self._background = background or BackgroundTasks()
        self._metrics = metrics or Metrics()

    # -- ask -----------------------------------------------------------------

    def ask(self, owner: str, question: Question) -> Answer:
        """Store the question, wait for the whole answer, store it, and return it."""
        events = self.ask_stream(owner, question, write_early=False)
        answer = None
        for event in events:
            answer = event.answer
        assert answer is not None  # ask_stream always ends with a final event
        return answer

    def ask_stream(
        self, owner: str, question: Question, *, write_early: bool = True
    ) -> Iterator[AnswerEvent]:
        """Store the question now; the returned iterator answers it.

        With `write_early` the answer's row is written as soon as the first text
        arrives (marked in progress) and finished at the end. Closing the iterator
        early cancels the upstream call and keeps the text so far, marked unfinished.
        """
        if self._max_prompt_chars is not None and len(question.prompt) > self._max_prompt_chars:
            raise InvalidRequest(
                f"prompt: at most {self._max_prompt_chars} characters (MAX_PROMPT_CHARS); "
                f"this one has {len(question.prompt)}."
            )
        provider = self._require_provider()
        turn = self._store_question(owner, question, provider)
        return self._answer(turn, provider, write_early=write_early)

    def _require_provider(self) -> Provider:
        if self._provider is None:
            raise UpstreamNotConfigured(self._unconfigured_reason)
        return self._provider

    def _store_question(self, owner: str, question: Question, provider: Provider) -> Turn:
        now = utcnow()
        model = question.model or provider.default_model
        with self._db.unit_of_work() as uow:
            session = uow.session
            if question.conversation_id is None:
                if question.parent_id is not None:
                    raise InvalidRequest("parent_id needs convo_id: a branch lives in a conversation.")
                conversation, path = self._new_conversation(session, owner, now)
            else:
                conversation = self._owned(session, owner, question.conversation_id)
                parent_id = question.parent_id or conversation.current_node_id
                path = list(session.scalars(_path_query(conversation.id, parent_id))) if parent_id else []
                if not path:
                    raise ParentNotFound(
                        f"Message {parent_id} is not part of conversation {conversation.id}."
                    )
            user = Message(
                id=uuid.uuid4(),
                conversation_id=conversation.id,
                parent_id=path[-1].id,
                role="user",
                content=question.prompt,
                status=FINISHED,
                created_at=now,
            )
            session.add(user)
            conversation.updated_at = now
            uow.commit()
        path.append(user)
        request = ReplyRequest(
            messages=_context(path),
            model=model,
            user_message_id=str(user.id),
            upstream_conversation_id=conversation.upstream_id,
            upstream_parent_id=path[-2].upstream_id,
        )
        wants_title = (
            self._generate_titles
            and conversation.title == DEFAULT_TITLE
            and not any(m.role == "assistant" for m in path)
        )
        return Turn(conversation.id, user.id, request, wants_title)

    def _new_conversation(
        self, session: Session, owner: str, now: datetime
    ) -> tuple[Conversation, list[Message]]:
        """A conversation with its root node and system node, as ChatGPT makes them."""
        conversation = Conversation(
            id=uuid.uuid4(), owner=owner, title=DEFAULT_TITLE, created_at=now, updated_at=now
        )
        root = Message(id=uuid.uuid4(), conversation_id=conversation.id, created_at=now)
        system = Message(
            id=uuid.uuid4(),
            conversation_id=conversation.id,
            parent_id=root.id,
            role="system",
            content=self._system_prompt,
            status=FINISHED,
            end_turn=True,
            created_at=now,
        )
        conversation.current_node_id = system.id
        session.add_all([conversation, root, system])  # inserted in this order
        return conversation, [root, system]

    def _answer(self, turn: Turn, provider: Provider, *, write_early: bool) -> Iterator[AnswerEvent]:
        answer = Answer(turn.conversation_id, uuid.uuid4(), turn.request.model)
        chunks = provider.stream_reply(turn.request)
        finished = False
        try:
            waited_since = time.perf_counter()
            for chunk in map(_storable, chunks):
                answer.upstream_seconds += time.perf_counter() - waited_since
                if chunk.delta and not answer.text:
                    first_token = self._metrics.upstream_first_token_seconds
                    first_token.labels(provider.name).observe(answer.upstream_seconds)
                answer.add(chunk)
                if write_early and not answer.stored and answer.text:
                    self._save_answer(turn, answer, IN_PROGRESS)
                if chunk.delta:
                    yield AnswerEvent(replace(answer), chunk.delta)
                waited_since = time.perf_counter()
            finished = answer.finish_details is not None
        except UpstreamError as error:
            error.details["conversation_id"] = str(turn.conversation_id)
            self._metrics.upstream_errors.labels(provider.name, error.code).inc()
            raise
        finally:
            chunks.close()
            self._metrics.upstream_seconds.labels(provider.name).observe(answer.upstream_seconds)
            if not finished and answer.text:
                answer.finish_details = "interrupted"
            if answer.stored or answer.text or finished:
                self._estimate_usage(turn, answer)
                self._save_answer(turn, answer, FINISHED if finished else INTERRUPTED)
                self._metrics.observe_tokens(
                    provider.name, answer.prompt_tokens, answer.completion_tokens
                )
        if not finished:
            unfinished = UpstreamError(
                "The upstream ended the answer without finishing it.",
                conversation_id=str(turn.conversation_id),
            )
            self._metrics.upstream_errors.labels(provider.name, unfinished.code).inc()
            raise unfinished
        yield AnswerEvent(replace(answer), "")
        if turn.wants_title:
            self._background.submit(self._title, turn, answer)

    @staticmethod
    def _estimate_usage(turn: Turn, answer: Answer) -> None:
        """Count with a tokenizer what the upstream did not report."""
        if answer.prompt_tokens is None:
            answer.prompt_tokens = tokens.count_prompt(turn.request.messages)
        if answer.completion_tokens is None:
            answer.completion_tokens = tokens.count_text(answer.text)

    def _save_answer(self, turn: Turn, answer: Answer, status: str) -> None:
        """Insert or finish the answer's row and move the conversation's current node to it."""
        now = utcnow()
        with self._db.unit_of_work() as uow:
            session = uow.session
            values: dict[str, Any] = {"current_node_id": answer.message_id, "updated_at": now}
            if answer.upstream_conversation_id:
                values["upstream_id"] = answer.upstream_conversation_id
            moved = session.execute(
                update(Conversation).where(Conversation.id == turn.conversation_id).values(values)
            )
            if moved.rowcount == 0:  # type: ignore[attr-defined]
                return  # deleted while the upstream was answering: nothing to keep
            fields = {
                "content": answer.text,
                "status": status,
                "end_turn": answer.end_turn if status != IN_PROGRESS else None,
                "model": answer.model,
                "finish_details": answer.finish_details,
                "upstream_id": answer.upstream_message_id,
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
            }
            if answer.upstream_message_id:  # the upstream keeps messages under our ids
                session.execute(
                    update(Message)
                    .where(Message.id == turn.user_message_id)
                    .values(upstream_id=turn.request.user_message_id)
                )
            if answer.stored:
                session.execute(
                    update(Message).where(Message.id == answer.message_id).values(fields)
                )
            else:
                session.add(
                    Message(
                        id=answer.message_id,
                        conversation_id=turn.conversation_id,
                        parent_id=turn.user_message_id,
                        role="assistant",
                        created_at=now,
                        **fields,
                    )
                )
            uow.commit()
        answer.stored = True

    def _title(self, turn: Turn, answer: Answer) -> None:
        """Name a conversation after its first exchange, unless someone renamed it first."""
        assert self._provider is not None
        request = replace(turn.request, upstream_conversation_id=answer.upstream_conversation_id)
        title = self._provider.generate_title(request, answer.text)
        if not title:
            return
        with self._db.unit_of_work() as uow:
            uow.session.execute(
                update(Conversation)
                .where(Conversation.id == turn.conversation_id, Conversation.title == DEFAULT_TITLE)
                .values(title=title)
            )
            uow.commit()

    # -- reading -------------------------------------------------------------

    def list_conversations(
        self, owner: str, *, offset: int = 0, limit: int = 20, after: uuid.UUID | None = None
    ) -> list[ConversationSummary]:
        """Newest activity first. `after` (the last id of the previous page) pages by keyset."""
        query = (
            select(Conversation.id, Conversation.title, Conversation.created_at, Conversation.updated_at)
            .where(Conversation.owner == owner)
            .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
            .offset(offset)
            .limit(limit)
        )
        with self._db.unit_of_work() as uow:
            if after is not None:
                cursor = uow.session.get(Conversation, after)
                if cursor is None or cursor.owner != owner:
                    raise ConversationNotFound(f"Conversation {after} (the 'after' cursor) does not exist.")
                # A row-value comparison, which the (owner, updated_at, id) index answers
                # directly; the same condition spelled with OR makes PostgreSQL scan every
                # row before the cursor.
                query = query.where(
                    tuple_(Conversation.updated_at, Conversation.id)
                    < tuple_(cursor.updated_at, cursor.id)
                )
            rows = uow.session.execute(query).all()
        return [ConversationSummary(*row) for row in rows]

    def history(self, owner: str, conversation_id: uuid.UUID) -> dict[str, Any]:
        """The conversation's whole tree in ChatGPT's shape."""
        with self._db.unit_of_work() as uow:
            conversation = self._owned(uow.session, owner, conversation_id)
            # Rows, not entities: a long conversation's thousands of messages then skip the
            # identity map and per-instance state (a 1,000-message history is about twice as fast).
            messages = uow.session.execute(
                select(*Message.__table__.columns)
                .where(Message.conversation_id == conversation_id)
                .order_by(Message.created_at, Message.parent_id.is_not(None))
            ).all()
            return conversation_document(conversation, messages)  # type: ignore[arg-type]

    # -- changing ------------------------------------------------------------

    def rename(self, owner: str, conversation_id: uuid.UUID, title: str) -> None:
        upstream_id = self._upstream_id(owner, conversation_id)
        if upstream_id and self._provider is not None:
            self._provider.rename(upstream_id, title)
        with self._db.unit_of_work() as uow:
            self._owned(uow.session, owner, conversation_id).title = title
            uow.commit()

    def delete(self, owner: str, conversation_id: uuid.UUID) -> None:
        upstream_id = self._upstream_id(owner, conversation_id)
        if upstream_id and self._provider is not None:
            self._provider.delete(upstream_id)
        with self._db.unit_of_work() as uow:
            uow.session.execute(
                delete(Conversation).where(
                    Conversation.id == conversation_id, Conversation.owner == owner
                )
            )
            uow.commit()

    def clear(self, owner: str) -> None:
        """Delete the caller's conversations, and their upstream copies.

        The anonymous caller (no API keys) owns the whole upstream account, as in the
        original service; a key's owner shares it, so only its own copies are deleted there.
        """
        if self._provider is not None and owner == "":
            self._provider.clear()
        elif self._provider is not None:
            with self._db.unit_of_work() as uow:
                mirrored = uow.session.scalars(
                    select(Conversation.id).where(
                        Conversation.owner == owner, Conversation.upstream_id.is_not(None)
                    )
                ).all()
            for conversation_id in mirrored:  # one by one: each deleted here once gone there
                with suppress(ConversationNotFound):  # deleted meanwhile
                    self.delete(owner, conversation_id)
        with self._db.unit_of_work() as uow:
            uow.session.execute(delete(Conversation).where(Conversation.owner == owner))
            uow.commit()

    def close(self) -> None:
        """Let background work (titles) finish."""
        self._background.shutdown()

    def _upstream_id(self, owner: str, conversation_id: uuid.UUID) -> str | None:
        with self._db.unit_of_work() as uow:
            return self._owned(uow.session, owner, conversation_id).upstream_id

    @staticmethod
    def _owned(session: Session, owner: str, conversation_id: uuid.UUID) -> Conversation:
        conversation = session.get(Conversation, conversation_id)
        if conversation is None or conversation.owner != owner:
            raise ConversationNotFound(f"Conversation {conversation_id} does not exist.")
        return conversation
