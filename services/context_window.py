"""Each request's context fitted into its model's window, by `CONTEXT_STRATEGY`.

The window is that of the model that answers: with `UPSTREAMS`, where an upstream may be
asked for a stand-in model, the smallest window of the models a request may be answered by.

`truncate`: the oldest turns are left out (`ContextBudget.truncate`).

`summarize`: the left-out part is summarised once by the upstream and the summary kept on
the last message it covers. Later requests whose path goes through that message send the
summary in place of the messages it covers, with no upstream call, until the messages after
it outgrow the window too; then a new summary (of the old one and the turns after it) is
made and kept further down. Another branch sees a summary only if it shares that message.
A new summary covers enough turns that the kept ones fill at most half the room, so it
lasts for a while. When no summary can be made (the upstream fails), the request is
truncated instead.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

from config import Settings
from models.db import Database
from services import tokens
from services.context_budget import ContextBudget, Fitted, head_length
from services.errors import ServiceError
from services.metrics import Metrics
from services.providers.base import ChatMessage, Provider, ReplyRequest, Sampling
from services.providers.fallback import FallbackProvider
from services.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

Strategy = Literal["truncate", "summarize"]

SUMMARY_INSTRUCTION = (
    "Summarise the conversation below for whoever continues it: the facts, names, numbers, "
    "decisions and open questions it holds, briefly, in the conversation's language. "
    "Answer with the summary only."
)
SUMMARY_REQUEST = "Write the summary now."
SUMMARY_PREFIX = (
    "Summary of the earlier part of this conversation (its messages are left out to fit the "
    "context window):\n"
)
SUMMARY_MAX_TOKENS = 1024
"""The most a summary may take, and at most an eighth of the budget."""


class ContextFitter:
    """Fits a request's messages into its model's budget, leaving out or summarising the oldest."""

    def __init__(
        self,
        budget: ContextBudget,
        *,
        db: Database,
        metrics: Metrics,
        strategy: Strategy = "truncate",
        summarizer: Provider | None = None,
        answering: Callable[[str], Sequence[str]] | None = None,
    ) -> None:
        """`answering(model)`: the models a request for `model` may be answered by (stand-ins of
        `UPSTREAMS` among them); the context fits the smallest of their windows."""
        self.budget = budget
        self._db = db
        self._metrics = metrics
        self.strategy = strategy
        self._summarizer = summarizer if strategy == "summarize" else None
        self._answering = answering

    @property
    def stores_summaries(self) -> bool:
        """Whether fitting may write a summary onto a message of the path (which must then be
        stored before it is fitted)."""
        return self._summarizer is not None

    def limit(self, model: str, max_tokens: int | None = None) -> int:
        """The tokens a request for `model` may send: the least of the models that may answer it."""
        models = (self._answering(model) if self._answering is not None else None) or (model,)
        return min(self.budget.limit(name, max_tokens) for name in models)

    def fit(self, request: ReplyRequest, path: Sequence[Any], *, keep: bool = True) -> tuple[ReplyRequest, Fitted]:
        """`request` with its messages fitted, and what was done. `path` is the stored nodes the
        messages come from (for their summaries); with `keep` False no summary is stored."""
        limit = self.limit(request.model, request.sampling.max_tokens)
        counts = self.budget.counts(request.messages)
        total = self.budget.total(counts)
        if total <= limit:
            return request, Fitted(request.messages, total, limit)
        fitted = None
        if self._summarizer is not None:
            fitted = self._summarized(request, counts, limit, path, keep=keep)
        if fitted is None:
            fitted = self.budget.truncate(request.messages, limit, counts)
        self.observe(f"message {request.user_message_id}", request.model, fitted)
        return replace(request, messages=fitted.messages), fitted

    def truncate(self, messages: Sequence[ChatMessage], model: str, max_tokens: int | None) -> Fitted:
        """`messages` fitted by leaving out the oldest turns, whatever the strategy: for a context
        that is no stored path, so has no node to keep a summary on (Chat Completions). The
        caller `observe`s what it sends in the end."""
        return self.budget.truncate(messages, self.limit(model, max_tokens))

    # -- summaries -------------------------------------------------------------

    def _summarized(
        self, request: ReplyRequest, counts: list[int], limit: int, path: Sequence[Any], *, keep: bool
    ) -> Fitted | None:
        """The context with the left-out turns summarised (a stored summary when the turns after
        it still fit, else a new one); None when there is nothing to summarise or it failed."""
        messages = request.messages
        pinned = head_length(messages)
        head, body = messages[:pinned], messages[pinned:]
        last_turn = max((i for i, m in enumerate(body) if m.role == "user"), default=0)
        stored = {node.id: node.summary for node in path if getattr(node, "summary", None)}
        covered = max((i for i in range(last_turn) if body[i].node_id in stored), default=-1)
        with_previous = None
        previous = stored[body[covered].node_id] if covered >= 0 else None
        if previous is not None:
            with_previous = self._with_summary(head, previous, body[covered].node_id, body, covered + 1, limit)
            if with_previous.left_out == covered + 1 and not with_previous.cut:
                self._metrics.context_summaries.labels("reused").inc()
                return with_previous
        room = limit - tokens.REPLY_PRIMING - sum(counts[:pinned]) - self._summary_tokens(limit)
        end = self._summary_end(body, counts[pinned:], covered + 1, last_turn, room // 2)
        if end <= covered + 1:
            return with_previous
        summary = self._summarize(request.model, previous, body[covered + 1 : end], limit)
        if summary is None:
            return with_previous
        node_id = body[end - 1].node_id
        if keep and node_id is not None:
            with UnitOfWork(self._db) as uow:
                uow.conversations.update_message(node_id, summary=summary)
                uow.commit()
        return self._with_summary(head, summary, node_id, body, end, limit)

    @staticmethod
    def _summary_end(body: Sequence[ChatMessage], counts: Sequence[int], start: int, last_turn: int, room: int) -> int:
        """Where a new summary stops: at the oldest turn from which the rest fits `room`, at
        the last turn at the latest."""
        kept = sum(counts)
        for end in range(len(body)):
            if end > start and body[end].role == "user" and (kept <= room or end == last_turn):
                return end
            kept -= counts[end]
        return start

    def _with_summary(
        self,
        head: Sequence[ChatMessage],
        summary: str,
        node_id: uuid.UUID | None,
        body: Sequence[ChatMessage],
        start: int,
        limit: int,
    ) -> Fitted:
        """The summary after the system messages, then the turns from `start`, truncated if need be."""
        key = uuid.uuid5(node_id, "summary") if node_id is not None else None
        message = ChatMessage(role="system", content=SUMMARY_PREFIX + summary, node_id=key)
        fitted = self.budget.truncate([*head, message, *body[start:]], limit)
        return replace(fitted, left_out=fitted.left_out + start, summarized=True)

    def _summary_tokens(self, limit: int) -> int:
        return min(SUMMARY_MAX_TOKENS, limit // 8)

    def _summarize(self, model: str, previous: str | None, messages: Sequence[ChatMessage], limit: int) -> str | None:
        """The upstream's summary of `messages` (carrying on from `previous`), or None if it failed."""
        assert self._summarizer is not None
        instruction = SUMMARY_INSTRUCTION
        if previous:
            instruction += f"\n\nThe summary of what came before them, to carry on from:\n{previous}"
        max_tokens = self._summary_tokens(limit)
        asked = [ChatMessage(role="system", content=instruction), *messages, ChatMessage(role="user", content=SUMMARY_REQUEST)]
        fitted = self.budget.truncate(asked, self.limit(model, max_tokens))
        request = ReplyRequest(
            messages=fitted.messages, model=model, user_message_id=str(uuid.uuid4()), sampling=Sampling(max_tokens=max_tokens)
        )
        chunks = self._summarizer.stream_reply(request)
        try:
            summary = "".join(chunk.delta for chunk in chunks).strip()
        except ServiceError as error:
            log.warning("no summary of %d left-out message(s): %s; leaving them out instead", len(messages), error.message)
            self._metrics.context_summaries.labels("failed").inc()
            return None
        finally:
            chunks.close()
        self._metrics.context_summaries.labels("made" if summary else "failed").inc()
        return summary or None

    def observe(self, what: str, model: str, fitted: Fitted) -> None:
        """Count and log a context that was fitted (`what`: the message or request it is for)."""
        strategy = "summarize" if fitted.summarized else "truncate"
        self._metrics.context_truncations.labels(strategy).inc()
        self._metrics.context_messages_left_out.labels(strategy).inc(fitted.left_out)
        log.info(
            "context of %s fitted to %s's budget of %d tokens: %d message(s) left out%s%s",
            what,
            model,
            fitted.budget,
            fitted.left_out,
            ", summarised" if fitted.summarized else "",
            ", a message cut in its middle" if fitted.cut else "",
        )


def build_context_fitter(
    settings: Settings, db: Database, provider: Provider | None, metrics: Metrics
) -> ContextFitter | None:
    """The fitter for the configured upstreams; None when they keep their own context (a
    ChatGPT account alone). Summaries are asked of the upstreams that keep none."""
    if provider is None or (settings.llm_provider == "chatgpt" and not settings.upstreams):
        return None
    summarizer: Provider | None = provider
    if isinstance(provider, FallbackProvider):
        summarizer = provider.stateless()
        if summarizer is None:
            return None
    budget = ContextBudget(
        windows=settings.model_context_windows,
        default_window=settings.default_context_window,
        reserve=settings.context_reserve_tokens,
    )
    answering = provider.context_models if isinstance(provider, FallbackProvider) else None
    return ContextFitter(
        budget, db=db, metrics=metrics, strategy=settings.context_strategy, summarizer=summarizer, answering=answering
    )
