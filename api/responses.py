"""Response shapes, declared for the OpenAPI document (the payloads are built in `api/payloads.py`
and `services/chatgpt_format.py`; the tests check real answers against these)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class Open(BaseModel):
    """A shape that may carry more keys than it names (as ChatGPT's do)."""

    model_config = ConfigDict(extra="allow")


class AnswerAuthor(BaseModel):
    metadata: dict[str, Any]
    name: str | None
    role: Literal["assistant"]


class Answer(BaseModel):
    """An answer, as the original service gave it."""

    author: AnswerAuthor
    citations: list[Any]
    conversation_id: UUID
    end_turn: bool
    finish_details: str | None = Field(description="`stop`, `length`, ... or `interrupted`.")
    message: str = Field(description="The whole answer (in a stream: the answer so far).")
    model: str
    parent_id: UUID = Field(description="The answer's id: pass it as `parent_id` to continue from here.")
    recipient: str


class AnswerResponse(BaseModel):
    response: Answer


class AnswerEvent(BaseModel):
    """One `data:` line of a streamed answer; the stream ends with `data: [DONE]`."""

    response: Answer
    delta: str = Field(description="The text added since the previous event.")


class ConversationSummary(BaseModel):
    id: UUID
    title: str
    create_time: datetime
    update_time: datetime
    mapping: None
    current_node: None


class ConversationListResponse(BaseModel):
    response: list[ConversationSummary]


class SearchHit(BaseModel):
    """A conversation whose title matches (`message_id` and `role` null), or a message."""

    conversation_id: UUID
    title: str
    message_id: UUID | None
    role: Literal["user", "assistant"] | None
    snippet: str = Field(description="About 200 characters around the matches, each marked `**like this**`.")
    create_time: float = Field(description="Epoch seconds: when the message (or the conversation) was made.")
    cursor: str = Field(description="Pass as `after` to get the hits that follow this one.")


class SearchResponse(BaseModel):
    response: list[SearchHit]


class Usage(BaseModel):
    """Tokens of an answer: the upstream's count, or estimated with a tokenizer when it gave none."""

    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None


class MessageMetadata(Open):
    model_slug: str | None = None
    finish_details: dict[str, Any] | None = None
    usage: Usage | None = None


class MessageAuthor(Open):
    role: str
    metadata: dict[str, Any]


class MessageContent(Open):
    content_type: str = Field(description="`text` here; imported messages keep theirs (`code`, ...).")
    parts: list[Any] | None = None


class Message(Open):
    """Every key is present on messages made here; imported ones keep what the export had."""

    id: str
    author: MessageAuthor
    create_time: float | None = None
    content: MessageContent
    status: str | None = None
    end_turn: bool | None = None
    weight: float | None = None
    metadata: MessageMetadata | None = None
    recipient: str | None = None


class Node(BaseModel):
    id: str
    message: Message | None = Field(default=None, description="Absent on the root node.")
    parent: str | None
    children: list[str]


class ConversationTree(BaseModel):
    """A conversation in ChatGPT's export shape; times are epoch seconds."""

    title: str
    create_time: float
    update_time: float
    mapping: dict[str, Node]
    moderation_results: list[Any]
    current_node: str | None


class ConversationTreeResponse(BaseModel):
    response: ConversationTree


class EmptyResponse(BaseModel):
    response: None


class ErrorBody(Open):
    code: str = Field(description="A machine word; the statuses below list the codes.")
    message: str = Field(description="What is wrong and what to do.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
