"""Probes: `/healthz` answers while the process runs; `/readyz` only with a reachable, migrated database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from fakes.openai_upstream import FakeOpenAI
from models.db import Database, _alembic_config
from tests.conftest import make_settings
from tests.helpers import error_of

UNREACHABLE_POSTGRESQL = "postgresql+psycopg2://postgres@127.0.0.1:1/gpt-api"  # nothing listens on port 1


def test_healthz_answers_ok(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_is_ready_on_a_migrated_database(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"status": "ready"}


@pytest.fixture(params=["sqlite", "postgresql"])
def app_without_database(
    request: pytest.FixtureRequest, fake_upstream: FakeOpenAI, tmp_path: Path
) -> Iterator[Flask]:
    # SQLite cannot open a directory as its database file.
    url = f"sqlite:///{tmp_path}" if request.param == "sqlite" else UNREACHABLE_POSTGRESQL
    settings = make_settings(url, fake_upstream.url, migrate_on_start=False)
    app = create_app(settings)
    yield app
    app.services.database.dispose()


def test_without_a_database_healthz_is_ok_and_readyz_is_503(app_without_database: Flask) -> None:
    client = app_without_database.test_client()
    assert client.get("/healthz").status_code == 200
    error = error_of(client.get("/readyz"), 503)
    assert error["code"] == "database_unavailable"
    assert "127.0.0.1" not in error["message"] and "sqlite" not in error["message"]


def stamp(db: Database, revision: str) -> None:
    """Record `revision` as the database's schema version without changing its tables."""
    config = _alembic_config()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.stamp(config, revision)


def test_readyz_is_503_while_migrations_are_pending(app: Flask, client: FlaskClient) -> None:
    db: Database = app.services.database
    head = ScriptDirectory.from_config(_alembic_config()).get_revision("head")
    stamp(db, head.down_revision)
    try:
        error = error_of(client.get("/readyz"), 503)
        assert error["code"] == "schema_not_current"
        assert "migrate" in error["message"]
        assert client.get("/healthz").status_code == 200
    finally:
        stamp(db, "head")
    assert client.get("/readyz").status_code == 200


def test_probes_carry_a_request_id(client: FlaskClient) -> None:
    assert client.get("/healthz").headers["X-Request-ID"]
    assert client.get("/readyz").headers["X-Request-ID"]
