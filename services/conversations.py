"""Reading and changing conversations: list, history, rename, delete, clear.

A provider that keeps its own copy upstream (ChatGPT) is told of renames and deletions
before they are made here. ChatGPT cannot delete one message: before messages leave a
conversation here (through /v1), its copy there is hidden whole and forgotten, and the
next answer starts a new upstream conversation.
"""

from __future__ import annotations

import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime

from models.db import Database
from services.chatgpt_format import ConversationDocument, conversation_document
from services.errors import ConversationNotFound
from services.providers.base import Provider
from services.unit_of_work import UnitOfWork


@dataclass(frozen=True)
class History:
    """A conversation's tree (`msg/history`), and every float in it (None: not known, some
    messages being kept as given)."""

    document: ConversationDocument
    numbers: list[float] | None


@dataclass(frozen=True)
class ConversationSummary:
    id: uuid.UUID
    title: str
    created_at: datetime
    updated_at: datetime


def _missing(conversation_id: uuid.UUID) -> ConversationNotFound:
    return ConversationNotFound(f"Conversation {conversation_id} does not exist.")


class ConversationService:
    def __init__(self, db: Database, provider: Provider | None) -> None:
        self._db = db
        self._provider = provider

    def list_conversations(
        self, owner: str, *, offset: int = 0, limit: int = 20, after: uuid.UUID | None = None
    ) -> list[ConversationSummary]:
        """Newest activity first. `after` (the last id of the previous page) pages by keyset."""
        with UnitOfWork(self._db, reads_only=True) as uow:
            rows = uow.statements.page(owner, limit=limit, offset=offset, after=after)
            if not rows and after is not None and not uow.statements.owns(owner, after):
                raise ConversationNotFound(f"Conversation {after} (the 'after' cursor) does not exist.")
        return [ConversationSummary(*row) for row in rows]

    def history(self, owner: str, conversation_id: uuid.UUID) -> History:
        """The conversation's whole tree in ChatGPT's shape."""
        with UnitOfWork(self._db, reads_only=True) as uow:
            header = uow.statements.tree_header(owner, conversation_id)
            if header is None:
                raise _missing(conversation_id)
            messages = uow.statements.tree(conversation_id)
        return History(*conversation_document(header, messages))

    def rename(self, owner: str, conversation_id: uuid.UUID, title: str) -> None:
        upstream_id = self._upstream_id(owner, conversation_id)
        if upstream_id and self._provider is not None:
            self._provider.rename(upstream_id, title)
        with UnitOfWork(self._db) as uow:
            if not uow.conversations.rename(owner, conversation_id, title):
                raise _missing(conversation_id)  # deleted meanwhile
            uow.commit()

    def delete(self, owner: str, conversation_id: uuid.UUID) -> None:
        upstream_id = self._upstream_id(owner, conversation_id)
        if upstream_id and self._provider is not None:
            self._provider.delete(upstream_id)
        with UnitOfWork(self._db) as uow:
            if not uow.conversations.delete(owner, conversation_id):
                raise _missing(conversation_id)  # deleted meanwhile
            uow.commit()

    def drop_upstream_copy(self, owner: str, conversation_id: uuid.UUID) -> None:
        """Before messages leave the conversation: hide its upstream copy, as `delete` does
        (one message cannot be deleted there), and forget the upstream's ids, so the next
        answer starts a new upstream conversation. The upstream's refusal is raised, and then
        nothing is changed here."""
        upstream_id = self._upstream_id(owner, conversation_id)
        if not upstream_id or self._provider is None:
            return
        self._provider.delete(upstream_id)
        with UnitOfWork(self._db) as uow:
            uow.conversations.forget_upstream(conversation_id)
            uow.commit()

    def clear(self, owner: str) -> None:
        """Delete the caller's conversations, and their upstream copies.

        The anonymous caller (no API keys) owns the whole upstream account, as in the
        original service; a key's owner shares it, so only its own copies are deleted there.
        """
        if self._provider is not None and owner == "":
            self._provider.clear()
        elif self._provider is not None:
            with UnitOfWork(self._db) as uow:
                mirrored = uow.conversations.mirrored_ids(owner)
            for conversation_id in mirrored:  # one by one: each deleted here once gone there
                with suppress(ConversationNotFound):  # deleted meanwhile
                    self.delete(owner, conversation_id)
        with UnitOfWork(self._db) as uow:
            uow.conversations.delete_all(owner)
            uow.commit()

    def _upstream_id(self, owner: str, conversation_id: uuid.UUID) -> str | None:
        with UnitOfWork(self._db) as uow:
            conversation = uow.conversations.owned(owner, conversation_id)
            if conversation is None:
                raise _missing(conversation_id)
            return conversation.upstream_id
