"""Settings, read from the environment and from the project root's `.env`.

`Settings()` reads `.env` itself (pydantic-settings, through python-dotenv), so the
command line, `gunicorn 'app:create_app()'` and any other way of starting behave the
same; a variable set in the environment wins over `.env`. Every name is documented in
the README's configuration table.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent
INSTANCE_DIR = PROJECT_ROOT / "instance"
ENV_FILE = PROJECT_ROOT / ".env"


def default_database_url() -> str:
    """A SQLite file under `instance/`, used when `DATABASE_URL` is unset."""
    return f"sqlite:///{INSTANCE_DIR / 'gpt-api.sqlite3'}"


def http_url(value: str) -> str:
    """An upstream's base URL: http or https, with a host (the client speaks nothing else)."""
    url = urlsplit(value)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
    return value


HttpUrlText = Annotated[str, AfterValidator(http_url)]


class UpstreamSettings(BaseModel):
    """One upstream of `UPSTREAMS` (or of the `UPSTREAMS_FILE`), in priority order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    """Names it in logs, `/metrics` and each answer's metadata."""
    kind: Literal["openai", "chatgpt"] = "openai"
    base_url: HttpUrlText | None = None
    """openai: the SDK's default when unset; chatgpt: a backend-api base URL (required)."""
    api_key: str | None = None
    """openai (required; any text for a server that checks none)."""
    access_token: str | None = None
    """chatgpt (required)."""
    proxy: str | None = None
    """chatgpt: a proxy for it."""
    models: list[str] = []
    """The models it serves; empty: any, under the name requested."""
    model: str | None = None
    """What it is asked for when the request names a model not in `models` (unset: it is
    skipped for that request); the first upstream's is the default model."""
    max_retries: int | None = Field(default=None, ge=0)
    """Its own UPSTREAM_MAX_RETRIES (0 hands a failing request to the next upstream at once)."""

    @model_validator(mode="after")
    def _credentials(self) -> UpstreamSettings:
        if self.kind == "openai" and not self.api_key:
            raise ValueError(f"upstream {self.name!r}: an openai upstream needs api_key")
        if self.kind == "chatgpt" and not (self.access_token and self.base_url):
            raise ValueError(f"upstream {self.name!r}: a chatgpt upstream needs access_token and base_url")
        return self


def read_upstreams_file(path: Path) -> Any:
    """The upstream list of a JSON file (a list, or `{"upstreams": [...]}`) or a TOML file
    (`[[upstreams]]` tables); a relative path is taken from the project's root."""
    path = path if path.is_absolute() else PROJECT_ROOT / path
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as error:
        raise ValueError(f"UPSTREAMS_FILE {path}: {error}") from error
    return data.get("upstreams") if isinstance(data, dict) else data


