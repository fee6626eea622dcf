"""The shapes of the `/api/chat` routes and the operations routes, declared once.

Request bodies are pydantic models: flask-openapi3 validates them and puts them in the
OpenAPI document. Answers are TypedDicts, which cost nothing to build (a long history
is thousands of them) and give the document their schema; each route's envelope
(`{"response": ...}`) is a small model naming the payload.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from services.asking import Answer
from services.chatgpt_format import ConversationDocument
from services.conversations import ConversationSummary
from services.search import CURSOR_PATTERN, SearchHit

MAX_OFFSET = 1_000_000_000
"""Far past any real list, and far inside every database's integer range."""


WHITE_SPACE = r"\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
"""The characters Python's `str.isspace` counts, as a regular-expression class that reads the
same in Python, ECMAScript (JSON Schema) and Rust, so the schema and the server agree."""
NOT_BLANK_PATTERN = rf"^[^\x00]*[^\x00{WHITE_SPACE}][^\x00]*$"
_VISIBLE = re.compile(rf"[^{WHITE_SPACE}]")


def _not_blank(value: str) -> str:
    if "\x00" in value:  # PostgreSQL cannot keep it in text: refused on every database alike
        raise ValueError("must not contain NUL characters (\\u0000)")
    if not _VISIBLE.search(value):
        raise ValueError("must not be empty or only white space")
    return value


NonBlank = Annotated[
    StrictStr,
    AfterValidator(_not_blank),
    Field(json_schema_extra={"pattern": NOT_BLANK_PATTERN}),
]


def _whole_number(value: object) -> object:
    """JSON has one number type, and JSON Schema counts 16.0 as the integer 16: so does the
    service. 2.5, "16" and true stay errors."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WHOLE_NUMBER = BeforeValidator(_whole_number)
UUIDText = Annotated[str, Field(json_schema_extra={"format": "uuid"})]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]

# -- requests ---------------------------------------------------------------


class Body(BaseModel):
    """Unknown keys are ignored; known keys must have exactly the right JSON type."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def _given(name: str) -> dict[str, Any]:
    """JSON Schema for "`name` is there and not null"."""
    return {"required": [name], "properties": {name: {"type": "string"}}}


ONE_ALIAS = {"not": {"allOf": [_given("convo_id"), _given("conversation_id")]}}
"""Not both names at once. (The service also takes both when they name the same conversation,
which the schema cannot say; clients send one.)"""


class ConversationRef(Body):
    """`convo_id` (the original name) or its alias `conversation_id`; both must agree."""

    model_config = ConfigDict(json_schema_extra=ONE_ALIAS)

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
        json_schema_extra={"anyOf": [_given("convo_id"), _given("conversation_id")], **ONE_ALIAS}
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

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [{"properties": {"parent_id": {"type": "null"}}}, _given("convo_id"), _given("conversation_id")],
            **ONE_ALIAS,
        }
    )

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
    offset: Annotated[int, Field(strict=True, ge=0, le=MAX_OFFSET), WHOLE_NUMBER] = 0
    limit: Annotated[int, Field(strict=True, ge=1, le=100), WHOLE_NUMBER] = 20
    after: UUID | None = Field(default=None, description="The last id of the previous page (keyset paging).")


class TitleBody(RequiredConversationRef):
    title: Annotated[NonBlank, Field(max_length=1000)]


class EmptyBody(Body):
    pass


class SearchBody(ConversationRef):
    """Words must all match, `"a phrase"`, `-excluded`, `prefix*`; anything else is literal.
    `convo_id` (or `conversation_id`) searches one conversation."""

    query: Annotated[NonBlank, Field(max_length=1000)]
    limit: Annotated[int, Field(strict=True, ge=1, le=100), WHOLE_NUMBER] = 20
    after: Annotated[StrictStr, Field(pattern=CURSOR_PATTERN)] | None = Field(
        default=None, description="The `cursor` of the last hit of the previous page."
    )
    role: Literal["user", "assistant"] | None = None


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


