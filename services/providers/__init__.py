"""Choosing and building the upstream provider from the settings."""

from __future__ import annotations

from config import Settings
from services.errors import UpstreamNotConfigured
from services.providers.base import ChatMessage, Provider, ReplyChunk, ReplyRequest

__all__ = ["ChatMessage", "Provider", "ReplyChunk", "ReplyRequest", "build_provider"]


def build_provider(settings: Settings) -> Provider:
    """The configured provider; raises `UpstreamNotConfigured` saying what to set."""
    if settings.llm_provider == "chatgpt":
        return _build_chatgpt(settings)
    if not settings.openai_api_key:
        raise UpstreamNotConfigured(
            "No upstream is configured: set OPENAI_API_KEY (and OPENAI_BASE_URL for a "
            "server other than OpenAI's), or LLM_PROVIDER=chatgpt with CHATGPT_ACCESS_TOKEN."
        )
    from services.providers.openai_compat import OpenAIProvider

    return OpenAIProvider(
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        model=settings.openai_model,
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
    )
