"""Pings over HTTP against 10,000 active campaigns, with the same server's bare ``GET /healthz``
as the baseline, measured in the same run with the same load tool and connections.

    .venv/bin/python -m bench.pingpost.run                  # PostgreSQL, 2 workers, 20 s
    .venv/bin/python -m bench.pingpost.run --seconds 5 --healthz-seconds 3   # a quick check

See bench/README.md for what is measured and how to read it."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.intake.bodies import write_shards
from bench.intake.client import WrkResult, run_wrk, wrk_binary
from bench.intake.scratch import Scratch, create_seller, scratch_database
from bench.intake.server import REPO_ROOT, Server, cpu_snapshot, cpu_used, postgres_pids
from bench.matching.run import make_campaigns
from leadmarket.campaigns import service as campaigns
from leadmarket.kit.db import Database, make_engine
from leadmarket.leads.previews import age_band
from leadmarket.leads.reference import CA_PROVINCES, check_postal_code, state_for_zip
from leadmarket.models import Campaign, Role, User
from leadmarket.verticals.registry import FieldSpec, all_verticals

SCRIPT = Path(__file__).with_name("pingpost.lua")
RESULTS = REPO_ROOT / "bench" / "results" / "pingpost.json"
BUYERS = 700
# Sellers who know the consumer's age give it with the ping (half the campaigns filter on age).
AGE_SHARE = 0.8
# Canadian places (a postal code of each province's first letter); US ZIPs are drawn at random.
CANADIAN = (("ON", "M5V 2T6"), ("BC", "V6B 1A1"), ("QC", "H2X 1Y4"), ("AB", "T2P 1J9"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pingpost.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--campaigns", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=20, help="The measured run.")
    parser.add_argument("--warmup-seconds", type=int, default=5)
    parser.add_argument(
        "--healthz-seconds", type=int, default=10, help="Each of the two baseline runs."
    )
    parser.add_argument(
        "--pings",
        type=int,
        default=None,
        help="Distinct ping bodies for the measured run (default: 6,000 per second of it, "
        "more than the server can answer, so no body is sent twice).",
    )
    parser.add_argument(
        "--paced",
        type=int,
        action="append",
        default=None,
        metavar="PINGS_PER_SECOND",
        help="After the saturated run, also send pings at this steady rate for --paced-seconds "
        "and report their latency (repeatable; default 500 and 1,000; 0 for none).",
    )
    parser.add_argument("--paced-seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32, help="Keep-alive connections.")
    parser.add_argument("--client-threads", type=int, default=1, help="wrk threads.")
    parser.add_argument("--server-workers", type=int, default=None, help="Default: 2 (PG), 1.")
    parser.add_argument(
        "--recheck-ms",
        type=int,
        default=1000,
        help="LEADMARKET_MATCHING_RECHECK_MS of the server: how often each process reads the "
        "campaigns' version (0: before every ping, a database round trip each).",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="LEADMARKET_LOG_LEVEL of the server (INFO: one access line per request, as in "
        "production; the lines go to server.log in the scratch directory).",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--src", type=Path, default=None, help="Serve this leadmarket/ tree.")
    parser.add_argument(
        "--pg-socket",
        metavar="DIRECTORY",
        default=None,
        help="The server reaches PostgreSQL over its Unix socket in this directory (for "
        "example /var/run/postgresql) instead of 127.0.0.1 TCP.",
    )
    args = parser.parse_args(argv)
    if args.server_workers is None:
        args.server_workers = 2 if args.db == "postgres" else 1
    if args.pings is None:
        args.pings = 6_000 * args.seconds
    args.paced = [r for r in (args.paced if args.paced is not None else [500, 1000]) if r > 0]
    return args


def unix_socket_url(url: str, directory: str) -> str:
    """``url`` (``postgresql+asyncpg://user@host:port/name``) through the Unix socket in
    ``directory`` instead: asyncpg takes the socket's directory as ``host``."""
    head, name = url.rsplit("/", 1)
    user = head.split("://", 1)[1].split("@", 1)[0]
    return f"postgresql+asyncpg://{user}@/{name}?host={directory}"


def _ms_each(cpu_seconds: float, requests: int, digits: int = 4) -> float:
    """Milliseconds of CPU per answer."""
    return round(1000 * cpu_seconds / max(requests, 1), digits)


def _per_request(cpu_seconds: float, result: WrkResult) -> float:
    return _ms_each(cpu_seconds, result.figures["requests"])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# The market: buyers and their campaigns -------------------------------------------------------


async def _load_campaigns(scratch: Scratch, count: int, seed: int) -> None:
    """``count`` campaigns as bench/matching makes them (each passes the API's checks), owned
    by :data:`BUYERS` buyers, written in one transaction with one matching-version bump."""
    rows = make_campaigns(random.Random(seed), count)
    now = dt.datetime.now(dt.UTC)
    buyer_ids = sorted({row.buyer_id for row in rows})
    db = Database(make_engine(scratch.url))
    try:
        async with db.transaction() as session:
            await session.execute(
                User.__table__.insert(),
                [
                    {
                        "id": buyer_id,
                        "email": f"{buyer_id}@bench.example.com",
                        "username": buyer_id,
                        "username_key": buyer_id,
                        "role": Role.BUYER.value,
                        "status": "active",
                        "password_hash": "not-a-real-hash",
                        "password_changed_at": now,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for buyer_id in buyer_ids
                ],
            )
            await session.execute(
                Campaign.__table__.insert(),
                [
                    {
                        "id": row.id,
                        "buyer_id": row.buyer_id,
                        "name": "bench",
                        "vertical": row.vertical,
                        "filters": row.filters,
                        "bid_cents": row.bid_cents,
                        "currency": row.currency,
                        "timezone": row.timezone,
                        "schedule": row.schedule,
                        "exclusive_only": row.exclusive_only,
                        "spent_cents": 0,
                        "active": True,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for row in rows
                ],
            )
            await campaigns.bump_matching_version(session)
    finally:
        await db.dispose()


# Ping bodies -------------------------------------------------------------------------------


def _value(rng: random.Random, spec: FieldSpec) -> Any:
    if spec.enum is not None:
        return rng.choice(spec.enum)
    if spec.type == "boolean":
        return rng.random() < 0.5
    low = int(spec.minimum if spec.minimum is not None else 0)
    high = int(spec.maximum if spec.maximum is not None else low + 100_000)
    return rng.randint(low, high)


def _place(rng: random.Random) -> tuple[str, str, str]:
    """(country, region, postal code) that the ping's checks accept."""
    if rng.random() < 0.08:
        region, postal = rng.choice(CANADIAN)
        assert region in CA_PROVINCES
        return "CA", region, postal
    while True:
        zip5 = f"{rng.randint(10, 999):03d}{rng.randint(0, 99):02d}"
        state = state_for_zip(zip5)
        if state is not None and check_postal_code("US", state, zip5)[1] is None:
            return "US", state, zip5


def ping_bodies(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` valid pings, no two with the same content (a repeat would be a duplicate)."""
    rng = random.Random(seed)
    verticals = all_verticals()
    seen: set[str] = set()
    bodies: list[dict[str, Any]] = []
    while len(bodies) < count:
        vertical = rng.choice(verticals)
        country, region, postal = _place(rng)
        attributes = {
            spec.name: _value(rng, spec)
            for spec in vertical.fields
            if spec.preview and (spec.required or rng.random() < 0.5)
        }
        body = {
            "vertical": vertical.slug,
            "country": country,
            "region": region,
            "postal_code": postal,
            "attributes": attributes,
            "exclusive": rng.random() < 0.6,
        }
        if rng.random() < AGE_SHARE:
            body["age"] = rng.randint(18, 80)
        # Two ages of one band are the same ping (a duplicate): the key holds the band.
        band = age_band(body["age"]) if "age" in body else ""
        key = json.dumps([vertical.slug, country, region, postal, band, attributes], sort_keys=True)
        if key not in seen:
            seen.add(key)
            bodies.append(body)
    return bodies


# Load ------------------------------------------------------------------------------------------


def wrk(
    url: str,
    mode: list[str],
    *,
    threads: int,
    connections: int,
    seconds: int,
    workdir: Path,
    name: str,
) -> WrkResult:
    command = [
        wrk_binary(),
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={seconds}s",
        "--timeout=10s",
        "--latency",
        f"--script={SCRIPT}",
        url,
        "--",
        *mode,
    ]
    return run_wrk(command, markers=None, max_seconds=seconds + 30, log=workdir / f"{name}.log")


def rate(result: WrkResult) -> float:
    return float(result.figures["requests"]) / (result.figures["duration_us"] / 1e6)


def latency_ms(result: WrkResult) -> dict[str, float]:
    return {k: round(v / 1000, 2) for k, v in result.figures["latency_us"].items()}


async def _recorded(scratch: Scratch, since: float, until: float) -> dict[str, int]:
    """The pings recorded since ``since``; and, on PostgreSQL, how many batches (transactions:
    the rows one statement inserted share its ``xmin``) wrote those created in the measured
    run, ``since`` to ``until``."""
    db = Database(make_engine(scratch.url))
    window = {
        "since": dt.datetime.fromtimestamp(since, dt.UTC),
        "until": dt.datetime.fromtimestamp(until, dt.UTC),
    }
    try:
        async with db.transaction() as session:
            row = (
                await session.execute(
                    text(
                        "SELECT count(*), sum(CASE WHEN accepted THEN 1 ELSE 0 END) "
                        "FROM pings WHERE created_at >= :since"
                    ),
                    window,
                )
            ).one()
            counts = {"pings": int(row[0] or 0), "accepted": int(row[1] or 0)}
            if scratch.kind == "postgres":
                row = (
                    await session.execute(
                        text(
                            "SELECT count(*), count(DISTINCT xmin::text) FROM pings "
                            "WHERE created_at >= :since AND created_at < :until"
                        ),
                        window,
                    )
                ).one()
                counts["measured_pings"], counts["measured_batches"] = int(row[0]), int(row[1])
            return counts
    finally:
        await db.dispose()


def run(args: argparse.Namespace) -> dict[str, Any]:
    with scratch_database(args.db, "pingpost") as scratch:
        seller = create_seller(scratch)
        started = time.perf_counter()
        asyncio.run(_load_campaigns(scratch, args.campaigns, args.seed))
        log(f"{args.campaigns:,} campaigns written in {time.perf_counter() - started:.1f}s")
        threads = args.client_threads
        paced_counts = [rate * args.paced_seconds + 1_000 for rate in args.paced]
        warm_count = 6_000 * args.warmup_seconds
        bodies = iter(ping_bodies(args.pings + warm_count + sum(paced_counts), args.seed))
        warm_paths = write_shards(
            scratch.workdir, "warmup", itertools.islice(bodies, warm_count), threads
        )
        paths = write_shards(
            scratch.workdir, "measured", itertools.islice(bodies, args.pings), threads
        )
        paced_paths = [
            write_shards(scratch.workdir, f"paced{i}", itertools.islice(bodies, count), threads)
            for i, count in enumerate(paced_counts)
        ]
        log("ping bodies written")
        environment = scratch.environment()
        environment["LEADMARKET_MATCHING_RECHECK_MS"] = str(args.recheck_ms)
        environment["LEADMARKET_LOG_LEVEL"] = args.log_level.upper()
        if args.pg_socket is not None and args.db == "postgres":
            environment["LEADMARKET_DATABASE_URL"] = unix_socket_url(scratch.url, args.pg_socket)
        if args.src is not None:
            environment["PYTHONPATH"] = str(args.src.resolve())
        server = Server(environment, workers=args.server_workers)
        server.start(scratch.workdir / "server.log")
        common = {
            "threads": threads,
            "connections": args.concurrency,
            "workdir": scratch.workdir,
        }
        ping_mode = ["ping", str(warm_paths[0]).removesuffix("0.jsonl"), seller.api_key]
        try:
            log(f"server up at {server.base_url}, pids {server.pids()}; warming up")
            warm = wrk(
                server.base_url, ping_mode, seconds=args.warmup_seconds, name="warmup", **common
            )
            log(f"warm-up: {warm.figures['statuses']}")
            pids = server.pids()
            healthz_cpu = [cpu_snapshot(pids)]
            before = wrk(
                f"{server.base_url}/healthz",
                ["get"],
                seconds=args.healthz_seconds,
                name="healthz-before",
                **common,
            )
            healthz_cpu.append(cpu_snapshot(pids))
            log(f"GET /healthz: {rate(before):,.0f}/s")
            ping_mode[1] = str(paths[0]).removesuffix("0.jsonl")
            pg_pids = postgres_pids(scratch.url.rsplit("/", 1)[1]) if args.db == "postgres" else []
            cpu_before = cpu_snapshot(pids + pg_pids)
            measured = wrk(
                server.base_url, ping_mode, seconds=args.seconds, name="measured", **common
            )
            cpu_after = cpu_snapshot(pids + pg_pids)
            log(f"POST /api/v1/ping: {rate(measured):,.0f}/s {measured.figures['statuses']}")
            healthz_cpu.append(cpu_snapshot(pids))
            after = wrk(
                f"{server.base_url}/healthz",
                ["get"],
                seconds=args.healthz_seconds,
                name="healthz-after",
                **common,
            )
            healthz_cpu.append(cpu_snapshot(pids))
            log(f"GET /healthz: {rate(after):,.0f}/s")
            paced: list[dict[str, Any]] = []
            for target, shard_paths in zip(args.paced, paced_paths, strict=True):
                run_paced = wrk(
                    server.base_url,
                    [
                        "ping",
                        str(shard_paths[0]).removesuffix("0.jsonl"),
                        seller.api_key,
                        str(target / threads),
                    ],
                    seconds=args.paced_seconds,
                    name=f"paced-{target}",
                    **common,
                )
                paced.append(
                    {
                        "target_per_second": target,
                        "pings_per_second": round(rate(run_paced), 1),
                        "statuses": run_paced.figures["statuses"],
                        "latency_ms": latency_ms(run_paced),
                    }
                )
                log(f"paced at {target:,}/s: {rate(run_paced):,.0f}/s, {latency_ms(run_paced)}")
        finally:
            server.stop()
        measured_until = measured.started_at + measured.figures["duration_us"] / 1e6
        recorded = asyncio.run(_recorded(scratch, measured.started_at, measured_until))
    healthz = (rate(before) + rate(after)) / 2
    pings = rate(measured)
    statuses: dict[str, int] = measured.figures["statuses"]
    answered = statuses.get("200", 0)
    server_cpu = cpu_used(cpu_before, cpu_after, pids)
    # Server CPU per /healthz answer over both baseline runs: what one request costs the HTTP
    # stack, which moves much less than the rate when other jobs share the machine.
    healthz_cpu_seconds = cpu_used(healthz_cpu[0], healthz_cpu[1], pids) + cpu_used(
        healthz_cpu[2], healthz_cpu[3], pids
    )
    healthz_requests = before.figures["requests"] + after.figures["requests"]
    pg_cpu = cpu_used(cpu_before, cpu_after, pg_pids)
    busy = cpu_after.machine_busy - cpu_before.machine_busy
    total = cpu_after.machine_total - cpu_before.machine_total
    return {
        "database": args.db,
        "campaigns": args.campaigns,
        "server_workers": args.server_workers,
        "connections": args.concurrency,
        "matching_recheck_ms": args.recheck_ms,
        "log_level": args.log_level.upper(),
        "seconds": args.seconds,
        "pings_per_second": round(pings, 1),
        "pings_answered_200_per_second": round(
            answered / (measured.figures["duration_us"] / 1e6), 1
        ),
        "statuses": statuses,
        "socket_errors": {k: v for k, v in measured.figures["errors"].items() if v},
        "pings_recorded": recorded["pings"],
        "accepted_share": round(recorded["accepted"] / recorded["pings"], 3)
        if recorded["pings"]
        else None,
        "pings_per_batch": round(recorded["measured_pings"] / recorded["measured_batches"], 1)
        if recorded.get("measured_batches")
        else None,
        "postgres_via": "unix socket" if args.pg_socket and args.db == "postgres" else "tcp",
        "latency_ms": latency_ms(measured),
        "healthz": {
            "before_per_second": round(rate(before), 1),
            "after_per_second": round(rate(after), 1),
            "mean_per_second": round(healthz, 1),
            "latency_ms_before": latency_ms(before),
            "server_ms_per_request": _ms_each(healthz_cpu_seconds, healthz_requests),
            "client_ms_per_request": _ms_each(
                before.cpu_seconds + after.cpu_seconds, healthz_requests
            ),
        },
        "ratio_pings_to_healthz": round(pings / healthz, 3) if healthz else None,
        "paced": paced,
        "age_share": AGE_SHARE,
        "cpu": {
            "server_seconds": round(server_cpu, 2),
            "server_ms_per_ping": _ms_each(server_cpu, measured.figures["requests"], 3),
            # What the kernel did for the server (socket reads and writes, epoll) and the rest,
            # per ping and per /healthz (the first /healthz run): what a ping costs beyond a GET.
            "server_user_ms_per_ping": _per_request(
                cpu_used(cpu_before, cpu_after, pids, kind=0), measured
            ),
            "server_system_ms_per_ping": _per_request(
                cpu_used(cpu_before, cpu_after, pids, kind=1), measured
            ),
            "server_user_ms_per_healthz": _per_request(
                cpu_used(healthz_cpu[0], healthz_cpu[1], pids, kind=0), before
            ),
            "server_system_ms_per_healthz": _per_request(
                cpu_used(healthz_cpu[0], healthz_cpu[1], pids, kind=1), before
            ),
            "postgres_seconds": round(pg_cpu, 2),
            "postgres_ms_per_ping": _ms_each(pg_cpu, measured.figures["requests"], 3),
            "client_seconds": round(measured.cpu_seconds, 2),
            "client_ms_per_ping": _ms_each(measured.cpu_seconds, measured.figures["requests"], 3),
            "other_seconds": round(busy - server_cpu - pg_cpu - measured.cpu_seconds, 2),
            "machine_busy_share": round(busy / total, 3) if total else None,
        },
        "python": platform.python_version(),
        "cores": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    lat = result["latency_ms"]
    print(
        f"\nping/post on {result['database']}, {result['campaigns']:,} campaigns, "
        f"{result['server_workers']} workers, {result['connections']} connections, "
        f"recheck {result['matching_recheck_ms']} ms, log level {result['log_level']}, "
        f"{result['seconds']} s"
    )
    print(f"  POST /api/v1/ping      {result['pings_per_second']:>9,.0f} /s   {result['statuses']}")
    print(
        f"  latency ms             p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  "
        f"max {lat['max']}"
    )
    h = result["healthz"]
    print(
        f"  GET /healthz           {h['mean_per_second']:>9,.0f} /s   "
        f"(before {h['before_per_second']:,.0f}, after {h['after_per_second']:,.0f})"
    )
    print(f"  pings ÷ healthz        {result['ratio_pings_to_healthz']}")
    print(
        f"  server CPU ms          per ping {result['cpu']['server_ms_per_ping']}  "
        f"per /healthz {h['server_ms_per_request']}  "
        f"(PostgreSQL per ping {result['cpu']['postgres_ms_per_ping']}; wrk per ping "
        f"{result['cpu']['client_ms_per_ping']}, per /healthz {h['client_ms_per_request']})"
    )
    for run_paced in result["paced"]:
        lat = run_paced["latency_ms"]
        print(
            f"  paced at {run_paced['target_per_second']:>6,}/s     "
            f"{run_paced['pings_per_second']:>9,.0f} /s   p50 {lat['p50']}  p95 {lat['p95']}  "
            f"p99 {lat['p99']}  max {lat['max']}"
        )
    print(
        f"  accepted share         {result['accepted_share']}   "
        f"recorded {result['pings_recorded']:,}   pings per batch {result['pings_per_batch']}"
        f"   (PostgreSQL over {result['postgres_via']})"
    )
    cpu = result["cpu"]
    print(
        f"  CPU s                  server {cpu['server_seconds']}  postgres "
        f"{cpu['postgres_seconds']}  wrk {cpu['client_seconds']}  others {cpu['other_seconds']}"
        f"  (machine busy {cpu['machine_busy_share']})"
    )
    print(
        f"  server CPU, user+sys   per ping {cpu['server_user_ms_per_ping']} + "
        f"{cpu['server_system_ms_per_ping']}, per /healthz {cpu['server_user_ms_per_healthz']}"
        f" + {cpu['server_system_ms_per_healthz']} ms"
    )
    print("  targets: ≥ 3,000 pings/s, p99 < 25 ms, ≥ 0.5 × /healthz")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
