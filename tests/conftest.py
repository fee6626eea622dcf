"""Fixtures: a real database of each kind, a fake upstream on loopback, an app per test.

Every test that touches storage runs once on SQLite and once on PostgreSQL. PostgreSQL
is reached at TEST_POSTGRES_URL (default: the local server, user postgres); each test
run makes its own database and drops it at the end. Under CI=true a PostgreSQL that
cannot be reached fails the run instead of skipping.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from app import create_app
from config import Settings
from models.db import Database
from serving import YOUNG_GENERATION_THRESHOLD
from fakes.openai_upstream import FakeOpenAI

POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
UPSTREAM_KEY = "sk-test-upstream"


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Two workers per core for `-n auto`: much of the suite waits on server processes,
    browsers and timeouts rather than computing (on 2 cores: 188 s with 4, 217 s with 2)."""
    return 2 * (os.cpu_count() or 1)


LONGEST_FIRST = (
    "test_web_page.py", "test_transfer.py", "test_faults.py", "test_search.py", "test_server.py",
    "test_schemathesis.py", "test_fuzz.py", "test_shutdown.py",
)
"""The files that take longest (15 to 55 s each on 2 cores), handed to the workers first.
xdist gives out whole files (`--dist loadfile`), by default the ones with most tests first:
a long file of few tests (the Schemathesis runs) started last and ended 14 s after the
other workers had finished."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of `LONGEST_FIRST` first, in that order (xdist keeps it: `--no-loadscope-reorder`)."""
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_collection_finish(session: pytest.Session) -> None:
    """The garbage collector as the service sets it before serving (`serving.py`): what
    collecting built (every test module and what it imports) kept out of its passes, which
    otherwise scan those hundreds of thousands of objects again and again, and the youngest
    generation passed over every 10,000 new objects rather than 700 (the suite: 120 to 126 s
    here before, 114 to 117 s after)."""
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, *gc.get_threshold()[1:])


def _postgres_unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}")
    pytest.skip(f"PostgreSQL not reachable: {reason}")


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, migrated once."""
    admin_url = make_url(POSTGRES_URL)
    name = f"gpt_api_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # noqa: BLE001 - any failure to reach the server
        admin.dispose()
        _postgres_unavailable(str(error).splitlines()[0])
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    _migrate(url)
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file for this test run, migrated once."""
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'gpt-api.sqlite3'}"
    _migrate(url)
    return url


def _migrate(url: str) -> None:
    database = Database(url)
    database.migrate()
    database.dispose()


@pytest.fixture(scope="session")
def cleaners() -> Iterator[dict[str, Engine]]:
    """One engine per database URL, kept for the run, that empties the tables between tests."""
    engines: dict[str, Engine] = {}
    yield engines
    for engine in engines.values():
        engine.dispose()


TABLES = ("chat_completions", "messages", "conversations", "api_keys")
"""Every table a test can write, children first (SQLite's DELETE does not cascade)."""


def emptied(url: str, cleaners: dict[str, Engine]) -> str:
    """`url`, every table of it emptied (with an engine kept in `cleaners`)."""
    engine = cleaners.get(url) or cleaners.setdefault(url, create_engine(url))
    with engine.begin() as connection:
        for table in TABLES:
            connection.execute(text(f"DELETE FROM {table}"))
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, cleaners: dict[str, Engine]) -> str:
    """The URL of a migrated database of each kind, its tables emptied before the test.

    A test that migrates it further or drops tables must use a database of its own.
    """
    return emptied(request.getfixturevalue(f"{request.param}_url"), cleaners)


@pytest.fixture(params=["sqlite", "postgresql"])
def own_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind for this test alone, for the server it starts to migrate.

    For tests that watch what one server process does to the rows: the run's databases are
    also written by the background work of other tests' apps in this process (a sweep of
    answers whose lease ran out, made by an app a test left running)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'own.sqlite3'}"
        return
    request.getfixturevalue("postgresql_url")  # reachable (else skipped, or failed under CI)
    admin_url = make_url(POSTGRES_URL)
    name = f"gpt_api_own_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield admin_url.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
def empty_postgresql_url(postgresql_url: str, cleaners: dict[str, Engine]) -> str:
    """The run's PostgreSQL database alone, its tables emptied before the test."""
    return emptied(postgresql_url, cleaners)


@pytest.fixture
def empty_sqlite_url(sqlite_url: str, cleaners: dict[str, Engine]) -> str:
    """The run's SQLite database alone, its tables emptied before the test."""
    return emptied(sqlite_url, cleaners)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The local Redis (TEST_REDIS_URL); skipped when unreachable, except under CI=true."""
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is required under CI=true: {error}")
        pytest.skip(f"Redis not reachable: {error}")
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of this test's own, its keys deleted afterwards."""
    prefix = f"gpt-api-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"*{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture
def fake_upstream(fake_upstream_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The fake OpenAI-compatible upstream, with a clean script and no recorded requests."""
    fake_upstream_server.reset()
    yield fake_upstream_server
    fake_upstream_server.reset()


def make_settings(database_url: str, upstream_url: str | None, **overrides: object) -> Settings:
    """Settings for a test; everything the tests depend on is given explicitly."""
    values: dict[str, object] = {
        "database_url": database_url,
        "llm_provider": "openai",
        "openai_api_key": UPSTREAM_KEY if upstream_url else None,
        "openai_base_url": upstream_url,
        "openai_model": "gpt-test",
        "upstream_max_retries": 0,
        "upstream_read_timeout": 5.0,
        "generate_titles": False,
        "system_prompt": "",
        "migrate_on_start": False,  # the session's databases are migrated once
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]  # a developer's .env stays out


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    """Override in a test module (or with indirect parametrization) to change settings."""
    return {}


@pytest.fixture
def app(
    database_url: str, fake_upstream: FakeOpenAI, settings_overrides: dict[str, object]
) -> Iterator[Flask]:
    app = create_app(make_settings(database_url, fake_upstream.url, **settings_overrides))
    yield app
    app.services.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def project_root() -> Path:
    return Path(__file__).resolve().parent.parent
