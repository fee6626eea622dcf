"""Conversations in and out in ChatGPT's data-export format (`conversations.json`).

Both directions hold little at a time, and that compactly: import reads the file as a
stream of JSON events and keeps each node only as the row it becomes (its message already
serialized), a batch of conversations up to 1 MiB of messages (or one larger conversation)
at a time; export reads a page's messages in one streamed query and writes one node after
another. A conversation of N MB needs about 2 × N MB.

What an import accepts: `conversations.json` (a list of conversations), the .zip it came
in (read by the command line), or a file holding one conversation object (what some
exporters write). How it is stored:
- Ids are kept. A node id that is not a canonical UUID (`client-created-root`), or a
  UUID another conversation already uses, gets a deterministic uuid5 and keeps the
  original in `messages.original_id`, which export writes back. A conversation id that
  is not a UUID gets a uuid5 here; export writes the file's own `id` and `conversation_id`.
- Every message is kept exactly as the file had it (`messages.original`: any content
  type, author, metadata, recipient), and `msg/history` and export show it that way.
  Its text goes to `messages.content` only when it is part of the dialogue (system,
  user or assistant text addressed to all), which is what the upstream sees when the
  conversation continues; tool calls, tool output and browsing results are not sent.
- A node whose message is null is stored as an empty node; it is written back as null.
- A node whose `parent` is not in the file becomes a root here; the parent it named is
  kept in `conversations.original["mapping"]` (a mapping holding only that) and exported.
- A message without `create_time` sorts at its parent's time; siblings keep their order.
- Without a usable `current_node`, the conversation continues from its most recent leaf
  (the deepest among equally recent ones), never from its empty root.
- A conversation already present (by id) is skipped, so importing again adds nothing,
  and importing a file again after it broke off part-way adds the rest.
- What /v1 kept (metadata, response fields, stored chat completions) goes out and comes
  back under the conversation's `gpt_api` key (`services/transfer_extension.py`); token
  usage comes back from each message's `metadata.usage`.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import sys
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import ijson
from sqlalchemy import Row

from models.db import Database
from models.entities import DEFAULT_TITLE, Conversation, utcnow
from services import transfer_extension
from services.chatgpt_format import message_document
from services.message_paths import message_text
from services.chat_completions import ORIGINAL_KEY
from services.transfer_extension import Extension, Placement
from services.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

NODE_NAMESPACE = uuid.UUID("6f1d3c52-0d8e-4b8e-9a57-8a3c2b1f0e64")
"""uuid5 namespace for node ids that cannot be kept as they are."""
DIALOGUE_ROLES = ("system", "developer", "user", "assistant")
TEXT_CONTENT = ("text", "multimodal_text")
COMMIT_EVERY = 2000
"""Messages written per transaction during an import (a conversation is never split)."""
BATCH_CONVERSATIONS = 100
BATCH_BYTES = 1 << 20
"""Conversations are read into batches of this many, or of this many bytes of messages,
each written in a few statements (looking up which are present, which ids are taken,
the conversations, their messages) rather than a few statements per conversation."""
INSERT_CHUNK = 100
"""Message rows built and sent at once: a huge conversation never has all its rows built."""
EXPORT_PAGE = 100
ONE_MICROSECOND = timedelta(microseconds=1)
EXPECTED = "ChatGPT's conversations.json (a list of conversations) or one conversation object"
_SURROGATE = re.compile("[\ud800-\udfff]")
_OPENS = frozenset(("start_map", "start_array"))
_CLOSES = frozenset(("end_map", "end_array"))


class NotAnExport(ValueError):
    """The file is valid JSON but holds neither a list of conversations nor one conversation."""


class ExportBrokenOff(Exception):
    """The file stopped being valid JSON at entry `index`; what came before is imported."""

    def __init__(self, index: int, error: ijson.JSONError, report: ImportReport) -> None:
        reason = error.args[0] if error.args else ""  # the parser's words, showing where it stopped
        self.reason = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        super().__init__(f"not valid JSON from entry [{index}] on: {self.reason}")
        self.index = index
        self.report = report


@dataclass(frozen=True)
class Skipped:
    """An entry of the file that was not imported, named as a person can find it in the file."""

    index: int
    """Its position in the file's list, from 0 (`jq '.[index]'` shows it)."""
    title: str | None
    reason: str


