"""Settings, read from the environment (and `.env`, loaded by `app.py` before this runs).

Every name is documented in the README's configuration table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent
INSTANCE_DIR = PROJECT_ROOT / "instance"


def default_database_url() -> str:
    """A SQLite file under `instance/`, used when `DATABASE_URL` is unset."""
    return f"sqlite:///{INSTANCE_DIR / 'gpt-api.sqlite3'}"


class Settings(BaseSettings):
    """Typed settings; field names are the environment variable names, upper-cased."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

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
    sse_keep_alive_seconds: float = Field(default=15.0, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)

    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    worker_connections: int = Field(default=1000, ge=1)
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=20, ge=0)
    log_level: str = "INFO"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
