"""Many open SSE streams at once, from one asyncio process, with time to first event.

Streams are opened at a steady rate (a ramp), each timed from its request until its
first `data:` event arrives, and held open until the server ends them. A callback
samples whatever the caller wants to see (the service's memory) when half of them and
when all of them are open.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp


def split_events(buffer: bytes) -> tuple[list[list[str]], bytes]:
    """Complete SSE events in `buffer` (each its list of lines), and the unfinished rest."""
    normalized = buffer.replace(b"\r\n", b"\n")
    *complete, rest = normalized.split(b"\n\n")
    events = [block.decode("utf-8", errors="replace").split("\n") for block in complete if block]
    return events, rest


def event_data(lines: list[str]) -> str | None:
    """The `data` of an event, or None for a comment-only event (a keep-alive)."""
    data = [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]
    return "\n".join(data) if data else None


@dataclass
class StreamOutcome:
    ttfb: float | None = None
    """Seconds from sending the request to the first `data:` event."""
    events: int = 0
    keep_alives: int = 0
    done: bool = False
    """Ended with `data: [DONE]`."""
    error: str | None = None


@dataclass(frozen=True)
class Sample:
    """What `sample()` returned while `open` streams were open."""

    open: int
    value: Any


@dataclass
class StreamRun:
    outcomes: list[StreamOutcome]
    samples: list[Sample]
    """Taken when half the streams were open, and when all were."""
    seconds: float
    ttfbs: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.ttfbs = sorted(o.ttfb for o in self.outcomes if o.ttfb is not None)

    @property
    def peak_open(self) -> int:
        return max((s.open for s in self.samples), default=0)

    @property
    def completed(self) -> int:
        return sum(o.done for o in self.outcomes)

    @property
    def failed(self) -> int:
        return sum(o.error is not None for o in self.outcomes)

    def percentile(self, p: float) -> float:
        """Seconds: the `p`th percentile of the times to first event (interpolated)."""
        if not self.ttfbs:
            return float("nan")
        if len(self.ttfbs) == 1:
            return self.ttfbs[0]
        return statistics.quantiles(self.ttfbs, n=100, method="inclusive")[round(p) - 1]


class _Tally:
    def __init__(self) -> None:
        self.waiting = 0
        """Streams sent and not yet answered."""
        self.open = 0

    def opened(self) -> None:
        self.waiting -= 1
        self.open += 1

    def closed(self) -> None:
        self.open -= 1


async def _one_stream(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: dict | None,
    tally: _Tally,
    expect_events: bool,
    first_event_only: bool,
) -> StreamOutcome:
    outcome = StreamOutcome()
    started = time.perf_counter()
    counted = False
    try:
        async with session.request(method, url, json=body) as response:
            if response.status != 200:
                outcome.error = f"HTTP {response.status}"
                return outcome
            if not expect_events:  # a plain route: time to its first byte is all we want
                await response.content.read(1)
                outcome.ttfb = time.perf_counter() - started
                outcome.done = True
                await response.read()
                return outcome
            buffer = b""
            async for chunk in response.content.iter_any():
                events, buffer = split_events(buffer + chunk)
                for lines in events:
                    data = event_data(lines)
                    if data is None:
                        outcome.keep_alives += 1
                    elif data == "[DONE]":
                        outcome.done = True
                    else:
                        outcome.events += 1
                        if outcome.ttfb is None:
                            outcome.ttfb = time.perf_counter() - started
                            tally.opened()
                            counted = True
                        if any(line.startswith("event: error") for line in lines):
                            outcome.error = data[:200]
                if first_event_only and outcome.ttfb is not None:
                    break  # hang up: the service cancels the upstream call
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        outcome.error = f"{type(error).__name__}: {error}"
    finally:
        if counted:
            tally.closed()
        else:
            tally.waiting -= 1
    return outcome


async def run_streams(
    url: str,
    *,
    count: int,
    rate: float,
    body: dict | None = None,
    method: str = "POST",
    expect_events: bool = True,
    first_event_only: bool = False,
    sample: Callable[[], Any] | None = None,
    settle: float = 1.0,
    timeout: float = 120.0,
) -> StreamRun:
    """Open `count` streams at `rate` per second and hold them until the server ends them.

    `sample` is called when half the streams are open and again `settle` seconds after
    the last one started answering, so a caller can tell what each further stream costs.
    Every stream is bounded by `timeout` seconds, and so is the whole run (plus the ramp).
    `first_event_only`: hang up after the first event instead of holding the stream.
    """
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"the bench only sends traffic to 127.0.0.1, not {url}")
    tally = _Tally()
    samples: list[Sample] = []
    holding = expect_events and not first_event_only
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        tasks: list[asyncio.Task[StreamOutcome]] = []
        for n in range(count):
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if sample is not None and holding and not samples and tally.open >= count // 2:
                samples.append(Sample(tally.open, sample()))
            stream = _one_stream(session, method, url, body, tally, expect_events, first_event_only)
            tally.waiting += 1  # now, not when the task first runs: the wait below counts it
            tasks.append(asyncio.create_task(stream))
        if holding:
            deadline = time.perf_counter() + timeout
            while tally.waiting and time.perf_counter() < deadline:
                if sample is not None and not samples and tally.open >= count // 2:
                    samples.append(Sample(tally.open, sample()))
                await asyncio.sleep(0.01)
            if sample is not None and not samples:  # the streams opened faster than we looked
                samples.append(Sample(tally.open, sample()))
            await asyncio.sleep(settle)
            samples.append(Sample(tally.open, sample() if sample is not None else None))
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), timeout=timeout + count / rate)
    return StreamRun(list(outcomes), samples, time.perf_counter() - started)
