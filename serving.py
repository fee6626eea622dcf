"""Serving the built app: gunicorn with gevent workers, or waitress on Windows."""

from __future__ import annotations

import gc
import logging
import signal
import sys
from types import FrameType
from typing import Any

from flask import Flask

from api.context import GptApi
from api.sse import live_streams
from config import Settings
from models.db import Database
from services import tokens
from services.errors import DatabaseUnavailable
from services.metrics import mark_process_dead

log = logging.getLogger("gpt_api")

YOUNG_GENERATION_THRESHOLD = 10_000
"""Objects the youngest generation holds before the garbage collector passes over it (Python:
700). A 1,000-message history builds some 10,000 containers that all live until its answer is
written: at 700, a dozen passes ran in the middle of each and pushed the whole tree into the
older generations, whose passes cost a full collection every few requests (1.2 ms of CPU per
request in all); at 10,000 a request's objects are mostly gone before any pass. CPU per
request, measured side by side in gunicorn workers: a history 9.6 -> 8.0 ms, a non-streamed
ask 3.6 -> 3.1 ms, a list page and /healthz unchanged."""


def drain(app: GptApi, settle: float = 0.0) -> None:
    """End the streams this process still has open with an `event: error` (each waiting up to
    `settle` seconds for its answer to be stored), and mark the answers it is still writing
    interrupted, with the text saved so far, meanwhile."""
    ended = live_streams(app).end_all(
        "The service is stopping; the answer so far is kept (marked interrupted). Ask again to go on.", settle
    )
    try:
        marked = app.services.asking.leases.interrupt_own()
    except DatabaseUnavailable:
        marked = 0  # their leases run out, and another instance (or the next start) marks them
    if ended or marked:
        log.warning("stopping: %d stream(s) ended, %d answer(s) marked interrupted", ended, marked)


def serve(app: GptApi, settings: Settings, database: Database) -> None:
    """Serve `app` on HOST:PORT until stopped; `database` is the one `app` uses."""
    log.info("serving on http://%s:%s", settings.host, settings.port)
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, *gc.get_threshold()[1:])
    # The tokenizer (every ask counts tokens for its context budget) is loaded once here,
    # before gunicorn forks, rather than by each worker's first ask (about 0.25 s).
    tokens.load()
    if sys.platform == "win32":
        serve_with_waitress(app, settings)
    else:
        raise_open_files_limit(settings)
        serve_with_gunicorn(app, settings, database)