@dataclass
class ImportReport:
    conversations: int = 0
    messages: int = 0
    already_present: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    """Entries that are not conversations."""
    dropped_nodes: int = 0
    """Nodes unreachable from any root (a cycle in the file's parent links)."""

    @property
    def invalid(self) -> int:
        return len(self.skipped)


@dataclass(slots=True)
class FileNode:
    """One entry of a conversation's `mapping`, held compactly until it is stored."""

    parent: Any
    """The file's `parent`, as it said."""
    children: tuple[str, ...]
    """The file's `children`, which give the order of siblings."""
    created_at: datetime | None
    message: bytes | None
    """The message as UTF-8 JSON, exactly as the file had it; None for an empty node."""


@dataclass
class Entry:
    """One conversation of the file, its mapping read node by node."""

    index: int
    fields: dict[str, Any] | None
    """Its keys in the file's order, `mapping` kept as None; None if the entry is no object."""
    mapping: dict[str, FileNode] | None
    """None if it has no `mapping` object."""

    @property
    def title(self) -> str | None:
        title = self.fields.get("title") if self.fields else None
        return title if isinstance(title, str) else None


# -- reading ----------------------------------------------------------------


def read_export(stream: IO[bytes]) -> Iterator[Entry]:
    """The conversations of a `conversations.json`, or the one conversation of a file that
    holds only that, one at a time.

    Raises NotAnExport for any other JSON, and ijson.JSONError where the file stops being JSON.
    """
    events = ijson.basic_parse(stream, use_float=True)
    kind, value = next(events)
    if kind == "start_array":
        for index in itertools.count():
            kind, value = next(events)
            if kind == "end_array":
                break
            yield _read_entry(index, kind, value, events)
    elif kind == "start_map":
        entry = _read_entry(0, kind, value, events)
        if entry.mapping is None:
            raise NotAnExport(f"expected {EXPECTED}; found an object without a `mapping` object")
        yield entry
    else:
        found = "null" if kind == "null" else "a string" if kind == "string" else f"a {kind}"
        raise NotAnExport(f"expected {EXPECTED}; found {found}")
    for _trailing in events:  # ijson raises on anything after the top-level value
        pass


def _read_entry(index: int, kind: str, value: Any, events: Iterator[tuple[str, Any]]) -> Entry:
    if kind != "start_map":
        _build(kind, value, events)
        return Entry(index, None, None)
    fields: dict[str, Any] = {}
    mapping: dict[str, FileNode] | None = None
    for kind, key in events:
        if kind == "end_map":
            break
        kind, value = next(events)
        if key == "mapping" and kind == "start_map":
            mapping, fields[key] = _read_mapping(events), None
        else:
            fields[key] = _build(kind, value, events)
    return Entry(index, fields, mapping)


def _read_mapping(events: Iterator[tuple[str, Any]]) -> dict[str, FileNode]:
    """A `mapping` object, each node built alone and reduced at once."""
    nodes: dict[str, FileNode] = {}
    for kind, key in events:
        if kind == "end_map":
            break
        nodes[sys.intern(key)] = _node(_build(*next(events), events))
    return nodes


def _build(kind: str, value: Any, events: Iterator[tuple[str, Any]]) -> Any:
    """The JSON value that starts with this event (iteratively: nesting depth is no limit)."""
    if kind not in _OPENS:
        return value
    builder = ijson.ObjectBuilder()
    builder.event(kind, value)
    depth = 1
    for kind, value in events:
        builder.event(kind, value)
        if kind in _OPENS:
            depth += 1
        elif kind in _CLOSES:
            depth -= 1
            if not depth:
                break
    return builder.value


