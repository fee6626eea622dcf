"""Every query on conversations and messages, in one place.

A `ConversationRepository` works inside one unit of work (its session). Writes on the
answer path are single Core statements (no ORM unit-of-work flush); reads that hand rows
to serializers return rows, not entities, so long conversations skip the identity map.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Double,
    Row,
    Select,
    Text,
    Uuid,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    null,
    select,
    text,
    tuple_,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Update

from models.db import bound_engine
from models.entities import DEFAULT_TITLE, ChatCompletion, Conversation, Message, UTCDateTime
from models.prepared import Prepared
from models.statuses import FINISHED, IN_PROGRESS, INTERRUPTED

MESSAGE_COLUMNS = tuple(Message.__table__.columns)
TREE_FIELDS = ("id", "parent_id", "role", "content", "status", "end_turn", "model", "finish_details", "created_at",
               "prompt_tokens", "completion_tokens", "original", "answer_details")
"""What a message shows in a conversation's tree, in the order of `ConversationRepository.tree`'s tuples."""
_IN_PROGRESS = literal(IN_PROGRESS, literal_execute=True)
"""Written into the statement, so both databases use the partial index on answers in progress."""
_BATCH = 500
"""Rows per statement where one statement names many (bound parameters stay well within limits)."""
_CONVERSATIONS = Conversation.__table__
_MESSAGES = Message.__table__
"""The tables, for Core statements on the answer path (no ORM bookkeeping per row)."""
_CURSOR = _CONVERSATIONS.alias("cursor")
_PAGE = (
    select(_CONVERSATIONS.c.id, _CONVERSATIONS.c.title, _CONVERSATIONS.c.created_at, _CONVERSATIONS.c.updated_at)
    .where(_CONVERSATIONS.c.owner == bindparam("owner"))
    .order_by(_CONVERSATIONS.c.updated_at.desc(), _CONVERSATIONS.c.id.desc())
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)
_PAGE_AFTER = _PAGE.where(
    tuple_(_CONVERSATIONS.c.updated_at, _CONVERSATIONS.c.id)
    < select(_CURSOR.c.updated_at, _CURSOR.c.id)
    .where(_CURSOR.c.id == bindparam("after"), _CURSOR.c.owner == bindparam("owner"))
    .scalar_subquery()
)
"""A list page, built once; `_PAGE_AFTER` continues past the conversation `after` (no row when the
owner has no such conversation)."""


def _past_offset(page: Select[Any]) -> Select[Any]:
    """`page` for an offset: its keys found in the (owner, updated_at, id) index alone, then
    only its own rows read, where the plain statement reads every row it skips. At offset
    50,000 PostgreSQL takes 5 to 6 ms instead of 10 to 11, SQLite 5 instead of 6; without
    an offset the join only costs planning time (0.34 -> 0.5 ms), so it is not used there."""
    keys = page.with_only_columns(_CONVERSATIONS.c.id, _CONVERSATIONS.c.updated_at).subquery("page")
    return (
        select(_CONVERSATIONS.c.id, _CONVERSATIONS.c.title, _CONVERSATIONS.c.created_at, _CONVERSATIONS.c.updated_at)
        .join(keys, keys.c.id == _CONVERSATIONS.c.id)
        .order_by(keys.c.updated_at.desc(), keys.c.id.desc())
    )


_PAGE_PAST_OFFSET = _past_offset(_PAGE)
_PAGE_AFTER_PAST_OFFSET = _past_offset(_PAGE_AFTER)
_NODE_DEFAULTS: dict[str, Any] = {"parent_id": None, "role": None, "end_turn": None, "status": FINISHED}
"""Every node of a multi-row insert names the same columns."""


def _path_query(conversation_id: uuid.UUID, message_id: uuid.UUID) -> Select[Any]:
    """Messages from the root down to `message_id`, in one recursive query."""
    walk = (
        select(Message.id, Message.parent_id, literal(0).label("depth"))
        .where(Message.id == message_id, Message.conversation_id == conversation_id)
        .cte("walk", recursive=True)
    )
    walk = walk.union_all(
        select(Message.id, Message.parent_id, walk.c.depth + 1).where(Message.id == walk.c.parent_id)
    )
    return select(*MESSAGE_COLUMNS).join(walk, Message.id == walk.c.id).order_by(walk.c.depth.desc())


@functools.cache
def _new_conversation(columns: tuple[str, ...], node_columns: tuple[str, ...], nodes: int) -> Prepared:
    """PostgreSQL: a conversation and its `nodes` first messages in one statement, written once
    per shape with named parameters (`c_<column>`, `m<n>_<column>`). Plain SQL, because
    SQLAlchemy compiles an INSERT holding an INSERT anew on every execution."""
    rows = ", ".join(f"({', '.join(f':m{n}_{name}' for name in node_columns)})" for n in range(nodes))
    sql = (
        f"WITH new_conversation AS (INSERT INTO {_CONVERSATIONS.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join(f':c_{name}' for name in columns)})) "
        f"INSERT INTO {_MESSAGES.name} ({', '.join(node_columns)}) VALUES {rows}"
    )
    types = [bindparam(f"c_{name}", type_=_CONVERSATIONS.c[name].type) for name in columns]
    types += [bindparam(f"m{n}_{name}", type_=_MESSAGES.c[name].type) for n in range(nodes) for name in node_columns]
    return Prepared(text(sql).bindparams(*types))


_SAVE_PROGRESS = text(
    f"UPDATE {_MESSAGES.name} SET content = saved.content, lease_expires_at = :lease "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:texts AS text[])) AS saved (id, content) "
    f"WHERE {_MESSAGES.name}.id = saved.id AND {_MESSAGES.name}.status = '{IN_PROGRESS}'"
).bindparams(bindparam("lease", type_=_MESSAGES.c.lease_expires_at.type))


_NAME_IF_UNTITLED = Prepared(
    text(
        f"UPDATE {_CONVERSATIONS.name} SET title = :title "
        "WHERE id = :conversation_id AND title = :untitled"
    ).bindparams(bindparam("conversation_id", type_=_CONVERSATIONS.c.id.type))
)
"""A generated title, unless the conversation was renamed meanwhile: plain SQL, run on
PostgreSQL on the connection's cursor as the ask's two statements are (every new
conversation runs it; built from SQLAlchemy's constructs it went through their cache key
and the compiled cache each time)."""


@functools.cache
def _place_answer(moved: tuple[str, ...], answer: tuple[str, ...], new: bool) -> Prepared:
    """PostgreSQL: move the conversation (`m_<column>`) and insert or update its answer
    (`a_<column>`) in one statement, written once per shape. Plain SQL for the same reason as
    `_new_conversation`: built with SQLAlchemy's constructs it cost twice the CPU."""
    sql_type = {name: _MESSAGES.c[name].type.compile(dialect=postgresql.dialect()) for name in answer}
    touch = (
        f"WITH moved AS (UPDATE {_CONVERSATIONS.name} SET "
        f"{', '.join(f'{name} = :m_{name}' for name in moved)} WHERE id = :conversation_id RETURNING id) "
    )
    if new:
        write = (
            f"INSERT INTO {_MESSAGES.name} ({', '.join(answer)}) "
            f"SELECT {', '.join(f'CAST(:a_{name} AS {sql_type[name]})' for name in answer)} FROM moved"
        )
    else:
        write = (
            f"UPDATE {_MESSAGES.name} SET {', '.join(f'{name} = :a_{name}' for name in answer if name != 'id')} "
            "WHERE id = :a_id AND EXISTS (SELECT 1 FROM moved)"
        )
    types = [bindparam(f"m_{name}", type_=_CONVERSATIONS.c[name].type) for name in moved]
    types += [bindparam(f"a_{name}", type_=_MESSAGES.c[name].type) for name in answer]
    types.append(bindparam("conversation_id", type_=_CONVERSATIONS.c.id.type))
    return Prepared(text(touch + write).bindparams(*types))


