"""Several upstreams in priority order (`UPSTREAMS`), behind the one `Provider` interface.

A request goes to the first upstream that serves its model and whose circuit is not open.
When that upstream fails before its first token (it cannot be reached, times out, answers
408, 429 or 5xx), the next one gets the request; a refusal of the request itself (400, 401,
404, ...) is the answer, since the next upstream would refuse it too. Once an upstream has
started answering, its failure is the request's: the answer so far is kept and marked, as
with a single upstream. Each upstream has a circuit breaker (`circuit_breaker.py`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from services.errors import InvalidRequest, RateLimited, ServiceError, UpstreamError
from services.metrics import Metrics
from services.providers.base import (
    CompletionEvent,
    CompletionRequest,
    Provider,
    ReplyChunk,
    ReplyRequest,
)
from services.providers.circuit_breaker import CircuitBreaker, Pass

log = logging.getLogger(__name__)

T = TypeVar("T")

PASSED_OVER_STATUSES = frozenset({408, 429})
"""Upstream answers (besides 5xx) after which the next upstream is tried."""


def passes_over(error: ServiceError) -> bool:
    """Whether the next upstream should get a request this error ended: the upstream could not
    be reached, timed out, was rate limited or failed itself."""
    if isinstance(error, RateLimited):  # an upstream's 429, passed on as it is (/v1)
        return True
    if not isinstance(error, UpstreamError):
        return False
    status = error.details.get("upstream_status")
    return status is None or status in PASSED_OVER_STATUSES or (isinstance(status, int) and status >= 500)


@dataclass
class Upstream:
    """One configured upstream: its provider, what it serves, its circuit."""

    name: str
    provider: Provider
    breaker: CircuitBreaker
    models: frozenset[str] = field(default_factory=frozenset)
    """The models it serves; empty: any, under the requested name."""
    model: str | None = None
    """What it is asked for when the requested model is not one of `models` (None: it is skipped)."""
    keeps_conversations: bool = False
    """A ChatGPT account: it keeps its own copy of each conversation."""

    def asked_model(self, requested: str) -> str | None:
        """The model this upstream is asked for in place of `requested`, or None: not this one."""
        if not self.models or requested in self.models:
            return requested
        return self.model


def check_served(provider: Provider, model: str) -> None:
    """Refuse a model no configured upstream serves (an `InvalidRequest` naming `model`), before
    anything of the request is stored; a single upstream serves any model."""
    if isinstance(provider, FallbackProvider):
        provider.routes(model)


class FallbackProvider:
    """The configured upstreams, tried in order."""

    name = "upstreams"

    def __init__(self, upstreams: Sequence[Upstream], *, metrics: Metrics, default_model: str) -> None:
        self.upstreams = list(upstreams)
        self.default_model = default_model
        self._metrics = metrics
        for upstream in self.upstreams:
            metrics.upstream_circuit_open.labels(upstream.name).set(0)

    def stateless(self) -> FallbackProvider | None:
        """The same upstreams (and circuits) without those that keep their own conversations:
        for requests that must not start one there (summaries). None if none is left."""
        kept = [upstream for upstream in self.upstreams if not upstream.keeps_conversations]
        if len(kept) == len(self.upstreams):
            return self
        return FallbackProvider(kept, metrics=self._metrics, default_model=self.default_model) if kept else None

    # -- answers ---------------------------------------------------------------

    def stream_reply(self, request: ReplyRequest) -> Iterator[ReplyChunk]:
        """The answer of the first upstream that starts one; its first chunk names the upstream
        and the model asked (when the upstream names none)."""
        streamed = self._streamed(
            request.model, lambda upstream, model: upstream.provider.stream_reply(replace(request, model=model))
        )
        try:
            first = True
            for upstream, model, chunk in streamed:
                if first:
                    chunk = replace(chunk, upstream=upstream.name, model=chunk.model or model)
                    first = False
                yield chunk
        finally:
            streamed.close()

    def complete(self, request: CompletionRequest) -> CompletionEvent:
        """The completion of the first upstream that answers, naming it."""
        return self._called(
            request.body["model"],
            lambda upstream, model: replace(
                upstream.provider.complete(replace(request, body={**request.body, "model": model})),
                upstream=upstream.name,
            ),
        )

    def stream_completion(self, request: CompletionRequest) -> Iterator[CompletionEvent]:
        """The chunks of the first upstream that starts answering; the first names it."""
        streamed = self._streamed(
            request.body["model"],
            lambda upstream, model: upstream.provider.stream_completion(
                replace(request, body={**request.body, "model": model})
            ),
        )
        try:
            first = True
            for upstream, _model, event in streamed:
                if first:
                    event = replace(event, upstream=upstream.name)
                    first = False
                yield event
        finally:
            streamed.close()

    def generate_title(self, request: ReplyRequest, answer: str) -> str | None:
        return self._called(
            request.model,
            lambda upstream, model: upstream.provider.generate_title(replace(request, model=model), answer),
        )

    def list_models(self) -> list[dict[str, Any]]:
        """Every upstream's models that it serves (all of them when it lists none), in upstream
        order, each once; upstreams that fail are left out, unless all do."""
        models: dict[str, dict[str, Any]] = {}
        failure: ServiceError | None = None
        answered = False
        for upstream in self.upstreams:
            admitted = self._admit(upstream)
            if admitted is None:
                continue
            try:
                listed = upstream.provider.list_models()
            except ServiceError as error:
                self._failed(upstream, admitted, error)
                failure = error
                continue
            self._succeeded(upstream, admitted)
            answered = True
            for model in listed:
                if not upstream.models or model["id"] in upstream.models:
                    models.setdefault(model["id"], model)
        if not answered:
            raise failure or self._all_open([upstream.breaker for upstream in self.upstreams], "any model")
        return list(models.values())

    # -- conversations kept upstream (ChatGPT) ------------------------------------

    def rename(self, upstream_conversation_id: str, title: str) -> None:
        for upstream in self._keeping():
            upstream.provider.rename(upstream_conversation_id, title)

    def delete(self, upstream_conversation_id: str) -> None:
        for upstream in self._keeping():
            upstream.provider.delete(upstream_conversation_id)

    def clear(self) -> None:
        for upstream in self._keeping():
            upstream.provider.clear()

    def _keeping(self) -> list[Upstream]:
        return [upstream for upstream in self.upstreams if upstream.keeps_conversations]

    # -- trying in order -------------------------------------------------------------

    def routes(self, model: str) -> list[tuple[Upstream, str]]:
        """The upstreams serving `model`, in order, each with the model it is asked for; an
        `InvalidRequest` naming `model` when none does."""
        routes = [(upstream, asked) for upstream in self.upstreams if (asked := upstream.asked_model(model))]
        if not routes:
            raise InvalidRequest(f"No upstream serves the model '{model}' (see UPSTREAMS).", param="model")
        return routes

    def context_models(self, model: str) -> list[str]:
        """The models a request for `model` may be answered by, among the upstreams that are sent
        its context (a ChatGPT account keeps its own): whose windows bound that context."""
        return list(dict.fromkeys(asked for upstream, asked in self.routes(model) if not upstream.keeps_conversations))

    def _streamed(
        self, model: str, start: Callable[[Upstream, str], Iterator[T]]
    ) -> Iterator[tuple[Upstream, str, T]]:
        """The items of the first upstream that yields one, with that upstream and its model."""
        routes = self.routes(model)
        failure: ServiceError | None = None
        for upstream, asked in routes:
            admitted = self._admit(upstream)
            if admitted is None:
                continue
            answered = False
            items = start(upstream, asked)
            try:
                for item in items:
                    if not answered:
                        answered = True
                        self._succeeded(upstream, admitted)
                        admitted = Pass.CLOSED  # a failure from now on counts like any other
                    yield upstream, asked, item
            except ServiceError as error:
                if not self._failed(upstream, admitted, error) or answered:
                    raise
                self._fell_back(upstream, error)
                failure = error
                continue
            except BaseException:
                if not answered:
                    upstream.breaker.abandoned(admitted)
                raise
            finally:
                items.close()
            if not answered:
                self._succeeded(upstream, admitted)
            return
        raise failure or self._all_open([upstream.breaker for upstream, _ in routes], f"'{model}'")

    def _called(self, model: str, call: Callable[[Upstream, str], T]) -> T:
        """The result of the first upstream that answers the call."""
        routes = self.routes(model)
        failure: ServiceError | None = None
        for upstream, asked in routes:
            admitted = self._admit(upstream)
            if admitted is None:
                continue
            try:
                result = call(upstream, asked)
            except ServiceError as error:
                if not self._failed(upstream, admitted, error):
                    raise
                self._fell_back(upstream, error)
                failure = error
                continue
            except BaseException:
                upstream.breaker.abandoned(admitted)
                raise
            self._succeeded(upstream, admitted)
            return result
        raise failure or self._all_open([upstream.breaker for upstream, _ in routes], f"'{model}'")

    # -- bookkeeping -------------------------------------------------------------------

    def _admit(self, upstream: Upstream) -> Pass | None:
        admitted = upstream.breaker.admit()
        if admitted is None:
            self._metrics.upstream_fallbacks.labels(upstream.name, "circuit_open").inc()
            return None
        if admitted is Pass.PROBE:
            log.info("upstream %s: cool-down over, a probe request goes through", upstream.name)
        self._metrics.upstream_requests.labels(upstream.name).inc()
        return admitted

    def _succeeded(self, upstream: Upstream, admitted: Pass) -> None:
        was_open = upstream.breaker.is_open
        upstream.breaker.succeeded(admitted)
        if was_open:
            log.warning("upstream %s answers again: its circuit is closed", upstream.name)
            self._metrics.upstream_circuit_open.labels(upstream.name).set(0)

    def _failed(self, upstream: Upstream, admitted: Pass, error: ServiceError) -> bool:
        """Count the failure; True when it is the upstream's (the next one may answer), False
        when the upstream refused the request itself (and so is up)."""
        self._metrics.upstream_failures.labels(upstream.name, error.code).inc()
        if not passes_over(error):
            self._succeeded(upstream, admitted)
            return False
        was_open = upstream.breaker.is_open
        upstream.breaker.failed(admitted)
        if upstream.breaker.is_open and (admitted is Pass.PROBE or not was_open):
            log.warning(
                "upstream %s keeps failing (%s): skipped for %g s, then probed",
                upstream.name, error.message, upstream.breaker.cooldown,
            )
            self._metrics.upstream_circuit_open.labels(upstream.name).set(1)
        return True

    def _fell_back(self, upstream: Upstream, error: ServiceError) -> None:
        log.warning("upstream %s failed before answering (%s); the next one is asked", upstream.name, error.message)
        self._metrics.upstream_fallbacks.labels(upstream.name, "failed").inc()

    @staticmethod
    def _all_open(breakers: Sequence[CircuitBreaker], what: str) -> UpstreamError:
        wait = max(1, math.ceil(min(breaker.retry_in() for breaker in breakers)))
        return UpstreamError(
            f"Every upstream serving {what} kept failing and is skipped for now; retry in {wait} s.",
            retry_after=wait,
        )
