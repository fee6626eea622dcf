"""Conversations as OpenAI's Conversations API sees them: metadata, and items.

The items of a conversation are the dialogue's messages on its current branch, from the
first below the root to the current node; the root and the service's own system node (the
root's child, holding SYSTEM_PROMPT) are not items. Added items continue the current
branch and move the current node; a removed item leaves the tree and its children move up.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from models.db import Database
from models.entities import Conversation, utcnow
from models.repository import ConversationRepository
from services.asking import FINISHED, IN_PROGRESS, AskService, Said
from services.conversations import ConversationService
from services.errors import ConversationNotFound, NotFound
from services.unit_of_work import UnitOfWork

DIALOGUE = ("user", "assistant", "system", "developer")
ITEM_STATUS = {FINISHED: "completed", IN_PROGRESS: "in_progress"}
"""A message's stored status as an item's; anything else (broken off) is `incomplete`."""

T = TypeVar("T")


@dataclass(frozen=True)
class ItemView:
    id: uuid.UUID
    role: str
    text: str
    status: str


@dataclass(frozen=True)
class ConversationView:
    id: uuid.UUID
    title: str
    created_at: datetime
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Page(Generic[T]):
    data: list[T]
    has_more: bool


def item_of(row: Any) -> ItemView:
    return ItemView(row.id, row.role, row.content, ITEM_STATUS.get(row.status, "incomplete"))


def page_of(
    items: Sequence[T], key: Callable[[T], uuid.UUID], *, after: uuid.UUID | None, limit: int, order: str
) -> Page[T]:
    """A page of `items` (oldest first) in `order` ("asc" or "desc"), past the item `after`."""
    ordered = list(items) if order == "asc" else list(reversed(items))
    if after is not None:
        ids = [key(item) for item in ordered]
        if after not in ids:
            raise NotFound(f"after: no item {after} in this list.", param="after")
        ordered = ordered[ids.index(after) + 1 :]
    return Page(ordered[:limit], len(ordered) > limit)


def is_item(path: Sequence[Any], index: int) -> bool:
    """Whether the message at `index` of a path from the root is a dialogue item."""
    message = path[index]
    return message.role in DIALOGUE and not (index == 1 and message.role == "system")


def view_of(conversation: Conversation) -> ConversationView:
    return ConversationView(conversation.id, conversation.title, conversation.created_at, conversation.metadata_ or {})


def _missing(conversation_id: uuid.UUID) -> ConversationNotFound:
    return ConversationNotFound(f"Conversation {conversation_id} does not exist.")


class ConversationItems:
    """Create, read, label and delete conversations; list, add, read and remove their items."""

    def __init__(self, db: Database, asking: AskService, conversations: ConversationService) -> None:
        self._db = db
        self._asking = asking
        self._conversations = conversations

    def create(self, owner: str, items: Sequence[Said], metadata: dict[str, str]) -> ConversationView:
        now = utcnow()
        with UnitOfWork(self._db) as uow:
            conversation_id, path = self._asking.new_conversation(uow.conversations, owner, now)
            last = _append(uow.conversations, conversation_id, path[-1].id, items, now)
            uow.conversations.touch(conversation_id, current_node_id=last, metadata_=metadata)
            uow.commit()
            return self._view(uow.conversations, owner, conversation_id)

    def get(self, owner: str, conversation_id: uuid.UUID) -> ConversationView:
        with UnitOfWork(self._db) as uow:
            return self._view(uow.conversations, owner, conversation_id)

    def set_metadata(self, owner: str, conversation_id: uuid.UUID, metadata: dict[str, str]) -> ConversationView:
        with UnitOfWork(self._db) as uow:
            if not uow.conversations.set_metadata(owner, conversation_id, metadata):
                raise _missing(conversation_id)
            uow.commit()
            return self._view(uow.conversations, owner, conversation_id)

    def delete(self, owner: str, conversation_id: uuid.UUID) -> None:
        """As the six routes delete (the upstream's copy too)."""
        self._conversations.delete(owner, conversation_id)

    def page(self, owner: str, *, after: uuid.UUID | None, limit: int) -> Page[ConversationView]:
        """The owner's conversations, newest activity first, past the conversation `after`."""
        with UnitOfWork(self._db) as uow:
            cursor = None
            if after is not None:
                found = uow.conversations.owned(owner, after)
                if found is None:
                    raise ConversationNotFound(f"after: no conversation {after}.", param="after")
                cursor = (found.updated_at, found.id)
            rows = uow.conversations.export_page(owner, after=cursor, limit=limit + 1)
            return Page([view_of(row) for row in rows[:limit]], len(rows) > limit)

    # -- items ---------------------------------------------------------------

    def items(
        self, owner: str, conversation_id: uuid.UUID, *, after: uuid.UUID | None, limit: int, order: str
    ) -> Page[ItemView]:
        with UnitOfWork(self._db) as uow:
            path = self._branch(uow.conversations, owner, conversation_id)
        found = [item_of(message) for index, message in enumerate(path) if is_item(path, index)]
        return page_of(found, lambda item: item.id, after=after, limit=limit, order=order)

    def add(self, owner: str, conversation_id: uuid.UUID, items: Sequence[Said]) -> list[ItemView]:
        """Append `items` at the current node, which moves to the last of them."""
        now = utcnow()
        with UnitOfWork(self._db) as uow:
            claimed = uow.conversations.claim(owner, conversation_id, now)
            if claimed is None:
                raise _missing(conversation_id)
            last = _append(uow.conversations, conversation_id, claimed.current_node_id, items, now)
            uow.conversations.touch(conversation_id, current_node_id=last)
            uow.commit()
        return [ItemView(item.id, item.role, item.content, "completed") for item in items]

    def item(self, owner: str, conversation_id: uuid.UUID, item_id: uuid.UUID) -> ItemView:
        with UnitOfWork(self._db) as uow:
            return item_of(self._item(uow.conversations, owner, conversation_id, item_id))

    def remove(self, owner: str, conversation_id: uuid.UUID, item_id: uuid.UUID) -> ConversationView:
        """Take the item out of the tree; the current node moves up if it was that item. An
        upstream copy of the conversation is hidden first (see `drop_upstream_copy`)."""
        with UnitOfWork(self._db) as uow:
            self._item(uow.conversations, owner, conversation_id, item_id)
        self._conversations.drop_upstream_copy(owner, conversation_id)
        with UnitOfWork(self._db) as uow:
            repo = uow.conversations
            message = self._item(repo, owner, conversation_id, item_id)
            repo.splice_out(message.id, message.parent_id)
            moved: dict[str, Any] = {"updated_at": utcnow()}
            if message.current_node_id == message.id:
                moved["current_node_id"] = message.parent_id
            repo.touch(conversation_id, **moved)
            uow.commit()
            return self._view(repo, owner, conversation_id)

    # -- reading -------------------------------------------------------------

    @staticmethod
    def _view(repo: ConversationRepository, owner: str, conversation_id: uuid.UUID) -> ConversationView:
        conversation = repo.owned(owner, conversation_id)
        if conversation is None:
            raise _missing(conversation_id)
        return view_of(conversation)

    @staticmethod
    def _branch(repo: ConversationRepository, owner: str, conversation_id: uuid.UUID) -> Sequence[Any]:
        """The messages from the root to the current node."""
        conversation = repo.owned(owner, conversation_id)
        if conversation is None:
            raise _missing(conversation_id)
        if conversation.current_node_id is None:
            return []
        return repo.path(conversation_id, conversation.current_node_id)

    @staticmethod
    def _item(repo: ConversationRepository, owner: str, conversation_id: uuid.UUID, item_id: uuid.UUID) -> Any:
        """The message row of an item of the conversation (any branch), or NotFound."""
        message = repo.owned_message(owner, item_id)
        if message is None or message.conversation_id != conversation_id:
            if repo.owned(owner, conversation_id) is None:
                raise _missing(conversation_id)
            raise NotFound(f"Item {item_id} is not in conversation {conversation_id}.", param="item_id")
        if message.role not in DIALOGUE or message.parent_id is None or (
            message.role == "system" and len(repo.path(conversation_id, message.parent_id)) == 1
        ):
            raise NotFound(f"Message {item_id} is not an item (the root or the service's system message).")
        return message


def _append(
    repo: ConversationRepository,
    conversation_id: uuid.UUID,
    parent_id: uuid.UUID | None,
    items: Sequence[Said],
    now: datetime,
) -> uuid.UUID | None:
    """Store `items` as a chain under `parent_id`; the last one's id (`parent_id` without items)."""
    chain = [(item.id, item.role, item.content) for item in items]
    repo.add_chain(conversation_id, parent_id, chain, status=FINISHED, created_at=now)
    return items[-1].id if items else parent_id
