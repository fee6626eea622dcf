"""The shapes of the OpenAI-compatible surface (`/v1`), declared once.

Request models forbid unknown fields: a field the service does not implement is a 400
naming it in `param`, never accepted and ignored. A few of OpenAI's fields are accepted
when their value asks for what the service does anyway (`tools: []`, `background: false`,
`text: {"format": {"type": "text"}}`, ...). Answers are TypedDicts in OpenAI's shapes;
where this file is silent, OpenAI's API reference and the `openai` SDK's types decide.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    RootModel,
    StrictBool,
    StrictFloat,
    StrictStr,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
    with_config,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema
from typing_extensions import NotRequired, TypedDict

from api.schemas import WHOLE_NUMBER, NonBlank
from services import ids
from services.asking import Said
from services.items import ConversationView, ItemView, Page
from services.message_paths import message_text
from services.providers.base import Sampling
from services.responses import NewResponse, ResponseView
from services.search import ConversationMatch, SearchHit

MAX_ITEMS = 20
"""Items one request may add to a conversation, as OpenAI allows."""

# -- ids ----------------------------------------------------------------------


def _parser(prefix: str, what: str) -> BeforeValidator:
    """Read a `<prefix><32 hex>` id (or the bare UUID) as the UUID it names."""

    def parse(value: object) -> uuid.UUID:
        found = ids.decode(value, prefix) if isinstance(value, str) else None
        if found is None:
            raise ValueError(f"not a {what} id: expected {prefix} and 32 hex digits, or a UUID")
        return found

    return BeforeValidator(parse)


def _id_schema(prefix: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": ids.pattern(prefix)})


ConversationId = Annotated[uuid.UUID, _parser(ids.CONVERSATION, "conversation"), _id_schema(ids.CONVERSATION)]
ResponseId = Annotated[uuid.UUID, _parser(ids.RESPONSE, "response"), _id_schema(ids.RESPONSE)]
ItemId = Annotated[uuid.UUID, _parser(ids.MESSAGE, "message item"), _id_schema(ids.MESSAGE)]

# -- requests -----------------------------------------------------------------


class V1Model(BaseModel):
    """Unknown fields are refused (400 naming the field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > 16:
        raise ValueError(f"at most 16 key-value pairs; this has {len(value)}")
    for key, text in value.items():
        if len(key) > 64:
            raise ValueError(f"keys of at most 64 characters; {key[:20]!r}... has {len(key)}")
        if len(text) > 512:
            raise ValueError(f"values of at most 512 characters; the value of {key!r} has {len(text)}")
    return value


Metadata = Annotated[
    dict[str, StrictStr],
    AfterValidator(_metadata),
    Field(
        description="Up to 16 pairs; keys of at most 64 characters, string values of at most 512.",
        json_schema_extra={
            "maxProperties": 16,
            "patternProperties": {"^[\\s\\S]{0,64}$": {"type": "string", "maxLength": 512}},
            "additionalProperties": False,
        },
    ),
]


@dataclass(frozen=True)
class Only:
    """For a field of OpenAI's the service does not implement: accepted only with a value that
    asks for what it does anyway (`neutral`, compared as JSON: `false` is not `0`), otherwise a
    400 naming it. The schema lists those values."""

    neutral: tuple[Any, ...]
    why: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"enum": list(self.neutral), "description": f"Not supported: {self.why}."}

    def _check(self, value: Any) -> Any:
        if _json(value) not in {_json(v) for v in self.neutral}:
            shown = " or ".join(_json(v) for v in self.neutral)
            raise ValueError(f"not supported: {self.why} (only {shown} is accepted)")
        return value


def only(*neutral: Any, why: str) -> Only:
    return Only(neutral, why)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _by_json_type(value: Any, shapes: dict[type, TypeAdapter[Any]], expected: str) -> Any:
    """Validate `value` as the member of a union its JSON type picks, so an error is located
    inside that member (pydantic's own union errors name every member)."""
    for json_type, adapter in shapes.items():
        if isinstance(value, json_type):
            return adapter.validate_python(value)
    raise ValueError(f"must be {expected}")


