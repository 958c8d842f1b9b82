"""How late auctions close when many end at the same moment (M1), against the sweep alone.

    .venv/bin/python -m bench.auction.close --db postgres --auctions 200
    .venv/bin/python -m bench.auction.close --db sqlite   --auctions 200

A scratch database gets ``--auctions`` auctions, each with two bids from two of 20 funded buyers
(so each close makes an order, releases the runner-up's nothing and the leader's bid hold, and
queues the notices), all ending at the same instant. Real job workers (``kit.jobs.Worker``,
``--workers`` of them with ``--concurrency`` slots each, each on its own engine as
``leadmarket worker`` runs them) then close them. Two phases in the same run, each on its own
auctions:

* **jobs**: every job kind of ``leadmarket worker``: each auction's ``auctions.close`` job, due
  at its end, with the ten-second sweep as the safety net;
* **sweep only** (the baseline, as before the close jobs): the same worker without the close
  jobs, so the sweep (every 10 s, 50 auctions a run) closes them.

Lateness is when another connection (polling every 50 ms) first sees the auction closed, with
its order and released hold committed, minus its end. The run checks each auction sold once
with its hold moved to the order and ``ledger verify`` clean; a broken invariant exits 1. It
prints min/p50/p90/p99/max per phase and writes ``bench/results/auction-close-<db>.json``.
Nothing asserts a timing."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select

from bench.auction.run import _member, percentile
from bench.intake.scratch import Scratch, scratch_database
from bench.intake.server import REPO_ROOT
from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine, utcnow
from leadmarket.kit.jobs import JobRegistry, Worker
from leadmarket.kit.realtime import LocalBroker
from leadmarket.ledger.service import deposit
from leadmarket.ledger.verify import verify_ledger
from leadmarket.marketplace.service import CLOSE_JOB, place_bid
from leadmarket.models import Auction, HoldStatus, Job, LedgerHold, Order, User
from leadmarket.payments.processor import SandboxProcessor
from leadmarket.tasks import JobServices, build_registry, build_services
from tests.fixtures.auctions import open_auction

BUYERS = 20
FUNDS_CENTS = 100_000_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.auction.close", description=__doc__)
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--auctions", type=int, default=200)
    parser.add_argument("--workers", type=int, default=None, help="2 on PostgreSQL, 1 on SQLite")
    parser.add_argument("--concurrency", type=int, default=4, help="job slots per worker")
    parser.add_argument(
        "--setup-seconds", type=float, default=None, help="time from now to the common end"
    )
    parser.add_argument("--output", type=Path, default=None)
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def prepare(settings: Settings, auctions: int, ends_at: dt.datetime, batch: int) -> list[str]:
    """``auctions`` auctions ending at ``ends_at``, two bids each; their lead ids. Members are
    numbered by ``batch`` so that each phase has its own."""
    db = Database(make_engine(settings.database_url))
    try:
        async with db.transaction() as session:
            seller = await _member(session, "seller", batch)
            buyers = [await _member(session, "buyer", batch * BUYERS + n) for n in range(BUYERS)]
            for buyer in buyers:
                await deposit(
                    session,
                    SandboxProcessor(),
                    member_id=buyer.id,
                    amount_cents=FUNDS_CENTS,
                    currency="USD",
                )
            leads = [
                (await open_auction(session, seller.id, auction_ends_at=ends_at)).id
                for _ in range(auctions)
            ]
            buyer_ids = [b.id for b in buyers]
        for n, lead_id in enumerate(leads):
            async with db.transaction() as session:
                for k, cents in ((0, 3_000), (1, 2_000)):
                    bidder = await session.get(User, buyer_ids[(n + k) % BUYERS])
                    assert bidder is not None
                    await place_bid(
                        session,
                        settings,
                        LocalBroker(),
                        lead_id=lead_id,
                        buyer=bidder,
                        amount_cents=cents,
                    )
        return leads
    finally:
        await db.dispose()


def registry_for(phase: str) -> JobRegistry[JobServices]:
    """The worker's job kinds: all of them, or (the baseline) all but the close jobs."""
    full = build_registry()
    return full if phase == "jobs" else full.without(CLOSE_JOB)