class Settings(BaseSettings):
    """Typed settings; field names are the environment variable names, upper-cased."""

    # An empty variable (`OPENAI_BASE_URL=` in .env) means "use the default". `.env` is
    # found by its absolute path, whatever the working directory; a test may pass another
    # as `Settings(_env_file=...)`.
    model_config = SettingsConfigDict(
        env_file=ENV_FILE, env_file_encoding="utf-8", env_ignore_empty=True, extra="ignore", frozen=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=5000, ge=0, le=65535)
    database_url: str = Field(default_factory=default_database_url)

    llm_provider: Literal["openai", "chatgpt"] = "openai"
    openai_api_key: str | None = None
    openai_base_url: HttpUrlText | None = None
    openai_model: str = "gpt-4o-mini"
    system_prompt: str = ""

    chatgpt_access_token: str | None = None
    chatgpt_base_url: HttpUrlText | None = None
    chatgpt_model: str = "text-davinci-002-render-sha"
    chatgpt_proxy: str | None = None

    upstream_connect_timeout: float = Field(default=5.0, gt=0)
    upstream_read_timeout: float = Field(default=120.0, gt=0)
    upstream_deadline_seconds: float = Field(default=120.0, gt=0)
    """The most an answer may take upstream in all: every attempt, retry and wait included."""
    upstream_max_retries: int = Field(default=2, ge=0)
    upstreams: list[UpstreamSettings] = []
    """Several upstreams in priority order, as JSON (or from `upstreams_file`); when set, they
    replace the one of LLM_PROVIDER, OPENAI_* and CHATGPT_*."""
    upstreams_file: Path | None = None
    circuit_breaker_failures: int = Field(default=3, ge=1)
    """Failures in a row after which an upstream of `upstreams` is skipped for a cool-down."""
    circuit_breaker_cooldown_seconds: float = Field(default=30.0, gt=0)

    context_strategy: Literal["truncate", "summarize"] = "truncate"
    """A path over the model's window: leave out its oldest turns, or summarise them once."""
    model_context_windows: dict[str, Annotated[int, Field(gt=0)]] = {}
    """Context windows by model name or prefix, over the built-in table (JSON)."""
    default_context_window: int = Field(default=8192, gt=0)
    """The window of a model neither table knows."""
    context_reserve_tokens: int = Field(default=2048, ge=0)
    """Tokens kept free for the answer when the request sets no max_tokens (at most half the window)."""

    generate_titles: bool = True
    store_while_asking: bool = False
    """True: a new conversation's question is written while the upstream already works on the
    answer (about 2 ms less per first ask, and more asks a second). The upstream is then asked
    before the question is stored, not after as the API promises: when that write fails, the
    upstream was asked for nothing (its request is let go) and the ask fails, nothing kept.
    Follow-ups, and every ask with CONTEXT_STRATEGY=summarize, store their question first."""
    store_chat_completions: bool = True
    """Keep /v1/chat/completions exchanges as conversations (a request's `store: false` keeps one out)."""
    models_cache_seconds: float = Field(default=60.0, ge=0)
    """How long /v1/models answers from its copy of the upstream's list."""
    web_ui: bool = True
    """Serve the chat page at `/`; false for API-only deployments."""
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
    graceful_timeout: int = Field(default=30, ge=1)
    """After SIGTERM, how long answers in flight may take; streams still open near its end
    are ended with an error event and stored as interrupted."""
    answer_lease_seconds: float = Field(default=30.0, gt=0)
    """An answer being written whose process stops vouching for it this long is marked
    interrupted by any instance."""
    db_pool_size: int = Field(default=5, ge=1)
    """Database connections each worker keeps open once it needed them; a unit of work holds
    one only briefly, and a unit that finds them all busy waits for one. Few: PostgreSQL
    runs a process per connection, and when the cores are busy, statements waiting in the
    pool cost less than backends waiting for a core (at 50 connections on 2 cores, 30 per
    worker -> 10 -> 5 raised the asks a second by about a tenth; 3 was no better:
    bench/README.md)."""
    db_max_overflow: int = Field(default=0, ge=0)
    """Connections beyond the pool under bursts, each closed as soon as it is given back: under
    a steady load that needs them, PostgreSQL starts a backend for nearly every one (20 in 8 s
    at 50 asks in flight, when this was 10 beyond a pool of 20), so the pool holds them all."""
    db_timeout: float = Field(default=10.0, gt=0)
    """Seconds a PostgreSQL statement may run, and about how long a database that stops
    answering holds a request before it gets a 503."""
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    prometheus_multiproc_dir: Path | None = None
    """Where gunicorn workers share metrics (its *.db files are removed at start); default: a temporary directory."""

    allow_unauthenticated: bool = False
    """Serve a non-loopback HOST even when no API key exists (anyone reaching it may do anything)."""
    rate_limit: str = ""
    """Per key (per client address without keys), all routes together, e.g. `60/minute`."""
    max_streams_per_key: int = Field(default=0, ge=0)
    """Answers (streamed or not) one key may have in flight at once; 0: no cap."""
    max_prompt_chars: int = Field(default=100_000, gt=0)
    redis_url: str | None = None
    """Where limits are kept so every instance shares them; unset: in a file that this
    instance's workers share."""
    redis_key_prefix: str = "gpt-api"
    cors_origins: Annotated[list[str], NoDecode] = []
    """Comma-separated origins a browser may call the API from; empty: no CORS."""

    @model_validator(mode="before")
    @classmethod
    def _read_upstreams_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("upstreams_file"):
            if data.get("upstreams"):
                raise ValueError("set UPSTREAMS or UPSTREAMS_FILE, not both")
            data = {**data, "upstreams": read_upstreams_file(Path(data["upstreams_file"]))}
        return data

    @field_validator("upstreams")
    @classmethod
    def _distinct_upstreams(cls, upstreams: list[UpstreamSettings]) -> list[UpstreamSettings]:
        names = [upstream.name for upstream in upstreams]
        if len(set(names)) < len(names):
            raise ValueError("each upstream needs a name of its own")
        if sum(upstream.kind == "chatgpt" for upstream in upstreams) > 1:
            raise ValueError("at most one chatgpt upstream (a conversation it keeps lives in one account)")
        return upstreams

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
