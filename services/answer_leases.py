"""Answers being written, and the leases that tell a live writer from a dead one.

An answer's row is `in_progress` from its first text to its final save. Meanwhile the text
so far is saved again every `save_every` seconds, for all of this process's answers at once
in one transaction (a write per stream would need a pooled connection per stream: thousands
of open streams would queue for the pool). The process writing an answer holds a lease on it
(`lease_expires_at`), renewed with every such save and, for all of its answers at once, every
third of a lease. A row whose lease ran out belongs to no live process (it crashed, was
killed, or lost the database at the final save): any instance, on start and then every third
of a lease, marks it interrupted with the text saved so far. So several instances on one
database never touch each other's live answers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from datetime import datetime, timedelta

from models.db import Database
from models.entities import utcnow
from services.errors import DatabaseUnavailable
from services.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

RETRY_AFTER = 1.0
"""Seconds before the next round after a failed one: a round whose renewal failed is due
again at once, and without this pause a database that is down had the loop spin, a log
line per turn."""


class AnswerLeases:
    """The answers this process is writing, their leases, and the sweep for everyone's expired ones."""

    def __init__(
        self, db: Database, lease_seconds: float = 30.0, save_every: float = 0.5, *, background: bool = True
    ) -> None:
        """`background=False`: no thread; whoever made it calls `save_texts`, `renew` and `sweep`."""
        self._db = db
        self._background = background
        self.lease = timedelta(seconds=lease_seconds)
        self.save_every = save_every
        self._writing: dict[uuid.UUID, str | None] = {}
        """Each answer this process writes, with its text not saved yet (None: saved)."""
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def expiry(self, now: datetime | None = None) -> datetime:
        """Until when a lease taken or renewed now holds."""
        return (now or utcnow()) + self.lease

    def hold(self, message_id: uuid.UUID) -> None:
        """This process writes the answer from now on (its row carries a fresh lease); the
        background work that renews leases and saves text runs from now on in this process."""
        with self._lock:
            self._writing[message_id] = None
        if self._background:
            self.start()
            self._wake.set()

    def note(self, message_id: uuid.UUID, text: str) -> None:
        """The answer's text so far, saved with the next round (if it is still held)."""
        with self._lock:
            if message_id in self._writing:
                self._writing[message_id] = text

    def let_go(self, message_id: uuid.UUID) -> None:
        """The answer is finished or abandoned: its lease is no longer renewed."""
        with self._lock:
            self._writing.pop(message_id, None)

    def writing(self) -> list[uuid.UUID]:
        with self._lock:
            return list(self._writing)

    def save_texts(self, now: datetime | None = None) -> int:
        """Save the text noted since the last round of every answer being written, renewing
        their leases, in one transaction; how many answers it saved."""
        with self._lock:
            texts = [(message_id, text) for message_id, text in self._writing.items() if text is not None]
            for message_id, _ in texts:
                self._writing[message_id] = None
        if texts:  # lost with the database: the next chunk notes a newer text anyway
            with UnitOfWork(self._db) as uow:
                uow.conversations.save_progress(texts, self.expiry(now))
                uow.commit()
        return len(texts)

    def renew(self, now: datetime | None = None) -> None:
        """Extend the leases of every answer this process is writing, in one statement."""
        message_ids = self.writing()
        if message_ids:
            with UnitOfWork(self._db) as uow:
                uow.conversations.renew_leases(message_ids, self.expiry(now))
                uow.commit()

    def sweep(self, now: datetime | None = None) -> int:
        """Mark interrupted every answer whose lease ran out; how many there were."""
        with UnitOfWork(self._db) as uow:
            count = uow.conversations.interrupt_answers(expired_before=now or utcnow())
            uow.commit()
        if count:
            log.warning("%d answer(s) left in progress by a process that is gone: marked interrupted", count)
        return count

    def interrupt_own(self) -> int:
        """On shutdown: save their last text and mark interrupted the answers this process is
        still writing."""
        self.save_texts()
        with UnitOfWork(self._db) as uow:
            count = uow.conversations.interrupt_answers(message_ids=self.writing())
            uow.commit()
        return count

    def start(self) -> None:
        """Sweep now, then save texts every `save_every` seconds and renew and sweep every third
        of a lease, on a daemon thread of this process. Safe to call often: it starts the
        thread once per process (threads do not survive a fork, so a forked worker starts its own)."""
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                return
            self._pid = os.getpid()
            self._stopped.clear()
            self._wake.clear()
            self._thread = threading.Thread(target=self._run, name="answer-leases", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def _run(self) -> None:
        renew_every = self.lease.total_seconds() / 3
        renewed_at = -renew_every
        while not self._stopped.is_set():
            pause: float | None = None
            try:
                self.save_texts()
                if time.monotonic() - renewed_at >= renew_every:
                    self.renew()
                    self.sweep()
                    renewed_at = time.monotonic()
            except DatabaseUnavailable:
                pause = RETRY_AFTER  # logged by the unit of work
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                log.exception("saving answers and renewing their leases failed")
                pause = RETRY_AFTER
            if pause is None:
                # Idle, it wakes only to renew and sweep (or when an answer is held).
                idle = renew_every - (time.monotonic() - renewed_at)
                pause = min(self.save_every, renew_every) if self.writing() else max(idle, 0.0)
            self._wake.wait(pause)
            self._wake.clear()
