"""Whether a pooled connection's socket has something to read, now.

An idle connection (to the database, or to the upstream) has nothing to read: if its
socket is readable, the peer closed it or reset it, and it is replaced before use. The
check is a zero-timeout poll of the socket, microseconds, never a round trip.
"""

from __future__ import annotations

import select
import selectors
from collections.abc import Callable
from typing import Any


def _native_poll() -> Callable[[], Any] | None:
    """`select.poll` as the OS has it, even under gevent's monkey-patching: a zero-timeout
    poll never blocks, and gevent's cooperative one costs a trip through its hub (3 % of a
    worker's CPU under load, with its selectors). None where there is no poll (Windows)."""
    try:
        from gevent.monkey import get_original

        return get_original("select", "poll")  # type: ignore[no-any-return]
    except (ImportError, AttributeError):
        return getattr(select, "poll", None)


_POLL = _native_poll()


def readable(fd: int) -> bool:
    """Whether `fd` has something to read, now (poll, or a selector where there is none;
    never select(): a busy worker's descriptors run past its 1,024)."""
    if _POLL is not None:
        poller = _POLL()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        return bool(selector.select(0))
