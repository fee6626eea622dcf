"""Pooled PostgreSQL connections: one that rested in the pool is tested on checkout, and is
then handed out as fresh, so a one-statement unit of work can still switch it to autocommit."""

from __future__ import annotations

import pytest
from sqlalchemy import text

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
                assert uow.session.execute(text("SELECT 1")).scalar() == 1
        with UnitOfWork(database) as uow:  # and handed back to ordinary units as they expect
            uow.session.execute(text("CREATE TEMPORARY TABLE t (x int)"))
            uow.session.rollback()
            assert uow.session.execute(text("SELECT count(*) FROM pg_tables WHERE tablename = 't'")).scalar() == 0
    finally:
        database.dispose()