def _node(raw: Any) -> FileNode:
    node = raw if isinstance(raw, dict) else {}
    parent, children, message = node.get("parent"), node.get("children"), node.get("message")
    return FileNode(
        # Interned: a key, its node's parent and its parent's children are then one string.
        sys.intern(parent) if isinstance(parent, str) else parent,
        tuple(sys.intern(c) for c in children if isinstance(c, str)) if isinstance(children, list) else (),
        _moment(message.get("create_time")) if isinstance(message, dict) else None,
        _json_bytes(message) if isinstance(message, dict) else None,
    )


def _json_bytes(value: Any) -> bytes:
    """`value` as compact UTF-8 JSON: about as many bytes as the file spent on it (a str
    takes four bytes for every character once a single emoji is in it). \\u escapes only
    for a lone surrogate, which UTF-8 cannot carry."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if _SURROGATE.search(text):
        text = json.dumps(value, separators=(",", ":"))
    return text.encode()


def _message_fields(node: FileNode) -> dict[str, Any]:
    """The columns of a node's message row."""
    if node.message is None:
        return {
            "role": None, "content": "", "status": "finished_successfully", "end_turn": None,
            "model": None, "finish_details": None, "prompt_tokens": None, "completion_tokens": None,
            "original": None,
        }
    original = node.message.decode()
    message = json.loads(original)
    author = message.get("author") if isinstance(message.get("author"), dict) else {}
    metadata = message.get("metadata") if isinstance(message.get("metadata"), dict) else {}
    finish = metadata.get("finish_details")
    usage = metadata.get("usage") if isinstance(metadata.get("usage"), dict) else {}
    end_turn = message.get("end_turn")
    return {
        "role": _text(author.get("role"), 16) or "unknown",
        "content": dialogue_text(message),
        "status": _text(message.get("status"), 32) or "finished_successfully",
        "end_turn": end_turn if isinstance(end_turn, bool) else None,
        "model": _text(metadata.get("model_slug"), 128),
        "finish_details": _text(finish.get("type"), 32) if isinstance(finish, dict) else None,
        "prompt_tokens": _count(usage.get("prompt_tokens")),
        "completion_tokens": _count(usage.get("completion_tokens")),
        "original": original,
    }


def _count(value: Any) -> int | None:
    """A token count as a message's `metadata.usage` has it (what an INTEGER column holds)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31 else None


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


def _file_id(fields: dict[str, Any]) -> str | None:
    """The conversation's id as the file gave it."""
    given = fields.get("id") or fields.get("conversation_id")
    return given if isinstance(given, str) and given else None


def dialogue_text(message: dict[str, Any]) -> str:
    """What the upstream is shown of an imported message when the conversation continues (of a
    message /v1/chat/completions kept whole, the text of the message it kept)."""
    metadata = message.get("metadata")
    kept = metadata.get(ORIGINAL_KEY) if isinstance(metadata, dict) else None
    if isinstance(kept, dict):
        return message_text(kept.get("content")).replace("\x00", "\ufffd")
    author = message.get("author") if isinstance(message.get("author"), dict) else {}
    content = message.get("content") if isinstance(message.get("content"), dict) else {}
    if author.get("role") not in DIALOGUE_ROLES or message.get("recipient", "all") != "all":
        return ""
    parts = content.get("parts")
    if content.get("content_type") not in TEXT_CONTENT or not isinstance(parts, list):
        return ""
    text = "\n".join(part for part in parts if isinstance(part, str))
    return text.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL (the original keeps it)


def _tree_order(mapping: dict[str, FileNode]) -> Iterator[tuple[str, str | None, int]]:
    """(node key, parent key, depth) with parents first and siblings in the file's order."""
    children: dict[str | None, list[str]] = {}
    for key, node in mapping.items():
        parent = node.parent if isinstance(node.parent, str) and node.parent in mapping else None
        children.setdefault(parent, []).append(key)
    for parent, keys in children.items():  # the file's `children` lists give sibling order
        if parent is not None and mapping[parent].children:
            rank = {key: i for i, key in enumerate(mapping[parent].children)}
            keys.sort(key=lambda key: rank.get(key, len(rank)))
    queue: deque[tuple[str, str | None, int]] = deque((key, None, 0) for key in children.get(None, []))
    while queue:
        key, parent, depth = queue.popleft()
        yield key, parent, depth
        queue.extend((child, key, depth + 1) for child in children.get(key, []))


