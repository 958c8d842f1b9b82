"""The real server in its own process (uvicorn, N workers), and what /proc tells about it and
about the other processes on the machine: resident memory and CPU time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; everything after the last ")" is fixed.
    return text[text.rindex(")") + 2 :].split()


def children_of(pid: int) -> list[int]:
    """Every descendant of ``pid`` (uvicorn's workers, multiprocessing's helpers)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents[int(entry)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


_POSTGRES_SHARED = ("checkpointer", "background writer", "walwriter", "launcher")


def postgres_pids(database: str) -> list[int]:
    """The PostgreSQL processes working for ``database``: its backends and autovacuum workers,
    plus the postmaster and the shared helpers (WAL writer, checkpointer), but not the backends
    of other databases, which other people's jobs on this machine may be using."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue
        title = _cmdline(int(entry))
        own = f" {database} " in title or title.endswith(f" {database}")
        shared = not title.startswith("postgres:") or any(n in title for n in _POSTGRES_SHARED)
        if own or shared:
            pids.append(int(entry))
    return pids


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0, 0.0
    # utime and stime are fields 14 and 15 of /proc/<pid>/stat; fields[] starts at field 3.
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds over all cores since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


@dataclass
class CpuSnapshot:
    at: float
    per_pid: dict[int, tuple[float, float]]  # (user, system)
    machine_busy: float
    machine_total: float


def cpu_snapshot(pids: Iterable[int]) -> CpuSnapshot:
    busy, total = machine_cpu_seconds()
    return CpuSnapshot(
        at=time.monotonic(),
        per_pid={pid: cpu_times(pid) for pid in pids},
        machine_busy=busy,
        machine_total=total,
    )


def cpu_used(
    before: CpuSnapshot, after: CpuSnapshot, pids: Iterable[int], *, kind: int | None = None
) -> float:
    """CPU seconds the given processes used between two snapshots (a process born in between
    counts from zero): user + system, or only user (``kind=0``) or system (``kind=1``)."""
    kinds = (0, 1) if kind is None else (kind,)
    return sum(
        after.per_pid.get(pid, (0.0, 0.0))[k] - before.per_pid.get(pid, (0.0, 0.0))[k]
        for pid in pids
        for k in kinds
    )


@dataclass
class Server:
    """``leadmarket serve --workers N`` on a free port: N processes, each with its own socket
    (SO_REUSEPORT), so the kernel spreads wrk's connections evenly over them."""

    environment: dict[str, str]
    workers: int
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_path: Path) -> None:
        self.log_path = log_path
        command = [
            sys.executable,
            "-m",
            "leadmarket",
            "serve",
            "--no-migrate",  # the scratch database is migrated before the server starts
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                command,
                cwd=REPO_ROOT,
                env={**os.environ, **self.environment},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 60.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        answered = 0
        while answered < 20:
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log_path.read_text() if self.log_path else ""
                raise RuntimeError(f"the server did not start:\n{log[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    answered += 1
                    continue
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        # With several workers, wait until each has been started by the supervisor.
        while self.workers > 1 and len(self.worker_pids()) < self.workers:
            if time.monotonic() > deadline:
                raise RuntimeError("the server's workers did not all start")
            time.sleep(0.1)

    def pids(self) -> list[int]:
        """The supervisor and every worker."""
        assert self.process is not None
        return [self.process.pid, *children_of(self.process.pid)]

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the workers, or the single process."""
        assert self.process is not None
        if self.workers == 1:
            return [self.process.pid]
        # `leadmarket serve` starts its workers with multiprocessing's spawn.
        return [pid for pid in children_of(self.process.pid) if "spawn_main" in _cmdline(pid)]

    def rss_kib(self) -> int:
        return sum(rss_kib(pid) for pid in self.pids())

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass(frozen=True)
class RssSample:
    at: float  # time.time()
    total_kib: int
    per_pid_kib: dict[int, int]


class RssSampler:
    """Samples the server's resident memory every ``interval`` seconds in a thread."""

    def __init__(self, server: Server, interval: float = 1.0) -> None:
        self.server = server
        self.interval = interval
        self.samples: list[RssSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        per_pid = {pid: rss_kib(pid) for pid in self.server.pids()}
        self.samples.append(RssSample(time.time(), sum(per_pid.values()), per_pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
