"""The part of a text a hit shows: about 200 characters around the matches, each marked `**`.

Markdown's bold, because chat clients render message text as Markdown already and plain
text stays readable; HTML tags would invite a client to insert message text as HTML.
White space is collapsed to single spaces and a cut end is shown as `…`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from models.search_text import Term, edge_pattern, word_pattern

MARK = "**"
WIDTH = 200
LEAD = 60
"""Characters kept before the first match in the window."""


def snippet(text: str, terms: Sequence[Term], width: int = WIDTH) -> str:
    flat = " ".join(text.split())
    spans = _merged(sorted(span for term in terms if not term.exclude for span in _matches(flat, term)))
    start, end = _window(flat, spans, width)
    parts, position = [], start
    for low, high in spans:
        if low < start or high > end:
            continue
        parts += [flat[position:low], MARK, flat[low:high], MARK]
        position = high
    parts.append(flat[position:end])
    return ("…" if start > 0 else "") + "".join(parts) + ("…" if end < len(flat) else "")


def _matches(text: str, term: Term) -> Iterator[tuple[int, int]]:
    """Where `term` occurs: its exact text for literals and unsegmented scripts, else its
    words one after another, whole (the last one possibly only begun, for a prefix)."""
    for found in _pattern(term).finditer(text):
        yield found.span()


def _pattern(term: Term) -> re.Pattern[str]:
    if term.unsegmented:
        return re.compile(edge_pattern(term) or re.escape(term.text), re.IGNORECASE)
    if term.literal or term.fragment:
        return re.compile(re.escape(term.text), re.IGNORECASE)
    return re.compile(word_pattern(term))


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for low, high in spans:
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return merged


def _window(text: str, spans: list[tuple[int, int]], width: int) -> tuple[int, int]:
    """The `width` characters holding the most matches (the earliest such), cut at spaces."""
    if len(text) <= width:
        return 0, len(text)
    best, best_count = 0, -1
    for low, _ in spans:
        start = max(0, low - LEAD)
        count = sum(1 for a, b in spans if a >= start and b <= start + width)
        if count > best_count:
            best, best_count = start, count
    start = min(best, len(text) - width)
    end = start + width
    if start > 0:
        space = text.find(" ", start, start + LEAD)
        first = next((a for a, _ in spans if a >= start), end)
        if 0 <= space < first:
            start = space + 1
    if end < len(text):
        space = text.rfind(" ", start, end)
        last = max((b for a, b in spans if b <= end), default=start)
        if space > last:
            end = space
    return start, end