class TextPart(V1Model):
    """Text content. Other parts (images, files, audio) are not supported."""

    type: Literal["input_text", "output_text"]
    text: NonBlank
    annotations: list[Any] | None = Field(default=None, description="An earlier answer's annotations, as sent back.")
    logprobs: list[Any] | None = Field(default=None, description="An earlier answer's logprobs, as sent back.")


_TEXT: TypeAdapter[str] = TypeAdapter(NonBlank)
_PARTS = TypeAdapter(Annotated[list[TextPart], Field(min_length=1)])


class MessageItem(V1Model):
    """A message as input: `{"role", "content"}`, content a string or text parts. Its text is
    stored as one message (parts joined by a line break)."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: NonBlank | Annotated[list[TextPart], Field(min_length=1)]
    id: StrictStr | None = Field(default=None, description="An earlier output item sent back; stored anew.")
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    @field_validator("content", mode="wrap")
    @classmethod
    def _content(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return _by_json_type(value, {str: _TEXT, list: _PARTS}, "a string or a list of text parts")

    def said(self) -> Said:
        return Said(self.role, self.content if isinstance(self.content, str) else _joined(self.content))


def _joined(parts: list[TextPart]) -> str:
    return "\n".join(part.text for part in parts)


_ITEMS = TypeAdapter(list[MessageItem])
_AT_MOST_20 = TypeAdapter(Annotated[list[MessageItem], Field(max_length=MAX_ITEMS)])
_ONE_TO_20 = TypeAdapter(Annotated[list[MessageItem], Field(min_length=1, max_length=MAX_ITEMS)])


class TextConfig(V1Model):
    format: Annotated[Any, only(None, {"type": "text"}, why="answers are plain text")] = None
    verbosity: Annotated[Any, only(None, why="the upstream's default verbosity is used")] = None


class ConversationRefBody(V1Model):
    id: ConversationId


_CONVERSATION_ID: TypeAdapter[uuid.UUID] = TypeAdapter(ConversationId)
_CONVERSATION_REF = TypeAdapter(ConversationRefBody)
_CONVERSATION_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "string", "pattern": ids.pattern(ids.CONVERSATION)},
            ConversationRefBody.model_json_schema(),
            {"type": "null"},
        ]
    }
)


def _given(name: str, value: dict[str, Any] | None = None) -> dict[str, Any]:
    """JSON Schema for "`name` is there and not null" (and, when given, fits `value`)."""
    return {"required": [name], "properties": {name: value or {"not": {"type": "null"}}}}


class ResponseCreateBody(V1Model):
    """`POST /v1/responses`. Without `previous_response_id` or `conversation`, a new conversation
    (which needs `input`); not both."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                _given("input", {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1}]}),
                _given("previous_response_id"),
                _given("conversation"),
            ],
            "not": {"allOf": [_given("previous_response_id"), _given("conversation")]},
        }
    )

    model: Annotated[NonBlank, Field(max_length=128)] | None = None
    input: NonBlank | list[MessageItem] | None = Field(
        default=None, description="A user message as a string, or message items (stored in order)."
    )
    instructions: NonBlank | None = Field(
        default=None, description="A system message sent first for this response only, not carried on."
    )
    previous_response_id: ResponseId | None = Field(
        default=None, description="Continue from that response; a second one from the same is a branch."
    )
    conversation: Annotated[uuid.UUID | None, _CONVERSATION_SCHEMA] = Field(
        default=None,
        description='`"conv_..."` or `{"id": "conv_..."}`: append at its current node, and move it.',
    )
    store: StrictBool | None = Field(default=True, description="false: answer, and keep nothing.")
    stream: StrictBool | None = False
    metadata: Metadata | None = None
    temperature: Annotated[StrictFloat, Field(ge=0, le=2)] | None = None
    top_p: Annotated[StrictFloat, Field(ge=0, le=1)] | None = None
    max_output_tokens: Annotated[int, Field(strict=True, ge=1), WHOLE_NUMBER] | None = None
    user: Annotated[StrictStr, Field(max_length=256)] | None = None
    tools: Annotated[Any, only(None, [], why="no tools are run")] = None
    tool_choice: Annotated[Any, only(None, "none", "auto", why="no tools are run")] = None
    parallel_tool_calls: Annotated[Any, only(None, True, False, why="no tools are run")] = None
    text: TextConfig | None = None
    reasoning: Annotated[Any, only(None, {}, why="reasoning settings are not passed upstream")] = None
    background: Annotated[Any, only(None, False, why="responses are answered while the request waits")] = None
    include: Annotated[Any, only(None, [], why="there is nothing more to include")] = None
    truncation: Annotated[Any, only(None, "disabled", why="the context is never cut short")] = None
    service_tier: Annotated[Any, only(None, "auto", "default", why="the upstream's tier is not chosen here")] = None
    top_logprobs: Annotated[Any, only(None, 0, why="logprobs are not returned")] = None
    stream_options: Annotated[
        Any, only(None, {}, {"include_obfuscation": False}, why="streams are not obfuscated")
    ] = None

    @field_validator("input", mode="wrap")
    @classmethod
    def _input(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if value is None:
            return None
        return _by_json_type(value, {str: _TEXT, list: _ITEMS}, "a string or a list of message items")

    @field_validator("conversation", mode="wrap")
    @classmethod
    def _conversation(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if value is None:
            return None
        if isinstance(value, dict):
            return _CONVERSATION_REF.validate_python(value).id
        return _by_json_type(value, {str: _CONVERSATION_ID}, 'a conversation id or {"id": ...}')

    def new_response(self) -> NewResponse:
        """The request as the service takes it."""
        if isinstance(self.input, str):
            inputs: tuple[Said, ...] = (Said("user", self.input),)
        else:
            inputs = tuple(item.said() for item in self.input or ())
        return NewResponse(
            inputs=inputs,
            model=self.model,
            conversation_id=self.conversation,
            previous_response_id=self.previous_response_id,
            instructions=self.instructions,
            metadata=self.metadata or {},
            sampling=Sampling(
                temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_output_tokens, user=self.user
            ),
            store=self.store is not False,
        )


class ResponsePath(V1Model):
    response_id: ResponseId


class V1Query(V1Model):
    """Query parameters; a list may come as `name[]=...` (the SDK writes them so)."""

    @model_validator(mode="before")
    @classmethod
    def _list_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key.removesuffix("[]"): value for key, value in data.items()}
        return data


class NoQuery(V1Query):
    """A route that takes no query parameters: any is a 400 naming it."""


class RetrieveQuery(V1Query):
    include: Annotated[Any, only(None, why="there is nothing more to include")] = None
    stream: Annotated[Any, only(None, "false", why="a stored response is read whole")] = None


class ItemsQuery(V1Query):
    """A page of items: `after` the id of the previous page's last item."""

    after: ItemId | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    order: Literal["asc", "desc"] = "desc"
    include: Annotated[Any, only(None, why="there is nothing more to include")] = None


class IncludeQuery(V1Query):
    include: Annotated[Any, only(None, why="there is nothing more to include")] = None


class ConversationCreateBody(V1Model):
    items: Annotated[list[MessageItem], Field(max_length=MAX_ITEMS)] | None = Field(
        default=None, description=f"At most {MAX_ITEMS} messages, stored in order."
    )
    metadata: Metadata | None = None

    @field_validator("items", mode="wrap")
    @classmethod
    def _items(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return None if value is None else _by_json_type(value, {list: _AT_MOST_20}, "a list of message items")


class ConversationUpdateBody(V1Model):
    metadata: Metadata | None = Field(description="Replaces the conversation's metadata (null clears it).")


class ItemsCreateBody(V1Model):
    items: Annotated[list[MessageItem], Field(min_length=1, max_length=MAX_ITEMS)]

    @field_validator("items", mode="wrap")
    @classmethod
    def _items(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return _by_json_type(value, {list: _ONE_TO_20}, "a list of message items")


class ConversationPath(V1Model):
    conversation_id: ConversationId


class ItemPath(V1Model):
    conversation_id: ConversationId
    item_id: ItemId


class ConversationListQuery(V1Query):
    """Newest activity first; with `query`, the conversations that match, best first. `after`
    the id of the previous page's last conversation."""

    after: ConversationId | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    query: Annotated[NonBlank, Field(max_length=1000)] | None = Field(
        default=None,
        description=(
            "Only the conversations that match, as `POST /api/chat/search` reads it (every word,"
            ' `"a phrase"`, `-excluded`, `prefix*`, anything else literal), best first, each with its'
            " best hit as `match`."
        ),
    )


# -- answers --------------------------------------------------------------------


class OutputText(TypedDict):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any]


class InputText(TypedDict):
    type: Literal["input_text"]
    text: str


class MessagePayload(TypedDict):
    """A message item: an answer's content is `output_text`, anything else's `input_text`."""

    type: Literal["message"]
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["user", "assistant", "system", "developer"]
    content: list[OutputText | InputText]


class InputTokensDetails(TypedDict):
    cached_tokens: int


class OutputTokensDetails(TypedDict):
    reasoning_tokens: int


class Usage(TypedDict):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseErrorPayload(TypedDict):
    code: str
    message: str


class IncompleteDetails(TypedDict):
    reason: str | None


class ConversationLink(TypedDict):
    id: str


class TextFormat(TypedDict):
    type: Literal["text"]


class TextSettings(TypedDict):
    format: TextFormat


class ResponsePayload(TypedDict):
    """OpenAI's Response object."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    completed_at: int | None
    error: ResponseErrorPayload | None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    model: str
    output: list[MessagePayload]
    parallel_tool_calls: bool
    previous_response_id: str | None
    conversation: ConversationLink | None
    store: bool
    temperature: float | None
    text: TextSettings
    tool_choice: Literal["auto"]
    tools: list[Any]
    top_p: float | None
    truncation: Literal["disabled"]
    background: bool
    usage: Usage | None
    user: str | None


def _operation(path: str, method: str) -> str:
    """An OpenAPI `operationRef` to this document's operation."""
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


_CONVERSATION = "/v1/conversations/{conversation_id}"
_BY_ID = {"conversation_id": "$response.body#/id"}
CONVERSATION_LINKS: dict[str, Any] = {
    "retrieve": {"operationRef": _operation(_CONVERSATION, "get"), "parameters": _BY_ID},
    "items": {"operationRef": _operation(_CONVERSATION + "/items", "get"), "parameters": _BY_ID},
    "add_items": {
        "operationRef": _operation(_CONVERSATION + "/items", "post"),
        "parameters": _BY_ID,
        "requestBody": {"items": [{"role": "user", "content": "More"}]},
    },
    "respond": {
        "operationRef": _operation("/v1/responses", "post"),
        "requestBody": {"input": "Hi", "conversation": "$response.body#/id"},
    },
    "delete": {"operationRef": _operation(_CONVERSATION, "delete"), "parameters": _BY_ID},
}
"""Where a conversation's id leads (OpenAPI links; Schemathesis follows them in its stateful phase)."""
_ITEM = {"conversation_id": "$request.path.conversation_id", "item_id": "$response.body#/last_id"}
ITEM_LIST_LINKS: dict[str, Any] = {
    "item": {"operationRef": _operation(_CONVERSATION + "/items/{item_id}", "get"), "parameters": _ITEM},
    "remove": {"operationRef": _operation(_CONVERSATION + "/items/{item_id}", "delete"), "parameters": _ITEM},
}
"""Where the items of a conversation lead (the last item of the page)."""
_RESPONSE = "/v1/responses/{response_id}"
_BY_RESPONSE = {"response_id": "$response.body#/id"}
_CONTINUE = {
    "operationRef": _operation("/v1/responses", "post"),
    "requestBody": {"input": "And then?", "previous_response_id": "$response.body#/id"},
}
_READ_RESPONSE = {
    "continue": _CONTINUE,
    "retrieve": {"operationRef": _operation(_RESPONSE, "get"), "parameters": _BY_RESPONSE},
    "input_items": {"operationRef": _operation(_RESPONSE + "/input_items", "get"), "parameters": _BY_RESPONSE},
}
NEW_RESPONSE_LINKS: dict[str, Any] = {
    **_READ_RESPONSE,
    "conversation": {
        "operationRef": _operation(_CONVERSATION, "get"),
        "parameters": {"conversation_id": "$response.body#/conversation/id"},
    },
}
"""Where a new response leads (with `store: false` its id names nothing stored, as at OpenAI:
those links then lead to a 404)."""
STORED_RESPONSE_LINKS: dict[str, Any] = {
    **_READ_RESPONSE,
    "delete": {"operationRef": _operation(_RESPONSE, "delete"), "parameters": _BY_RESPONSE},
}
"""Where a stored response leads."""


STREAM_EVENT_TYPES = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "error",
]
RESPONSE_STREAM_EVENT: dict[str, Any] = {
    "description": "With `stream: true`, each server-sent event: `event: <type>` and `data: <the event as "
    "JSON>`, whose `type` is the event's and whose `sequence_number` grows by one. Comments "
    "(`: keep-alive`) fill silences.",
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"enum": STREAM_EVENT_TYPES},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "required": ["type", "sequence_number"],
                "properties": {"type": {"enum": STREAM_EVENT_TYPES}, "sequence_number": {"type": "integer"}},
            },
        },
    },
}
"""One event of a streamed response (OpenAPI 3.1 has no word for event streams)."""


