"""Pooled PostgreSQL connections: one that rested in the pool is tested on checkout, and is
then handed out as fresh, so a one-statement unit of work can still switch it to autocommit;
one the server closed is replaced without a failed request, whatever its descriptor."""

from __future__ import annotations

import os
import resource
import time

import pytest
from sqlalchemy import create_engine, text

import models.db
from models.db import Database
from services.unit_of_work import UnitOfWork


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