def _as_shown(column: Any, on_postgresql: bool) -> Any:
    """On PostgreSQL an id column as text and a time as epoch seconds, written by the server: a
    thousand-message tree would otherwise make thousands of `uuid.UUID` and `datetime` objects
    only to print them again. (Its epoch seconds are the float `datetime.timestamp()` gives:
    both divide the exact microseconds by a million, rounding once. `date_part` computes them
    in floating point; `EXTRACT` would go through `numeric`, several times slower.)"""
    if not on_postgresql:
        return column
    if isinstance(column.type, Uuid):
        return cast(column, Text).label(column.name)
    if isinstance(column.type, UTCDateTime):
        return func.date_part("epoch", column, type_=Double).label(column.name)
    return column


@functools.cache
def _tree_header_query(on_postgresql: bool) -> Select[Any]:
    """The owner's conversation, what its tree shows of it."""
    columns = ("title", "created_at", "updated_at", "current_node_id")
    return select(*(_as_shown(_CONVERSATIONS.c[name], on_postgresql) for name in columns)).where(
        _CONVERSATIONS.c.id == bindparam("conversation_id"), _CONVERSATIONS.c.owner == bindparam("owner")
    )


@functools.cache
def _tree_query(on_postgresql: bool) -> Select[Any]:
    """A conversation's messages in no order: `ConversationRepository.tree` sorts them."""
    return select(*(_as_shown(_MESSAGES.c[name], on_postgresql) for name in TREE_FIELDS)).where(
        _MESSAGES.c.conversation_id == bindparam("conversation_id")
    )