@dataclass(slots=True)
class _Placed:
    """Where a node goes: its id here, its parent's, its time and its depth in the tree."""

    key: str
    id: uuid.UUID
    parent: str | None
    """Its parent's key."""
    parent_id: uuid.UUID | None
    created_at: datetime
    depth: int


@dataclass
class _Added:
    """A conversation of a batch that is not stored yet, its nodes placed."""

    id: uuid.UUID
    entry: Entry
    placed: list[_Placed]
    extension: Extension
    """What /v1 kept, from the conversation's `gpt_api` key."""
    placement: Placement


@dataclass
class _Batch:
    """Conversations read from the file, written together."""

    entries: list[Entry]
    next_index: int
    """The position in the file after the batch's last entry."""
    broken: ijson.JSONError | None = None
    """Where the file stopped being JSON, right after the batch."""


def _batches(entries: Iterable[Entry]) -> Iterator[_Batch]:
    """`entries` in batches of up to BATCH_CONVERSATIONS conversations or BATCH_BYTES of
    messages (a larger conversation alone); the last one carries a JSON error that ended
    the file."""
    batch: list[Entry] = []
    size, next_index = 0, 0
    remaining = iter(entries)
    while True:
        try:
            entry = next(remaining, None)
        except ijson.JSONError as error:
            yield _Batch(batch, next_index, error)
            return
        if entry is None:
            if batch:
                yield _Batch(batch, next_index)
            return
        batch.append(entry)
        next_index = entry.index + 1
        size += sum(len(node.message or b"") for node in (entry.mapping or {}).values())
        if len(batch) >= BATCH_CONVERSATIONS or size >= BATCH_BYTES:
            yield _Batch(batch, next_index)
            batch, size = [], 0


def _new_conversations(uow: UnitOfWork, entries: Sequence[Entry], report: ImportReport) -> dict[uuid.UUID, Entry]:
    """The batch's conversations by id, but those already stored (or earlier in the file);
    what is not a conversation goes to the report."""
    named: dict[uuid.UUID, Entry] = {}
    for entry in entries:
        fields, mapping = entry.fields, entry.mapping
        given_id = _file_id(fields) if fields is not None else None
        if fields is None or not mapping or given_id is None:
            reason = "not an object" if fields is None else "no id" if mapping else "no mapping with nodes"
            report.skipped.append(Skipped(entry.index, entry.title, reason))
            continue
        conversation_id = _canonical_uuid(given_id) or uuid.uuid5(NODE_NAMESPACE, given_id)
        if conversation_id in named:  # the same conversation twice in the file
            report.already_present += 1
        else:
            named[conversation_id] = entry
    present = uow.conversations.present_conversations(list(named))
    report.already_present += len(present)
    return {conversation_id: entry for conversation_id, entry in named.items() if conversation_id not in present}


def _with_nodes_placed(uow: UnitOfWork, new: dict[uuid.UUID, Entry]) -> list[_Added]:
    """The conversations with their nodes placed. A node keeps its own id unless a message
    stored already, or one placed before it in the batch, has it."""
    orders = {conversation_id: list(_tree_order(entry.mapping or {})) for conversation_id, entry in new.items()}
    wanted = {
        conversation_id: {key: _node_id(conversation_id, key) for key, _, _ in order}
        for conversation_id, order in orders.items()
    }
    taken = uow.conversations.taken_message_ids([i for ids in wanted.values() for i in ids.values()])
    added = []
    for conversation_id, entry in new.items():
        ids = wanted[conversation_id]
        for key, node_id in ids.items():
            if node_id in taken:  # the same message id in another conversation
                ids[key] = _derived_id(conversation_id, key)
        taken.update(ids.values())
        fields = entry.fields or {}
        placed = _place(orders[conversation_id], ids, entry.mapping or {}, fields)
        extension = transfer_extension.read(fields.get(transfer_extension.KEY))
        placement = Placement({node.key: node.id for node in placed})
        added.append(_Added(conversation_id, entry, placed, extension, placement))
    return added


