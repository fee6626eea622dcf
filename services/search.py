"""Search over the caller's conversations: titles first, then messages, newest first.

A conversation whose title matches is a hit of its own (no message, no role); then come
the dialogue messages that match. Each hit carries an opaque `cursor`: passed back as
`after`, the next page starts right below that hit, so pages never repeat or skip one.

Listed by conversation (`GET /v1/conversations?query=`), each matching conversation comes
once, at the place of its best hit, with that hit; a page continues after a conversation,
at the place of that conversation's best hit.

Where words fail, fragments: when a query's words find nothing at all, its terms of three
characters or more are looked for anywhere in the texts, inside words too (`UserNam` finds
`getUserName`, `ubernete` finds `kubernetes`). A page of fragment hits says so in its
cursors, so the pages after it go on finding fragments.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice

from sqlalchemy.orm import Session

from models.db import Database
from models.entities import Conversation
from models.search import Filters, Hit, Key, find, indexed_language
from models.search_text import Query
from services.errors import ConversationNotFound, NotFound
from services.items import ConversationView, Page, view_of
from services.search_index import SearchIndexer
from services.search_query import parse
from services.snippets import snippet
from services.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CONVERSATION_BATCH = 20
"""Hits read at a time while listing conversations, at least (a conversation may have many)."""
LEFT_OUT_AT_MOST = 500
"""Conversations already met that a read leaves out by id (the latest met): beyond that many,
their hits are read and skipped, rather than bind thousands of parameters."""


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


@dataclass(frozen=True)
class ConversationMatch:
    """A conversation a search finds, with its best hit."""

    conversation: ConversationView
    hit: SearchHit


CURSOR_PATTERN = r"^[0-3]\.-?[0-9]{1,16}\.[0-9a-f]{32}$"
"""A cursor: the hit's tier (titles, messages; plus `FRAGMENTS` for a fragment hit), its time
in microseconds since 1970, its id. Opaque to clients; every string of this shape names a
position (up to ±317 years)."""
FRAGMENTS = 2
"""Added to the tier of a fragment hit's cursor."""


@dataclass(frozen=True)
class Position:
    """Where a page starts: below a hit, found by words or as fragments."""

    tier: int
    key: Key
    fragments: bool


def encode_cursor(tier: int, key: Key, fragments: bool = False) -> str:
    micros = (key.at - EPOCH) // timedelta(microseconds=1)
    return f"{tier + (FRAGMENTS if fragments else 0)}.{micros}.{key.id.hex}"


def decode_cursor(cursor: str) -> Position:
    """The position a cursor names (its shape is checked with the request, by `CURSOR_PATTERN`)."""
    tier, micros, hex_id = cursor.split(".")
    key = Key(EPOCH + timedelta(microseconds=int(micros)), uuid.UUID(hex=hex_id))
    return Position(int(tier) % FRAGMENTS, key, int(tier) >= FRAGMENTS)


