"""Serving on several cores: ``leadmarket serve --workers N``.

Each worker is a whole server process with its own listening socket on the same port
(``SO_REUSEPORT``), so the kernel spreads new connections evenly over the workers. (With one
shared socket, as uvicorn's own ``--workers`` does, whichever worker wakes first takes the
connections; a few keep-alive clients can end up all on one core.) The parent only starts the
workers, passes a stop signal on, and exits when they have."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from leadmarket.kit import gcpolicy


class _CoalescingTransport:
    """A connection's transport that sends what is written to it in one step of the event loop
    as one write: uvicorn writes a response's status line and headers, then its body, and each
    write is a system call (and, on loopback, a packet the client wakes up for). The writes are
    kept in order and sent by a callback scheduled at the first one; closing sends them first.
    Everything else is the real transport's."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        pending = self._pending
        self._pending = None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with one write per response (:class:`_CoalescingTransport`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing: Any = _CoalescingTransport(transport, self.loop)
        super().connection_made(coalescing)


def server_options(*, proxy_headers: bool) -> dict[str, Any]:
    """How every ``leadmarket serve`` process runs uvicorn: httptools with one write per
    response; uvicorn's access log off (ours, ``leadmarket.access``, logs route templates, and
    uvicorn's built each line's arguments before asking whether its disabled logger wanted
    them); no ``server: uvicorn`` header (it tells strangers what to attack, and every response
    paid for it). The ``date`` header stays (RFC 9110 wants it)."""
    return {
        "http": CoalescingHttpToolsProtocol,
        "loop": "uvloop",
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "proxy_headers": proxy_headers,
    }


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _worker(build_app: Callable[[], FastAPI], host: str, port: int, proxy_headers: bool) -> None:
    import uvicorn

    app = build_app()
    gcpolicy.enable()
    config = uvicorn.Config(app, **server_options(proxy_headers=proxy_headers))
    uvicorn.Server(config).run(sockets=[listening_socket(host, port)])


def serve_workers(
    build_app: Callable[[], FastAPI],
    *,
    host: str,
    port: int,
    workers: int,
    proxy_headers: bool,
) -> None:
    """Run ``workers`` server processes on ``host:port`` until SIGINT or SIGTERM.
    ``build_app`` must be picklable (a module-level function): workers are spawned afresh."""
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker,
            args=(build_app, host, port, proxy_headers),
            name=f"leadmarket-worker-{n}",
        )
        for n in range(workers)
    ]
    for process in processes:
        process.start()

    def stop(signum: int, _frame: FrameType | None) -> None:
        # Each worker shuts down gracefully on the signal the parent got (uvicorn finishes the
        # requests in flight).
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    failed = 0
    for process in processes:
        process.join()
        failed += process.exitcode not in (0, None, -signal.SIGTERM, -signal.SIGINT)
    if failed:
        sys.exit(1)
