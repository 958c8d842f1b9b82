"""1,000 concurrent bids on one lead, over HTTP, then the checks the issue asks for.

    .venv/bin/python -m bench.auction.run --db postgres --bids 1000 --buyers 100

A scratch database gets one auctioned lead and ``--buyers`` funded buyers with API keys; the
real server (``leadmarket serve --workers N``) takes ``--bids`` bids fired at once (one HTTP
connection each, rising amounts with noise, random buyers). Afterwards, in the database:

* replayed in the order they were judged, the accepted bids reproduce every recorded price and
  leader (one leader at every moment);
* exactly one bid leads, with the highest maximum; exactly its maximum is held;
* every buyer's wallet plus held funds equals what they deposited; ``ledger verify`` is clean;
* closing the auction makes exactly one order, for the leader, and the ledger still verifies.

It prints the figures (bids/s, latency percentiles, answers by status) and writes
``bench/results/auction-<db>.json``. Nothing here asserts a timing; a broken invariant exits 1."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, update

from bench.intake.scratch import Scratch, scratch_database
from bench.intake.server import REPO_ROOT, Server
from leadmarket.accounts.auth import Principal
from leadmarket.accounts.service import create_api_key
from leadmarket.kit.db import Database, make_engine, utcnow
from leadmarket.kit.realtime import LocalBroker
from leadmarket.ledger.service import deposit, wallet_summary
from leadmarket.ledger.verify import verify_ledger
from leadmarket.marketplace.service import close_due_auctions
from leadmarket.models import Auction, Bid, HoldStatus, Lead, LedgerHold, Order, User
from leadmarket.payments.processor import SandboxProcessor
from tests.fixtures.auctions import open_auction
from tests.marketplace.test_bid_concurrency import replay

FUNDS_CENTS = 10_000_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.auction.run", description=__doc__)
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--bids", type=int, default=1_000)
    parser.add_argument("--buyers", type=int, default=100)
    parser.add_argument("--server-workers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, default=None)
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _member(session: Any, role: str, n: int) -> User:
    user = User(
        email=f"{role}{n}@bench.example.com",
        username=f"bench_{role}_{n}",
        username_key=f"bench_{role}_{n}",
        role=role,
        password_hash="not-a-real-hash",  # noqa: S106 - these members never sign in
    )
    session.add(user)
    await session.flush()
    return user


async def prepare(scratch: Scratch, buyers: int) -> tuple[str, list[tuple[str, str]]]:
    """The lead's id, and (buyer id, API key) of each buyer."""
    db = Database(make_engine(scratch.url))
    try:
        async with db.transaction() as session:
            seller = await _member(session, "seller", 0)
            lead = await open_auction(session, seller.id)
            keys = []
            for n in range(buyers):
                buyer = await _member(session, "buyer", n)
                await deposit(
                    session,
                    SandboxProcessor(),
                    member_id=buyer.id,
                    amount_cents=FUNDS_CENTS,
                    currency="USD",
                )
                _, key = await create_api_key(session, Principal(user=buyer), "bench")
                keys.append((buyer.id, key))
            return lead.id, keys
    finally:
        await db.dispose()


async def fire(
    base_url: str, lead_id: str, buyers: list[tuple[str, str]], bids: int, seed: int
) -> tuple[list[float], Counter[str], float]:
    rng = random.Random(seed)
    # Rising offers with noise, sent all at once: the server sees them in whatever order the
    # connections deliver them, so many beat the price they meet and many do not.
    offers = [(rng.choice(buyers)[1], 100 + 200 * n + rng.randrange(0, 5_000)) for n in range(bids)]
    limits = httpx.Limits(max_connections=bids, max_keepalive_connections=0)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    start = asyncio.Event()

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120) as client:

        async def one(key: str, amount: int) -> None:
            await start.wait()
            began = time.perf_counter()
            try:
                answer = await client.post(
                    f"/api/v1/leads/{lead_id}/bids",
                    json={"amount_cents": amount},
                    headers={"Authorization": f"Bearer {key}"},
                )
                statuses[str(answer.status_code)] += 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
            latencies.append((time.perf_counter() - began) * 1000)

        tasks = [asyncio.create_task(one(key, amount)) for key, amount in offers]
        await asyncio.sleep(0.2)
        began = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - began
    return latencies, statuses, wall