class ResponseObject(RootModel[ResponsePayload]):
    """A response, or with `stream: true` server-sent events (`event: <type>` and `data:`
    lines): `response.created`, `response.in_progress`, `response.output_item.added`,
    `response.content_part.added`, `response.output_text.delta`..., `response.output_text.done`,
    `response.content_part.done`, `response.output_item.done`, then `response.completed`
    (or `response.incomplete`, or `response.failed` when the upstream breaks off)."""

    model_config = ConfigDict(
        openapi_extra={  # type: ignore[typeddict-unknown-key]  # read by flask-openapi3
            "content": {"text/event-stream": {"schema": RESPONSE_STREAM_EVENT}},
            "links": NEW_RESPONSE_LINKS,
        },
    )


class StoredResponseObject(RootModel[ResponsePayload]):
    """A stored response."""

    model_config = ConfigDict(openapi_extra={"links": STORED_RESPONSE_LINKS})  # type: ignore[typeddict-unknown-key]


class ResponseDeleted(TypedDict):
    id: str
    object: Literal["response"]
    deleted: Literal[True]


class ItemList(TypedDict):
    object: Literal["list"]
    data: list[MessagePayload]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ConversationPayload(TypedDict):
    """OpenAI's Conversation object, with its `title` (beyond OpenAI)."""

    id: str
    object: Literal["conversation"]
    created_at: int
    metadata: dict[str, str]
    title: str


