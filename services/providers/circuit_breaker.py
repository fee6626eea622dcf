"""A circuit breaker per upstream: skip one that keeps failing, and probe it now and then.

Closed: every request goes through. After `threshold` failures in a row it opens: requests
skip the upstream for `cooldown` seconds. Then one request at a time goes through as a probe:
its success closes the circuit, its failure opens it for another cool-down. The state is
each worker process's own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum


class Pass(Enum):
    """How a request was let through."""

    CLOSED = "closed"
    PROBE = "probe"


class CircuitBreaker:
    def __init__(self, *, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        """Open or half-open: requests are skipped, or only a probe goes through."""
        return self._opened_at is not None

    def retry_in(self) -> float:
        """Seconds until a probe may go through (0 when closed or due)."""
        opened_at = self._opened_at
        return 0.0 if opened_at is None else max(0.0, opened_at + self.cooldown - self._clock())

    def admit(self) -> Pass | None:
        """Let a request through (as a probe once the cool-down is over), or None: skip it."""
        with self._lock:
            if self._opened_at is None:
                return Pass.CLOSED
            if self._probing or self._clock() - self._opened_at < self.cooldown:
                return None
            self._probing = True
            return Pass.PROBE

    def succeeded(self, admitted: Pass) -> None:
        """The upstream answered: the circuit closes."""
        with self._lock:
            self._failures = 0
            self._opened_at = None
            if admitted is Pass.PROBE:
                self._probing = False

    def failed(self, admitted: Pass) -> None:
        """The upstream failed: a probe opens the circuit again, and so do `threshold` in a row."""
        with self._lock:
            self._failures += 1
            if admitted is Pass.PROBE:
                self._probing = False
                self._opened_at = self._clock()
            elif self._opened_at is None and self._failures >= self.threshold:
                self._opened_at = self._clock()

    def abandoned(self, admitted: Pass) -> None:
        """The request ended before the upstream said either way (the caller went away)."""
        if admitted is Pass.PROBE:
            with self._lock:
                self._probing = False
