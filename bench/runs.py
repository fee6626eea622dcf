"""The same load measured several times, interleaved: every figure is the median of its runs.

A machine shared with other work drifts over seconds to minutes. Running the loads of a
comparison in rounds (direct, service, direct, service, ...) exposes each to the same
drift, and a figure that is a difference (service minus direct) is the median of the
differences within each round, so what drifted between rounds cancels.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import attrgetter

from bench.loadgen import LoadResult

REPEATS = 3

Figure = Callable[[LoadResult], float]


def median(values: Iterable[float]) -> float:
    """The median, NaN when there is nothing to take it of or any value is unknown."""
    values = list(values)
    if not values or any(math.isnan(value) for value in values):
        return float("nan")
    return statistics.median(values)


p50: Figure = attrgetter("p50_ms")
p99: Figure = attrgetter("p99_ms")
per_second: Figure = attrgetter("per_second")
cpu_ms: Figure = attrgetter("server_cpu_ms")


@dataclass(frozen=True)
class Runs:
    """The results of one load run several times."""

    results: tuple[LoadResult, ...]

    def median(self, figure: Figure) -> float:
        return median(figure(result) for result in self.results)

    def minus(self, other: Runs, figure: Figure) -> float:
        """Median over rounds of this run's figure minus the other's from the same round."""
        if len(self.results) != len(other.results):
            raise ValueError(f"{len(self.results)} runs against {len(other.results)}: not paired")
        return median(figure(mine) - figure(theirs) for mine, theirs in zip(self.results, other.results))

    @property
    def p50_ms(self) -> float:
        return self.median(p50)

    @property
    def p99_ms(self) -> float:
        return self.median(p99)

    @property
    def per_second(self) -> float:
        return self.median(per_second)

    @property
    def server_cpu_ms(self) -> float:
        return self.median(cpu_ms)

    @property
    def errors(self) -> int:
        """Errors of every run added up: an error in any run is worth seeing."""
        return sum(result.errors for result in self.results)


def interleaved(loads: Mapping[str, Callable[[], LoadResult]], times: int = REPEATS) -> dict[str, Runs]:
    """Each load `times` times, in rounds that run every load once in the given order."""
    results: dict[str, list[LoadResult]] = {name: [] for name in loads}
    for _ in range(times):
        for name, load in loads.items():
            results[name].append(load())
    return {name: Runs(tuple(done)) for name, done in results.items()}
