"""Fixtures for driving `/v1` with the official `openai` SDK: the test's app served over real
HTTP on loopback, and a client per API key."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.serving import make_server

from app import create_app
from fakes.chatgpt_backend import FakeChatGPTBackend
from models.entities import Conversation, Message
from services.api_keys import ApiKeys
from services.unit_of_work import UnitOfWork
from tests.conftest import make_settings
from tests.helpers import history


_TLS = ssl.create_default_context()


def sdk_client(base_url: str, api_key: str, **options: Any) -> openai.OpenAI:
    """`openai.OpenAI(base_url=..., api_key=..., **options)` on the SDK's own default HTTP client,
    all of them sharing one TLS context: each would otherwise load the CA certificates for its
    own (about 25 ms of CPU), and the suite makes hundreds, every one over plain HTTP."""
    return openai.OpenAI(base_url=base_url, api_key=api_key, http_client=openai.DefaultHttpxClient(verify=_TLS),
                         **options)


def served(app: Flask) -> Iterator[str]:
    """The app on a real threaded WSGI server, for the SDK's own HTTP client."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, name="v1-server", daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    thread.join()


@pytest.fixture
def base_url(app: Flask) -> Iterator[str]:
    yield from served(app)


@pytest.fixture
def chatgpt_sdk(database_url: str) -> Iterator[tuple[FakeChatGPTBackend, openai.OpenAI]]:
    """The fake ChatGPT backend-api, and an SDK client of an app whose upstream it is."""
    with FakeChatGPTBackend() as backend:
        backend.reply = lambda prompt: f"You said: {prompt}"
        settings = make_settings(
            database_url, None, llm_provider="chatgpt", chatgpt_access_token=backend.token,
            chatgpt_base_url=backend.url, upstream_read_timeout=3.0,
        )
        app = create_app(settings)
        for url in served(app):
            yield backend, sdk_client(url, "none", max_retries=0, timeout=10)
        app.services.close()


@pytest.fixture
def sdk_for(app: Flask, base_url: str) -> Callable[[str], openai.OpenAI]:
    """`sdk_for(name)`: an SDK client with a new key of that name."""

    def make(name: str) -> openai.OpenAI:
        key = ApiKeys(app.services.database).create(name).key
        return sdk_client(base_url, key, max_retries=0, timeout=10)

    return make


@pytest.fixture
def sdk(sdk_for: Callable[[str], openai.OpenAI]) -> openai.OpenAI:
    """A client with the key `alice`."""
    return sdk_for("alice")


def bare(prefixed: str) -> str:
    """The UUID an OpenAI-style id names (`resp_<hex>` → `xxxxxxxx-xxxx-...`)."""
    hex_digits = prefixed.rsplit("_", 1)[1]
    return f"{hex_digits[:8]}-{hex_digits[8:12]}-{hex_digits[12:16]}-{hex_digits[16:20]}-{hex_digits[20:]}"


def tree_of(client: FlaskClient, sdk: openai.OpenAI, conversation_id: str) -> dict[str, Any]:
    """The conversation's whole tree through `/api/chat/msg/history`, as the SDK's key."""
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {sdk.api_key}"
    return history(client, bare(conversation_id))


def stored_rows(app: Flask) -> tuple[int, int]:
    """How many conversations and messages are stored."""
    with UnitOfWork(app.services.database) as uow:
        conversations = uow.session.scalar(select(func.count()).select_from(Conversation))
        messages = uow.session.scalar(select(func.count()).select_from(Message))
    return conversations or 0, messages or 0
