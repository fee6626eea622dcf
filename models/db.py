"""Engine, sessions and schema migrations (units of work are in `services/unit_of_work.py`)."""

from __future__ import annotations

import re
import time
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

import psycopg2

from models import pg_wait
from models.sockets import readable

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
MIGRATION_FILE = re.compile(r"(\d{4})_\w+\.py")
# Any constant works; it only has to be the same for every instance sharing a database.
MIGRATION_LOCK_KEY = 0x6770742D617069


def _enable_sqlite_features(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    """Foreign keys (for ON DELETE CASCADE), WAL for concurrent readers, a lock wait, and
    the REGEXP operator (SQLite leaves its function to the application; search uses it)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
    dbapi_connection.create_function("regexp", 2, _regexp, deterministic=True)


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _regexp(pattern: str, value: str | None) -> bool:
    """`value REGEXP pattern`: whether Python's `re` finds `pattern` in `value`."""
    return value is not None and _compiled(pattern).search(value) is not None


def make_engine(
    url: str, *, pool_size: int = 10, max_overflow: int = 20, timeout: float = 10.0
) -> Engine:
    """`timeout` bounds each PostgreSQL statement on the server, and the client's wait for a
    server that stops answering at all (2 s longer, so a slow statement gets the server's
    own clean cancel first)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        # A URL that names no driver (as PostgreSQL's own tools write it) gets the one this
        # project installs: SQLAlchemy 2.1 would otherwise pick psycopg 3, which is not here.
        parsed = parsed.set(drivername="postgresql+psycopg2")
        url = parsed.render_as_string(hide_password=False)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False}, hide_parameters=True)
        event.listen(engine, "connect", _enable_sqlite_features)
        return engine
    connect_args: dict[str, object] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args = {
            "connect_timeout": 5,
            "connection_factory": pg_wait.timed_connection(timeout + 2),
        }
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=10,
        # The connection that rested least goes out first, so that one in steady use is never
        # pinged (`_ping_if_idle`); first-in-first-out handed out each of the connections a
        # burst had opened in turn, each rested past IDLE_BEFORE_PING, and a lone ask paid
        # two pings (about 0.3 ms at one connection).
        pool_use_lifo=True,
        connect_args=connect_args,
        hide_parameters=True,  # logged errors must not carry prompts or key hashes
    )
    if parsed.get_backend_name() == "postgresql":
        event.listen(engine, "connect", partial(_configure_session, seconds=timeout))
        event.listen(engine, "checkin", _note_checkin)
        event.listen(engine, "checkout", _ping_if_idle)
    return engine


IDLE_BEFORE_PING = 2.0
"""Seconds a pooled connection may rest before it is tested on checkout."""


def _note_checkin(_dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
    record.info["checked_in"] = time.monotonic()


def _ping_if_idle(dbapi_connection, record, _proxy) -> None:  # type: ignore[no-untyped-def]
    """Hand out only a live connection, without a round trip when it is busy.

    An idle connection has nothing to read: if its socket is readable, the server said goodbye
    (a restart, a terminated backend) or the connection was reset, so it is replaced at once
    (a zero-timeout poll, microseconds). One that rested a while is also pinged (a silently
    dropped one shows nothing on its socket). `pool_pre_ping` would ping on every checkout:
    several round trips per ask. SQLAlchemy retries the checkout on `DisconnectionError`."""
    try:
        said_goodbye = readable(dbapi_connection.fileno())
    except (OSError, ValueError, psycopg2.Error) as error:
        raise DisconnectionError(str(error)) from error
    if said_goodbye:
        raise DisconnectionError("the server closed the connection while it rested in the pool")
    if time.monotonic() - record.info.get("checked_in", 0.0) < IDLE_BEFORE_PING:
        return
    try:
        dbapi_connection.autocommit = True  # the ping leaves no transaction open
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        dbapi_connection.autocommit = False
    except psycopg2.Error as error:
        raise DisconnectionError(str(error)) from error


def _configure_session(dbapi_connection, _record, *, seconds: float) -> None:  # type: ignore[no-untyped-def]
    """Each new PostgreSQL connection: its statement timeout, and plans made afresh.

    A connection caches the plan of each foreign-key check (and of the search triggers'
    queries) generically, as it was best for the tables when first planned. On a new
    database that is a sequential scan of an empty `messages`, kept as the table grows
    until autovacuum next analyzes it: under load on a fresh database PostgreSQL's CPU per
    ask went from 1.1 to 2.2 ms in 30 s (54,000 messages), and a bulk import slowed from
    3 MB/s to under 1 MB/s. Planning each check for its own parameters costs microseconds.
    (The service sends no prepared statements of its own, so nothing else is planned more.)
    """
    cursor = dbapi_connection.cursor()
    cursor.execute(f"SET statement_timeout = {int(seconds * 1000)}; SET plan_cache_mode = force_custom_plan")
    cursor.close()
    dbapi_connection.commit()  # a connection leaves the pool outside any transaction


def bound_engine(work: Session | Connection) -> Engine:
    """The engine behind a Session or a Core connection (single-statement work runs on the
    latter: `services/unit_of_work.py`)."""
    return work.engine if isinstance(work, Connection) else work.get_bind().engine


def _alembic_config() -> Any:
    from alembic.config import Config as AlembicConfig  # here, not at the top: see head_revision

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest migration's revision: the highest `NNNN` of `migrations/versions/NNNN_*.py`,
    which is each migration's revision id (a test holds Alembic to the same answer).

    Read from the file names so that a process whose schema is current never imports
    Alembic (with Mako and Pygments, a third of a second of every start and command).
    """
    return max(
        match[1] for path in (MIGRATIONS_DIR / "versions").iterdir() if (match := MIGRATION_FILE.fullmatch(path.name))
    )


def current_revision(connection: Connection) -> str | None:
    """The revision the database behind `connection` is at; None before any migration."""
    if not connection.dialect.has_table(connection, "alembic_version"):
        return None
    return connection.scalar(text("SELECT version_num FROM alembic_version"))


class Database:
    """The engine and session factory of one database."""

    def __init__(
        self, url: str, *, pool_size: int = 10, max_overflow: int = 20, timeout: float = 10.0
    ) -> None:
        self.engine = make_engine(
            url, pool_size=pool_size, max_overflow=max_overflow, timeout=timeout
        )
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self, revision: str = "head", **options: str) -> None:
        """Bring the schema to `revision` (the newest by default); `options` reach the
        migrations (`search_language`).

        Each migration runs in its own transaction, and a migration may commit batches of
        its own (filling a new column without holding a lock for long). On PostgreSQL a
        session-level advisory lock makes instances that start together take turns; the
        connection is closed afterwards, which releases it.
        """
        if revision == "head" and self._at_head():
            return
        from alembic import command  # here, not at the top: see head_revision

        config = _alembic_config()
        config.attributes.update(options)
        with pg_wait.unlimited(), self.engine.connect() as connection:
            try:
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SET statement_timeout = 0"))
                    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                    connection.commit()
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
            finally:
                connection.invalidate()

    def _at_head(self) -> bool:
        """Whether the schema is already current (instances starting together may find it
        half-migrated: then they queue on the migration lock as before)."""
        try:
            with self.engine.connect() as connection:
                return current_revision(connection) == head_revision()
        except DBAPIError:
            return False

    @staticmethod
    def schema_is_current(connection: Connection) -> bool:
        """True when the database behind `connection` is at the newest migration."""
        return current_revision(connection) == head_revision()

    def dispose(self) -> None:
        self.engine.dispose()
