"""Server-sent events for streamed answers, with keep-alive comments during silences."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from flask import Flask, Response, current_app
from prometheus_client import Gauge

from api.errors import as_service_error, error_body
from api.context import services
from api.schemas import answer_payload
from services.asking import AnswerEvent
from services.errors import ServiceError, ServiceStopping

KEEP_ALIVE = ": keep-alive\n\n"
DONE = "data: [DONE]\n\n"
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each event on at once
}


class End:
    """What a pump hands over after the last item."""


END = End()

T = TypeVar("T")


class Pump(Generic[T]):
    """Reads the items (an answer's events, a completion's chunks) on its own thread, so the
    response can speak while the upstream is silent.

    Closing the pump asks the reader to stop at the next item: it then closes the items,
    which cancels the upstream call and stores the answer so far.
    """

    def __init__(self, items: Iterator[T], name: str) -> None:
        self._items = items
        self._queue: queue.Queue[T | BaseException | End] = queue.Queue()
        self._stopped = threading.Event()
        self._settle = 0.0
        self._reader = threading.Thread(target=self._run, name=name, daemon=True)
        self._reader.start()

    def _seen(self, item: T) -> None:
        """Called on the reader's thread with each item, before it is handed over."""

    def _run(self) -> None:
        try:
            for item in self._items:
                self._seen(item)
                self._queue.put(item)
                if self._stopped.is_set():
                    break
        except BaseException as error:  # handed to the response thread
            self._queue.put(error)
        else:
            self._queue.put(END)
        finally:
            self._items.close()  # type: ignore[attr-defined]

    def get(self, timeout: float) -> T | BaseException | End | None:
        """The next item, an error, or `END`; None after `timeout` seconds of silence."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Ask the reader to stop; after an interruption, wait for it (up to the time it was
        given) to store the answer. (The garbage collector may close an abandoned response
        on any thread, the reader's own included, which must not wait for itself.)"""
        self._stopped.set()
        if threading.current_thread() is not self._reader:
            self._reader.join(self._settle)

    def interrupt(self, error: ServiceError, settle: float) -> None:
        """End the stream now with `error`; the reader stops at its next item and stores the
        answer as interrupted, which the response waits for up to `settle` seconds."""
        self._settle = settle
        self._queue.put(error)
        self._stopped.set()


class EventPump(Pump[AnswerEvent]):
    """An answer's events; an interruption names the answer's conversation."""

    def __init__(self, events: Iterator[AnswerEvent]) -> None:
        self._conversation_id: str | None = None
        super().__init__(events, "answer-pump")

    def _seen(self, item: AnswerEvent) -> None:
        self._conversation_id = str(item.answer.conversation_id)

    def interrupt(self, error: ServiceError, settle: float) -> None:
        if self._conversation_id is not None:
            error.details.setdefault("conversation_id", self._conversation_id)
        super().interrupt(error, settle)


class Interruptible(Protocol):
    """A stream's reader that a shutdown can end (a `Pump`)."""

    def interrupt(self, error: ServiceError, settle: float) -> None: ...


class LiveStreams:
    """The answers this process is streaming, so that a shutdown ends each with an error event
    (its answer stored as interrupted) instead of cutting it off."""

    def __init__(self) -> None:
        self._pumps: set[Interruptible] = set()
        self._lock = threading.Lock()

    def add(self, pump: Interruptible) -> None:
        with self._lock:
            self._pumps.add(pump)

    def discard(self, pump: Interruptible) -> None:
        with self._lock:
            self._pumps.discard(pump)

    def end_all(self, message: str, settle: float = 0.0) -> int:
        """End every open stream with a `service_stopping` error, each waiting up to `settle`
        seconds for its answer to be stored; how many there were."""
        with self._lock:
            pumps = list(self._pumps)
        for pump in pumps:
            pump.interrupt(ServiceStopping(message), settle)
        return len(pumps)


def live_streams(app: Flask) -> LiveStreams:
    return app.extensions.setdefault("gpt_api.live_streams", LiveStreams())  # type: ignore[no-any-return]


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def event_text(event: AnswerEvent) -> str:
    return _data({"response": answer_payload(event.answer), "delta": event.delta})


def error_text(error: BaseException) -> str:
    service_error = as_service_error(error) if isinstance(error, Exception) else None
    if service_error is None:
        return "event: error\n" + _data(error_body("internal_error", "Something went wrong on our side."))
    return "event: error\n" + _data(
        error_body(service_error.code, service_error.message, **service_error.details)
    )


class Writer(Protocol):
    """How a streamed answer is written as server-sent events."""

    def event(self, event: AnswerEvent) -> str: ...

    def error(self, error: BaseException) -> str:
        """The answer broke off after the stream began."""
        ...

    def end(self) -> str:
        """After the last event, or after the error."""
        ...


class AskWriter:
    """`ask`'s stream: `data: <AnswerEvent>` per event, an `event: error` if it breaks off, `data: [DONE]`."""

    def event(self, event: AnswerEvent) -> str:
        return event_text(event)

    def error(self, error: BaseException) -> str:
        return error_text(error)

    def end(self) -> str:
        return DONE


def stream_response(
    events: Iterator[AnswerEvent], keep_alive: float, timing: Callable[[float], str], writer: Writer | None = None
) -> Response:
    """Wait briefly for the first event, so an early failure still gets its HTTP status.

    `timing(upstream_seconds)` makes the Server-Timing header, measured to the first event;
    `writer` says how events are written (`ask`'s way by default).
    """
    pump = EventPump(events)
    streams = live_streams(current_app)
    streams.add(pump)
    first = pump.get(keep_alive)
    if isinstance(first, BaseException):
        streams.discard(pump)
        pump.close()
        raise first
    if isinstance(first, End):  # an answer always ends with a final event; defensive
        first = None
    upstream = first.answer.upstream_seconds if first is not None else keep_alive
    open_streams = services().metrics.open_streams
    return Response(
        _lines(pump, first, keep_alive, open_streams, writer or AskWriter(), streams),
        mimetype="text/event-stream",
        headers={**HEADERS, "Server-Timing": timing(upstream)},
    )


def _lines(
    pump: EventPump,
    first: AnswerEvent | None,
    keep_alive: float,
    open_streams: Gauge,
    writer: Writer,
    streams: LiveStreams,
) -> Iterator[str]:
    """The response body: events as they come, an error event if the answer breaks off."""
    open_streams.inc()
    try:
        yield writer.event(first) if first is not None else KEEP_ALIVE
        while True:
            item = pump.get(keep_alive)
            if item is None:
                yield KEEP_ALIVE
            elif isinstance(item, End):
                break
            elif isinstance(item, BaseException):
                yield writer.error(item)
                break
            else:
                yield writer.event(item)
        yield writer.end()
    finally:
        open_streams.dec()
        streams.discard(pump)
        pump.close()