def raise_open_files_limit(settings: Settings) -> None:
    """Lift the soft limit on open files to the hard one; workers inherit it.

    Each open stream holds two sockets (the client's and the upstream's), and the usual
    soft limit of 1024 would stop a worker at about 500 streams.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        soft = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    needed = 2 * settings.worker_connections + settings.db_pool_size + settings.db_max_overflow + 64
    log.info(
        "%d workers x %d connections; database pool %d+%d per worker; open files %s per worker",
        settings.workers,
        settings.worker_connections,
        settings.db_pool_size,
        settings.db_max_overflow,
        "unlimited" if soft == resource.RLIM_INFINITY else soft,
    )
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "open files limit %d < %d that WORKER_CONNECTIONS=%d needs; raise `ulimit -n`",
            soft,
            needed,
            settings.worker_connections,
        )


def serve_with_gunicorn(app: GptApi, settings: Settings, database: Database) -> None:
    """gunicorn with gevent workers: thousands of open streams per process, each a
    greenlet rather than a thread (bench/README.md has the figures beside gthread).

    The app is built once, before the workers fork (so migrations run once); each
    worker then drops the database connections it inherited.
    """
    import gevent
    from gunicorn.app.base import BaseApplication
    from gunicorn.glogging import Logger

    class ThroughOurLogging(Logger):  # type: ignore[misc]
        """gunicorn's own lines (starting, workers booting and exiting, signals) go through
        the process's logging like every other logger's: JSON with `LOG_FORMAT=json`."""

        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for handler in list(self.error_log.handlers):
                self.error_log.removeHandler(handler)
            self.error_log.propagate = True

    def post_fork(_server: object, _worker: object) -> None:
        database.engine.dispose(close=False)

    def post_worker_init(worker: Any) -> None:
        app.services.start_background()
        stop = worker.handle_exit

        def handle_sigterm(sig: int, frame: FrameType | None) -> None:
            """Stop as gunicorn does; streams still open when the graceful timeout nears its
            end are then ended cleanly rather than cut off when it runs out. (This runs in
            gevent's loop, which must not block: the drain is a greenlet of its own.)"""
            stop(sig, frame)
            margin = min(5.0, settings.graceful_timeout / 5)
            gevent.spawn_later(settings.graceful_timeout - margin, drain, app, margin / 2)

        signal.signal(signal.SIGTERM, handle_sigterm)

    def post_request(_worker: object, _request: object, _environ: object, _response: object) -> None:
        # A keep-alive client whose next request is already waiting would be served again
        # without the worker ever yielding, and the other connections would starve.
        gevent.sleep(0)

    options = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "worker_class": "gevent",
        "worker_connections": settings.worker_connections,
        "graceful_timeout": settings.graceful_timeout,
        "keepalive": 5,
        "post_fork": post_fork,
        "post_worker_init": post_worker_init,
        "worker_int": lambda _worker: drain(app),  # SIGINT, SIGQUIT: a quick stop, drained at once
        "post_request": post_request,
        "child_exit": lambda _server, worker: mark_process_dead(worker.pid),
        "loglevel": settings.log_level.lower(),
        "logger_class": ThroughOurLogging,
        "accesslog": None,  # one line per request comes from the app itself
        "control_socket_disable": True,  # instances on one machine would share its path
    }

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return app

    send_whole_answers_in_one_write()
    # Everything built so far lives as long as the process: keep it out of the garbage
    # collector's full passes, which otherwise scan it again and again (a 1,000-message
    # history: 31 ms of CPU per request without this, 19 with it; p99 126 ms -> 23 ms).
    gc.freeze()
    Server().run()


def send_whole_answers_in_one_write() -> None:
    """Make gunicorn send an answer whose whole body comes in one piece (every JSON answer)
    in the same write as its headers: one `send` and one TCP segment where gunicorn makes two
    (it sets TCP_NODELAY, so each write leaves at once). Streams and files go as before.

    gunicorn's workers build each response with `gunicorn.http.wsgi.create`, which takes the
    module's `Response` class when it is called: that class is replaced by a subclass. On
    the 2-core machine the service's CPU per ask went down by 0.04 to 0.08 ms (seven of nine
    interleaved pairs; bench/README.md)."""
    from gunicorn import util
    from gunicorn.http import wsgi

    class OneWriteResponse(wsgi.Response):  # type: ignore[misc, name-defined]
        def write(self, arg: bytes) -> None:
            whole = (
                not self.headers_sent
                and not self.chunked
                and not getattr(self, "_omits_body", False)  # HEAD, 204, 304 (gunicorn 27's own flag)
                and isinstance(arg, bytes)
                and len(arg) == self.response_length
            )
            if not whole:
                super().write(arg)
                return
            # The head as gunicorn's `send_headers` writes it.
            head = self.default_headers() + [f"{name}: {value}\r\n" for name, value in self.headers]
            self.headers_sent = True
            self.sent = len(arg)
            util.write(self.sock, util.to_bytestring("".join(head) + "\r\n", "latin-1") + arg)

    wsgi.Response = OneWriteResponse


def serve_with_waitress(app: GptApi, settings: Settings) -> None:
    """Windows has no fork and no gevent worker: waitress, a pure-Python threaded server.

    A thread per request in progress (an open stream holds one, and its answer another):
    waitress starts them all up front, so at most 1000.
    """
    import waitress

    threads = min(settings.worker_connections, 1000)
    app.services.start_background()
    waitress.serve(app, host=settings.host, port=settings.port, threads=threads)
