"""A Chat Completions stream as server-sent events: the upstream's chunks as they come, keep-alive
comments while it is silent, `data: [DONE]` at the end, or OpenAI's in-stream error (also when
the service stops: the stream is one of the `live_streams` a shutdown ends)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask import Response, current_app
from prometheus_client import Gauge

from api.context import services
from api.errors import as_service_error, openai_error_body, status_of
from api.sse import DONE, END, HEADERS, KEEP_ALIVE, LiveStreams, Pump, live_streams

Chunk = dict[str, Any]


class ChunkPump(Pump[Chunk]):
    """A completion's chunks, read on their own thread (`api.sse.Pump`)."""

    def __init__(self, chunks: Iterator[Chunk]) -> None:
        super().__init__(chunks, "chunk-pump")


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
