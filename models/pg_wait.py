"""A limit on how long psycopg2 waits for PostgreSQL, which libpq itself does not have.

psycopg2 waits on its socket for as long as it takes. A server that keeps the connection
open but stops answering (hung, or behind a proxy whose backend died) then holds the
request and its pooled connection forever, and once any wait callback is installed
(psycogreen does, under gevent) libpq ignores even `connect_timeout`. This wait callback
gives up after `timeout` seconds without progress and breaks the connection, so the
pool replaces it and the request ends in a 503. In a process that gevent has patched it
waits as gevent's own sockets do (`gevent.socket.wait_read`: one watcher, and the statement's
greenlet resumed straight from the event loop); elsewhere (threads, tests, Windows) on a
selector. (gevent's patched selector made each wait an `Event` resumed through a callback
of the loop: about 5 µs of CPU more per statement alone, and more under load, bench/README.md.)
"""

from __future__ import annotations

import os
import selectors
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import psycopg2
from psycopg2 import extensions

try:
    from gevent import monkey
    from gevent.socket import wait_read, wait_write
except ImportError:  # Windows: no gevent
    monkey = None

_unlimited: ContextVar[bool] = ContextVar("pg_wait_unlimited", default=False)


def timed_connection(timeout: float) -> type[extensions.connection]:
    """A connection class (psycopg2's `connection_factory`) whose waits end after `timeout` s.

    Installs the wait callback, for the whole process: other connections wait as before.
    """
    extensions.set_wait_callback(_wait)
    return type("TimedConnection", (extensions.connection,), {"wait_limit": timeout})


@contextmanager
def unlimited() -> Iterator[None]:
    """No limit in this block, for work that may rightly be silent long (migrations)."""
    token = _unlimited.set(True)
    try:
        yield
    finally:
        _unlimited.reset(token)


class _NoProgress(Exception):
    """A gevent wait that timed out."""


def _wait(connection: extensions.connection) -> None:
    timeout = None if _unlimited.get() else getattr(connection, "wait_limit", None)
    if monkey is not None and monkey.is_module_patched("select"):
        _wait_in_gevent(connection, timeout)
        return
    with selectors.DefaultSelector() as selector:
        while (state := _state(connection)) != extensions.POLL_OK:
            events = selectors.EVENT_READ if state == extensions.POLL_READ else selectors.EVENT_WRITE
            selector.register(connection.fileno(), events)
            ready = selector.select(timeout)
            selector.unregister(connection.fileno())
            if not ready:
                _give_up(connection, timeout)


def _wait_in_gevent(connection: extensions.connection, timeout: float | None) -> None:
    while (state := _state(connection)) != extensions.POLL_OK:
        wait = wait_read if state == extensions.POLL_READ else wait_write
        try:
            wait(connection.fileno(), timeout, _NoProgress)
        except _NoProgress:
            _give_up(connection, timeout)


def _state(connection: extensions.connection) -> int:
    state = connection.poll()
    if state not in (extensions.POLL_OK, extensions.POLL_READ, extensions.POLL_WRITE):
        raise psycopg2.OperationalError(f"unexpected state from poll(): {state}")
    return state  # type: ignore[no-any-return]


def _give_up(connection: extensions.connection, timeout: float | None) -> None:
    """Shut the socket down under libpq, which then fails the connection as a lost one.

    (`connection.close()` would wait for the statement in progress: forever.)"""
    with socket.socket(fileno=os.dup(connection.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)
    message = f"could not receive data from server: no answer in {timeout:g} s"
    try:
        connection.poll()  # reads the end of the stream: raises, and marks the connection closed
    except psycopg2.Error as error:
        raise psycopg2.OperationalError(message) from error
    raise psycopg2.OperationalError(message)
