"""One deadline for a whole answer upstream: every attempt, every retry and every wait in it.

Retries bounded only in number cannot be bounded in time: each attempt may wait
UPSTREAM_READ_TIMEOUT and a 429's Retry-After may be minutes, so a hung upstream held a
client for (1 + UPSTREAM_MAX_RETRIES) x UPSTREAM_READ_TIMEOUT plus the waits. Here every
attempt gets only the time that is left, a wait that would end past the deadline is not
begun (`services/providers/upstream_http.py`), and a stream still running at the deadline
is cut (`within`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from email.utils import parsedate_to_datetime
from typing import TypeVar

from services.errors import UpstreamTimeout

T = TypeVar("T")


class Deadline:
    """The time an answer has left upstream."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends = time.monotonic() + seconds

    def left(self) -> float:
        return self._ends - time.monotonic()

    def expired(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"The upstream did not finish the answer within {self.seconds:g} s (UPSTREAM_DEADLINE_SECONDS); "
            "what came so far is kept."
        )


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds the upstream asks us to wait (`retry-after-ms`, `retry-after` in seconds or as a
    date), or None when it says nothing usable."""
    for name, unit in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            seconds = float(headers.get(name, "")) / unit
        except ValueError:
            continue
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    try:
        return max(parsedate_to_datetime(headers.get("retry-after", "")).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def within(deadline: Deadline, items: Iterable[T]) -> Iterator[T]:
    """`items` (lines, events) until the deadline passes, then an `UpstreamTimeout`."""
    for item in items:
        if deadline.left() <= 0:
            raise deadline.expired()
        yield item