def _node_id(conversation_id: uuid.UUID, key: str) -> uuid.UUID:
    """The id a node keeps if it is free: its own if it is a UUID, else `_derived_id`."""
    return _canonical_uuid(key) or _derived_id(conversation_id, key)


def _derived_id(conversation_id: uuid.UUID, key: str) -> uuid.UUID:
    """A node's id made from its conversation and key: the same on every import of the file."""
    return uuid.uuid5(NODE_NAMESPACE, f"{conversation_id}/{key}")


def _place(
    order: Sequence[tuple[str, str | None, int]], ids: dict[str, uuid.UUID], mapping: dict[str, FileNode],
    fields: dict[str, Any],
) -> list[_Placed]:
    """Every node reachable from a root (`order`: parents before children), with its id and time."""
    start = _moment(fields.get("create_time")) or utcnow()
    times: dict[str, datetime] = {}
    last_child: dict[str | None, datetime] = {}
    placed = []
    for key, parent, depth in order:
        moment = mapping[key].created_at or (times[parent] if parent is not None else start)
        previous = last_child.get(parent)
        if previous is not None and moment <= previous:  # keep the file's sibling order
            moment = previous + ONE_MICROSECOND
        times[key] = last_child[parent] = moment
        placed.append(_Placed(key, ids[key], parent, ids[parent] if parent is not None else None, moment, depth))
    return placed


