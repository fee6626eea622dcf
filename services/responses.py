"""Responses (`/v1/responses`): the tree's answers, as OpenAI's Responses API sees them.

A response is the assistant message it produced (its id is that message's id); its input
items are the messages the same request stored just above it. What OpenAI's object says
beyond that (instructions, metadata, sampling, the previous response) is kept with the
message (`response_fields`); an answer made by `ask` reads as a response whose input is
its question and whose other fields are the defaults.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from models.db import Database
from models.entities import utcnow
from models.repository import ConversationRepository
from services import ids
from services.asking import IN_PROGRESS, INTERRUPTED, Answer, AnswerEvent, AskService, Question, Said
from services.conversations import ConversationService
from services.errors import InvalidRequest, NotFound
from services.items import ItemView, Page, item_of, page_of
from services.providers.base import Sampling
from services.unit_of_work import UnitOfWork

INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}
"""Upstream finish reasons that make a response `incomplete`, and OpenAI's word for each."""


@dataclass(frozen=True)
class ResponseFields:
    """What a response keeps beyond its message."""

    input_ids: tuple[uuid.UUID, ...] | None = None
    """The messages stored as this response's input; None for an `ask` answer (its question)."""
    instructions: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    previous_response_id: uuid.UUID | None = None
    in_conversation: bool = False
    """The request named the conversation (the response object then names it too)."""
    sampling: Sampling = Sampling()

    def to_json(self) -> dict[str, Any]:
        return {
            "input_ids": None if self.input_ids is None else [str(i) for i in self.input_ids],
            "instructions": self.instructions,
            "metadata": self.metadata,
            "previous_response_id": self.previous_response_id and str(self.previous_response_id),
            "in_conversation": self.in_conversation,
            "sampling": self.sampling.given(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ResponseFields:
        if not data:
            return cls()
        previous = data.get("previous_response_id")
        return cls(
            input_ids=None if data.get("input_ids") is None else tuple(uuid.UUID(i) for i in data["input_ids"]),
            instructions=data.get("instructions"),
            metadata=data.get("metadata") or {},
            previous_response_id=uuid.UUID(previous) if previous else None,
            in_conversation=bool(data.get("in_conversation")),
            sampling=Sampling(**data.get("sampling", {})),
        )


@dataclass(frozen=True)
class NewResponse:
    """A validated `POST /v1/responses`."""

    inputs: tuple[Said, ...]
    model: str | None = None
    conversation_id: uuid.UUID | None = None
    previous_response_id: uuid.UUID | None = None
    instructions: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    sampling: Sampling = Sampling()
    store: bool = True


@dataclass(frozen=True)
class ResponseView:
    id: uuid.UUID
    conversation_id: uuid.UUID
    created_at: datetime
    model: str
    text: str
    status: str
    """`completed`, `incomplete`, `in_progress` or `failed`."""
    incomplete_reason: str | None
    input_tokens: int
    output_tokens: int
    fields: ResponseFields
    error: str | None = None


def status_of(stored: str, finish_details: str | None) -> tuple[str, str | None]:
    """A response's status and incomplete reason, from its message's status and how it ended
    (an answer that broke off is `incomplete` with no reason: none of OpenAI's fits)."""
    if stored == IN_PROGRESS:
        return "in_progress", None
    if stored == INTERRUPTED:
        return "incomplete", None
    if finish_details in INCOMPLETE_REASONS:
        return "incomplete", INCOMPLETE_REASONS[finish_details]
    return "completed", None


def view_of_answer(
    answer: Answer, fields: ResponseFields, created_at: datetime, *, failed: str | None = None
) -> ResponseView:
    """A response being answered or just answered; `failed` says why it broke off. Its time is
    its row's once written (what reading it back gives), `created_at` until then."""
    if failed is not None:
        status, reason = "failed", None
    elif answer.finish_details is None:
        status, reason = "in_progress", None
    else:
        stored = INTERRUPTED if answer.finish_details == "interrupted" else ""
        status, reason = status_of(stored, answer.finish_details)
    return ResponseView(
        id=answer.message_id,
        conversation_id=answer.conversation_id,
        created_at=answer.created_at or created_at,
        model=answer.model,
        text=answer.text,
        status=status,
        incomplete_reason=reason,
        input_tokens=answer.prompt_tokens or 0,
        output_tokens=answer.completion_tokens or 0,
        fields=fields,
        error=failed,
    )


def view_of_row(row: Any) -> ResponseView:
    """A stored response, from its message row."""
    status, reason = status_of(row.status, row.finish_details)
    return ResponseView(
        id=row.id,
        conversation_id=row.conversation_id,
        created_at=row.created_at,
        model=row.model or "",
        text=row.content,
        status=status,
        incomplete_reason=reason,
        input_tokens=row.prompt_tokens or 0,
        output_tokens=row.completion_tokens or 0,
        fields=ResponseFields.from_json(row.response_fields),
    )


class ResponseService:
    """Creates responses through `AskService`; reads, lists the input of, and deletes them."""

    def __init__(
        self,
        db: Database,
        asking: AskService,
        conversations: ConversationService,
        *,
        one_message_upstream: bool = False,
    ) -> None:
        """`one_message_upstream`: the upstream keeps the conversation and takes one user message
        per turn (a ChatGPT account), so what it cannot honour is refused."""
        self._db = db
        self._asking = asking
        self._conversations = conversations
        self._one_message_upstream = one_message_upstream

    def create(self, owner: str, new: NewResponse) -> ResponseView:
        """Answer in whole; the upstream's failure is raised (what it wrote so far is kept)."""
        question, fields = self._question(owner, new)
        with _blaming(new):
            answer = self._asking.ask(owner, question)
        return view_of_answer(answer, fields, utcnow())

    def stream(self, owner: str, new: NewResponse) -> tuple[ResponseFields, Iterator[AnswerEvent]]:
        """The fields the response keeps, and its answer as events (see `AskService.ask_stream`)."""
        question, fields = self._question(owner, new)
        with _blaming(new):
            return fields, self._asking.ask_stream(owner, question)

    def get(self, owner: str, response_id: uuid.UUID) -> ResponseView:
        with UnitOfWork(self._db) as uow:
            return view_of_row(_response_row(uow.conversations, owner, response_id))

    def input_items(
        self, owner: str, response_id: uuid.UUID, *, after: uuid.UUID | None, limit: int, order: str
    ) -> Page[ItemView]:
        with UnitOfWork(self._db) as uow:
            row = _response_row(uow.conversations, owner, response_id)
            input_ids = ResponseFields.from_json(row.response_fields).input_ids
            wanted = (row.parent_id,) if input_ids is None else input_ids
            found = {m.id: m for m in uow.conversations.messages_by_id(row.conversation_id, wanted)}
        items = [item_of(found[i]) for i in wanted if i in found]
        return page_of(items, lambda item: item.id, after=after, limit=limit, order=order)

    def delete(self, owner: str, response_id: uuid.UUID) -> None:
        """The answer and every message below it; a current node among them moves up to its
        parent. An upstream copy of the conversation is hidden first (ChatGPT's, which cannot
        delete one message: see `ConversationService.drop_upstream_copy`)."""
        with UnitOfWork(self._db) as uow:
            conversation_id = _response_row(uow.conversations, owner, response_id).conversation_id
        self._conversations.drop_upstream_copy(owner, conversation_id)
        with UnitOfWork(self._db) as uow:
            repo = uow.conversations
            row = _response_row(repo, owner, response_id)
            current = row.current_node_id
            if current is not None and any(m.id == row.id for m in repo.path(row.conversation_id, current)):
                repo.touch(row.conversation_id, current_node_id=row.parent_id)
            repo.delete_message(row.id)
            uow.commit()

    def _question(self, owner: str, new: NewResponse) -> tuple[Question, ResponseFields]:
        """The question to ask for `new`, and the fields its response keeps."""
        if new.previous_response_id is not None and new.conversation_id is not None:
            raise InvalidRequest(
                "previous_response_id: give it or conversation, not both.", param="previous_response_id"
            )
        if not new.inputs and new.previous_response_id is None and new.conversation_id is None:
            raise InvalidRequest("input: required to start a conversation.", param="input")
        if self._one_message_upstream:
            _refuse_what_a_chatgpt_account_cannot_do(new)
        conversation_id, parent_id = new.conversation_id, None
        if new.previous_response_id is not None:
            with UnitOfWork(self._db) as uow:
                previous = _response_row(
                    uow.conversations, owner, new.previous_response_id, param="previous_response_id"
                )
            conversation_id, parent_id = previous.conversation_id, previous.id
        fields = ResponseFields(
            input_ids=tuple(said.id for said in new.inputs),
            instructions=new.instructions,
            metadata=new.metadata,
            previous_response_id=new.previous_response_id,
            in_conversation=new.conversation_id is not None,
            sampling=new.sampling,
        )
        question = Question(
            prompt="",
            conversation_id=conversation_id,
            parent_id=parent_id,
            model=new.model,
            inputs=new.inputs,
            instructions=new.instructions,
            sampling=new.sampling,
            store=new.store,
            record=fields.to_json() if new.store else None,
        )
        return question, fields


def _response_row(
    repo: ConversationRepository, owner: str, response_id: uuid.UUID, param: str | None = None
) -> Any:
    """The owner's stored answer `response_id`, or NotFound."""
    row = repo.owned_message(owner, response_id)
    if row is None or row.role != "assistant":
        raise NotFound(f"No response {ids.encode(ids.RESPONSE, response_id)}.", param=param)
    return row


@contextmanager
def _blaming(new: NewResponse) -> Iterator[None]:
    """A conversation or message that is gone by the time the question is stored: the fault
    of the field that named it."""
    try:
        yield
    except NotFound as error:
        error.details.setdefault("param", "conversation" if new.conversation_id else "previous_response_id")
        raise


def _refuse_what_a_chatgpt_account_cannot_do(new: NewResponse) -> None:
    """A ChatGPT account answers one user message in its own copy of the conversation."""
    unsupported = {
        "instructions": new.instructions is not None,
        "store": not new.store,
        **{"max_output_tokens" if name == "max_tokens" else name: True for name in new.sampling.given()},
        "input": len(new.inputs) != 1 or new.inputs[0].role != "user",
    }
    for name, refused in unsupported.items():
        if refused:
            raise InvalidRequest(
                f"{name}: not supported with LLM_PROVIDER=chatgpt (one user message per response, "
                "no instructions, sampling or store=false).",
                param=name,
            )
