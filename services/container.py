"""The service's parts, built once from the settings and handed to the app."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from config import Settings
from models.db import Database
from models.key_changes import KeyWatch
from services.answer_leases import AnswerLeases
from services.api_keys import KeyRing
from services.asking import AskService
from services.chat_completions import ChatCompletionService
from services.context_window import build_context_fitter
from services.conversations import ConversationService
from services.errors import UpstreamNotConfigured
from services.items import ConversationItems
from services.metrics import Metrics
from services.model_catalog import ModelCatalog
from services.providers import build_provider
from services.responses import ResponseService
from services.search import SearchService
from services.search_index import SearchIndexer
from services.shared_counts import new_counts_file
from services.stream_slots import StreamSlots, build_slots
from services.titles import TitleWriter

log = logging.getLogger("gpt_api")


@dataclass(frozen=True)
class Services:
    settings: Settings
    database: Database
    metrics: Metrics
    keys: KeyRing
    asking: AskService
    conversations: ConversationService
    titles: TitleWriter
    slots: StreamSlots
    limit_counts: Path | None
    """The file this instance's workers share their limit counts in (without Redis)."""
    chat_completions: ChatCompletionService
    models: ModelCatalog
    responses: ResponseService
    items: ConversationItems
    search: SearchService
    search_index: SearchIndexer

    def start_background(self) -> None:
        """This process's background work: answer leases and the search index's catch-up
        (once per process; a forked worker starts its own)."""
        self.asking.leases.start()
        self.search_index.start()

    def close(self) -> None:
        """Let background work finish, then close the database's connections."""
        self.asking.leases.stop()
        self.search_index.stop()
        self.titles.close()
        self.database.dispose()


def build_services(settings: Settings) -> Services:
    """Database (migrated unless MIGRATE_ON_START=false), upstream provider, services."""
    database = Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        timeout=settings.db_timeout,
    )
    if settings.migrate_on_start:
        database.migrate(search_language=settings.search_language)
    metrics = Metrics()
    try:
        provider, reason = build_provider(settings, metrics), ""
    except UpstreamNotConfigured as error:
        provider, reason = None, error.message
        log.warning("%s 'ask' answers 503 until then.", reason)
    titles = TitleWriter(database, provider, enabled=settings.generate_titles, metrics=metrics)
    context = build_context_fitter(settings, database, provider, metrics)
    asking = AskService(
        database,
        provider,
        metrics=metrics,
        titles=titles,
        unconfigured_reason=reason,
        system_prompt=settings.system_prompt,
        max_prompt_chars=settings.max_prompt_chars,
        leases=AnswerLeases(database, settings.answer_lease_seconds),
        context=context,
        store_while_asking=settings.store_while_asking,
    )
    conversations = ConversationService(database, provider)
    search_index = SearchIndexer(database)
    limited = settings.rate_limit or settings.max_streams_per_key
    limit_counts = new_counts_file() if limited and not settings.redis_url else None
    return Services(
        settings=settings,
        database=database,
        metrics=metrics,
        keys=KeyRing(database, KeyWatch(database)),
        asking=asking,
        conversations=conversations,
        titles=titles,
        slots=build_slots(settings.max_streams_per_key, settings.redis_url, settings.redis_key_prefix, limit_counts),
        limit_counts=limit_counts,
        chat_completions=ChatCompletionService(
            database,
            provider,
            asking=asking,
            conversations=conversations,
            metrics=metrics,
            titles=titles,
            store=settings.store_chat_completions,
            unconfigured_reason=reason,
            max_prompt_chars=settings.max_prompt_chars,
            context=context,
        ),
        models=ModelCatalog(provider, ttl=settings.models_cache_seconds, unconfigured_reason=reason),
        responses=ResponseService(
            database, asking, conversations, one_message_upstream=settings.llm_provider == "chatgpt"
        ),
        search=SearchService(database, search_index, settings.search_language),
        search_index=search_index,
        items=ConversationItems(database, asking, conversations),
    )
