"""The bench's table: each figure with the floor beside it, its target, and PASS or MISS."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    limit: float
    at_least: bool = False
    """True: the figure must reach `limit`; False: it must stay within it."""

    def met(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value >= self.limit if self.at_least else value <= self.limit

    def __str__(self) -> str:
        return f"{'>=' if self.at_least else '<='} {_number(self.limit)}"


@dataclass(frozen=True)
class Row:
    figure: str
    value: float
    unit: str
    floor: float | None = None
    target: Target | None = None
    note: str = ""

    @property
    def result(self) -> str:
        if self.target is None:
            return ""
        return "PASS" if self.target.met(self.value) else "MISS"


@dataclass(frozen=True)
class Section:
    title: str
    rows: list[Row]


def _number(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render(sections: list[Section]) -> str:
    header = ("figure", "value", "floor", "target", "result")
    lines: list[tuple[str, ...]] = []
    for section in sections:
        lines.append((f"[{section.title}]",))
        for row in section.rows:
            unit = f" {row.unit}" if row.unit else ""
            lines.append(
                (
                    f"  {row.figure}",
                    f"{_number(row.value)}{unit}",
                    f"{_number(row.floor)}{unit}" if row.floor is not None else "",
                    f"{row.target}{unit}" if row.target is not None else "",
                    row.result + (f"  {row.note}" if row.note else ""),
                )
            )
    widths = [max(len(line[i]) for line in [header, *lines] if len(line) > 1) for i in range(4)]
    out = []
    for line in [header, *lines]:
        if len(line) == 1:
            out.append(line[0])
            continue
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:4], widths[1:])]
        out.append("  ".join(cells) + "  " + line[4])
    return "\n".join(out)


def beside(figure: str, theirs: float, ours: float, unit: str, *, higher_is_better: bool,
           us: str = "gpt-api", them: str = "LiteLLM", note: str = "") -> Row:
    """Their figure as the row's value, ours and the ratio ours / theirs in its note."""
    ratio = ours / theirs if theirs and not math.isnan(theirs) else float("nan")
    unit_text = f" {unit}" if unit else ""
    return Row(figure, theirs, unit, note=" ".join(part for part in (
        f"{us} {_number(ours)}{unit_text}; {us} / {them} = {_number(ratio)}",
        f"({'higher' if higher_is_better else 'lower'} is better)",
        note,
    ) if part))


def misses(sections: list[Section]) -> list[Row]:
    return [row for section in sections for row in section.rows if row.result == "MISS"]


def summary(sections: list[Section]) -> str:
    """How many targets PASS, and which MISS (by name)."""
    targets = [row for section in sections for row in section.rows if row.target is not None]
    missed = misses(sections)
    line = f"{len(targets) - len(missed)} of {len(targets)} targets PASS"
    return f"{line}; MISS: {'; '.join(row.figure for row in missed)}" if missed else f"{line}, none MISS"
