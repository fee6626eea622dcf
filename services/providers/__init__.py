"""Choosing and building the upstream provider from the settings."""

from __future__ import annotations

from config import Settings, UpstreamSettings
from services.errors import UpstreamNotConfigured
from services.metrics import Metrics
from services.providers.base import ChatMessage, Provider, ReplyChunk, ReplyRequest

__all__ = ["ChatMessage", "Provider", "ReplyChunk", "ReplyRequest", "build_provider"]


def build_provider(settings: Settings, metrics: Metrics) -> Provider:
    """The configured provider; raises `UpstreamNotConfigured` saying what to set.

    With UPSTREAMS, every upstream listed, tried in order (`fallback.py`); else the one of
    LLM_PROVIDER."""
    if settings.upstreams:
        return _build_upstreams(settings, metrics)
    if settings.llm_provider == "chatgpt":
        return _build_chatgpt(settings)
    if not settings.openai_api_key:
        raise UpstreamNotConfigured(
            "No upstream is configured: set OPENAI_API_KEY (and OPENAI_BASE_URL for a "
            "server other than OpenAI's), or LLM_PROVIDER=chatgpt with CHATGPT_ACCESS_TOKEN."
        )
    return _build_openai(settings, settings.openai_api_key, settings.openai_base_url, settings.openai_model)


def _build_upstreams(settings: Settings, metrics: Metrics) -> Provider:
    from services.providers.circuit_breaker import CircuitBreaker
    from services.providers.fallback import FallbackProvider, Upstream

    upstreams = [
        Upstream(
            name=entry.name,
            provider=_build_upstream(settings, entry),
            breaker=CircuitBreaker(
                threshold=settings.circuit_breaker_failures, cooldown=settings.circuit_breaker_cooldown_seconds
            ),
            models=frozenset(entry.models),
            model=entry.model,
            keeps_conversations=entry.kind == "chatgpt",
        )
        for entry in settings.upstreams
    ]
    first = settings.upstreams[0]
    default_model = first.model or (first.models[0] if first.models else upstreams[0].provider.default_model)
    return FallbackProvider(upstreams, metrics=metrics, default_model=default_model)


def _build_upstream(settings: Settings, entry: UpstreamSettings) -> Provider:
    model = entry.model or (entry.models[0] if entry.models else None)
    if entry.kind == "chatgpt":
        assert entry.access_token and entry.base_url  # checked by UpstreamSettings
        return _build_chatgpt(
            settings.model_copy(update={
                "chatgpt_access_token": entry.access_token,
                "chatgpt_base_url": entry.base_url,
                "chatgpt_model": model or settings.chatgpt_model,
                "chatgpt_proxy": entry.proxy,
            })
        )
    assert entry.api_key  # checked by UpstreamSettings
    if entry.max_retries is not None:
        settings = settings.model_copy(update={"upstream_max_retries": entry.max_retries})
    return _build_openai(settings, entry.api_key, entry.base_url, model or settings.openai_model)


def _build_openai(settings: Settings, api_key: str, base_url: str | None, model: str) -> Provider:
    from services.providers.openai_compat import OpenAIProvider

    return OpenAIProvider(
        api_key=api_key,
        base_url=base_url,
        model=model,
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=settings.upstream_read_timeout,
        max_retries=settings.upstream_max_retries,
        deadline=settings.upstream_deadline_seconds,
        max_connections=settings.worker_connections,
    )


def _build_chatgpt(settings: Settings) -> Provider:
    if not settings.chatgpt_access_token or not settings.chatgpt_base_url:
        raise UpstreamNotConfigured(
            "LLM_PROVIDER=chatgpt needs CHATGPT_ACCESS_TOKEN and CHATGPT_BASE_URL "
            "(a ChatGPT backend-api base URL)."
        )
    try:
        from services.providers.chatgpt import ChatGPTProvider
    except ImportError as error:
        raise UpstreamNotConfigured(
            "LLM_PROVIDER=chatgpt needs the optional 'chatgpt' extra "
            f"(uv sync --extra chatgpt, or pip install revChatGPT): {error}"
        ) from error
    return ChatGPTProvider(
        access_token=settings.chatgpt_access_token,
        base_url=settings.chatgpt_base_url,
        model=settings.chatgpt_model,
        proxy=settings.chatgpt_proxy,
        timeout=settings.upstream_read_timeout,
        deadline=settings.upstream_deadline_seconds,
    )
