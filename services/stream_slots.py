"""A cap on the answers each caller has in flight: shared by the workers of this instance
(in its shared counts file), or by every instance (through Redis)."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import redis

from services.shared_counts import SharedCounts

log = logging.getLogger(__name__)

LEASE_SECONDS = 300
"""How long Redis keeps a slot nobody gave back (its instance died mid-answer). An answer
that outlives its lease stops counting: the cap is briefly loose, never stuck."""

# Atomic: drop ended leases, count, take a slot if there is room. Redis's clock, not the
# instances', so their clocks need not agree.
_ACQUIRE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


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


class RedisSlots:
    """Shared by every instance: one sorted set per caller, a member per slot, scored by
    when its lease ends. While Redis is unreachable each process counts on its own."""

    def __init__(self, client: redis.Redis, cap: int, prefix: str) -> None:
        self._client = client
        self._cap = cap
        self._prefix = prefix
        self._script = client.register_script(_ACQUIRE)
        self._fallback = MemorySlots(cap)

    def acquire(self, who: str) -> Slot | None:
        key, member = f"{self._prefix}:streams:{who}", uuid.uuid4().hex
        try:
            taken = self._script(keys=[key], args=[self._cap, LEASE_SECONDS, member])
        except redis.RedisError as error:
            log.warning("Redis unreachable, counting this process's answers only: %s", error)
            return self._fallback.acquire(who)
        return Slot(lambda: self._give_back(key, member)) if taken else None

    def _give_back(self, key: str, member: str) -> None:
        try:
            self._client.zrem(key, member)
        except redis.RedisError as error:
            log.warning("Redis unreachable, a slot ends with its lease: %s", error)


def build_slots(cap: int, redis_url: str | None, prefix: str, counts_file: Path | None) -> StreamSlots:
    """No cap (0), a cap in Redis when `redis_url` is set, else in `counts_file`."""
    if cap == 0:
        return Unlimited()
    if redis_url:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        return RedisSlots(client, cap, prefix)
    assert counts_file is not None
    return FileSlots(counts_file, cap)
