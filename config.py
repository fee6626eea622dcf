"""Settings, read from the environment (and `.env`, loaded by `app.py` before this runs).

Every name is documented in the README's configuration table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from limits import parse_many
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent
INSTANCE_DIR = PROJECT_ROOT / "instance"


def default_database_url() -> str:
    """A SQLite file under `instance/`, used when `DATABASE_URL` is unset."""
    return f"sqlite:///{INSTANCE_DIR / 'gpt-api.sqlite3'}"


class Settings(BaseSettings):
    """Typed settings; field names are the environment variable names, upper-cased."""

    # An empty variable (`OPENAI_BASE_URL=` in .env) means "use the default".
    model_config = SettingsConfigDict(env_file=None, env_ignore_empty=True, extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=5000, ge=0, le=65535)
    database_url: str = Field(default_factory=default_database_url)

    llm_provider: Literal["openai", "chatgpt"] = "openai"
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    system_prompt: str = ""

    chatgpt_access_token: str | None = None
    chatgpt_base_url: str | None = None
    chatgpt_model: str = "text-davinci-002-render-sha"
    chatgpt_proxy: str | None = None

    upstream_connect_timeout: float = Field(default=5.0, gt=0)
    upstream_read_timeout: float = Field(default=120.0, gt=0)
    upstream_max_retries: int = Field(default=2, ge=0)

    generate_titles: bool = True
    migrate_on_start: bool = True
    search_language: str = Field(default="simple", pattern=r"^[a-z_][a-z0-9_]*$")
    """Text search configuration the index is built with (PostgreSQL's `english`, `german`,
    ...; SQLite stems only `english`). Read by the migration; changed later with
    `python app.py search reindex`."""
    sse_keep_alive_seconds: float = Field(default=15.0, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)

    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    worker_connections: int = Field(default=4000, ge=1)
    """Requests (open streams included) one worker holds at once; also its upstream pool."""
    db_pool_size: int = Field(default=20, ge=1)
    """Database connections each worker keeps open; a unit of work holds one only briefly."""
    db_max_overflow: int = Field(default=10, ge=0)
    db_timeout: float = Field(default=10.0, gt=0)
    """Seconds a PostgreSQL statement may run, and about how long a database that stops
    answering holds a request before it gets a 503."""
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    prometheus_multiproc_dir: Path | None = None
    """Where gunicorn workers share metrics (its *.db files are removed at start); default: a temporary directory."""

    allow_unauthenticated: bool = False
    """Serve a non-loopback HOST even when no API key exists (anyone reaching it may do anything)."""
    auth_cache_seconds: float = Field(default=5.0, ge=0)
    """How long an instance trusts its copy of the key list: creating or revoking a key
    takes effect on every instance within this time."""
    rate_limit: str = ""
    """Per key (per client address without keys), all routes together, e.g. `60/minute`."""
    max_streams_per_key: int = Field(default=0, ge=0)
    """Answers (streamed or not) one key may have in flight at once; 0: no cap."""
    max_prompt_chars: int = Field(default=100_000, gt=0)
    redis_url: str | None = None
    """Where limits are kept so every instance shares them; unset: in this process's memory."""
    redis_key_prefix: str = "gpt-api"
    cors_origins: Annotated[list[str], NoDecode] = []
    """Comma-separated origins a browser may call the API from; empty: no CORS."""

    @field_validator("rate_limit")
    @classmethod
    def _valid_rate_limit(cls, value: str) -> str:
        if value.strip():
            try:
                parse_many(value)
            except ValueError as error:
                raise ValueError(f"not a rate limit like '60/minute': {error}") from error
        return value.strip()

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
