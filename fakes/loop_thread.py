"""An aiohttp server on its own event loop in a daemon thread: the base of the fake upstreams."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
import threading
from collections.abc import Callable
from typing import Self, TypeVar

from aiohttp import web

T = TypeVar("T")


class LoopThreadServer(ABC):
    """Subclasses build their app in `_serve()` (setting `_runner`); tests drive them from their thread."""

    thread_name = "fake-server"

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @abstractmethod
    async def _serve(self) -> None:
        """Build the app, start listening, and set `_runner`."""

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _on_loop(self, work: Callable[[web.Server], T], default: T) -> T:
        """`work(server)` run on the loop's thread, where aiohttp mutates its state."""
        loop, runner = self._loop, self._runner
        if loop is None or runner is None or runner.server is None:
            return default
        server = runner.server

        async def run() -> T:
            return work(server)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=5)

    @property
    def open_connections(self) -> int:
        """TCP connections currently open to the server, idle keep-alive ones included."""
        return self._on_loop(lambda server: len(server.connections), 0)

    def start(self) -> Self:
        """Start serving; returns once the socket is listening (raises if it could not bind)."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._loop = asyncio.new_event_loop()
        started = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        self._thread = threading.Thread(target=self._loop.run_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        try:
            started.result(timeout=10)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop serving: in-flight handlers are cancelled, connections closed. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
