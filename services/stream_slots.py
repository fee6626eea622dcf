"""A cap on the answers each caller has in flight: shared by the workers of this instance
(in its shared counts file), or by every instance (through Redis)."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from services.shared_counts import SharedCounts

log = logging.getLogger(__name__)

class Slot:
    """A place taken; `release()` gives it back, once, however often it is called."""

    def __init__(self, give_back: Callable[[], None]) -> None:
        self._give_back: Callable[[], None] | None = give_back
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            give_back, self._give_back = self._give_back, None
        if give_back is not None:
            give_back()


class StreamSlots(Protocol):
    def acquire(self, who: str) -> Slot | None:
        """A slot for `who`, or None when `who` already has as many as allowed."""
        ...


class Unlimited:
    def acquire(self, who: str) -> Slot | None:
        return Slot(lambda: None)


class MemorySlots:
    """Counted in this process only: while Redis is unreachable."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._taken: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, who: str) -> Slot | None:
        with self._lock:
            if self._taken[who] >= self._cap:
                return None
            self._taken[who] += 1
        return Slot(lambda: self._give_back(who))

    def _give_back(self, who: str) -> None:
        with self._lock:
            self._taken[who] -= 1
            if self._taken[who] <= 0:
                del self._taken[who]


class FileSlots:
    """Shared by the workers of this instance: a row per slot in the shared counts file,
    with the process that holds it. A worker that dies mid-answer (killed, crashed) gives
    nothing back; its slots are dropped the next time its callers are at their cap."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS slots (id INTEGER PRIMARY KEY, who TEXT NOT NULL, pid INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS slots_by_who ON slots (who);
    """

    def __init__(self, path: Path, cap: int) -> None:
        self._counts = SharedCounts(path, self.SCHEMA)
        self._cap = cap

    def acquire(self, who: str) -> Slot | None:
        with self._counts.transaction() as db:
            holders = [pid for (pid,) in db.execute("SELECT pid FROM slots WHERE who = ?", (who,))]
            if len(holders) >= self._cap:
                living = [pid for pid in holders if _alive(pid)]
                dead = set(holders) - set(living)
                db.executemany("DELETE FROM slots WHERE pid = ?", [(pid,) for pid in dead])
                if len(living) >= self._cap:
                    return None
            slot = db.execute("INSERT INTO slots (who, pid) VALUES (?, ?)", (who, os.getpid())).lastrowid
        return Slot(lambda: self._give_back(slot))

    def _give_back(self, slot: int | None) -> None:
        try:
            with self._counts.transaction() as db:
                db.execute("DELETE FROM slots WHERE id = ?", (slot,))
        except sqlite3.Error as error:
            log.warning("A slot could not be given back; it ends with this process: %s", error)


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (every holder is on this machine: the file is local).

    On Windows there is one process, which holds every slot: `os.kill` is never reached
    (there it would end the process)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether it exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


def build_slots(cap: int, redis_url: str | None, prefix: str, counts_file: Path | None) -> StreamSlots:
    """No cap (0), a cap in Redis when `redis_url` is set, else in `counts_file`."""
    if cap == 0:
        return Unlimited()
    if redis_url:  # imported only here: the Redis client takes a third of a second to import
        from services.redis_slots import RedisSlots

        return RedisSlots.at(redis_url, cap, prefix)
    assert counts_file is not None
    return FileSlots(counts_file, cap)
