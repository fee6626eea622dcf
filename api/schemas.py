"""The shapes of the `/api/chat` routes and the operations routes, declared once.

Request bodies are pydantic models: flask-openapi3 validates them and puts them in the
OpenAPI document. Answers are TypedDicts, which cost nothing to build (a long history
is thousands of them) and give the document their schema; each route's envelope
(`{"response": ...}`) is a small model naming the payload.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from services.asking import Answer
from services.chatgpt_format import ConversationDocument
from services.conversations import ConversationSummary

MAX_OFFSET = 1_000_000_000
"""Far past any real list, and far inside every database's integer range."""


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only white space")
    if "\x00" in value:  # PostgreSQL cannot keep it in text: refused on every database alike
        raise ValueError("must not contain NUL characters (\\u0000)")
    return value


NonBlank = Annotated[
    StrictStr,
    AfterValidator(_not_blank),
    Field(json_schema_extra={"pattern": "^[^\\u0000]*\\S[^\\u0000]*$"}),
]
UUIDText = Annotated[str, Field(json_schema_extra={"format": "uuid"})]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]

# -- requests ---------------------------------------------------------------


class Body(BaseModel):
    """Unknown keys are ignored; known keys must have exactly the right JSON type."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class ConversationRef(Body):
    """`convo_id` (the original name) or its alias `conversation_id`; both must agree."""

    convo_id: UUID | None = None
    conversation_id: UUID | None = None

    @property
    def conversation(self) -> UUID | None:
        return self.convo_id or self.conversation_id

    @model_validator(mode="after")
    def _aliases_agree(self) -> Self:
        if self.convo_id and self.conversation_id and self.convo_id != self.conversation_id:
            raise ValueError("convo_id and conversation_id name different conversations")
        return self


class RequiredConversationRef(ConversationRef):
    """`convo_id` (or its alias `conversation_id`) is required."""

    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": ["convo_id"]}, {"required": ["conversation_id"]}]}
    )

    @property
    def required_conversation(self) -> UUID:
        assert self.conversation is not None  # checked on validation
        return self.conversation

    @model_validator(mode="after")
    def _conversation_given(self) -> Self:
        if self.conversation is None:
            raise ValueError("convo_id is required")
        return self


class AskBody(ConversationRef):
    """Without `convo_id` a new conversation; with it, continue from its current node, or from
    `parent_id` (a branch). `parent_id` needs `convo_id`."""

    prompt: NonBlank
    parent_id: UUID | None = None
    model: Annotated[NonBlank, Field(max_length=128)] | None = None
    stream: StrictBool = False

    @model_validator(mode="after")
    def _parent_needs_conversation(self) -> Self:
        if self.parent_id is not None and self.conversation is None:
            raise ValueError("parent_id needs convo_id: a branch lives in a conversation")
        return self


class ListBody(Body):
    offset: Annotated[StrictInt, Field(ge=0, le=MAX_OFFSET)] = 0
    limit: Annotated[StrictInt, Field(ge=1, le=100)] = 20
    after: UUID | None = Field(default=None, description="The last id of the previous page (keyset paging).")


class TitleBody(RequiredConversationRef):
    title: Annotated[NonBlank, Field(max_length=1000)]


class EmptyBody(Body):
    pass


# -- answers ----------------------------------------------------------------


class AnswerAuthor(TypedDict):
    metadata: dict[str, Any]
    name: None
    role: Literal["assistant"]


class AnswerPayload(TypedDict):
    """An answer, as the original service gave it."""

    author: AnswerAuthor
    citations: list[Any]
    conversation_id: UUIDText
    end_turn: bool
    finish_details: Annotated[str | None, Field(description="`stop`, `length`, ... or `interrupted`.")]
    message: Annotated[str, Field(description="The whole answer (in a stream: the answer so far).")]
    model: str
    parent_id: Annotated[UUIDText, Field(description="The answer's id: pass it as `parent_id` to continue.")]
    recipient: str


def answer_payload(answer: Answer) -> AnswerPayload:
    return {
        "author": {"metadata": {}, "name": None, "role": "assistant"},
        "citations": [],
        "conversation_id": str(answer.conversation_id),
        "end_turn": answer.end_turn,
        "finish_details": answer.finish_details,
        "message": answer.text,
        "model": answer.model,
        "parent_id": str(answer.message_id),
        "recipient": "all",
    }


class SummaryPayload(TypedDict):
    id: UUIDText
    title: str
    create_time: Timestamp
    update_time: Timestamp
    mapping: None
    current_node: None


def summary_payload(summary: ConversationSummary) -> SummaryPayload:
    return {
        "id": str(summary.id),
        "title": summary.title,
        "create_time": summary.created_at.isoformat(),
        "update_time": summary.updated_at.isoformat(),
        "mapping": None,
        "current_node": None,
    }


class AnswerResponse(BaseModel):
    response: AnswerPayload

    model_config = ConfigDict(
        openapi_extra={  # type: ignore[typeddict-unknown-key]  # read by flask-openapi3
            "content": {
                "text/event-stream": {
                    "schema": {
                        "type": "string",
                        "description": "With `stream: true`: `data: {AnswerEvent as JSON}` per event, "
                        "then `data: [DONE]`.",
                        "contentMediaType": "application/json",
                        "contentSchema": {"$ref": "#/components/schemas/AnswerEvent"},
                    }
                }
            }
        }
    )


class AnswerEvent(BaseModel):
    """One `data:` line of a streamed answer; the stream ends with `data: [DONE]`."""

    response: AnswerPayload
    delta: str = Field(description="The text added since the previous event.")


class ConversationListResponse(BaseModel):
    response: list[SummaryPayload]


class ConversationTreeResponse(BaseModel):
    response: ConversationDocument


class EmptyResponse(BaseModel):
    response: None


@with_config(ConfigDict(extra="allow"))
class ErrorDetail(TypedDict):
    """Some errors carry more keys: `conversation_id` (the question was stored), `retry_after`."""

    code: Annotated[str, Field(description="A machine word, e.g. `conversation_not_found`.")]
    message: Annotated[str, Field(description="What is wrong and what to do.")]


class ErrorResponse(BaseModel):
    """Every error, with the fitting status."""

    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