def _creation_order(row: Sequence[Any]) -> tuple[float, bool]:
    """By time, the root (no parent) first among equals."""
    return row[8], row[1] is not None


def _update_answer(answer: dict[str, Any]) -> Update:
    return update(_MESSAGES).where(_MESSAGES.c.id == answer["id"]).values(answer)


class Statements:
    """The plain statements that single-statement and read-only work runs (every ask runs
    two: its question's and its answer's; every list page and history reads). They run on
    a Core connection there, which costs about half the CPU of a Session
    (`services/unit_of_work.py`), and on a Session everywhere else.
    """

    def __init__(self, work: Session | Connection) -> None:
        self.work = work
        self._postgresql = bound_engine(work).dialect.name == "postgresql"

    def add_conversation(self, *, nodes: Sequence[dict[str, Any]], **values: Any) -> None:
        """A new conversation and its first nodes (parents before children): one statement on
        PostgreSQL (the conversation's insert in a CTE), so it can run outside a transaction."""
        shared = {"conversation_id": values["id"], "created_at": values["created_at"]}
        rows = [{**_NODE_DEFAULTS, **node, **shared} for node in nodes]
        if not self._postgresql:
            self.work.execute(insert(_CONVERSATIONS).values(values))
            self.work.execute(insert(_MESSAGES).values(rows))
            return
        parameters = {f"c_{name}": value for name, value in values.items()}
        for n, row in enumerate(rows):
            parameters.update({f"m{n}_{name}": value for name, value in row.items()})
        _new_conversation(tuple(values), tuple(rows[0]), len(rows)).run(self.work, parameters)

    def place_answer(
        self, conversation_id: uuid.UUID, moved: dict[str, Any], answer: dict[str, Any], *, new: bool
    ) -> bool:
        """Write an answer (`new`: insert its row, else update it) and set the conversation's
        columns `moved` (its current node, `updated_at`); False, writing nothing, when the
        conversation is gone. One statement on PostgreSQL."""
        if not self._postgresql:
            touch = update(_CONVERSATIONS).where(_CONVERSATIONS.c.id == conversation_id).values(moved)
            if not self.work.execute(touch).rowcount:  # type: ignore[attr-defined]
                return False
            write = insert(_MESSAGES).values(answer) if new else _update_answer(answer)
            self.work.execute(write)
            return True
        parameters = {f"m_{name}": value for name, value in moved.items()}
        parameters.update({f"a_{name}": value for name, value in answer.items()}, conversation_id=conversation_id)
        return bool(_place_answer(tuple(moved), tuple(answer), new).run(self.work, parameters))

    def name_if_untitled(self, conversation_id: uuid.UUID, title: str) -> None:
        """Give a generated title, unless the conversation was renamed meanwhile."""
        _NAME_IF_UNTITLED.run(self.work, {"conversation_id": conversation_id, "title": title, "untitled": DEFAULT_TITLE})

    # -- reading, outside a transaction (`UnitOfWork(reads_only=True)`) -------

    def owns(self, owner: str, conversation_id: uuid.UUID) -> bool:
        """Whether the conversation exists and belongs to `owner`."""
        query = select(_CONVERSATIONS.c.id).where(
            _CONVERSATIONS.c.id == conversation_id, _CONVERSATIONS.c.owner == owner
        )
        return self.work.execute(query).first() is not None

    def page(
        self, owner: str, *, limit: int, offset: int = 0, after: uuid.UUID | None = None
    ) -> Sequence[Row[Any]]:
        """Summaries `(id, title, created_at, updated_at)`, newest activity first; `after`
        continues past that conversation of the owner's (an empty page when it has none).

        One statement: the cursor's position is a subquery. A row-value comparison, which the
        (owner, updated_at, id) index answers directly; the same condition spelled with OR
        makes PostgreSQL scan every row before the cursor.
        """
        parameters: dict[str, Any] = {"owner": owner, "limit": limit, "offset": offset}
        if after is None:
            return self.work.execute(_PAGE_PAST_OFFSET if offset else _PAGE, parameters).all()
        query = _PAGE_AFTER_PAST_OFFSET if offset else _PAGE_AFTER
        return self.work.execute(query, {**parameters, "after": after}).all()

    def tree_header(self, owner: str, conversation_id: uuid.UUID) -> tuple[str, float, float, str | None] | None:
        """The owner's conversation as its tree shows it: `(title, created_at, updated_at,
        current_node_id)`, times as epoch seconds and the id as text; None if there is none."""
        row = self.work.execute(
            _tree_header_query(self._postgresql), {"owner": owner, "conversation_id": conversation_id}
        ).first()
        if row is None:
            return None
        return tuple(row) if self._postgresql else self._shown(row)  # type: ignore[return-value]

    def tree(self, conversation_id: uuid.UUID) -> list[Sequence[Any]]:
        """What `msg/history` shows of a conversation's messages, in creation order (the root
        first among equals): tuples of `TREE_FIELDS`, the ids as text and the times as epoch
        seconds (see `_as_shown`).

        Sorted here, not by the database: PostgreSQL scans a conversation's thousand messages
        by a bitmap of the index and then sorts them, 0.9 of its 1.8 ms; a stable sort of rows
        that mostly come in order takes Python 0.08 ms."""
        rows: list[Sequence[Any]] = list(
            self.work.execute(_tree_query(self._postgresql), {"conversation_id": conversation_id}).all()
        )
        if not self._postgresql:
            rows = [self._shown(row) for row in rows]
        rows.sort(key=_creation_order)
        return rows

    @staticmethod
    def _shown(row: Row[Any]) -> tuple[Any, ...]:
        """SQLite's row in the terms of `_as_shown` (PostgreSQL writes it so itself)."""
        return tuple(
            str(value) if isinstance(value, uuid.UUID) else value.timestamp() if isinstance(value, datetime) else value
            for value in row
        )


