"""The 48-hour rule's two figures (issue 5): how fast the retention sweep destroys personal
data, and how late after its deadline a lead's data goes with a real worker.

    .venv/bin/python -m bench.retention.run --db postgres --leads 50000

**(a) Destruction rate.** A scratch database gets ``--leads`` sold leads past their deadline,
written in bulk, each with a really sealed vault and three blind indexes
(``tests/fixtures/retention.py``), and as many again without a deadline for each baseline.
``purge_expired_lead_data`` destroys the due ones (``--batch-size`` leads per transaction:
claim-and-mark UPDATE, DELETE vaults, DELETE blind indexes, INSERT log rows). Baselines in the
same run and the same tables, through the driver (asyncpg / sqlite3), same batch size, one
transaction per batch: a bare ``DELETE FROM lead_vaults WHERE lead_id = ANY($1)`` of as many
vault rows; and on PostgreSQL the sweep's own writes as raw SQL with the ids known beforehand
(no claim, no ORM). The sweep and the baselines take turns over ``--rounds`` slices, so the
load of a shared machine's neighbours weighs on each alike.

**(b) Lateness.** ``leadmarket worker`` runs in its own process with the default settings
(sweep every ``LEADMARKET_RETENTION_SWEEP_SECONDS``, poll every ``LEADMARKET_JOB_POLL_SECONDS``).
Leads are written whose deadlines fall every ``--every-ms`` over ``--lateness-seconds``; after
the last deadline plus a margin, the destruction log gives each lead's lateness (destroyed_at -
deadline): max, p99, p50, and a check that none went before its deadline or was missed.

Prints the figures and writes ``bench/results/retention-<db>.json``. Nothing here asserts a
timing; a lead destroyed early, twice or never exits 1."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs ship with asyncpg
from sqlalchemy import func, select, text

from bench.intake.scratch import Scratch, scratch_database
from bench.intake.server import REPO_ROOT
from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine, utcnow
from leadmarket.models import LeadBlindIndex, LeadVault, PiiDestruction, User
from leadmarket.privacy.retention import purge_expired_lead_data, retention_monitor
from tests.fixtures.retention import insert_due_leads


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.retention.run", description=__doc__)
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--leads", type=int, default=50_000, help="Leads destroyed in (a).")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5, help="Turns of sweep and baselines.")
    parser.add_argument("--lateness-seconds", type=float, default=150.0)
    parser.add_argument("--every-ms", type=int, default=250, help="Deadline spacing in (b).")
    parser.add_argument("--skip-rate", action="store_true", help="Only (b).")
    parser.add_argument("--skip-lateness", action="store_true", help="Only (a).")
    parser.add_argument("--output", type=Path, default=None)
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _seller(db: Database) -> str:
    async with db.transaction() as session:
        user = User(
            email="bench.retention@example.com",
            username="bench_retention",
            username_key="bench_retention",
            role="seller",
            password_hash="not-a-real-hash",  # noqa: S106 - this member never signs in
        )
        session.add(user)
        await session.flush()
        return user.id


async def _insert(
    db: Database, settings: Settings, seller_id: str, deadlines: list[dt.datetime | None]
) -> list[str]:
    ids: list[str] = []
    step = 5000
    for start in range(0, len(deadlines), step):
        async with db.transaction() as session:
            ids += await insert_due_leads(
                session, settings, seller_id, deadlines[start : start + step]
            )
    return ids


async def _count(db: Database, model: type[object], *where: Any) -> int:
    async with db.transaction() as session:
        query = select(func.count()).select_from(model)
        if where:
            query = query.where(*where)
        return int(await session.scalar(query) or 0)


async def _analyze(scratch: Scratch, db: Database) -> None:
    if scratch.kind == "postgres":
        connection = await asyncpg.connect(scratch.postgres_dsn)
        try:
            await connection.execute("VACUUM ANALYZE")
        finally:
            await connection.close()
    else:
        async with db.transaction() as session:
            await session.execute(text("ANALYZE"))


async def _bare_delete(scratch: Scratch, ids: list[str], batch_size: int) -> float:
    """Seconds to delete the vault rows of ``ids`` straight through the driver, one
    transaction per ``batch_size`` (``batch_size >= len(ids)``: one statement)."""
    if scratch.kind == "postgres":
        connection = await asyncpg.connect(scratch.postgres_dsn)
        try:
            started = time.perf_counter()
            for start in range(0, len(ids), batch_size):
                async with connection.transaction():
                    await connection.execute(
                        "DELETE FROM lead_vaults WHERE lead_id = ANY($1::varchar[])",
                        ids[start : start + batch_size],
                    )
            return time.perf_counter() - started
        finally:
            await connection.close()

    def run() -> float:
        connection = sqlite3.connect(scratch.sqlite_path, isolation_level=None)
        try:
            connection.execute("PRAGMA secure_delete=ON")  # as the application runs it
            started = time.perf_counter()
            for start in range(0, len(ids), batch_size):
                chunk = ids[start : start + batch_size]
                connection.execute("BEGIN IMMEDIATE")
                connection.execute(
                    f"DELETE FROM lead_vaults WHERE lead_id IN ({','.join('?' * len(chunk))})",  # noqa: S608
                    chunk,
                )
                connection.execute("COMMIT")
            return time.perf_counter() - started
        finally:
            connection.close()

    return await asyncio.to_thread(run)


async def _bare_full_shred(scratch: Scratch, ids: list[str], batch_size: int) -> float:
    """PostgreSQL: the sweep's own writes for ``ids`` (vaults, blind indexes, the leads' mark,
    the log rows) as raw statements through asyncpg, ids known beforehand (no claim), one
    transaction per batch: what the database itself needs for the same destruction."""
    connection = await asyncpg.connect(scratch.postgres_dsn)
    try:
        started = time.perf_counter()
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            now = dt.datetime.now(dt.UTC)
            async with connection.transaction():
                await connection.execute(
                    "DELETE FROM lead_vaults WHERE lead_id = ANY($1::varchar[])", chunk
                )
                await connection.execute(
                    "DELETE FROM lead_blind_indexes WHERE lead_id = ANY($1::varchar[])", chunk
                )
                await connection.execute(
                    "UPDATE leads SET pii_destroyed_at = $2 WHERE id = ANY($1::varchar[])",
                    chunk,
                    now,
                )
                await connection.execute(
                    "INSERT INTO pii_destructions (lead_id, deadline, destroyed_at, lateness_ms,"
                    " cause) SELECT l, $2, $2, 0, 'bare' FROM unnest($1::varchar[]) AS l",
                    chunk,
                    now,
                )
        return time.perf_counter() - started
    finally:
        await connection.close()


async def destruction_rate(scratch: Scratch, args: argparse.Namespace) -> dict[str, Any]:
    """The sweep and its baselines take turns, ``--rounds`` times, each on its own slice of
    leads, so a neighbour's load on the shared machine weighs on all of them alike."""
    settings = scratch.settings()
    db = Database(make_engine(scratch.url))
    try:
        seller_id = await _seller(db)
        n, rounds = args.leads, args.rounds
        per_round = n // rounds
        n = per_round * rounds
        sets = 3 if scratch.kind == "postgres" else 2
        log(f"(a) writing {sets * n} leads with sealed vaults and blind indexes")
        started = time.perf_counter()
        # Round r's due leads have the deadline base + r s: a sweep at that time takes them only.
        base = utcnow() - dt.timedelta(hours=1)
        due = await _insert(
            db,
            settings,
            seller_id,
            [base + dt.timedelta(seconds=r) for r in range(rounds) for _ in range(per_round)],
        )
        bare = await _insert(db, settings, seller_id, [None] * n)
        full = await _insert(db, settings, seller_id, [None] * n) if sets == 3 else []
        written = time.perf_counter() - started
        log(f"    written in {written:.1f} s ({sets * n / written:,.0f} leads/s)")
        await _analyze(scratch, db)

        times: dict[str, list[float]] = {"sweep": [], "bare_vault_delete": [], "bare_full": []}
        destroyed = batches = 0
        for r in range(rounds):
            piece = slice(r * per_round, (r + 1) * per_round)
            started = time.perf_counter()
            result = await purge_expired_lead_data(
                db,
                settings,
                now=base + dt.timedelta(seconds=r),
                batch_size=args.batch_size,
                keep_details=False,
            )
            times["sweep"].append(time.perf_counter() - started)
            destroyed += result.count
            batches += result.batches
            times["bare_vault_delete"].append(
                await _bare_delete(scratch, bare[piece], args.batch_size)
            )
            if full:
                times["bare_full"].append(
                    await _bare_full_shred(scratch, full[piece], args.batch_size)
                )
            line = (
                f"    round {r + 1}/{rounds}: sweep {per_round / times['sweep'][-1]:,.0f} leads/s,"
                f" bare vault DELETE {per_round / times['bare_vault_delete'][-1]:,.0f} rows/s"
            )
            if full:
                line += f", raw SQL shred {per_round / times['bare_full'][-1]:,.0f} leads/s"
            log(line)

        problems = []
        if destroyed != n:
            problems.append(f"the sweep destroyed {destroyed} leads, not {n}")
        async with db.transaction() as session:
            logged = set(
                await session.scalars(
                    select(PiiDestruction.lead_id).where(PiiDestruction.cause == "retention")
                )
            )
        if logged != set(due):
            problems.append("the log does not have exactly one row per due lead")
        async with db.transaction() as session:
            left = 0
            for model in (LeadVault, LeadBlindIndex):
                left += int(
                    await session.scalar(
                        select(func.count())
                        .select_from(model)
                        .join(PiiDestruction, PiiDestruction.lead_id == model.lead_id)  # type: ignore[attr-defined]
                    )
                    or 0
                )
        if left:
            problems.append(f"{left} vault or blind index rows of destroyed leads are left")

        def rate(key: str) -> float:
            return n / sum(times[key])

        sweep_rate = rate("sweep")
        return {
            # The machine is shared: its 1-minute load average after the timed rounds.
            "load_average_1m": round(os.getloadavg()[0], 2),
            "leads": n,
            "rounds": rounds,
            "batch_size": args.batch_size,
            "batches": batches,
            "write_leads_per_s": round(sets * n / written),
            "sweep_seconds": round(sum(times["sweep"]), 3),
            "sweep_leads_per_s": round(sweep_rate),
            "sweep_leads_per_s_by_round": [round(per_round / t) for t in times["sweep"]],
            "bare_vault_delete_rows_per_s": round(rate("bare_vault_delete")),
            "bare_vault_delete_by_round": [
                round(per_round / t) for t in times["bare_vault_delete"]
            ],
            "ratio_to_bare_vault_delete": round(sweep_rate / rate("bare_vault_delete"), 3),
            "raw_sql_shred_leads_per_s": round(rate("bare_full")) if full else None,
            "raw_sql_shred_by_round": [round(per_round / t) for t in times["bare_full"]],
            "ratio_to_raw_sql_shred": round(sweep_rate / rate("bare_full"), 3) if full else None,
            "problems": problems,
        }
    finally:
        await db.dispose()