class ConversationTransfer:
    """Import and export against one database, for one owner."""

    def __init__(self, db: Database, owner: str = "") -> None:
        self._db = db
        self._owner = owner

    # -- import --------------------------------------------------------------

    def import_conversations(self, entries: Iterable[Entry]) -> ImportReport:
        """Store each conversation not yet present, a batch at a time; commits every few
        thousand messages.

        If `entries` stops with a JSON error, what was read before it is committed and
        ExportBrokenOff carries the report.
        """
        report = ImportReport()
        batches = _batches(entries)
        while True:
            with UnitOfWork(self._db) as uow:
                written = 0
                for batch in batches:
                    written += self._import_batch(uow, batch.entries, report)
                    if batch.broken is not None:
                        uow.commit()
                        raise ExportBrokenOff(batch.next_index, batch.broken, report) from batch.broken
                    if written >= COMMIT_EVERY:
                        break
                else:
                    uow.commit()
                    return report
                uow.commit()

    def _import_batch(self, uow: UnitOfWork, entries: Sequence[Entry], report: ImportReport) -> int:
        """Add a batch's new conversations in a few statements; returns how many messages."""
        added = _with_nodes_placed(uow, _new_conversations(uow, entries, report))
        uow.conversations.import_conversations([self._conversation_row(one, report) for one in added])
        rows = self._message_rows(added)
        while chunk := list(itertools.islice(rows, INSERT_CHUNK)):
            uow.conversations.import_messages(chunk)
        for one in added:
            times = {node.id: node.created_at for node in one.placed}
            for completion in one.placement.completions(one.extension, self._owner, _moment):
                completion["created_at"] = completion["created_at"] or times[completion["id"]]
                uow.conversations.add_chat_completion(**completion)
        return sum(len(one.placed) for one in added)

    def _conversation_row(self, added: _Added, report: ImportReport) -> dict[str, Any]:
        """The conversation's row; counts it and its messages in the report."""
        fields, mapping, placed = added.entry.fields or {}, added.entry.mapping or {}, added.placed
        report.conversations += 1
        report.messages += len(placed)
        report.dropped_nodes += len(mapping) - len(placed)
        orphans = {
            key: {"parent": node.parent}
            for key, node in mapping.items()
            if node.parent is not None and not (isinstance(node.parent, str) and node.parent in mapping)
        }
        created = _moment(fields.get("create_time")) or min(
            (node.created_at for node in placed), default=utcnow()
        )
        current = fields.get("current_node")
        current_id = next((node.id for node in placed if node.key == current), None)
        title = fields.get("title")
        return {
            "id": added.id,
            "owner": self._owner,
            "title": title.replace("\x00", "\ufffd") if isinstance(title, str) and title.strip() else DEFAULT_TITLE,
            "created_at": created,
            "updated_at": _moment(fields.get("update_time")) or created,
            "current_node_id": current_id or _latest_leaf(placed),
            # The mapping lives in the messages; its key stays, to keep the key order, and
            # holds what the messages cannot: the parents that orphan nodes named. What /v1
            # kept goes back to its own rows and columns.
            "original": {
                **{key: value for key, value in fields.items() if key != transfer_extension.KEY},
                "mapping": orphans or None,
            },
            "metadata_": added.extension.metadata,
        }

    def _message_rows(self, added: Sequence[_Added]) -> Iterator[dict[str, Any]]:
        """The message rows of the batch's conversations, each built as it is sent."""
        for one in added:
            mapping = one.entry.mapping or {}
            hashes = self._chat_path_hashes(one.extension, one.placed, mapping)
            for node in one.placed:
                yield {
                    **_row(one.id, node, mapping[node.key]),
                    "response_fields": one.placement.response_fields(one.extension, node.key),
                    "path_hash": hashes.get(node.key),
                }

    def _chat_path_hashes(
        self, extension: Extension, placed: Sequence[_Placed], mapping: dict[str, FileNode]
    ) -> dict[str, str]:
        """The path hashes of the nodes /v1/chat/completions threads by, for this owner."""
        if not extension.chat_path:
            return {}

        def chat_nodes() -> Iterator[tuple[str, str | None, dict[str, Any]]]:
            for node in placed:
                raw = mapping[node.key].message
                if node.key in extension.chat_path and raw is not None:
                    fields = _message_fields(mapping[node.key])
                    message = transfer_extension.chat_message(json.loads(raw), fields["role"], fields["content"])
                    yield node.key, node.parent, message

        return transfer_extension.chat_path_hashes(extension, self._owner, chat_nodes())

    # -- export --------------------------------------------------------------

    def export_conversations(self, out: IO[str], *, every_owner: bool = False) -> int:
        """Write `conversations.json` to `out`, newest activity first; returns the count."""
        out.write("[")
        count = 0
        for conversation, messages, completions in self._conversations(every_owner):
            out.write(",\n" if count else "\n")
            _write_conversation(out, conversation, messages, completions)
            count += 1
        out.write("\n]\n" if count else "]\n")
        return count

    def _conversations(self, every_owner: bool) -> Iterator[tuple[Conversation, list[Row[Any]], list[Row[Any]]]]:
        """Each conversation with its messages and stored chat completions. A page of
        conversations per unit of work, its messages in one streamed query; one
        conversation's messages are held at a time."""
        after: tuple[datetime, uuid.UUID] | None = None
        owner = None if every_owner else self._owner
        while True:
            with UnitOfWork(self._db) as uow:
                page = uow.conversations.export_page(owner, after=after, limit=EXPORT_PAGE)
                ids = [conversation.id for conversation in page]
                completions: dict[uuid.UUID, list[Row[Any]]] = {}
                for completion in uow.conversations.export_chat_completions(ids):
                    completions.setdefault(completion.conversation_id, []).append(completion)
                rows = uow.conversations.export_messages(ids)
                groups = itertools.groupby(rows, key=lambda row: row.conversation_id)
                group = next(groups, None)
                for conversation in page:
                    messages: list[Row[Any]] = []
                    if group is not None and group[0] == conversation.id:
                        messages = list(group[1])
                        group = next(groups, None)
                    yield conversation, messages, completions.get(conversation.id, [])
                if len(page) < EXPORT_PAGE:
                    return
                after = (page[-1].updated_at, page[-1].id)


def _row(conversation_id: uuid.UUID, placed: _Placed, node: FileNode) -> dict[str, Any]:
    return {
        "id": placed.id,
        "conversation_id": conversation_id,
        "parent_id": placed.parent_id,
        "created_at": placed.created_at,
        "original_id": None if str(placed.id) == placed.key else placed.key,
        **_message_fields(node),
    }


