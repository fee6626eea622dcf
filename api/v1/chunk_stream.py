"""A Chat Completions stream as server-sent events: the upstream's chunks as they come, keep-alive
comments while it is silent, `data: [DONE]` at the end, or OpenAI's in-stream error (also when
the service stops: the stream is one of the `live_streams` a shutdown ends)."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from typing import Any

from flask import Response, current_app
from prometheus_client import Gauge

from api.context import services
from api.errors import as_service_error, openai_error_body, status_of
from api.sse import DONE, HEADERS, KEEP_ALIVE, LiveStreams, live_streams
from services.errors import ServiceError

Chunk = dict[str, Any]
END = object()
"""What the reader hands over after the last chunk."""


class ChunkPump:
    """Reads the chunks on its own thread, so the response can speak while the upstream is silent.

    Closing the pump asks the reader to stop at the next chunk: it then closes the chunks,
    which cancels the upstream call and stores the answer so far.
    """

    def __init__(self, chunks: Iterator[Chunk]) -> None:
        self._chunks = chunks
        self._queue: queue.Queue[Chunk | BaseException | object] = queue.Queue()
        self._stopped = threading.Event()
        self._settle = 0.0
        self._reader = threading.Thread(target=self._run, name="chunk-pump", daemon=True)
        self._reader.start()

    def _run(self) -> None:
        try:
            for chunk in self._chunks:
                self._queue.put(chunk)
                if self._stopped.is_set():
                    break
        except BaseException as error:  # handed to the response thread
            self._queue.put(error)
        else:
            self._queue.put(END)
        finally:
            self._chunks.close()  # type: ignore[attr-defined]

    def get(self, timeout: float) -> Chunk | BaseException | object | None:
        """The next item (a chunk, an error, or `END`), or None after `timeout` seconds of silence."""
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
        """End the stream now with `error`; the reader stops at its next chunk and stores the
        answer as interrupted, which the response waits for up to `settle` seconds."""
        self._settle = settle
        self._queue.put(error)
        self._stopped.set()


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _error(error: BaseException) -> str:
    """A failure after the stream began, as OpenAI's SDKs read one: `data: {"error": ...}`."""
    known = as_service_error(error) if isinstance(error, Exception) else None
    if known is None:
        return _data(openai_error_body(500, "internal_error", "Something went wrong on our side."))
    return _data(openai_error_body(status_of(known), known.code, known.message, known.details.get("param")))


def chunk_stream(chunks: Iterator[Chunk], keep_alive: float) -> Response:
    """The first chunk is awaited, so a refusal still gets its HTTP status."""
    pump = ChunkPump(chunks)
    streams = live_streams(current_app)
    streams.add(pump)
    first = pump.get(keep_alive)
    if isinstance(first, BaseException):
        streams.discard(pump)
        pump.close()
        raise first
    return Response(
        _lines(pump, first, keep_alive, services().metrics.open_streams, streams),
        mimetype="text/event-stream",
        headers=HEADERS,
    )


def _lines(
    pump: ChunkPump, first: object, keep_alive: float, open_streams: Gauge, streams: LiveStreams
) -> Iterator[str]:
    """Chunks as they come, then `[DONE]`; an error event instead if the answer breaks off."""
    open_streams.inc()
    try:
        item = first
        while item is not END:
            if item is None:
                yield KEEP_ALIVE
            elif isinstance(item, BaseException):
                yield _error(item)
                return
            else:
                yield _data(item)  # type: ignore[arg-type]  # a chunk
            item = pump.get(keep_alive)
        yield DONE
    finally:
        open_streams.dec()
        streams.discard(pump)
        pump.close()
