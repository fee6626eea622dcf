"""Settings read `.env` themselves: every way of starting the app behaves the same."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from config import ENV_FILE, PROJECT_ROOT, Settings
from fakes.openai_upstream import FakeOpenAI
from tests.conftest import UPSTREAM_KEY

SETTING_NAMES = {name.upper() for name in Settings.model_fields}


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("OPENAI_MODEL=from-dotenv\nSYSTEM_PROMPT=from-dotenv\nPORT=\n", encoding="utf-8")
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SYSTEM_PROMPT", "from-environment")
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.openai_model == "from-dotenv"
    assert settings.system_prompt == "from-environment"
    assert settings.port == 5000  # empty means the default
    assert Settings.model_config["env_file"] == ENV_FILE == PROJECT_ROOT / ".env"


CREATE_APP_ALONE = """
from app import create_app
answer = create_app().test_client().post("/api/chat/ask", json={"prompt": "hi"})
print(answer.status_code)
"""


def test_create_app_alone_reads_the_project_roots_env(tmp_path: Path, fake_upstream: FakeOpenAI) -> None:
    """As `gunicorn 'app:create_app()'` starts it: no command line, another working directory."""
    checkout = tmp_path / "checkout"
    shutil.copytree(PROJECT_ROOT, checkout, ignore=shutil.ignore_patterns(
        ".venv", ".git", ".*_cache", ".hypothesis", "instance", "tests", "bench", "__pycache__", ".env"))
    (checkout / ".env").write_text(
        f"DATABASE_URL=sqlite:///{tmp_path / 'dotenv.sqlite3'}\n"
        f"OPENAI_API_KEY={UPSTREAM_KEY}\nOPENAI_BASE_URL={fake_upstream.url}\n"
        "OPENAI_MODEL=model-from-dotenv\nGENERATE_TITLES=false\n",
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in SETTING_NAMES}
    started = subprocess.run(
        [sys.executable, "-c", CREATE_APP_ALONE], cwd=elsewhere, env={**env, "PYTHONPATH": str(checkout)},
        capture_output=True, text=True, timeout=60,
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.split()[-1] == "200"
    assert [request.body["model"] for request in fake_upstream.requests] == ["model-from-dotenv"]
    assert (tmp_path / "dotenv.sqlite3").is_file()


EXAMPLES_NOT_DEFAULTS = {
    "DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "SYSTEM_PROMPT", "LLM_PROVIDER", "CHATGPT_ACCESS_TOKEN",
    "CHATGPT_BASE_URL", "CHATGPT_PROXY", "UPSTREAMS", "UPSTREAMS_FILE", "MODEL_CONTEXT_WINDOWS", "WORKERS",
    "RATE_LIMIT", "REDIS_URL", "CORS_ORIGINS", "PROMETHEUS_MULTIPROC_DIR",
}
"""Settings that `.env.example` shows with a value to fill in or copy, not with their default."""


def test_env_example_names_only_settings_and_shows_their_defaults() -> None:
    """Every `NAME=value` line of `.env.example` (commented or not) is a setting, and unless it
    is shown as an example, its value is the setting's default: the file does not drift."""
    shown: dict[str, str] = {}
    for line in (PROJECT_ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        name, equals, value = line.lstrip("# ").partition("=")
        if equals and name.isupper() and name.replace("_", "").isalnum():
            shown[name] = value
    assert set(shown) <= SETTING_NAMES
    assert EXAMPLES_NOT_DEFAULTS <= set(shown)
    for name, value in shown.items():
        if name in EXAMPLES_NOT_DEFAULTS:
            continue
        default = Settings.model_fields[name.lower()].default
        parsed = type(default)(value) if not isinstance(default, bool) else value.lower() == "true"
        assert parsed == default, f"{name}={value} in .env.example, but its default is {default!r}"