def _json_text(schema: str) -> dict[str, Any]:
    """A string holding a JSON document of the named component schema."""
    return {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"$ref": f"#/components/schemas/{schema}"},
    }


ANSWER_STREAM_EVENT: dict[str, Any] = {
    "description": "With `stream: true`, each server-sent event: `data: <AnswerEvent>` as the answer "
    "grows, then `data: [DONE]`; a failure after the answer began is `event: error` with "
    "`data: <ErrorResponse>`, then `data: [DONE]`. Comments (`: keep-alive`) fill silences.",
    "type": "object",
    "required": ["data"],
    "properties": {"event": {"enum": ["message", "error"]}, "data": {"type": "string"}},
    "if": {"required": ["event"], "properties": {"event": {"const": "error"}}},
    "then": {"properties": {"data": _json_text("ErrorResponse")}},
    "else": {
        "if": {"properties": {"data": {"const": "[DONE]"}}},
        "else": {"properties": {"data": _json_text("AnswerEvent")}},
    },
}
"""OpenAPI 3.1 has no word for event streams; as in OpenAPI 3.2's `itemSchema`, the schema
describes one event (its `event` and `data` fields; an event without `event:` is a `message`)."""

_ANSWER = "$response.body#/response"
CONVERSATION_LINKS: dict[str, Any] = {
    "continue": {
        "operationRef": "#/paths/~1api~1chat~1ask/post",
        "requestBody": {
            "prompt": "And then?",
            "convo_id": f"{_ANSWER}/conversation_id",
            "parent_id": f"{_ANSWER}/parent_id",
        },
        "description": "Continue from this answer (or, with another `parent_id`, branch).",
    },
    "history": {
        "operationRef": "#/paths/~1api~1chat~1msg~1history/post",
        "requestBody": {"convo_id": f"{_ANSWER}/conversation_id"},
    },
    "rename": {
        "operationRef": "#/paths/~1api~1chat~1change~1title/post",
        "requestBody": {"convo_id": f"{_ANSWER}/conversation_id", "title": "Renamed"},
    },
    "delete": {
        "operationRef": "#/paths/~1api~1chat~1delete~1conversation/post",
        "requestBody": {"convo_id": f"{_ANSWER}/conversation_id"},
    },
    "list_after": {
        "operationRef": "#/paths/~1api~1chat~1conversation/post",
        "requestBody": {"after": f"{_ANSWER}/conversation_id"},
        "description": "The conversations listed after this one (keyset paging).",
    },
}
"""Where an answer's ids lead (OpenAPI links; Schemathesis follows them in its stateful phase)."""


class SearchHitPayload(TypedDict):
    """A conversation whose title matches (`message_id` and `role` null), or a message."""

    conversation_id: UUIDText
    title: str
    message_id: UUIDText | None
    role: Literal["user", "assistant"] | None
    snippet: Annotated[str, Field(description="About 200 characters around the matches, each marked `**like this**`.")]
    create_time: Annotated[float, Field(description="Epoch seconds: when the message (or the conversation) was made.")]
    cursor: Annotated[str, Field(description="Pass as `after` to get the hits that follow this one.")]


def search_hit_payload(hit: SearchHit) -> SearchHitPayload:
    return {
        "conversation_id": str(hit.conversation_id),
        "title": hit.title,
        "message_id": str(hit.message_id) if hit.message_id else None,
        "role": hit.role,  # type: ignore[typeddict-item]
        "snippet": hit.snippet,
        "create_time": hit.created_at.timestamp(),
        "cursor": hit.cursor,
    }


class SearchResponse(BaseModel):
    response: list[SearchHitPayload]


class AnswerResponse(BaseModel):
    response: AnswerPayload

    model_config = ConfigDict(
        openapi_extra={  # type: ignore[typeddict-unknown-key]  # read by flask-openapi3
            "content": {"text/event-stream": {"schema": ANSWER_STREAM_EVENT}},
            "links": CONVERSATION_LINKS,
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
