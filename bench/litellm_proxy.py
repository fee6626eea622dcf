"""LiteLLM's proxy under the bench's load, for `python -m bench --litellm PATH`.

The proxy comes from a throwaway virtual environment (`PATH` is its `litellm`
executable) and runs as a user would start it, with one worker per CPU, a config that
maps the bench's model to the same fake upstream with the same key, and nothing else:
no database (so it stores nothing), no master key (the service runs without keys on
127.0.0.1 too), no fetch of its model price list from GitHub at start, no telemetry.
It gets exactly the environment built here, so nothing from the developer's shell
(`DATABASE_URL`, `OPENAI_API_KEY`, ...) reaches it.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path

from bench.processes import Child, passed_through, start_http_server
from fakes.net import free_port

HEALTH = "/health/liveliness"
"""Answers once the proxy's workers are up (no upstream call)."""

START_TIMEOUT = 180.0
"""Importing LiteLLM takes tens of seconds on a busy two-core machine."""

SETTINGS = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # the price list bundled with the package, not GitHub's
    "LITELLM_TELEMETRY_DISABLED": "true",
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",  # no key: it refuses to start otherwise
}
def executable(value: str) -> Path:
    """`--litellm`'s argument: an executable file (checked before anything starts)."""
    path = Path(value).expanduser()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise argparse.ArgumentTypeError(f"{value} is not an executable file (a virtualenv's bin/litellm)")
    return path.resolve()


def config(model: str, upstream_url: str, api_key: str) -> dict:
    """The proxy's config: `model` served by the OpenAI-compatible upstream at `upstream_url`."""
    return {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {"model": f"openai/{model}", "api_base": upstream_url, "api_key": api_key},
            }
        ],
    }


def command(litellm: Path, config_path: Path, port: int, workers: int) -> list[str]:
    return [
        str(litellm), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port),
        "--num_workers", str(workers),
    ]


def environment(home: Path, inherited: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Only what the proxy needs: `PATH` and the locale from `inherited`, `HOME` in the bench's directory."""
    return {**passed_through(inherited), "HOME": str(home), **SETTINGS}


def version(litellm: Path) -> str:
    """The installed LiteLLM's version, from its virtualenv's metadata ("" when not found there)."""
    found = sorted(litellm.parent.parent.glob("lib/python*/site-packages/litellm-*.dist-info"))
    return found[-1].name.removeprefix("litellm-").removesuffix(".dist-info") if found else ""


def start(litellm: Path, work_dir: Path, *, model: str, upstream_url: str, api_key: str,
          workers: int | None = None) -> Child:
    """The proxy on a free port of 127.0.0.1, once it answers."""
    home = work_dir / "litellm"
    home.mkdir(exist_ok=True)
    config_path = home / "config.yaml"
    config_path.write_text(json.dumps(config(model, upstream_url, api_key), indent=2))  # JSON is YAML
    port = free_port()
    return start_http_server(
        "litellm", command(litellm, config_path, port, workers or os.cpu_count() or 1), environment(home), work_dir,
        cwd=home, url=f"http://127.0.0.1:{port}", health=HEALTH, timeout=START_TIMEOUT,
    )
