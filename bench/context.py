"""The context budget on a long path, measured in this process: what `ask` spends fitting a
1,000-message context into its model's window before calling the upstream."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from models.db import Database
from services import tokens
from services.context_budget import ContextBudget
from services.context_window import ContextFitter
from services.metrics import Metrics
from services.providers.base import ChatMessage, ReplyRequest

WORDS = "the quick brown fox jumps over the lazy dog while the cat watches from the warm window sill".split()


def long_path(messages: int, words: int = 60) -> list[ChatMessage]:
    """A system prompt, then alternating questions and answers of `words` words each, ending
    with a question; every message a stored node (it has a node id)."""
    path = [ChatMessage("system", "You are a helpful assistant.", node_id=uuid.uuid4())]
    for n in range(messages - 1):
        text = " ".join(WORDS[(n + k) % len(WORDS)] for k in range(words)) + f" ({n})"
        role = "user" if (messages - 2 - n) % 2 == 0 else "assistant"
        path.append(ChatMessage(role, text, node_id=uuid.uuid4()))
    return path


@dataclass(frozen=True)
class BudgetRun:
    messages: int
    path_tokens: int
    cold_ms: float
    """The first fit: every message tokenized."""
    fits_p50_ms: float
    fits_p99_ms: float
    truncated_p50_ms: float
    truncated_p99_ms: float
    left_out: int


def _timed(work: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return times


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def measure(messages: int = 1000, repeats: int = 300) -> BudgetRun:
    """Fit the same path `repeats` times for a model whose window holds it whole (gpt-4.1,
    about 1M tokens) and for one it does not (gpt-4, 8,192), after one cold fit."""
    database = Database("sqlite://")
    try:
        fitter = ContextFitter(ContextBudget(), db=database, metrics=Metrics())
        path = long_path(messages)
        whole = ReplyRequest(path, "gpt-4.1", str(uuid.uuid4()))
        over = ReplyRequest(path, "gpt-4", str(uuid.uuid4()))
        tokens.count_text("the tokenizer loaded")  # once per process, not part of a fit
        started = time.perf_counter()
        _, fitted = fitter.fit(whole, ())
        cold = (time.perf_counter() - started) * 1000
        assert not fitted.changed
        fits = _timed(lambda: fitter.fit(whole, ()), repeats)
        truncated = _timed(lambda: fitter.fit(over, ()), repeats)
        _, cut = fitter.fit(over, ())
    finally:
        database.dispose()
    return BudgetRun(
        messages=messages,
        path_tokens=fitted.tokens,
        cold_ms=cold,
        fits_p50_ms=statistics.median(fits),
        fits_p99_ms=_p99(fits),
        truncated_p50_ms=statistics.median(truncated),
        truncated_p99_ms=_p99(truncated),
        left_out=cut.left_out,
    )