def _percentile(values: list[int], p: float) -> int:
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * int(p * 1000) // 1000))
    return ordered[rank - 1]


async def lateness(scratch: Scratch, args: argparse.Namespace) -> dict[str, Any]:
    settings = scratch.settings()
    db = Database(make_engine(scratch.url))
    env = {
        **os.environ,
        **scratch.environment(),
        "LEADMARKET_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO_ROOT / "src"),
    }
    for name in ("LEADMARKET_RETENTION_SWEEP_SECONDS", "LEADMARKET_JOB_POLL_SECONDS"):
        env.pop(name, None)  # the defaults are what is measured
    worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is timed
        [sys.executable, "-m", "leadmarket", "worker"],
        env=env,
        cwd=scratch.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        seller_id = await _seller(db)
        count = int(args.lateness_seconds * 1000 // args.every_ms)
        first = utcnow() + dt.timedelta(seconds=5)
        deadlines: list[dt.datetime | None] = [
            first + dt.timedelta(milliseconds=i * args.every_ms) for i in range(count)
        ]
        log(
            f"(b) {count} leads due every {args.every_ms} ms over {args.lateness_seconds:.0f} s; "
            f"worker pid {worker.pid} with default settings "
            f"(sweep {settings.retention_sweep_seconds} s, poll {settings.job_poll_seconds} s)"
        )
        ids = await _insert(db, settings, seller_id, deadlines)
        last = deadlines[-1]
        assert last is not None
        margin = settings.retention_sweep_seconds + settings.job_poll_seconds + 20
        while utcnow() < last + dt.timedelta(seconds=margin):
            if worker.poll() is not None:
                raise RuntimeError(
                    "the worker died: "
                    + (worker.stderr.read().decode()[-2000:] if worker.stderr else "")
                )
            await asyncio.sleep(1)
        async with db.transaction() as session:
            rows = (
                await session.execute(
                    select(
                        PiiDestruction.lead_id,
                        PiiDestruction.deadline,
                        PiiDestruction.destroyed_at,
                        PiiDestruction.lateness_ms,
                    ).where(PiiDestruction.lead_id.in_(ids))
                )
            ).all()
            monitor = await retention_monitor(session, settings)
        problems = []
        if len(rows) != len(ids) or len({r[0] for r in rows}) != len(ids):
            problems.append(f"{len(ids) - len(rows)} leads missed")
        early = [r for r in rows if r[2] < r[1]]
        if early:
            problems.append(f"{len(early)} leads destroyed before their deadline")
        values = [int(r[3]) for r in rows]
        return {
            "leads": len(ids),
            "every_ms": args.every_ms,
            "span_seconds": args.lateness_seconds,
            "sweep_seconds": settings.retention_sweep_seconds,
            "job_poll_seconds": settings.job_poll_seconds,
            "max_ms": max(values) if values else None,
            "p99_ms": _percentile(values, 0.99) if values else None,
            "p90_ms": _percentile(values, 0.90) if values else None,
            "p50_ms": _percentile(values, 0.50) if values else None,
            "mean_ms": round(statistics.fmean(values)) if values else None,
            "min_ms": min(values) if values else None,
            "monitor_24h": {
                "count": monitor.lateness[0].count,
                "p99_ms": monitor.lateness[0].p99_ms,
                "max_ms": monitor.lateness[0].max_ms,
            },
            "problems": problems,
        }
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        await db.dispose()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {
        "benchmark": "retention",
        "db": args.db,
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": "python -m bench.retention.run "
        + " ".join(sys.argv[1:] if argv is None else argv),
    }
    if not args.skip_rate:
        with scratch_database(args.db, "retention") as scratch:
            report["destruction_rate"] = asyncio.run(destruction_rate(scratch, args))
        rate = report["destruction_rate"]
        print(
            f"(a) destruction: {rate['leads']:,} leads in {rate['sweep_seconds']} s = "
            f"{rate['sweep_leads_per_s']:,} leads/s (target 10,000); bare DELETE of vault rows "
            f"{rate['bare_vault_delete_rows_per_s']:,} rows/s (ratio "
            f"{rate['ratio_to_bare_vault_delete']})"
            + (
                f"; the same writes as raw SQL {rate['raw_sql_shred_leads_per_s']:,} leads/s "
                f"(ratio {rate['ratio_to_raw_sql_shred']})"
                if rate["raw_sql_shred_leads_per_s"]
                else ""
            )
        )
    if not args.skip_lateness:
        with scratch_database(args.db, "retention") as scratch:
            report["lateness"] = asyncio.run(lateness(scratch, args))
        late = report["lateness"]
        print(
            f"(b) lateness over {late['leads']} leads with the default {late['sweep_seconds']} s "
            f"sweep: max {late['max_ms'] / 1000:.2f} s, p99 {late['p99_ms'] / 1000:.2f} s, "
            f"p50 {late['p50_ms'] / 1000:.2f} s (target: max < 60 s)"
        )
    output = args.output or REPO_ROOT / "bench" / "results" / f"retention-{args.db}.json"
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {output}")
    problems = [
        *report.get("destruction_rate", {}).get("problems", []),
        *report.get("lateness", {}).get("problems", []),
    ]
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