class SearchMatchPayload(TypedDict):
    """Where a conversation matches a search: its best hit."""

    item_id: Annotated[
        str | None, Field(description="The matching message (an item, of any branch); null when the title matches.")
    ]
    role: Literal["user", "assistant"] | None
    snippet: Annotated[str, Field(description="About 200 characters around the matches, each marked `**like this**`.")]
    created_at: Annotated[int, Field(description="When the message (for a title, the conversation) was made.")]


class ListedConversationPayload(ConversationPayload):
    """A conversation in a list; listed by a `query`, with its best hit (beyond OpenAI)."""

    match: NotRequired[SearchMatchPayload]


class ConversationList(TypedDict):
    object: Literal["list"]
    data: list[ListedConversationPayload]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ConversationDeleted(TypedDict):
    id: str
    object: Literal["conversation.deleted"]
    deleted: Literal[True]


class ItemObject(RootModel[MessagePayload]):
    pass


class ItemListObject(RootModel[ItemList]):
    """A page of a response's input items."""


class ConversationItemsObject(RootModel[ItemList]):
    """A page of a conversation's items."""

    model_config = ConfigDict(openapi_extra={"links": ITEM_LIST_LINKS})  # type: ignore[typeddict-unknown-key]


class ResponseDeletedObject(RootModel[ResponseDeleted]):
    pass


