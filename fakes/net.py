"""Socket helpers shared by the fakes, the benchmark and the tests (the service keeps its own)."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import struct


def free_port() -> int:
    """A loopback port that nothing listens on right now, for a child process to bind."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_fd_limit() -> int:
    """Lift the soft limit on open files to the hard limit; children inherit it. Returns it.

    Thousands of open streams need thousands of descriptors; the usual soft limit is 1024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def reset(transport: asyncio.WriteTransport) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a peer that died does to a connection in use."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
