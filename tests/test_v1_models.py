"""`/v1/models` through the official `openai` SDK: the upstream's list, kept for a while; with
LLM_PROVIDER=chatgpt, the account's models."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from flask import Flask

from app import create_app
from fakes.chatgpt_backend import FakeChatGPTBackend
from fakes.openai_upstream import FakeOpenAI
from tests.conftest import make_settings
from tests.test_v1_chat_completions import client_of, serve


@pytest.fixture
def client(app: Flask) -> Iterator[openai.OpenAI]:
    for base_url in serve(app):
        with client_of(app, base_url, "dave") as keyed:
            yield keyed


def test_the_upstreams_models_are_listed_and_kept_for_a_while(client: openai.OpenAI, fake_upstream: FakeOpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["gpt-test", "gpt-4o-mini", "org/model-with-a-slash"]
    fake_upstream.models = ["gpt-new"]
    assert client.models.retrieve("org/model-with-a-slash").owned_by == "fake"  # from the copy
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-new")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    assert [r.path for r in fake_upstream.requests] == ["/v1/models"]


@pytest.mark.parametrize("settings_overrides", [{"models_cache_seconds": 0}])
def test_without_a_copy_every_list_asks_the_upstream(client: openai.OpenAI, fake_upstream: FakeOpenAI) -> None:
    client.models.list()
    fake_upstream.models = ["gpt-new"]
    assert [model.id for model in client.models.list()] == ["gpt-new"]


def test_without_an_upstream_the_list_is_a_503(database_url: str) -> None:
    app = create_app(make_settings(database_url, None))
    for base_url in serve(app):
        with client_of(app, base_url, "erin") as client, pytest.raises(openai.InternalServerError) as unconfigured:
            client.models.list()
        assert unconfigured.value.status_code == 503 and "OPENAI_API_KEY" in unconfigured.value.message
    app.services.close()


def test_chatgpt_lists_the_accounts_models(database_url: str) -> None:
    with FakeChatGPTBackend() as backend:
        settings = make_settings(
            database_url, None, llm_provider="chatgpt", chatgpt_access_token=backend.token, chatgpt_base_url=backend.url
        )
        app = create_app(settings)
        for base_url in serve(app):
            with client_of(app, base_url, "frank") as client:
                assert [(m.id, m.owned_by) for m in client.models.list()] == [("text-davinci-002-render-sha", "chatgpt")]
        app.services.close()
