"""Conversation titles, generated off the request path after a conversation's first exchange.

A title costs a second upstream call, so it must never compete with answers for long: the
titles waiting in a process are bounded (`max_waiting`), at most `concurrency` are asked
for at once, and one that waited longer than `max_age` seconds is dropped rather than
asked for late. Under a load the upstream cannot keep up with, titles are dropped (each
with a log line and a count in `gpt_api_titles_dropped`) instead of piling up, and none
is generated more than `max_age` seconds after the ask that wanted it; a dropped
conversation keeps its default title until renamed. When the service keeps up, every new
conversation gets its title.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from models.db import Database
from services.metrics import Metrics
from services.providers.base import Provider, ReplyRequest
from services.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Wanted:
    conversation_id: uuid.UUID
    request: ReplyRequest
    answer: str
    since: float = field(default_factory=time.monotonic)


class TitleWriter:
    """Asks the upstream for a short title and stores it, unless someone renamed the conversation first."""

    def __init__(
        self,
        db: Database,
        provider: Provider | None,
        *,
        enabled: bool,
        metrics: Metrics | None = None,
        concurrency: int = 2,
        max_waiting: int = 100,
        max_age: float = 5.0,
    ) -> None:
        self._db = db
        self._provider = provider
        self.enabled = enabled and provider is not None
        self._metrics = metrics or Metrics()
        self._concurrency = concurrency
        self._max_age = max_age
        self._waiting: collections.deque[_Wanted] = collections.deque()
        self._max_waiting = max_waiting
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._writers: list[threading.Thread] = []
        self._busy = 0
        self._closing = False

    def submit(self, conversation_id: uuid.UUID, request: ReplyRequest, answer: str) -> None:
        """Want a title for the conversation (dropped at once if too many are waiting)."""
        with self._lock:
            if self._closing:
                return
            if len(self._waiting) >= self._max_waiting:
                self._drop("queue_full", conversation_id)
                return
            self._waiting.append(_Wanted(conversation_id, request, answer))
            self._start_writers()
            self._ready.notify_all()

    def _start_writers(self) -> None:
        """Writer threads start on first use (nothing runs before a server forks)."""
        self._writers = [writer for writer in self._writers if writer.is_alive()]
        while len(self._writers) < self._concurrency:
            writer = threading.Thread(target=self._run, name="titles", daemon=True)
            self._writers.append(writer)
            writer.start()

    def _drop(self, reason: str, conversation_id: uuid.UUID) -> None:
        self._metrics.titles_dropped.labels(reason).inc()
        log.warning("title for conversation %s dropped (%s): the upstream is busy with answers", conversation_id, reason)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closing:
                    self._ready.wait()
                if not self._waiting:
                    return
                wanted = self._waiting.popleft()
                self._busy += 1
            try:
                if time.monotonic() - wanted.since > self._max_age:
                    self._drop("too_late", wanted.conversation_id)
                else:
                    self._write(wanted)
            except Exception as error:  # noqa: BLE001 - one title's failure must not stop the others
                log.warning("title for conversation %s failed: %s", wanted.conversation_id, error)
            finally:
                with self._lock:
                    self._busy -= 1
                    self._ready.notify_all()

    def _write(self, wanted: _Wanted) -> None:
        assert self._provider is not None
        title = self._provider.generate_title(wanted.request, wanted.answer)
        if not title:
            return
        with UnitOfWork(self._db, one_statement=True) as uow:
            uow.statements.name_if_untitled(wanted.conversation_id, title)
            uow.commit()

    def close(self) -> None:
        """Let the titles waiting and in progress finish, then stop the writers."""
        with self._lock:
            while self._waiting or self._busy:
                self._ready.wait()
            self._closing = True
            self._ready.notify_all()
            writers, self._writers = self._writers, []
        for writer in writers:
            writer.join()
        with self._lock:
            self._closing = False
