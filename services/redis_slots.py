"""The cap on answers in flight kept in Redis, shared by every instance."""

from __future__ import annotations

import logging
import uuid

import redis

from services.stream_slots import MemorySlots, Slot

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


class RedisSlots:
    """Shared by every instance: one sorted set per caller, a member per slot, scored by
    when its lease ends. While Redis is unreachable each process counts on its own."""

    @classmethod
    def at(cls, url: str, cap: int, prefix: str) -> RedisSlots:
        return cls(redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2), cap, prefix)

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
