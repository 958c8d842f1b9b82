"""Serving on several cores: ``leadmarket serve --workers N``.

Each worker is a whole server process with its own listening socket on the same port
(``SO_REUSEPORT``), so the kernel spreads new connections evenly over the workers. (With one
shared socket, as uvicorn's own ``--workers`` does, whichever worker wakes first takes the
connections; a few keep-alive clients can end up all on one core.) The parent only starts the
workers, passes a stop signal on, and exits when they have."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType

from fastapi import FastAPI


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

    config = uvicorn.Config(
        build_app(), log_config=None, proxy_headers=proxy_headers, access_log=False
    )
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