class ConversationObject(RootModel[ConversationPayload]):
    model_config = ConfigDict(openapi_extra={"links": CONVERSATION_LINKS})  # type: ignore[typeddict-unknown-key]


class ConversationListObject(RootModel[ConversationList]):
    pass


class ConversationDeletedObject(RootModel[ConversationDeleted]):
    pass


class OpenAIErrorDetail(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """Every /v1 error, as OpenAI's API answers, with the fitting status."""

    error: OpenAIErrorDetail


OPENAI_ERROR_REF = {"$ref": f"#/components/schemas/{OpenAIError.__name__}"}


def errors(*statuses: int) -> dict[int, dict[str, Any]]:
    """The error answers of `statuses`, each an `OpenAIError` by reference: its schema goes
    into the document once (`api.openapi.document`), not generated again for every status of
    every route (171 times, a tenth of the app's import time)."""
    return {status: {"content": {"application/json": {"schema": OPENAI_ERROR_REF}}} for status in statuses}


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def message_payload(item: ItemView) -> MessagePayload:
    part: OutputText | InputText
    if item.role == "assistant":
        part = {"type": "output_text", "text": item.text, "annotations": [], "logprobs": []}
    else:
        part = {"type": "input_text", "text": item.text}
    return {
        "type": "message",
        "id": ids.encode(ids.MESSAGE, item.id),
        "status": item.status,  # type: ignore[typeddict-item]
        "role": item.role,  # type: ignore[typeddict-item]
        "content": [part],
    }


def output_item(view: ResponseView) -> MessagePayload:
    """The response's one output item: its message, as far as it got."""
    status = {"completed": "completed", "in_progress": "in_progress"}.get(view.status, "incomplete")
    return message_payload(ItemView(view.id, "assistant", view.text, status))


def response_payload(view: ResponseView, *, store: bool = True, with_output: bool = True) -> ResponsePayload:
    """OpenAI's Response object; `with_output=False` for the stream's first events."""
    fields = view.fields
    done = view.status in ("completed", "incomplete")
    return {
        "id": ids.encode(ids.RESPONSE, view.id),
        "object": "response",
        "created_at": _epoch(view.created_at),
        "status": view.status,  # type: ignore[typeddict-item]
        "completed_at": _epoch(view.created_at) if view.status == "completed" else None,
        "error": {"code": "server_error", "message": view.error} if view.error is not None else None,
        "incomplete_details": {"reason": view.incomplete_reason} if view.status == "incomplete" else None,
        "instructions": fields.instructions,
        "max_output_tokens": fields.sampling.max_tokens,
        "metadata": fields.metadata,
        "model": view.model,
        "output": [output_item(view)] if with_output else [],
        "parallel_tool_calls": True,
        "previous_response_id": fields.previous_response_id and ids.encode(ids.RESPONSE, fields.previous_response_id),
        "conversation": {"id": ids.encode(ids.CONVERSATION, view.conversation_id)} if fields.in_conversation else None,
        "store": store,
        "temperature": fields.sampling.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": fields.sampling.top_p,
        "truncation": "disabled",
        "background": False,
        "usage": _usage(view) if done else None,
        "user": fields.sampling.user,
    }


def _usage(view: ResponseView) -> Usage:
    return {
        "input_tokens": view.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": view.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": view.input_tokens + view.output_tokens,
    }


def _listed(data: list[Any], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def item_list(items: list[ItemView], has_more: bool = False) -> ItemList:
    return _listed([message_payload(item) for item in items], has_more)  # type: ignore[return-value]


def item_page(page: Page[ItemView]) -> ItemList:
    return item_list(page.data, page.has_more)


def conversation_payload(view: ConversationView) -> ConversationPayload:
    return {
        "id": ids.encode(ids.CONVERSATION, view.id),
        "object": "conversation",
        "created_at": _epoch(view.created_at),
        "metadata": view.metadata,
        "title": view.title,
    }


def conversation_page(page: Page[ConversationView]) -> ConversationList:
    return _listed([conversation_payload(view) for view in page.data], page.has_more)  # type: ignore[return-value]


def match_payload(hit: SearchHit) -> SearchMatchPayload:
    return {
        "item_id": ids.encode(ids.MESSAGE, hit.message_id) if hit.message_id else None,
        "role": hit.role,  # type: ignore[typeddict-item]
        "snippet": hit.snippet,
        "created_at": _epoch(hit.created_at),
    }


def conversation_match_page(page: Page[ConversationMatch]) -> ConversationList:
    listed = [{**conversation_payload(found.conversation), "match": match_payload(found.hit)} for found in page.data]
    return _listed(listed, page.has_more)  # type: ignore[return-value]


# -- chat completions and models (issue 12)

ChatCompletionId = Annotated[
    uuid.UUID, _parser(ids.CHAT_COMPLETION, "chat completion"), _id_schema(ids.CHAT_COMPLETION)
]


class ChatMessageIn(BaseModel):
    """A Chat Completions message; `role` and the type of `content` are checked here, the
    message goes upstream (and into the store) as it is."""

    model_config = ConfigDict(extra="allow", frozen=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[Any] | None = None


class ChatCompletionBody(BaseModel):
    """`POST /v1/chat/completions`: any Chat Completions body. The fields below are checked
    here; every field, these and any other (`tools`, `response_format`, `n`, `stop`,
    sampling, ...), goes upstream as sent, but for `store` and `metadata`, kept here."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: Annotated[NonBlank, Field(max_length=128)] | None = Field(
        default=None, description="The upstream's model; without one, the configured default."
    )
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    stream: StrictBool | None = False
    stream_options: dict[str, Any] | None = None
    store: StrictBool | None = Field(
        default=None,
        description="Stored unless false (OpenAI's default is false; here the exchange is kept, "
        "as a conversation, unless STORE_CHAT_COMPLETIONS=false).",
    )
    metadata: Metadata | None = None


class ChatCompletionPath(V1Model):
    completion_id: ChatCompletionId


class ChatCompletionListQuery(BaseModel):
    """Stored completions by time (`order`, default `asc`), past `after`; `model=` and
    `metadata[<key>]=<value>` (any number) filter."""

    model_config = ConfigDict(extra="allow", frozen=True)

    after: ChatCompletionId | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    order: Literal["asc", "desc"] = "asc"
    model: Annotated[StrictStr, Field(max_length=128)] | None = None

    @model_validator(mode="after")
    def _only_metadata_filters(self) -> Self:
        for name in self.model_extra or {}:
            if not (name.startswith("metadata[") and name.endswith("]") and len(name) > len("metadata[]")):
                raise ValueError(f"{name}: not a query parameter of this route (metadata[<key>]=<value> filters)")
        return self

    @property
    def metadata(self) -> dict[str, str]:
        return {name[len("metadata[") : -1]: str(value) for name, value in (self.model_extra or {}).items()}


class StoreMessagesQuery(V1Model):
    """The request's messages, oldest first unless `order=desc`, past the message `after`."""

    after: ItemId | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    order: Literal["asc", "desc"] = "asc"


class ChatCompletionUpdateBody(V1Model):
    metadata: Metadata | None = Field(description="Replaces the stored completion's metadata (null clears it).")


class ModelPath(V1Model):
    model_id: Annotated[StrictStr, Field(max_length=256)]


@with_config(ConfigDict(extra="allow"))
class ChatChoicePayload(TypedDict):
    index: int
    message: dict[str, Any] | None
    finish_reason: Annotated[str | None, Field(description="null: the answer broke off (stored as far as it got).")]
    logprobs: dict[str, Any] | None


StoredRequestField = NotRequired[
    Annotated[Any, Field(description="A stored completion: the request's field of this name (null when not sent).")]
]


@with_config(ConfigDict(extra="allow"))
class ChatCompletionPayload(TypedDict):
    """OpenAI's `chat.completion`, as the upstream answered; a stored one also has `metadata`
    and, as OpenAI's, what its request said beside the messages."""

    id: Annotated[str, Field(description="`chatcmpl-<32 hex>`: the stored completion's id (with `store: false`, one that names nothing stored).")]
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoicePayload]
    usage: NotRequired[dict[str, Any] | None]
    metadata: NotRequired[dict[str, str]]
    tools: StoredRequestField
    tool_choice: StoredRequestField
    response_format: StoredRequestField
    seed: StoredRequestField
    temperature: StoredRequestField
    top_p: StoredRequestField
    presence_penalty: StoredRequestField
    frequency_penalty: StoredRequestField
    input_user: NotRequired[
        Annotated[str | None, Field(description="A stored completion: the request's `user` (null when not sent).")]
    ]


CHUNK_STREAM_EVENT: dict[str, Any] = {
    "description": "With `stream: true`, each server-sent event: `data: <chat.completion.chunk>` as the "
    "upstream sent it, then `data: [DONE]`; a failure after the first chunk is `data: {\"error\": ...}` "
    "(OpenAI's error object), which ends the stream. Comments (`: keep-alive`) fill silences.",
    "type": "object",
    "required": ["data"],
    "properties": {"event": {"const": "message"}, "data": {"type": "string"}},
    "if": {"properties": {"data": {"const": "[DONE]"}}},
    "else": {
        "properties": {
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": {"type": "object"}}
        }
    },
}
"""One event of the stream (as for `ask`: OpenAPI 3.1 has no word for event streams)."""


class ChatCompletionObject(RootModel[ChatCompletionPayload]):
    """A chat completion, or with `stream: true` its chunks as server-sent events."""

    model_config = ConfigDict(
        openapi_extra={"content": {"text/event-stream": {"schema": CHUNK_STREAM_EVENT}}},  # type: ignore[typeddict-unknown-key]
    )


class ChatCompletionList(TypedDict):
    object: Literal["list"]
    data: list[ChatCompletionPayload]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ChatCompletionListObject(RootModel[ChatCompletionList]):
    pass


class ChatCompletionDeleted(TypedDict):
    id: str
    object: Literal["chat.completion.deleted"]
    deleted: Literal[True]


class ChatCompletionDeletedObject(RootModel[ChatCompletionDeleted]):
    pass


@with_config(ConfigDict(extra="allow"))
class StoreMessagePayload(TypedDict):
    """A message of the request, as it was sent (`tool_calls`, `name`, ... too); `content`
    is its text and `content_parts` its parts when it came as parts."""

    id: Annotated[str, Field(description="`msg_<32 hex>`: the message's node.")]
    role: str
    content: str | None
    content_parts: list[Any] | None


class StoreMessageList(TypedDict):
    object: Literal["list"]
    data: list[StoreMessagePayload]
    first_id: str | None
    last_id: str | None
    has_more: bool


class StoreMessageListObject(RootModel[StoreMessageList]):
    pass


@with_config(ConfigDict(extra="allow"))
class ModelPayload(TypedDict):
    """A model as the upstream lists it."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelObject(RootModel[ModelPayload]):
    pass


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[ModelPayload]


class ModelListObject(RootModel[ModelList]):
    pass


def chat_completion_page(page: Page[dict[str, Any]]) -> ChatCompletionList:
    return _listed(page.data, page.has_more)  # type: ignore[return-value]


def store_message(node_id: uuid.UUID, message: dict[str, Any]) -> StoreMessagePayload:
    content = message.get("content")
    parts = content if isinstance(content, list) else None
    text = message_text(content) if parts is not None else content
    return {  # type: ignore[typeddict-item]  # the message's other keys as it had them
        "id": ids.encode(ids.MESSAGE, node_id),
        **message,
        "content": text if isinstance(text, str) and (text or parts is None) else None,
        "content_parts": parts,
    }


def store_message_page(page: Page[tuple[uuid.UUID, dict[str, Any]]]) -> StoreMessageList:
    return _listed([store_message(node_id, message) for node_id, message in page.data], page.has_more)  # type: ignore[return-value]


def model_list(models: list[dict[str, Any]]) -> ModelList:
    return {"object": "list", "data": models}  # type: ignore[typeddict-item]