class SearchService:
    def __init__(self, db: Database, index: SearchIndexer, language: str = "simple") -> None:
        self._db = db
        self._index = index
        self._language = language
        self._checked_language = False

    def search(self, owner: str, request: SearchRequest) -> list[SearchHit]:
        query = parse(request.query)
        if not query.included:
            return []  # exclusions alone narrow nothing down
        after = decode_cursor(request.after) if request.after else None
        fragments = query.fragments()
        self._index.before_search(owner)
        with UnitOfWork(self._db) as uow:
            self._check_language(uow.session)
            if request.conversation_id is not None:
                conversation = uow.session.get(Conversation, request.conversation_id)
                if conversation is None or conversation.owner != owner:
                    raise ConversationNotFound(f"Conversation {request.conversation_id} does not exist.")
            start = (after.tier, after.key) if after else None
            filters = Filters(owner, start, request.conversation_id, request.role)
            if after and after.fragments and fragments:  # the pages before found fragments
                query = fragments
            found = find(uow.session, query, filters, request.limit)
            if not found and after is None and fragments:
                query, found = fragments, find(uow.session, fragments, filters, request.limit)
        return [_hit(hit, query) for hit in found]

    def conversations(
        self, owner: str, text: str, *, after: uuid.UUID | None, limit: int
    ) -> Page[ConversationMatch]:
        """The owner's conversations that match `text`, each once at the place of its best
        hit (a matching title, else its newest matching message), best first; past the
        conversation `after`, which must be one of them."""
        query = parse(text)
        if not query.included:
            return Page([], False)  # exclusions alone narrow nothing down
        self._index.before_search(owner)
        with UnitOfWork(self._db) as uow:
            self._check_language(uow.session)
            fragments = query.fragments()
            # The pages before found fragments if `after` is not among the words' hits.
            if after is not None and fragments and self._best(uow.session, query, owner, after) is None:
                query = fragments
            found = self._best_hits(uow.session, query, owner, after, limit + 1)
            if not found and after is None and fragments:
                query, found = fragments, self._best_hits(uow.session, fragments, owner, None, limit + 1)
            page = found[:limit]
            conversations = uow.conversations.owned_many(owner, [hit.conversation_id for hit in page])
            views = {conversation.id: view_of(conversation) for conversation in conversations}
        matches = [ConversationMatch(views[hit.conversation_id], _hit(hit, query)) for hit in page]
        return Page(matches, len(found) > limit)

    def _best_hits(self, session: Session, query: Query, owner: str, after: uuid.UUID | None, limit: int) -> list[Hit]:
        """The best hit of each conversation, in order, past the conversation `after`: the
        hits below its best one, each conversation's first, unless it had a better one
        above (met on an earlier page). Conversations met are left out of the next reads."""
        start = self._place(session, query, owner, after) if after is not None else None
        met = dict.fromkeys([after] if after is not None else [])  # in the order met
        found: list[Hit] = []
        while len(found) < limit:
            wanted = max(limit - len(found), CONVERSATION_BATCH)
            left_out = frozenset(islice(reversed(met), LEFT_OUT_AT_MOST))
            batch = find(session, query, Filters(owner, start, excluded_conversations=left_out), wanted)
            for hit in batch:
                if hit.conversation_id in met:
                    continue
                met[hit.conversation_id] = None
                if after is None or self._best(session, query, owner, hit.conversation_id) == (hit.tier, hit.key):
                    found.append(hit)
            if len(batch) < wanted:
                break
            start = (batch[-1].tier, batch[-1].key)
        return found[:limit]

    def _place(self, session: Session, query: Query, owner: str, conversation_id: uuid.UUID) -> tuple[int, Key]:
        """Where the conversation `after` stands in the list: at its best hit."""
        conversation = session.get(Conversation, conversation_id)
        if conversation is None or conversation.owner != owner:
            raise ConversationNotFound(f"after: no conversation {conversation_id}.", param="after")
        best = self._best(session, query, owner, conversation_id)
        if best is None:
            raise NotFound(
                f"after: conversation {conversation_id} is not in this list (it does not match the query); "
                "pass the `last_id` of the previous page of the same query.",
                param="after",
            )
        return best

    @staticmethod
    def _best(session: Session, query: Query, owner: str, conversation_id: uuid.UUID) -> tuple[int, Key] | None:
        """The place of the conversation's best hit, if it has one."""
        found = find(session, query, Filters(owner, conversation_id=conversation_id), 1)
        return (found[0].tier, found[0].key) if found else None

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


def _hit(hit: Hit, query: Query) -> SearchHit:
    fragments = any(term.fragment for term in query.terms)
    return SearchHit(
        conversation_id=hit.conversation_id,
        title=hit.title,
        message_id=hit.message_id,
        role=hit.role,
        snippet=snippet(hit.content if hit.message_id else hit.title, query.terms),
        created_at=hit.created_at,
        cursor=encode_cursor(hit.tier, hit.key, fragments),
    )
