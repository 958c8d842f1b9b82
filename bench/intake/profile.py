"""Where a single server process spends its CPU while leads pour in.

    .venv/bin/python -m bench.intake.profile --db postgres --leads 8000 --seconds 20

1. Counts the SQL statements, pool check-outs and commits of one POST /api/v1/leads (the app
   in this process over httpx's ASGI transport, SQLAlchemy events), and measures the CPU price
   of each piece of a request directly (bench.intake.components).
2. Starts the real server with one worker, loads it with wrk as bench.intake.run does, and
   samples it with ``py-spy record --gil`` (only samples where Python holds the GIL, so waits in
   epoll, socket writes and idle threads do not count), while reading the server's CPU time and
   the leads written in the same window from /proc and the database.
3. Prints the samples by component and by step of the request, scaled to the measured CPU
   milliseconds per lead. py-spy is installed with ``.venv/bin/pip install py-spy``."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs ship with asyncpg
import httpx
from sqlalchemy import event

from bench.intake.bodies import lead_bodies, write_shards
from bench.intake.client import post_leads
from bench.intake.components import component_costs
from bench.intake.run import server_environment
from bench.intake.scratch import Scratch, Seller, create_seller, scratch_database
from bench.intake.server import Server, cpu_seconds
from bench.intake.stacks import analyse, report
from leadmarket.app import create_app


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.intake.profile")
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--leads", type=int, default=8_000, help="Bodies for the loaded run.")
    parser.add_argument("--warmup-leads", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=20, help="py-spy sampling time.")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second.")
    parser.add_argument(
        "--no-sampling", action="store_true", help="Only the census and the direct costs."
    )
    parser.add_argument(
        "--src",
        type=Path,
        default=None,
        help="Serve leadmarket from this src/ folder (the sampled server only).",
    )
    parser.add_argument(
        "--raw",
        type=Path,
        default=Path(tempfile.gettempdir()) / "intake-profile.txt",
        help="Where py-spy writes the collapsed stacks.",
    )
    return parser.parse_args()


# 1. Statements per request ------------------------------------------------------------------


async def _census(scratch: Scratch, seller: Seller, bodies: list[dict[str, Any]]) -> Counter[str]:
    app = create_app(scratch.settings())
    engine = app.state.db.engine.sync_engine
    seen: Counter[str] = Counter()

    def on_execute(*args: Any) -> None:
        statement: str = args[2]
        seen["statement: " + " ".join(statement.split()[:3])[:48]] += 1

    def on_checkout(*_: Any) -> None:
        seen["pool check-out (a ping on PostgreSQL)"] += 1

    def on_commit(*_: Any) -> None:
        seen["commit"] += 1

    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine.pool, "checkout", on_checkout)
    event.listen(engine, "commit", on_commit)
    restore = _count_driver_statements(seen)
    headers = {"Authorization": f"Bearer {seller.api_key}"}
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", headers=headers
        ) as client:
            for body in bodies:
                response = await client.post("/api/v1/leads", json=body)
                assert response.status_code == 201, response.text
    finally:
        restore()
        await app.state.db.dispose()
    return seen


def _count_driver_statements(seen: Counter[str]) -> Callable[[], None]:
    """Intake sends most of its statements through asyncpg directly on PostgreSQL (the batch's
    BEGIN and locks, its look-up, its INSERTs, COMMIT: ``leads.intake_sql``), where SQLAlchemy's
    events do not see them: count every message asyncpg's ``Connection.execute``/``fetch``
    send (SQLAlchemy's own BEGIN and COMMIT included; its statements go through prepared
    statements and are counted by the events) until the returned function puts them back."""
    connection_class = asyncpg.connection.Connection
    originals = {name: getattr(connection_class, name) for name in ("execute", "fetch")}

    def counting(original: Any) -> Any:
        async def counted(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            seen["round trip (asyncpg): " + " ".join(query.split()[:3])[:40]] += 1
            return await original(self, query, *args, **kwargs)

        return counted

    for name, original in originals.items():
        setattr(connection_class, name, counting(original))

    def restore() -> None:
        for name, original in originals.items():
            setattr(connection_class, name, original)

    return restore


def statement_census(scratch: Scratch, seller: Seller, count: int = 100) -> str:
    bodies = list(lead_bodies(10_000_000, count, seller_username=seller.username))
    seen = asyncio.run(_census(scratch, seller, bodies))
    statements = sum(n for k, n in seen.items() if k.startswith("statement"))
    lines = [f"per POST /api/v1/leads ({count} posts, one at a time):"]
    lines += [f"  {n / count:5.2f}  {k}" for k, n in sorted(seen.items(), key=lambda x: -x[1])]
    lines.append(f"  {statements / count:5.2f}  statements through SQLAlchemy")
    trips = statements + sum(n for k, n in seen.items() if k.startswith("round trip"))
    lines.append(f"  {trips / count:5.2f}  round trips in all (besides prepares and pings)")
    return "\n".join(lines)


# 2. Sampling the loaded server --------------------------------------------------------------


async def _postgres_count(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM leads"))
    finally:
        await connection.close()


def lead_count(scratch: Scratch) -> int:
    if scratch.kind == "postgres":
        return asyncio.run(_postgres_count(scratch.postgres_dsn))
    connection = sqlite3.connect(scratch.sqlite_path, timeout=30)
    try:
        return int(connection.execute("SELECT count(*) FROM leads").fetchone()[0])
    finally:
        connection.close()


def sample_server(args: argparse.Namespace, scratch: Scratch, seller: Seller) -> str:
    beside = Path(sys.executable).with_name("py-spy")
    py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is missing: .venv/bin/pip install py-spy")
    warm = write_shards(
        scratch.workdir,
        "warmup",
        lead_bodies(0, args.warmup_leads, seller_username=seller.username),
        1,
    )
    shards = write_shards(
        scratch.workdir,
        "measured",
        lead_bodies(args.warmup_leads, args.leads, seller_username=seller.username),
        1,
    )
    server = Server(server_environment(scratch, args.src), workers=1)
    server.start(scratch.workdir / "server.log")
    try:
        post_leads(
            server.base_url,
            shards=warm,
            shard_sizes=[args.warmup_leads],
            api_key=seller.api_key,
            connections=args.concurrency,
            workdir=scratch.workdir,
            name="warmup",
            max_seconds=600,
        )
        load = threading.Thread(
            target=post_leads,
            args=(server.base_url,),
            kwargs={
                "shards": shards,
                "shard_sizes": [args.leads],
                "api_key": seller.api_key,
                "connections": args.concurrency,
                "workdir": scratch.workdir,
                "name": "measured",
                "max_seconds": 900,
            },
        )
        load.start()
        time.sleep(2)
        assert server.process is not None
        pid = server.process.pid
        leads_before, cpu_before, started = lead_count(scratch), cpu_seconds(pid), time.time()
        subprocess.run(  # noqa: S603 - py-spy from the venv, our arguments
            [
                py_spy,
                "record",
                "--gil",
                "--pid",
                str(pid),
                "--duration",
                str(args.seconds),
                "--rate",
                str(args.rate),
                "--format",
                "raw",
                "--output",
                str(args.raw),
            ],
            check=True,
            capture_output=True,
        )
        leads_after, cpu_after, ended = lead_count(scratch), cpu_seconds(pid), time.time()
        load.join()
    finally:
        server.stop()
    leads = leads_after - leads_before
    cpu_ms = 1000 * (cpu_after - cpu_before) / max(leads, 1)
    header = (
        f"sampled {ended - started:.1f}s: {leads:,} leads ({leads / (ended - started):,.0f}/s), "
        f"server CPU {cpu_after - cpu_before:.1f}s = {cpu_ms:.2f} ms per lead "
        f"({100 * (cpu_after - cpu_before) / (ended - started):.0f}% of a core); raw stacks in "
        f"{args.raw}"
    )
    return header + "\n" + report(analyse(args.raw), cpu_ms)


def main() -> None:
    args = parse_args()
    with scratch_database(args.db, "profile") as scratch:
        seller = create_seller(scratch)
        print(statement_census(scratch, seller))
        print(component_costs(scratch, seller))
        if not args.no_sampling:
            print(sample_server(args, scratch, seller))


if __name__ == "__main__":
    main()
