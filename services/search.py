"""Search over the caller's conversations: titles first, then messages, newest first.

A conversation whose title matches is a hit of its own (no message, no role); then come
the dialogue messages that match. Each hit carries an opaque `cursor`: passed back as
`after`, the next page starts right below that hit, so pages never repeat or skip one.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from models.db import Database
from models.entities import Conversation
from models.search import MESSAGES, TITLES, Filters, Hit, Key, find, indexed_language
from models.search_text import Term
from services.errors import ConversationNotFound
from services.search_query import parse
from services.snippets import snippet
from services.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SearchRequest:
    query: str
    limit: int = 20
    after: str | None = None
    role: str | None = None
    conversation_id: uuid.UUID | None = None


@dataclass(frozen=True)
class SearchHit:
    conversation_id: uuid.UUID
    title: str
    message_id: uuid.UUID | None
    role: str | None
    snippet: str
    created_at: datetime
    cursor: str


CURSOR_PATTERN = r"^[01]\.-?[0-9]{1,16}\.[0-9a-f]{32}$"
"""A cursor: the hit's tier (titles, messages), its time in microseconds since 1970, its id.
Opaque to clients; every string of this shape names a position (up to ±317 years)."""


def encode_cursor(tier: int, key: Key) -> str:
    micros = (key.at - EPOCH) // timedelta(microseconds=1)
    return f"{tier}.{micros}.{key.id.hex}"


def decode_cursor(cursor: str) -> tuple[int, Key]:
    """The position a cursor names (its shape is checked with the request, by `CURSOR_PATTERN`)."""
    tier, micros, hex_id = cursor.split(".")
    return int(tier), Key(EPOCH + timedelta(microseconds=int(micros)), uuid.UUID(hex=hex_id))


class SearchService:
    def __init__(self, db: Database, language: str = "simple") -> None:
        self._db = db
        self._language = language
        self._checked_language = False

    def search(self, owner: str, request: SearchRequest) -> list[SearchHit]:
        query = parse(request.query)
        if not query.included:
            return []  # exclusions alone narrow nothing down
        after = decode_cursor(request.after) if request.after else None
        with UnitOfWork(self._db) as uow:
            self._check_language(uow.session)
            if request.conversation_id is not None:
                conversation = uow.session.get(Conversation, request.conversation_id)
                if conversation is None or conversation.owner != owner:
                    raise ConversationNotFound(f"Conversation {request.conversation_id} does not exist.")
            filters = Filters(owner, after, request.conversation_id, request.role)
            found = find(uow.session, query, filters, request.limit)
        return [_hit(hit, query.terms) for hit in found]

    def _check_language(self, session: Session) -> None:
        """Warn once when SEARCH_LANGUAGE is not what the index was built with."""
        if self._checked_language:
            return
        self._checked_language = True
        built = indexed_language(session)
        if built != self._language:
            log.warning(
                "SEARCH_LANGUAGE is %r but the search index uses %r: searches keep using %r until "
                "`python app.py search reindex` is run.", self._language, built, built,
            )


def _hit(hit: Hit, terms: Sequence[Term]) -> SearchHit:
    return SearchHit(
        conversation_id=hit.conversation_id,
        title=hit.title,
        message_id=hit.message_id,
        role=hit.role,
        snippet=snippet(hit.content if hit.message_id else hit.title, terms),
        created_at=hit.created_at,
        cursor=encode_cursor(hit.tier, hit.key),
    )