def _latest_leaf(placed: Sequence[_Placed]) -> uuid.UUID | None:
    """Where a conversation whose file names no current node continues: its most recent
    leaf, the deepest of equally recent ones (without any times, the longest branch)."""
    parents = {node.parent_id for node in placed}
    leaves = [node for node in placed if node.id not in parents]
    return max(leaves, key=lambda node: (node.created_at, node.depth)).id if leaves else None


def _write_conversation(
    out: IO[str], conversation: Conversation, messages: Sequence[Row[Any]], completions: Sequence[Row[Any]]
) -> None:
    """One entry of `conversations.json`, written node by node (the same text `json.dumps`
    would give for the whole)."""
    keys = {row.id: row.original_id or str(row.id) for row in messages}
    children: dict[uuid.UUID, list[str]] = {}
    for row in messages:
        if row.parent_id in keys:
            children.setdefault(row.parent_id, []).append(keys[row.id])
    original = conversation.original or {}
    orphans = original.get("mapping") if isinstance(original.get("mapping"), dict) else {}
    current = conversation.current_node_id
    document = _export_fields(conversation, keys.get(current, str(current)) if current else None)
    extension = transfer_extension.exported(
        conversation.metadata_, messages, completions, lambda node_id: keys.get(node_id, str(node_id))
    )
    if extension is not None:
        document[transfer_extension.KEY] = extension
    out.write("{")
    for position, (name, value) in enumerate(document.items()):
        out.write((", " if position else "") + json.dumps(name, ensure_ascii=False) + ": ")
        if name != "mapping":
            out.write(json.dumps(value, ensure_ascii=False))
            continue
        out.write("{")
        for n, row in enumerate(messages):
            key = keys[row.id]
            node = {
                "id": key,
                "message": _message(row),
                "parent": keys.get(row.parent_id) if row.parent_id else orphans.get(key, {}).get("parent"),
                "children": children.get(row.id, []),
            }
            out.write((", " if n else "") + json.dumps(key, ensure_ascii=False) + ": ")
            out.write(json.dumps(node, ensure_ascii=False))
        out.write("}")
    out.write("}")


def _message(row: Row[Any]) -> Any:
    """A node's message: null for an empty node, an imported one as the file had it."""
    if row.role is None:
        return None
    if row.original_json is not None:
        return json.loads(row.original_json)
    return message_document(row)  # type: ignore[arg-type]  # a row has the message's columns


def _export_fields(conversation: Conversation, current_node: str | None) -> dict[str, Any]:
    """The conversation's keys, in the file's order for an imported one; `mapping` is None
    here (its nodes are written one by one)."""
    original = conversation.original or {}
    title: str | None = conversation.title
    if original.get("title") is None and "title" in original and title == DEFAULT_TITLE:
        title = None
    own = _file_id(original) or str(conversation.id)
    document: dict[str, Any] = {
        "title": title,
        "create_time": _epoch(conversation.created_at, original.get("create_time")),
        "update_time": _epoch(conversation.updated_at, original.get("update_time")),
        "mapping": None,
        "moderation_results": original.get("moderation_results", []),
        "current_node": current_node,
        "plugin_ids": None,
        "conversation_id": own,
        "conversation_template_id": None,
        "gizmo_id": None,
        "is_archived": False,
        "safe_urls": [],
        "id": own,
    }
    if not original:
        return document
    mine = ("title", "create_time", "update_time", "mapping", "moderation_results", "current_node")
    merged = {key: document[key] if key in mine else value for key, value in original.items()}
    return {**merged, **{key: value for key, value in document.items() if key not in merged}}


def _epoch(moment: datetime, original: Any) -> float:
    """`moment` as epoch seconds; the imported value itself while it still says the same."""
    if isinstance(original, (int, float)) and not isinstance(original, bool):
        try:
            if datetime.fromtimestamp(original, UTC) == moment:
                return original
        except (OverflowError, OSError, ValueError):
            pass
    return moment.timestamp()
