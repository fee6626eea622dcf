"""The two tables: conversations, and their messages as an adjacency list on `parent_id`.

Search (migration 0005, models/search.py) adds what no model maps, kept by triggers: on
PostgreSQL a `search_vector` tsvector column on both tables with GIN indexes, on SQLite
FTS5 tables (`message_words`, `message_grams`, `conversation_words`, ...).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, TypeDecorator, Uuid, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

DEFAULT_TITLE = "New chat"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL keeps `timestamptz`; SQLite keeps no zone, so values are stored as UTC
    and handed back as aware UTC datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(64), default="", server_default="")
    """Who the conversation belongs to ("" for the anonymous caller)."""
    title: Mapped[str] = mapped_column(Text, default=DEFAULT_TITLE)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    current_node_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    """The newest answer of the active branch: where a plain `ask` continues."""
    upstream_id: Mapped[str | None] = mapped_column(String(64))
    """The upstream's own conversation id, for providers that keep one (ChatGPT)."""
    original: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    """An imported conversation's own keys (`mapping` kept as null), written back on export."""
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON(none_as_null=True))
    """The `metadata` of /v1 (up to 16 short key-value pairs the client attaches)."""

    __table_args__ = (
        Index("ix_conversations_owner_updated", "owner", updated_at.desc(), id.desc()),
        Index("ix_conversations_search_order", "owner", created_at.desc(), id.desc()),
    )


class Message(Base):
    """A node of a conversation's tree. The root node has no role and no text."""

    __tablename__ = "messages"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("conversations.id", ondelete="CASCADE")
    )
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("messages.id", ondelete="CASCADE")
    )
    role: Mapped[str | None] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(32), default="finished_successfully")
    end_turn: Mapped[bool | None] = mapped_column(Boolean)
    model: Mapped[str | None] = mapped_column(String(128))
    finish_details: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    upstream_id: Mapped[str | None] = mapped_column(String(64))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """An answer being written (`in_progress`): until when its process vouches for it. The
    process renews it while it lives; past it, any instance marks the answer interrupted."""
    original_id: Mapped[str | None] = mapped_column(Text)
    """An imported node's id when it was no UUID (`client-created-root`): export gives it back."""
    original: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    """An imported message exactly as the export had it (any content type, author, metadata)."""
    response_fields: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    """An answer made through /v1/responses: what that route gives back about it (instructions,
    metadata, sampling, which messages were its input)."""
    path_hash: Mapped[str | None] = mapped_column(String(64))
    """For messages of /v1/chat/completions: the hash of the path from the root to here
    (`services/message_paths.py`), by which a later request that repeats it is threaded here."""
    summary: Mapped[str | None] = mapped_column(Text)
    """A summary of the path's messages after the system prompt down to this one, sent in their
    place once the branch outgrew the model's window (CONTEXT_STRATEGY=summarize)."""
    answer_details: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    """An answer's metadata beyond its model: the upstream that wrote it (with several), and
    how its context was fitted into the model's window (when it did not fit whole)."""

    __table_args__ = (
        Index("ix_messages_conversation_created", "conversation_id", "created_at"),
        Index(
            "ix_messages_in_progress_lease",
            "lease_expires_at",
            postgresql_where=text("status = 'in_progress'"),
            sqlite_where=text("status = 'in_progress'"),
        ),
        Index("ix_messages_parent", "parent_id"),
        Index(
            "ix_messages_path_hash",
            "path_hash",
            postgresql_where=text("path_hash IS NOT NULL"),
            sqlite_where=text("path_hash IS NOT NULL"),
        ),
        Index(
            "ix_messages_search_order",
            created_at.desc(),
            id.desc(),
            postgresql_where=text("role IN ('user', 'assistant')"),
            sqlite_where=text("role IN ('user', 'assistant')"),
        ),
    )


class ChatCompletion(Base):
    """A stored exchange of /v1/chat/completions. Its messages are nodes of the tree: the
    request's on the path above the answer, the answer (the first choice) is the node whose
    id this row shares; the row keeps what is not a message."""

    __tablename__ = "chat_completions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    """The model the request named (or the default it got): what `model=` filters on."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSON, default=dict)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The completion object as the upstream answered, each choice's `message` replaced by
    the `message_id` of its node; under `request`, what the request said beside its messages
    (`tools`, `tool_choice`, `response_format`, sampling, `input_user`), as OpenAI shows it."""

    __table_args__ = (Index("ix_chat_completions_owner_created", "owner", "created_at", "id"),)


class ApiKey(Base):
    """A client's key. Only its SHA-256 is kept; the name owns the client's conversations.

    A revoked key keeps its row (for `keys list`); at most one unrevoked key per name.
    """

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_api_keys_key_hash", "key_hash", unique=True),
        Index(
            "ix_api_keys_active_name",
            "name",
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
            sqlite_where=text("revoked_at IS NULL"),
        ),
    )
