"""A second official SDK on the wire: `tests/js/v1_check.mjs` drives /v1 with the `openai`
npm package (installed by `npm ci --prefix tests/js`, as CI does)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import openai
import pytest

from tests.openai_sdk import base_url, sdk, sdk_for  # noqa: F401

CHECK = Path(__file__).parent / "js" / "v1_check.mjs"
INSTALLED = Path(__file__).parent / "js" / "node_modules" / "openai"


@pytest.fixture
def node() -> str:
    found = shutil.which("node")
    if found is None or not INSTALLED.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail("Node and `npm ci --prefix tests/js` are required under CI=true")
        pytest.skip("Node or the openai npm package is missing (npm ci --prefix tests/js)")
    return found


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the wire, not the storage
def test_the_javascript_sdk_speaks_v1(node: str, base_url: str, sdk: openai.OpenAI) -> None:  # noqa: F811
    done = subprocess.run(
        [node, str(CHECK)],
        env={**os.environ, "GPT_API_BASE_URL": base_url, "GPT_API_KEY": sdk.api_key},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ok": True, "events": 10, "items": ["Hi", "Echo: Hi"]}