def _closed_sqlite(path: str, leads: list[str]) -> list[str]:
    """The closed ones among ``leads``, read through a read-only connection: the application's
    connections take SQLite's write lock for every transaction, and a watcher doing the same
    would slow down the workers it watches."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        marks = ",".join("?" * len(leads))
        rows = connection.execute(
            f"SELECT lead_id FROM auctions WHERE closed_at IS NOT NULL AND lead_id IN ({marks})",  # noqa: S608 - placeholders only
            leads,
        ).fetchall()
    return [str(row[0]) for row in rows]


async def watch(db: Database, leads: list[str], give_up: dt.datetime) -> dict[str, dt.datetime]:
    """When each auction was first seen closed by another connection: its order and released
    hold committed, as a buyer reading their wallet would see them."""
    seen: dict[str, dt.datetime] = {}
    while len(seen) < len(leads) and utcnow() < give_up:
        if db.is_sqlite:
            path = str(db.engine.url.database)
            closed = await asyncio.to_thread(_closed_sqlite, path, leads)
        else:
            async with db.transaction() as session:
                closed = list(
                    await session.scalars(
                        select(Auction.lead_id).where(
                            Auction.lead_id.in_(leads), Auction.closed_at.is_not(None)
                        )
                    )
                )
        now = utcnow()
        for lead_id in closed:
            seen.setdefault(lead_id, now)
        await asyncio.sleep(0.05)
    return seen


# The workers start this long before the end: past their first round of sweeps, as in
# production, where they run all along.
WORKERS_AHEAD = dt.timedelta(seconds=12)


async def run_phase(
    settings: Settings,
    phase: str,
    batch: int,
    args: argparse.Namespace,
    workers: int,
) -> dict[str, Any]:
    monitor = Database(make_engine(settings.database_url))
    engines = [
        make_engine(settings.database_url, pool_size=args.concurrency + 1) for _ in range(workers)
    ]
    try:
        setup = dt.timedelta(seconds=args.setup_seconds or 10 + args.auctions * 0.2)
        ends_at = utcnow() + setup + WORKERS_AHEAD
        leads = await prepare(settings, args.auctions, ends_at, batch)
        if phase == "sweep":  # as before the close jobs existed: nothing queued at the end
            async with monitor.transaction() as session:
                await session.execute(delete(Job).where(Job.kind == CLOSE_JOB))
        if utcnow() >= ends_at - WORKERS_AHEAD:
            raise SystemExit(f"setting up took longer than {setup}: raise --setup-seconds")
        log(f"{phase}: {len(leads)} auctions end at {ends_at:%H:%M:%S.%f}")
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(
                Worker(
                    Database(engine),
                    registry_for(phase),
                    build_services(settings),
                    settings,
                    concurrency=args.concurrency,
                ).run(stop)
            )
            for engine in engines
        ]
        seen = await watch(monitor, leads, ends_at + dt.timedelta(seconds=30 + len(leads) / 5))
        stop.set()
        await asyncio.gather(*tasks)
        return await check(monitor, leads, ends_at, seen)
    finally:
        for engine in engines:
            await engine.dispose()
        await monitor.dispose()


async def check(
    db: Database, leads: list[str], ends_at: dt.datetime, seen: dict[str, dt.datetime]
) -> dict[str, Any]:
    problems: list[str] = []
    late = [(at - ends_at).total_seconds() for at in seen.values()]
    async with db.transaction() as session:
        if len(late) != len(leads):
            problems.append(f"{len(leads) - len(late)} auctions still open")
        orders = int(
            await session.scalar(
                select(func.count()).select_from(Order).where(Order.lead_id.in_(leads))
            )
            or 0
        )
        if orders != len(late):
            problems.append(f"{orders} orders for {len(late)} closed auctions")
        bid_holds = int(
            await session.scalar(
                select(func.count())
                .select_from(LedgerHold)
                .where(
                    LedgerHold.status == HoldStatus.HELD.value,
                    LedgerHold.reference.like("bid_%"),
                )
            )
            or 0
        )
        if bid_holds != len(leads) - len(late):
            problems.append(f"{bid_holds} bid holds still held")
        problems += (await verify_ledger(session)).problems
    return {
        "closed": len(late),
        "lateness_seconds": {
            "min": round(min(late), 3) if late else None,
            "p50": round(statistics.median(late), 3) if late else None,
            "p90": round(percentile(late, 0.90), 3) if late else None,
            "p99": round(percentile(late, 0.99), 3) if late else None,
            "max": round(max(late), 3) if late else None,
        },
        "problems": problems,
    }


async def measure(scratch: Scratch, args: argparse.Namespace, workers: int) -> dict[str, Any]:
    # No anti-sniping: every bid lands in the last minutes, and no end may move.
    settings = scratch.settings().model_copy(update={"auction_extension_minutes": 0})
    phases: dict[str, Any] = {}
    for batch, phase in enumerate(("jobs", "sweep")):
        phases[phase] = await run_phase(settings, phase, batch, args, workers)
        log(f"{phase}: {phases[phase]}")
    return phases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workers = args.workers or (2 if args.db == "postgres" else 1)
    with scratch_database(args.db, "close") as scratch:
        phases = asyncio.run(measure(scratch, args, workers))
    result = {
        "config": {
            **vars(args),
            "output": str(args.output),
            "workers": workers,
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        **phases,
    }
    output = args.output or REPO_ROOT / "bench" / "results" / f"auction-close-{args.db}.json"
    output.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"\n{args.auctions} auctions ending together, {args.db}, {workers} worker(s) x "
        f"{args.concurrency} slots; lateness of the close (s):"
    )
    for phase, figures in phases.items():
        late = figures["lateness_seconds"]
        print(
            f"  {phase:6} min {late['min']}  p50 {late['p50']}  p90 {late['p90']}  "
            f"p99 {late['p99']}  max {late['max']}  closed {figures['closed']}/{args.auctions}  "
            f"invariants: {'all hold' if not figures['problems'] else figures['problems']}"
        )
    return 1 if any(figures["problems"] for figures in phases.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
