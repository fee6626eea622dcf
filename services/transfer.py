"""Conversations in and out in ChatGPT's data-export format (`conversations.json`).

Both directions hold one conversation in memory at a time: import reads the file
with ijson as a stream of conversations, export writes one conversation after another.

How an import is stored:
- Ids are kept. A node id that is not a canonical UUID (`client-created-root`), or a
  UUID another conversation already uses, gets a deterministic uuid5 and keeps the
  original in `messages.original_id`, which export writes back.
- Every message is kept exactly as the file had it (`messages.original`: any content
  type, author, metadata, recipient), and `msg/history` and export show it that way.
  Its text goes to `messages.content` only when it is part of the dialogue (system,
  user or assistant text addressed to all), which is what the upstream sees when the
  conversation continues; tool calls, tool output and browsing results are not sent.
- A node whose message is null is stored as an empty node; it is written back as null.
- A message without `create_time` sorts at its parent's time; siblings keep their order.
- A conversation already present (by id) is skipped, so importing again adds nothing.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import ijson
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from models.db import Database
from models.entities import DEFAULT_TITLE, Conversation, Message, utcnow
from services.chatgpt_format import export_document

log = logging.getLogger(__name__)

NODE_NAMESPACE = uuid.UUID("6f1d3c52-0d8e-4b8e-9a57-8a3c2b1f0e64")
"""uuid5 namespace for node ids that cannot be kept as they are."""
DIALOGUE_ROLES = ("system", "user", "assistant")
TEXT_CONTENT = ("text", "multimodal_text")
COMMIT_EVERY = 2000
"""Messages written per transaction during an import."""
EXPORT_PAGE = 100
ONE_MICROSECOND = timedelta(microseconds=1)


@dataclass
class ImportReport:
    conversations: int = 0
    messages: int = 0
    already_present: int = 0
    invalid: int = 0
    dropped_nodes: int = 0
    """Nodes unreachable from any root (a cycle in the file's parent links)."""


def read_export(stream: IO[bytes]) -> Iterator[dict[str, Any]]:
    """The conversations of a `conversations.json`, one at a time."""
    return ijson.items(stream, "item", use_float=True)


def _moment(value: Any) -> datetime | None:
    """A ChatGPT timestamp (epoch seconds, or ISO 8601) as an aware UTC datetime."""
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            moment = datetime.fromisoformat(value)
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (OverflowError, OSError, ValueError):
        pass
    return None


def _canonical_uuid(value: Any) -> uuid.UUID | None:
    """`value` as a UUID if it is one written the way `str(uuid)` writes it."""
    if not isinstance(value, str):
        return None
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    return parsed if str(parsed) == value else None


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def dialogue_text(message: dict[str, Any]) -> str:
    """What the upstream is shown of an imported message when the conversation continues."""
    author = message.get("author") if isinstance(message.get("author"), dict) else {}
    content = message.get("content") if isinstance(message.get("content"), dict) else {}
    if author.get("role") not in DIALOGUE_ROLES or message.get("recipient", "all") != "all":
        return ""
    parts = content.get("parts")
    if content.get("content_type") not in TEXT_CONTENT or not isinstance(parts, list):
        return ""
    text = "\n".join(part for part in parts if isinstance(part, str))
    return text.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL (the original keeps it)


def _tree_order(mapping: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    """(node key, parent key) with parents first and siblings in the file's order."""
    children: dict[str | None, list[str]] = {}
    for key, node in mapping.items():
        parent = node.get("parent") if isinstance(node, dict) else None
        parent = parent if isinstance(parent, str) and parent in mapping else None
        children.setdefault(parent, []).append(key)
    for parent, keys in children.items():  # the file's `children` lists give sibling order
        listed = mapping[parent].get("children") if parent is not None else None
        if isinstance(listed, list):
            rank = {key: i for i, key in enumerate(listed) if isinstance(key, str)}
            keys.sort(key=lambda key: rank.get(key, len(rank)))
    queue: deque[tuple[str, str | None]] = deque((key, None) for key in children.get(None, []))
    while queue:
        key, parent = queue.popleft()
        yield key, parent
        queue.extend((child, key) for child in children.get(key, []))


class ConversationTransfer:
    """Import and export against one database, for one owner."""

    def __init__(self, db: Database, owner: str = "") -> None:
        self._db = db
        self._owner = owner

    # -- import --------------------------------------------------------------

    def import_conversations(self, conversations: Iterable[dict[str, Any]]) -> ImportReport:
        """Store each conversation not yet present; commits every few thousand messages."""
        report = ImportReport()
        remaining = iter(conversations)
        while True:
            with self._db.unit_of_work() as uow:
                pending = 0
                for raw in remaining:
                    pending += self._import_one(uow.session, raw, report)
                    if pending >= COMMIT_EVERY:
                        break
                else:
                    uow.commit()
                    return report
                uow.commit()

    def _import_one(self, session: Session, raw: Any, report: ImportReport) -> int:
        """Add one conversation to the session; returns how many messages it added."""
        if not isinstance(raw, dict) or not isinstance(raw.get("mapping"), dict) or not raw["mapping"]:
            report.invalid += 1
            return 0
        given_id = raw.get("id") or raw.get("conversation_id")
        if not isinstance(given_id, str) or not given_id:
            report.invalid += 1
            return 0
        conversation_id = _canonical_uuid(given_id) or uuid.uuid5(NODE_NAMESPACE, given_id)
        if session.get(Conversation, conversation_id) is not None:
            report.already_present += 1
            return 0
        mapping: dict[str, Any] = raw["mapping"]
        rows = self._message_rows(session, conversation_id, mapping, raw)
        report.dropped_nodes += len(mapping) - len(rows)
        ids = {row["key"]: row["id"] for row in rows}
        created = _moment(raw.get("create_time")) or min(
            (row["created_at"] for row in rows), default=utcnow()
        )
        current = ids.get(raw.get("current_node")) if isinstance(raw.get("current_node"), str) else None
        if current is None and rows:  # no usable current node: the newest message
            current = max(rows, key=lambda row: row["created_at"])["id"]
        title = raw.get("title")
        session.execute(
            insert(Conversation),
            [
                {
                    "id": conversation_id,
                    "owner": self._owner,
                    "title": title.replace("\x00", "\ufffd") if isinstance(title, str) and title.strip() else DEFAULT_TITLE,
                    "created_at": created,
                    "updated_at": _moment(raw.get("update_time")) or created,
                    "current_node_id": current,
                    # The mapping lives in the messages; its key stays to keep the key order.
                    "original": {key: None if key == "mapping" else value for key, value in raw.items()},
                }
            ],
        )
        if rows:
            for row in rows:
                del row["key"]
            session.execute(insert(Message), rows)
        report.conversations += 1
        report.messages += len(rows)
        return len(rows)

    def _message_rows(
        self,
        session: Session,
        conversation_id: uuid.UUID,
        mapping: dict[str, Any],
        raw: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """One row per node reachable from a root, parents before children."""
        order = list(_tree_order(mapping))
        ids: dict[str, uuid.UUID] = {}
        for key, _parent in order:
            ids[key] = _canonical_uuid(key) or uuid.uuid5(NODE_NAMESPACE, f"{conversation_id}/{key}")
        taken = self._taken_ids(session, list(ids.values()))
        for key, node_id in ids.items():
            if node_id in taken:  # the same message id in another conversation
                ids[key] = uuid.uuid5(NODE_NAMESPACE, f"{conversation_id}/{key}")
        start = _moment(raw.get("create_time")) or utcnow()
        times: dict[str, datetime] = {}
        last_child: dict[str | None, datetime] = {}
        rows = []
        for key, parent in order:
            node = mapping[key]
            message = node.get("message") if isinstance(node, dict) else None
            message = message if isinstance(message, dict) else None
            own_time = _moment(message.get("create_time")) if message else None
            moment = own_time or (times[parent] if parent is not None else start)
            previous = last_child.get(parent)
            if previous is not None and moment <= previous:  # keep the file's sibling order
                moment = previous + ONE_MICROSECOND
            times[key] = last_child[parent] = moment
            rows.append(
                {
                    "key": key,
                    "id": ids[key],
                    "conversation_id": conversation_id,
                    "parent_id": ids[parent] if parent is not None else None,
                    "created_at": moment,
                    "original_id": None if str(ids[key]) == key else key,
                    **(self._message_fields(message) if message else {"role": None, "content": ""}),
                }
            )
        return rows

    @staticmethod
    def _message_fields(message: dict[str, Any]) -> dict[str, Any]:
        author = message.get("author") if isinstance(message.get("author"), dict) else {}
        metadata = message.get("metadata") if isinstance(message.get("metadata"), dict) else {}
        finish = metadata.get("finish_details")
        end_turn = message.get("end_turn")
        return {
            "role": _text(author.get("role"), 16) or "unknown",
            "content": dialogue_text(message),
            "status": _text(message.get("status"), 32) or "finished_successfully",
            "end_turn": end_turn if isinstance(end_turn, bool) else None,
            "model": _text(metadata.get("model_slug"), 128),
            "finish_details": _text(finish.get("type"), 32) if isinstance(finish, dict) else None,
            "original": message,
        }

    @staticmethod
    def _taken_ids(session: Session, ids: list[uuid.UUID]) -> set[uuid.UUID]:
        taken: set[uuid.UUID] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            taken.update(session.scalars(select(Message.id).where(Message.id.in_(chunk))))
        return taken

    # -- export --------------------------------------------------------------

    def export_conversations(self, out: IO[str], *, every_owner: bool = False) -> int:
        """Write `conversations.json` to `out`, newest activity first; returns the count."""
        out.write("[")
        count = 0
        for conversation, messages in self._conversations(every_owner):
            out.write(",\n" if count else "\n")
            out.write(json.dumps(export_document(conversation, messages), ensure_ascii=False))
            count += 1
        out.write("\n]\n" if count else "]\n")
        return count

    def _conversations(self, every_owner: bool) -> Iterator[tuple[Conversation, list[Message]]]:
        """Conversations with their messages, one page of conversations per unit of work."""
        after: tuple[datetime, uuid.UUID] | None = None
        while True:
            query = select(Conversation).order_by(
                Conversation.updated_at.desc(), Conversation.id.desc()
            )
            if not every_owner:
                query = query.where(Conversation.owner == self._owner)
            if after is not None:
                updated_at, last_id = after
                query = query.where(
                    (Conversation.updated_at < updated_at)
                    | ((Conversation.updated_at == updated_at) & (Conversation.id < last_id))
                )
            with self._db.unit_of_work() as uow:
                page = list(uow.session.scalars(query.limit(EXPORT_PAGE)))
                for conversation in page:
                    messages = list(
                        uow.session.scalars(
                            select(Message)
                            .where(Message.conversation_id == conversation.id)
                            .order_by(Message.created_at, Message.parent_id.is_not(None))
                        )
                    )
                    yield conversation, messages
                if len(page) < EXPORT_PAGE:
                    return
                after = (page[-1].updated_at, page[-1].id)