async def check(scratch: Scratch, lead_id: str, buyers: list[tuple[str, str]]) -> dict[str, Any]:
    settings = scratch.settings()
    db = Database(make_engine(scratch.url))
    problems: list[str] = []
    try:
        async with db.transaction() as session:
            bids = list(
                await session.scalars(
                    select(Bid).where(Bid.lead_id == lead_id).order_by(Bid.created_at, Bid.id)
                )
            )
            expected = replay(
                bids, settings.auction_opening_bid_cents, settings.auction_min_increment_cents
            )
            if [(b.price_after_cents, b.leading_after) for b in bids] != expected:
                problems.append("the recorded prices and leaders differ from the replay")
            leading = [b for b in bids if b.status == "leading"]
            if len(leading) != 1:
                problems.append(f"{len(leading)} leading bids")
            auction = await session.get(Auction, lead_id)
            if auction is None or not leading or auction.leader_bid_id != leading[0].id:
                problems.append("the auction's leader is not the leading bid")
            elif auction.leader_max_cents != max(b.max_cents for b in bids):
                problems.append("the leader's maximum is not the highest")
            held = list(
                await session.scalars(
                    select(LedgerHold).where(LedgerHold.status == HoldStatus.HELD.value)
                )
            )
            if leading and [(h.reference, h.amount_cents) for h in held] != [
                (leading[0].id, leading[0].max_cents)
            ]:
                problems.append(f"held funds: {[(h.reference, h.amount_cents) for h in held]}")
            for buyer_id, _ in buyers:
                wallet = await wallet_summary(session, buyer_id, "USD")
                if wallet.balance_cents + wallet.held_cents != FUNDS_CENTS:
                    problems.append(f"buyer {buyer_id}'s money does not add up")
            report = await verify_ledger(session)
            problems += report.problems
            await session.execute(
                update(Lead)
                .where(Lead.id == lead_id)
                .values(auction_ends_at=utcnow() - dt.timedelta(seconds=1))
            )
        async with db.transaction() as session:
            await close_due_auctions(session, settings, LocalBroker())
        async with db.transaction() as session:
            orders = list(await session.scalars(select(Order).where(Order.lead_id == lead_id)))
            if len(orders) != 1 or (leading and orders[0].buyer_id != leading[0].buyer_id):
                problems.append(f"{len(orders)} orders after the close, or not the leader's")
            problems += (await verify_ledger(session)).problems
        return {
            "accepted_bids": len(bids),
            "final_price_cents": auction.current_price_cents if auction else None,
            "winner_order_price_cents": orders[0].price_cents if orders else None,
            "problems": problems,
        }
    finally:
        await db.dispose()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workers = args.server_workers or (2 if args.db == "postgres" else 1)
    with scratch_database(args.db, "auction") as scratch:
        lead_id, buyers = asyncio.run(prepare(scratch, args.buyers))
        log(f"{args.buyers} funded buyers, one auction; starting {workers} server worker(s)")
        server = Server(scratch.environment(), workers=workers)
        server.start(scratch.workdir / "server.log")
        try:
            latencies, statuses, wall = asyncio.run(
                fire(server.base_url, lead_id, buyers, args.bids, args.seed)
            )
        finally:
            server.stop()
        log(f"answers {dict(statuses)} in {wall:.1f}s; checking the database")
        checked = asyncio.run(check(scratch, lead_id, buyers))
    result = {
        "config": {
            **vars(args),
            "output": str(args.output),
            "server_workers": workers,
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "bids_per_second": args.bids / wall,
        "wall_seconds": wall,
        "latency_ms": {
            "p50": round(statistics.median(latencies), 1),
            "p95": round(percentile(latencies, 0.95), 1),
            "p99": round(percentile(latencies, 0.99), 1),
            "max": round(max(latencies), 1),
        },
        "answers": dict(statuses),
        **checked,
    }
    output = args.output or REPO_ROOT / "bench" / "results" / f"auction-{args.db}.json"
    output.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"\n{args.bids} concurrent bids on one lead, {args.db}, {workers} worker(s): "
        f"{result['bids_per_second']:.0f} bids/s, latency p50/p95/p99/max "
        f"{result['latency_ms']['p50']}/{result['latency_ms']['p95']}/"
        f"{result['latency_ms']['p99']}/{result['latency_ms']['max']} ms\n"
        f"answers by status: {dict(statuses)}; accepted bids {checked['accepted_bids']}; "
        f"final price {checked['final_price_cents']} cents; winner's order "
        f"{checked['winner_order_price_cents']} cents\n"
        f"invariants: {'all hold' if not checked['problems'] else checked['problems']}"
    )
    return 1 if checked["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
