"""The bench's own PostgreSQL database, data seeded into it straight with SQL, and what
the service wrote there that a figure needs (generated titles).

The service creates the tables (its migrations run when it starts); seeding then
writes rows shaped as the service writes them: every conversation has its root node
and its system node, and the long conversation is one chain of user and assistant
messages. Ids are md5 hashes of a label, so the rows are the same on every run.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from models.entities import DEFAULT_TITLE

SEED_CONVERSATIONS = text(
    """
    WITH numbered AS (
        SELECT i,
               md5('conversation-' || i)::uuid AS id,
               md5('root-' || i)::uuid AS root_id,
               md5('system-' || i)::uuid AS system_id,
               now() - make_interval(secs => i) AS at
        FROM generate_series(1, :count) AS i
    ), conversations AS (
        INSERT INTO conversations (id, owner, title, created_at, updated_at, current_node_id)
        SELECT id, :owner, 'Seeded conversation ' || i, at, at, system_id FROM numbered
    )
    INSERT INTO messages (id, conversation_id, parent_id, role, content, status, end_turn, created_at)
    SELECT root_id, id, NULL, NULL, '', 'finished_successfully', NULL, at FROM numbered
    UNION ALL
    SELECT system_id, id, root_id, 'system', '', 'finished_successfully', true, at FROM numbered
    """
)

SEED_LONG_CONVERSATION = text(
    """
    WITH conversation AS (
        INSERT INTO conversations (id, owner, title, created_at, updated_at, current_node_id)
        VALUES (:id, :owner, 'A long conversation', now() - interval '1 day', now(),
                md5(:label || (:count - 1))::uuid)
    )
    INSERT INTO messages (id, conversation_id, parent_id, role, content, status, end_turn,
                          model, finish_details, created_at)
    SELECT md5(:label || i)::uuid,
           :id,
           CASE WHEN i = 0 THEN NULL ELSE md5(:label || (i - 1))::uuid END,
           CASE WHEN i = 0 THEN NULL WHEN i = 1 THEN 'system'
                WHEN i % 2 = 0 THEN 'user' ELSE 'assistant' END,
           CASE WHEN i < 2 THEN ''
                WHEN i % 2 = 0 THEN 'Question ' || i || ': ' || repeat('tell me more about it. ', 4)
                ELSE 'Answer ' || i || ': ' || repeat('Here is a fairly ordinary sentence of an answer. ', 12)
           END,
           'finished_successfully',
           CASE WHEN i % 2 = 1 THEN true END,
           CASE WHEN i > 1 AND i % 2 = 1 THEN 'gpt-4o-mini' END,
           CASE WHEN i > 1 AND i % 2 = 1 THEN 'stop' END,
           now() - interval '1 day' + make_interval(secs => i)
    FROM generate_series(0, :count - 1) AS i
    """
)


def _on_server(server_url: str, statement: str) -> None:
    """Run `statement` on the server's `postgres` database, outside a transaction."""
    engine = create_engine(make_url(server_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def create_database(server_url: str, name: str) -> str:
    """A new, empty database on the server of `server_url`; returns its URL."""
    _on_server(server_url, f'CREATE DATABASE "{name}"')
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, name: str) -> None:
    _on_server(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(url: str, *, conversations: int, long_messages: int, owner: str = "") -> uuid.UUID:
    """`conversations` conversations and one of `long_messages` messages; returns the long one's id.

    Counts are what the service would report: the long conversation is one more in the
    list, and its messages include the root node and the system node.
    """
    long_id = uuid.uuid5(uuid.NAMESPACE_URL, "gpt-api-bench/long-conversation")
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(SEED_CONVERSATIONS, {"count": conversations, "owner": owner})
            connection.execute(
                SEED_LONG_CONVERSATION,
                {"id": long_id, "owner": owner, "count": long_messages, "label": "long-"},
            )
        # As autovacuum leaves tables a user has had for more than a minute: statistics, and
        # the visibility map that lets an index-only scan skip the rows themselves.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE conversations"))
            connection.execute(text("VACUUM ANALYZE messages"))
    finally:
        engine.dispose()
    return long_id


def list_cursor(url: str, position: int, owner: str = "") -> uuid.UUID:
    """The id of the conversation at `position` (0-based) in the list's order: an `after` cursor."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                text(
                    "SELECT id FROM conversations WHERE owner = :owner"
                    " ORDER BY updated_at DESC, id DESC OFFSET :position LIMIT 1"
                ),
                {"owner": owner, "position": position},
            ).scalar_one()
    finally:
        engine.dispose()


def titled(url: str, since: datetime, until: datetime) -> tuple[int, int]:
    """Conversations created in [since, until), and how many of them have a generated title."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            created, named = connection.execute(
                text(
                    "SELECT count(*), count(*) FILTER (WHERE title <> :default) FROM conversations"
                    " WHERE created_at >= :since AND created_at < :until"
                ),
                {"default": DEFAULT_TITLE, "since": since, "until": until},
            ).one()
            return created, named
    finally:
        engine.dispose()
