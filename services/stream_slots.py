"""A cap on the answers each caller has in flight: in this process, or shared through Redis."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Protocol

import redis

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
    """Counted in this process only (each gunicorn worker counts its own)."""

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


def build_slots(cap: int, redis_url: str | None, prefix: str) -> StreamSlots:
    """No cap (0), a cap in memory, or a cap in Redis when `redis_url` is set."""
    if cap == 0:
        return Unlimited()
    if redis_url:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        return RedisSlots(client, cap, prefix)
    return MemorySlots(cap)
