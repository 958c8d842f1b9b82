"""The load generator: Debian's ``wrk`` (C, epoll, HTTP/1.1 keep-alive) driven by intake.lua.
Its CPU time is taken from the kernel's accounting of the reaped child (``os.wait4``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("intake.lua")


@dataclass(frozen=True)
class WrkResult:
    started_at: float  # time.time() when wrk was started
    finished_at: float  # when the last answer was in (intake) or the duration ended (get)
    cpu_seconds: float  # user + system time of the wrk process
    figures: dict[str, Any]  # the BENCH_JSON line of intake.lua

    @property
    def wall_seconds(self) -> float:
        return self.finished_at - self.started_at


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    return found


def run_wrk(
    command: list[str], *, markers: list[Path] | None, max_seconds: float, log: Path
) -> WrkResult:
    started = time.time()
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
        finished: float | None = None
        deadline = time.monotonic() + max_seconds
        if markers is not None:
            # wrk only ends at its -d duration or on SIGINT; end it once every thread is done.
            while process.poll() is None and time.monotonic() < deadline:
                if all(marker.exists() for marker in markers):
                    finished = time.time()
                    process.send_signal(signal.SIGINT)
                    break
                time.sleep(0.02)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    finished = finished or time.time()
    text = log.read_text()
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no figures:\n{text[-3000:]}")
    return WrkResult(
        started_at=started,
        finished_at=finished,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        figures=json.loads(line.removeprefix("BENCH_JSON ")),
    )


def post_leads(
    base_url: str,
    *,
    shards: list[Path],
    shard_sizes: list[int],
    api_key: str,
    connections: int,
    workdir: Path,
    name: str,
    max_seconds: float,
    rate: float = 0,
) -> WrkResult:
    """Post every body of ``shards`` (one wrk thread per shard) and return once all are answered;
    at ``rate`` leads per second in all, on a fixed schedule, if it is not 0."""
    threads = len(shards)
    marker_prefix = workdir / f"{name}-done-"
    markers = [Path(f"{marker_prefix}{i}") for i in range(threads)]
    for marker in markers:
        marker.unlink(missing_ok=True)
    shard_prefix = str(shards[0]).removesuffix("0.jsonl")
    command = [
        wrk_binary(),
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={int(max_seconds)}s",
        "--timeout=30s",
        f"--script={SCRIPT}",
        base_url,
        "--",
        "intake",
        shard_prefix,
        api_key,
        str(marker_prefix),
        str(rate / threads),
        *map(str, shard_sizes),
    ]
    return run_wrk(command, markers=markers, max_seconds=max_seconds, log=workdir / f"{name}.log")


def get_path(
    url: str, *, threads: int, connections: int, seconds: int, workdir: Path, name: str
) -> WrkResult:
    command = [
        wrk_binary(),
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={seconds}s",
        "--timeout=30s",
        f"--script={SCRIPT}",
        url,
        "--",
        "get",
    ]
    return run_wrk(command, markers=None, max_seconds=seconds + 30, log=workdir / f"{name}.log")
