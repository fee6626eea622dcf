"""Request bodies, declared once with pydantic and validated strictly from JSON."""

from __future__ import annotations

from typing import Annotated, Literal, Self
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only white space")
    if "\x00" in value:  # PostgreSQL cannot keep it in text: refused on every database alike
        raise ValueError("must not contain NUL characters (\\u0000)")
    return value


NonBlank = Annotated[str, AfterValidator(_not_blank)]


class Body(BaseModel):
    """Unknown keys are ignored; known keys must have exactly the right JSON type."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


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
    @model_validator(mode="after")
    def _conversation_given(self) -> Self:
        if self.conversation is None:
            raise ValueError("convo_id is required")
        return self


class AskBody(ConversationRef):
    prompt: NonBlank
    parent_id: UUID | None = None
    model: Annotated[NonBlank, Field(max_length=128)] | None = None
    stream: bool = False

    @model_validator(mode="after")
    def _parent_needs_conversation(self) -> Self:
        if self.parent_id is not None and self.conversation is None:
            raise ValueError("parent_id needs convo_id: a branch lives in a conversation")
        return self


class ListBody(Body):
    offset: Annotated[int, Field(ge=0)] = 0
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    after: UUID | None = None


class TitleBody(RequiredConversationRef):
    title: Annotated[NonBlank, Field(max_length=1000)]


class EmptyBody(Body):
    pass


class SearchBody(ConversationRef):
    """`convo_id` (or `conversation_id`) searches one conversation."""

    query: Annotated[NonBlank, Field(max_length=1000)]
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    after: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    role: Literal["user", "assistant"] | None = None
