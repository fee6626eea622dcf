"""Pooled PostgreSQL connections: one that rested in the pool is tested on checkout, and is
then handed out as fresh, so a one-statement unit of work can still switch it to autocommit;
one the server closed is replaced without a failed request, whatever its descriptor."""

from __future__ import annotations

import contextlib
import os
import resource
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

import models.db
from app import create_app
from fakes.openai_upstream import FakeOpenAI
from models.db import Database
from services.unit_of_work import UnitOfWork
from tests.conftest import make_settings
from tests.helpers import ask, messages_scans_once_reported, ok, post


def test_a_connection_tested_after_resting_serves_a_one_statement_unit(
    empty_postgresql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models.db, "IDLE_BEFORE_PING", 0.0)  # every checkout finds it rested
    database = Database(empty_postgresql_url, pool_size=1, max_overflow=0)
    try:
        for _ in range(3):  # the same pooled connection, tested on each checkout
            with UnitOfWork(database, one_statement=True) as uow:
                assert uow.connection.execute(text("SELECT 1")).scalar() == 1
        with UnitOfWork(database) as uow:  # and handed back to ordinary units as they expect
            uow.session.execute(text("CREATE TEMPORARY TABLE t (x int)"))
            uow.session.rollback()
            assert uow.session.execute(text("SELECT count(*) FROM pg_tables WHERE tablename = 't'")).scalar() == 0
    finally:
        database.dispose()


def test_after_a_burst_one_request_at_a_time_reuses_the_connection_it_just_gave_back(
    empty_postgresql_url: str,
) -> None:
    """The pool hands out the connection that rested least: a burst's other connections rest
    untouched, and one in steady use never rests long enough to be pinged (a round trip on
    every checkout at one connection when the pool went round all of them in turn)."""
    database = Database(empty_postgresql_url, pool_size=8, max_overflow=0)
    try:
        with contextlib.ExitStack() as burst:  # eight units at once, as under load
            for _ in range(8):
                burst.enter_context(UnitOfWork(database, one_statement=True))
        backends = set()
        for _ in range(5):
            with UnitOfWork(database, one_statement=True) as uow:
                backends.add(uow.connection.execute(text("SELECT pg_backend_pid()")).scalar())
        assert len(backends) == 1
    finally:
        database.dispose()


def test_a_connection_whose_descriptor_is_past_1024_is_handed_out(empty_postgresql_url: str) -> None:
    """A worker holding a thousand streams gives its next database connections descriptors
    past `select()`'s limit; the check on checkout must still work for them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the open-files limit ({hard}) cannot reach past 1,024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler: list[int] = []

    def take_the_low_descriptors() -> None:
        """Every free descriptor below 1,100 (descriptors are handed out lowest first)."""
        while True:
            filler.append(os.open(os.devnull, os.O_RDONLY))
            if filler[-1] >= 1100:
                return

    database = Database(empty_postgresql_url, pool_size=1, max_overflow=0)
    try:
        # Another thread of the test process (a connection pool, a server) may close one of its
        # low descriptors meanwhile, for the new connection to take: then it is made again.
        for _ in range(5):
            take_the_low_descriptors()
            with UnitOfWork(database, one_statement=True) as uow:
                if uow.connection.connection.dbapi_connection.fileno() >= 1024:
                    break
            database.dispose()
        for _ in range(3):  # the same pooled connection, checked on each checkout
            with UnitOfWork(database, one_statement=True) as uow:
                assert uow.connection.connection.dbapi_connection.fileno() >= 1024
                assert uow.connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        database.dispose()
        for descriptor in filler:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_connection_the_server_closed_while_it_rested_is_replaced_without_an_error(
    empty_postgresql_url: str,
) -> None:
    database = Database(empty_postgresql_url, pool_size=1, max_overflow=0)
    try:
        with UnitOfWork(database) as uow:
            first = uow.session.execute(text("SELECT pg_backend_pid()")).scalar()
        other = create_engine(empty_postgresql_url)
        with other.begin() as connection:  # as a restart or an idle timeout would
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        other.dispose()
        time.sleep(0.2)
        with UnitOfWork(database, one_statement=True) as uow:
            assert uow.connection.execute(text("SELECT pg_backend_pid()")).scalar() != first
    finally:
        database.dispose()


@pytest.mark.parametrize("own_database_url", ["postgresql"], indirect=True)
def test_asks_into_a_table_that_grew_unanalyzed_still_check_parents_by_index(
    own_database_url: str, fake_upstream: FakeOpenAI
) -> None:
    """A connection caches each foreign-key check's plan, made for the table as it first
    saw it: on a fresh database, a scan of an empty `messages`, kept as the table grows
    until autovacuum analyzes it. Every pooled connection plans each check afresh
    (`models/db.py`), so the asks after the table grew still find parents by index."""
    app = create_app(make_settings(own_database_url, fake_upstream.url, migrate_on_start=True, db_pool_size=1))
    client = app.test_client()
    engine = create_engine(own_database_url, poolclass=NullPool)  # each connection reports its counts as it ends

    def asks(label: str, n: int) -> None:
        """`n` asks, then, a second later, a read on the same (only) pooled connection: a
        connection reports its counts at the end of a transaction at most once a second,
        else once it has idled ten."""
        for k in range(n):
            ask(client, f"{label} {k}")
        time.sleep(1.1)
        ok(post(client, "conversation", {}))

    try:
        with engine.begin() as connection:  # nothing analyzes them behind the test's back
            connection.execute(text("ALTER TABLE messages SET (autovacuum_enabled = false)"))
            connection.execute(text("ALTER TABLE conversations SET (autovacuum_enabled = false)"))
        asks("before", 8)  # the connection's checks planned (generically, after five) on a tiny table
        with engine.begin() as connection:  # then the table grows (system rows: nothing for search to index)
            connection.execute(text(
                "INSERT INTO conversations (id, owner, title, created_at, updated_at) "
                "VALUES ('00000000-0000-0000-0000-000000000001', 'someone', 'Big', now(), now())"
            ))
            connection.execute(text(
                "INSERT INTO messages (id, conversation_id, role, content, status, created_at) "
                "SELECT gen_random_uuid(), '00000000-0000-0000-0000-000000000001', 'system', 'filler', "
                "'finished_successfully', now() FROM generate_series(1, 30000)"
            ))
        before = messages_scans_once_reported(engine, 8 * 4 + 30000)
        asks("after", 5)
        scans = messages_scans_once_reported(engine, 13 * 4 + 30000) - before
        assert scans < 5, f"{scans} sequential scans of messages for 5 asks"
    finally:
        app.services.close()
        engine.dispose()
