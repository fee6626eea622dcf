"""Answers being written, and the leases that tell a live writer from a dead one.

An answer's row is `in_progress` from its first text to its final save. The process writing
it holds a lease on it (`lease_expires_at`), renewed with every save of the text and, for all
of its answers at once, every third of a lease. A row whose lease ran out belongs to no live
process (it crashed, was killed, or lost the database at the final save): any instance, on
start and then every third of a lease, marks it interrupted with the text saved so far. So
several instances on one database never touch each other's live answers.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime, timedelta

from models.db import Database
from models.entities import utcnow
from services.errors import DatabaseUnavailable
from services.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)


class AnswerLeases:
    """The answers this process is writing, their leases, and the sweep for everyone's expired ones."""

    def __init__(self, db: Database, lease_seconds: float = 30.0) -> None:
        self._db = db
        self.lease = timedelta(seconds=lease_seconds)
        self._writing: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def expiry(self, now: datetime | None = None) -> datetime:
        """Until when a lease taken or renewed now holds."""
        return (now or utcnow()) + self.lease

    def hold(self, message_id: uuid.UUID) -> None:
        """This process writes the answer from now on (its row carries a fresh lease)."""
        with self._lock:
            self._writing.add(message_id)

    def let_go(self, message_id: uuid.UUID) -> None:
        """The answer is finished or abandoned: its lease is no longer renewed."""
        with self._lock:
            self._writing.discard(message_id)

    def writing(self) -> list[uuid.UUID]:
        with self._lock:
            return list(self._writing)

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
        """On shutdown: mark interrupted the answers this process is still writing."""
        with UnitOfWork(self._db) as uow:
            count = uow.conversations.interrupt_answers(message_ids=self.writing())
            uow.commit()
        return count

    def start(self) -> None:
        """Sweep now, then renew and sweep every third of a lease, on a daemon thread of this
        process (start it after forking: threads do not survive a fork)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopped.clear()
        self._thread = threading.Thread(target=self._run, name="answer-leases", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while True:
            try:
                self.renew()
                self.sweep()
            except DatabaseUnavailable:
                pass  # logged by the unit of work; the next round tries again
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                log.exception("renewing and sweeping answer leases failed")
            if self._stopped.wait(self.lease.total_seconds() / 3):
                return
