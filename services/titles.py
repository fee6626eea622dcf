"""Conversation titles, generated off the request path after a conversation's first exchange."""

from __future__ import annotations

import uuid

from models.db import Database
from services.background import BackgroundTasks
from services.providers.base import Provider, ReplyRequest
from services.unit_of_work import UnitOfWork


class TitleWriter:
    """Asks the upstream for a short title and stores it, unless someone renamed the conversation first."""

    def __init__(self, db: Database, provider: Provider | None, *, enabled: bool) -> None:
        self._db = db
        self._provider = provider
        self.enabled = enabled and provider is not None
        self._background = BackgroundTasks()

    def submit(self, conversation_id: uuid.UUID, request: ReplyRequest, answer: str) -> None:
        self._background.submit(self._write, conversation_id, request, answer)

    def _write(self, conversation_id: uuid.UUID, request: ReplyRequest, answer: str) -> None:
        assert self._provider is not None
        title = self._provider.generate_title(request, answer)
        if not title:
            return
        with UnitOfWork(self._db) as uow:
            uow.conversations.name_if_untitled(conversation_id, title)
            uow.commit()

    def close(self) -> None:
        """Let titles in progress finish."""
        self._background.shutdown()