class ConversationRepository(Statements):
    """Queries on the conversations and messages tables, bound to one session."""

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        self.session = session

    # -- conversations -------------------------------------------------------

    def owned(self, owner: str, conversation_id: uuid.UUID) -> Conversation | None:
        """The conversation if it exists and belongs to `owner`."""
        conversation = self.session.get(Conversation, conversation_id)
        return conversation if conversation is not None and conversation.owner == owner else None

    def owned_many(self, owner: str, conversation_ids: Sequence[uuid.UUID]) -> list[Conversation]:
        """Those of the conversations that exist and belong to `owner`, in no order."""
        if not conversation_ids:
            return []
        query = select(Conversation).where(Conversation.owner == owner, Conversation.id.in_(conversation_ids))
        return list(self.session.scalars(query))

    def claim(self, owner: str, conversation_id: uuid.UUID, now: datetime) -> Row[Any] | None:
        """Mark new activity on the owner's conversation and read what asking needs, or None.

        An update first: it locks the row, so a delete racing the caller either came
        before (None) or waits for the caller's commit.
        """
        return self.session.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id, Conversation.owner == owner)
            .values(updated_at=now)
            .returning(Conversation.current_node_id, Conversation.title, Conversation.upstream_id)
        ).first()

    def touch(self, conversation_id: uuid.UUID, **values: Any) -> bool:
        """Set columns of a conversation (its `updated_at`, current node, ...); False if it is gone."""
        moved = self.session.execute(
            update(Conversation).where(Conversation.id == conversation_id).values(values)
        )
        return bool(moved.rowcount)  # type: ignore[attr-defined]

    def rename(self, owner: str, conversation_id: uuid.UUID, title: str) -> bool:
        renamed = self.session.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id, Conversation.owner == owner)
            .values(title=title)
        )
        return bool(renamed.rowcount)  # type: ignore[attr-defined]

    def delete(self, owner: str, conversation_id: uuid.UUID) -> bool:
        deleted = self.session.execute(
            delete(Conversation).where(Conversation.id == conversation_id, Conversation.owner == owner)
        )
        return bool(deleted.rowcount)  # type: ignore[attr-defined]

    def delete_all(self, owner: str) -> None:
        self.session.execute(delete(Conversation).where(Conversation.owner == owner))

    def mirrored_ids(self, owner: str) -> Sequence[uuid.UUID]:
        """The owner's conversations that an upstream keeps a copy of."""
        return self.session.scalars(
            select(Conversation.id).where(Conversation.owner == owner, Conversation.upstream_id.is_not(None))
        ).all()

    # -- messages ------------------------------------------------------------

    def path(self, conversation_id: uuid.UUID, message_id: uuid.UUID) -> Sequence[Row[Any]]:
        """The messages from the root to `message_id`; empty if it is not in the conversation."""
        return self.session.execute(_path_query(conversation_id, message_id)).all()

    def messages(self, conversation_id: uuid.UUID) -> Sequence[Row[Any]]:
        """A conversation's messages in creation order (the root first among equals)."""
        return self.session.execute(
            select(*MESSAGE_COLUMNS)
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.created_at, Message.parent_id.is_not(None))
        ).all()

    def add_message(self, **values: Any) -> None:
        self.session.execute(insert(Message).values(values))

    def update_message(self, message_id: uuid.UUID, **values: Any) -> None:
        self.session.execute(update(Message).where(Message.id == message_id).values(values))

    # -- answers being written -----------------------------------------------

    def save_progress(self, texts: Sequence[tuple[uuid.UUID, str]], lease_expires_at: datetime) -> None:
        """The text so far of answers being written, and their renewed leases (once an answer is
        no longer in progress, its final save has the last word). One statement of the same
        text however many answers: PostgreSQL takes them as two arrays, SQLite row by row."""
        if self._postgresql:
            self.session.execute(
                _SAVE_PROGRESS,
                {"ids": [str(message_id) for message_id, _ in texts], "texts": [text for _, text in texts],
                 "lease": lease_expires_at},
            )
            return
        self.session.execute(
            update(_MESSAGES)
            .where(_MESSAGES.c.id == bindparam("answer_id"), _MESSAGES.c.status == IN_PROGRESS)
            .values(content=bindparam("text"), lease_expires_at=bindparam("lease")),
            [{"answer_id": message_id, "text": text, "lease": lease_expires_at} for message_id, text in texts],
        )

    def renew_leases(self, message_ids: Sequence[uuid.UUID], lease_expires_at: datetime) -> None:
        for start in range(0, len(message_ids), _BATCH):
            self.session.execute(
                update(Message)
                .where(Message.id.in_(message_ids[start : start + _BATCH]), Message.status == _IN_PROGRESS)
                .values(lease_expires_at=lease_expires_at)
            )

    def interrupt_answers(
        self, *, expired_before: datetime | None = None, message_ids: Sequence[uuid.UUID] = ()
    ) -> int:
        """Mark answers in progress interrupted: those whose lease ran out before `expired_before`
        (their process is gone), and those of `message_ids`; they keep the text saved so far."""
        interrupted = {"status": INTERRUPTED, "finish_details": "interrupted", "end_turn": False,
                       "lease_expires_at": None}
        count = 0
        if expired_before is not None:
            count += self.session.execute(
                update(Message)
                .where(Message.status == _IN_PROGRESS, Message.lease_expires_at < expired_before)
                .values(interrupted)
            ).rowcount  # type: ignore[attr-defined]
        for start in range(0, len(message_ids), _BATCH):
            count += self.session.execute(
                update(Message)
                .where(Message.id.in_(message_ids[start : start + _BATCH]), Message.status == _IN_PROGRESS)
                .values(interrupted)
            ).rowcount  # type: ignore[attr-defined]
        return count

    # -- /v1/chat/completions: threading and stored completions ---------------

    def answers_with_hashes(self, owner: str, hashes: Sequence[str]) -> Sequence[Row[Any]]:
        """The owner's answers (nodes with a model) whose path hash is one of `hashes`:
        `(id, conversation_id, path_hash, upstream_id, created_at)`, found through the path hash index."""
        return self.session.execute(
            select(Message.id, Message.conversation_id, Message.path_hash, Message.upstream_id, Message.created_at)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.path_hash.in_(hashes), Message.model.is_not(None), Conversation.owner == owner)
        ).all()

    def hashed_nodes(self, conversation_id: uuid.UUID, hashes: Sequence[str]) -> Sequence[Row[Any]]:
        """The conversation's nodes whose path hash is one of `hashes`:
        `(id, path_hash, upstream_id, created_at)`."""
        return self.session.execute(
            select(Message.id, Message.path_hash, Message.upstream_id, Message.created_at).where(
                Message.path_hash.in_(hashes), Message.conversation_id == conversation_id
            )
        ).all()

    def has_message(self, conversation_id: uuid.UUID, message_id: uuid.UUID) -> bool:
        return (
            self.session.scalar(
                select(Message.id).where(Message.id == message_id, Message.conversation_id == conversation_id)
            )
            is not None
        )

    def add_nodes(self, rows: Sequence[dict[str, Any]]) -> None:
        """Messages in one statement (parents before children, the same keys in each row)."""
        if rows:
            self.session.execute(insert(Message), list(rows))

    def nodes(self, ids: Sequence[uuid.UUID]) -> Sequence[Row[Any]]:
        """The messages with these ids, in no particular order."""
        return self.session.execute(select(*MESSAGE_COLUMNS).where(Message.id.in_(ids))).all()

    def add_chat_completion(self, **values: Any) -> None:
        self.session.execute(insert(ChatCompletion).values(values))

    def chat_completion(self, owner: str, completion_id: uuid.UUID) -> Row[Any] | None:
        """The owner's stored completion, with its answer's `conversation_id` and `parent_id`."""
        return self.session.execute(
            select(*ChatCompletion.__table__.columns, Message.conversation_id, Message.parent_id)
            .join(Message, Message.id == ChatCompletion.id)
            .where(ChatCompletion.id == completion_id, ChatCompletion.owner == owner)
        ).first()

    def chat_completion_page(
        self,
        owner: str,
        *,
        limit: int,
        descending: bool,
        after: Row[Any] | None = None,
        model: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Sequence[Row[Any]]:
        """The owner's stored completions by time (and id), past `after`; a row-value keyset
        on the (owner, created_at, id) index."""
        order = (ChatCompletion.created_at, ChatCompletion.id)
        query = (
            select(*ChatCompletion.__table__.columns)
            .where(ChatCompletion.owner == owner)
            .order_by(*(column.desc() for column in order) if descending else order)
            .limit(limit)
        )
        if after is not None:
            position, cursor = tuple_(*order), tuple_(after.created_at, after.id)
            query = query.where(position < cursor if descending else position > cursor)
        if model is not None:
            query = query.where(ChatCompletion.model == model)
        for key, value in (metadata or {}).items():
            query = query.where(ChatCompletion.metadata_[key].as_string() == value)
        return self.session.execute(query).all()

    def set_chat_completion_metadata(self, owner: str, completion_id: uuid.UUID, metadata: dict[str, str]) -> bool:
        updated = self.session.execute(
            update(ChatCompletion)
            .where(ChatCompletion.id == completion_id, ChatCompletion.owner == owner)
            .values(metadata_=metadata)
        )
        return bool(updated.rowcount)  # type: ignore[attr-defined]

    def delete_answers(self, conversation_id: uuid.UUID, ids: Sequence[uuid.UUID], parent_id: uuid.UUID) -> None:
        """Answers and everything below them; a current node among them moves up to `parent_id`."""
        self.session.execute(delete(Message).where(Message.id.in_(ids)))
        self.session.execute(
            update(Conversation)
            .where(
                Conversation.id == conversation_id,
                ~select(Message.id).where(Message.id == Conversation.current_node_id).exists(),
            )
            .values(current_node_id=parent_id)
        )

    # -- import / export -----------------------------------------------------

    def present_conversations(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of `ids` some conversation already has."""
        return self._present(Conversation.id, ids)

    def taken_message_ids(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of `ids` some message already has."""
        return self._present(Message.id, ids)

    def _present(self, column: Any, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        found: set[uuid.UUID] = set()
        for start in range(0, len(ids), _BATCH):
            found.update(self.session.scalars(select(column).where(column.in_(ids[start : start + _BATCH]))))
        return found

    def import_conversations(self, rows: Sequence[dict[str, Any]]) -> None:
        """Imported conversations, in one statement (every row names the same columns)."""
        if rows:
            self.session.execute(insert(Conversation), rows)

    def import_messages(self, rows: Sequence[dict[str, Any]]) -> None:
        """Imported nodes (parents before children); `original` is JSON text already, passed
        through as it is rather than serialized again (the bind is typed as text, which the
        JSON column of both databases takes)."""
        statement = insert(Message.__table__).values(original=type_coerce(bindparam("original_json"), Text))
        for row in rows:
            row["original_json"] = row.pop("original")
        self.session.execute(statement, rows)

    def export_page(
        self, owner: str | None, *, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[Conversation]:
        """Conversations of `owner` (None: everyone's), newest activity first, past the
        (updated_at, id) of the previous page's last (the same row-value keyset as `page`)."""
        query = select(Conversation).order_by(Conversation.updated_at.desc(), Conversation.id.desc()).limit(limit)
        if owner is not None:
            query = query.where(Conversation.owner == owner)
        if after is not None:
            query = query.where(tuple_(Conversation.updated_at, Conversation.id) < tuple_(*after))
        return list(self.session.scalars(query))

    def export_messages(self, conversation_ids: Sequence[uuid.UUID]) -> Iterator[Row[Any]]:
        """The messages of these conversations in one query, streamed: one conversation after
        another in `export_page`'s order, each in creation order.

        An imported message's `original` comes as JSON text (`original_json`), parsed one node
        at a time by the caller; `content` only for the others, the only ones it is written for.
        """
        columns = [column for column in MESSAGE_COLUMNS if column.key not in ("original", "content")]
        query = (
            select(
                *columns,
                case((Message.original.is_(None), Message.content), else_=literal("")).label("content"),
                cast(Message.original, Text).label("original_json"),
                null().label("original"),
            )
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.conversation_id.in_(conversation_ids))
            .order_by(
                Conversation.updated_at.desc(),
                Conversation.id.desc(),
                Message.created_at,
                Message.parent_id.is_not(None),
            )
            .execution_options(yield_per=500)
        )
        return iter(self.session.execute(query))

    def export_chat_completions(self, conversation_ids: Sequence[uuid.UUID]) -> Sequence[Row[Any]]:
        """The stored chat completions of these conversations, each with its `conversation_id`."""
        return self.session.execute(
            select(*ChatCompletion.__table__.columns, Message.conversation_id)
            .join(Message, Message.id == ChatCompletion.id)
            .where(Message.conversation_id.in_(conversation_ids))
            .order_by(ChatCompletion.created_at, ChatCompletion.id)
        ).all()

    # -- /v1: single messages, metadata ------------------------------------------

    def add_chain(
        self,
        conversation_id: uuid.UUID,
        parent_id: uuid.UUID | None,
        messages: Sequence[tuple[uuid.UUID, str, str]],
        **values: Any,
    ) -> None:
        """Messages `(id, role, content)`, each under the one before it, the first under `parent_id`."""
        rows = []
        for message_id, role, content in messages:
            rows.append({"id": message_id, "parent_id": parent_id, "role": role, "content": content, **values})
            parent_id = message_id
        if rows:
            self.session.execute(insert(Message), [{**row, "conversation_id": conversation_id} for row in rows])

    def owned_message(self, owner: str, message_id: uuid.UUID) -> Row[Any] | None:
        """A message of one of `owner`'s conversations, with that conversation's `current_node_id`."""
        return self.session.execute(
            select(*MESSAGE_COLUMNS, Conversation.current_node_id)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.id == message_id, Conversation.owner == owner)
        ).first()

    def messages_by_id(self, conversation_id: uuid.UUID, ids: Sequence[uuid.UUID]) -> Sequence[Row[Any]]:
        """Those of `ids` that are messages of the conversation, in no particular order."""
        return self.session.execute(
            select(*MESSAGE_COLUMNS).where(Message.conversation_id == conversation_id, Message.id.in_(ids))
        ).all()

    def delete_message(self, message_id: uuid.UUID) -> None:
        """A message and every message below it."""
        self.session.execute(delete(Message).where(Message.id == message_id))

    def splice_out(self, message_id: uuid.UUID, parent_id: uuid.UUID | None) -> None:
        """Take one message out of its tree; its children move up to its parent."""
        self.session.execute(update(Message).where(Message.parent_id == message_id).values(parent_id=parent_id))
        self.session.execute(delete(Message).where(Message.id == message_id))

    def forget_upstream(self, conversation_id: uuid.UUID) -> None:
        """Forget the upstream's ids of a conversation and its messages (its copy there is gone)."""
        self.session.execute(update(Conversation).where(Conversation.id == conversation_id).values(upstream_id=None))
        self.session.execute(
            update(Message)
            .where(Message.conversation_id == conversation_id, Message.upstream_id.is_not(None))
            .values(upstream_id=None)
        )

    def set_metadata(self, owner: str, conversation_id: uuid.UUID, metadata: dict[str, str]) -> bool:
        updated = self.session.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id, Conversation.owner == owner)
            .values(metadata_=metadata)
        )
        return bool(updated.rowcount)  # type: ignore[attr-defined]
