"""Lead intake over HTTP, end to end, against its baselines measured in the same run.

    .venv/bin/python -m bench.intake.run --db postgres --leads 20000 --concurrency 32 \\
        --server-workers 2
    .venv/bin/python -m bench.intake.run --db sqlite --leads 20000 --concurrency 32

See bench/README.md for what is measured and how to read it."""

from __future__ import annotations

import argparse
import asyncio
import bisect
import datetime as dt
import json
import os
import platform
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs ship with asyncpg

from bench.intake import bare
from bench.intake.bodies import lead_bodies, write_shards
from bench.intake.client import WrkResult, get_path, post_leads
from bench.intake.scratch import Scratch, Seller, create_seller, scratch_database
from bench.intake.server import (
    REPO_ROOT,
    RssSample,
    RssSampler,
    Server,
    cpu_snapshot,
    cpu_used,
    postgres_pids,
)

RESULTS_DIR = REPO_ROOT / "bench" / "results"
MIB = 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.intake.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--leads", type=int, default=20_000, help="Leads in the measured run.")
    parser.add_argument("--warmup-leads", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=32, help="Keep-alive connections.")
    parser.add_argument(
        "--server-workers",
        type=int,
        default=None,
        help="uvicorn worker processes (default: 2 on PostgreSQL, 1 on SQLite).",
    )
    parser.add_argument("--client-threads", type=int, default=1, help="wrk threads.")
    parser.add_argument("--healthz-seconds", type=int, default=10)
    parser.add_argument(
        "--skip-seconds",
        type=float,
        default=2.0,
        help="Left out at each end of the measured run when computing the sustained rate.",
    )
    parser.add_argument(
        "--bare",
        choices=("both", "bulk", "per-lead", "none"),
        default="both",
        help="Which bare-insert baselines to run.",
    )
    parser.add_argument(
        "--bare-leads",
        type=int,
        default=None,
        help="Leads in the bare baselines (default: --leads).",
    )
    parser.add_argument(
        "--paced",
        type=int,
        action="append",
        default=None,
        metavar="LEADS_PER_SECOND",
        help="After the measured run, also post leads at this steady rate for --paced-seconds "
        "and report their latency (repeatable; default 250; 0 for none).",
    )
    parser.add_argument("--paced-seconds", type=int, default=10)
    parser.add_argument("--max-seconds", type=int, default=900, help="Give up on wrk after this.")
    parser.add_argument("--rss-interval", type=float, default=1.0)
    parser.add_argument("--output", type=Path, default=None, help="Result JSON file.")
    parser.add_argument(
        "--src",
        type=Path,
        default=None,
        help="Serve the leadmarket package found in this folder (a scratch copy's src/) "
        "instead of the installed one, to measure a change before making it.",
    )
    args = parser.parse_args(argv)
    if args.server_workers is None:
        args.server_workers = 2 if args.db == "postgres" else 1
    if args.bare_leads is None:
        args.bare_leads = args.leads
    if args.output is None:
        args.output = RESULTS_DIR / f"intake-{args.db}.json"
    args.paced = [r for r in (args.paced if args.paced is not None else [250]) if r > 0]
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Reading the run back from the database ------------------------------------------------------


async def _postgres_created(dsn: str, since: float) -> list[float]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT extract(epoch FROM created_at)::float8 AS at FROM leads "
            "WHERE created_at >= to_timestamp($1) ORDER BY 1",
            since,
        )
        return [float(row["at"]) for row in rows]
    finally:
        await connection.close()


def lead_times(scratch: Scratch, since: float) -> list[float]:
    """When each lead posted since ``since`` was stamped by the application (epoch seconds)."""
    if scratch.kind == "postgres":
        return asyncio.run(_postgres_created(scratch.postgres_dsn, since))
    connection = sqlite3.connect(scratch.sqlite_path)
    try:
        stamps = [
            dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()
            for (text,) in connection.execute("SELECT created_at FROM leads")
        ]
    finally:
        connection.close()
    return sorted(at for at in stamps if at >= since)


async def _postgres_batches(dsn: str, since: float) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(
            await connection.fetchval(
                "SELECT count(DISTINCT created_at) FROM lead_blind_indexes "
                "WHERE created_at >= to_timestamp($1)",
                since,
            )
        )
    finally:
        await connection.close()


def write_batches(scratch: Scratch, since: float) -> int:
    """How many transactions wrote the leads posted since ``since``: the API writes concurrent
    leads in batches, and every blind index of a batch carries the batch's time."""
    if scratch.kind == "postgres":
        return asyncio.run(_postgres_batches(scratch.postgres_dsn, since))
    connection = sqlite3.connect(scratch.sqlite_path)
    try:
        stamps = {
            text
            for (text,) in connection.execute("SELECT DISTINCT created_at FROM lead_blind_indexes")
            if dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() >= since
        }
    finally:
        connection.close()
    return len(stamps)


def database_version(scratch: Scratch) -> str:
    if scratch.kind == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"

    async def version() -> str:
        connection = await asyncpg.connect(scratch.postgres_dsn)
        try:
            return str(await connection.fetchval("SHOW server_version")).split()[0]
        finally:
            await connection.close()

    return f"PostgreSQL {asyncio.run(version())}"


# Figures --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    sustained_per_second: float
    window_seconds: float
    window_leads: int
    per_second_min: int
    per_second_median: float
    per_second_max: int


def throughput(times: list[float], skip: float) -> Throughput:
    """Leads per second over the steady state: the run without ``skip`` seconds at each end
    (ramp-up after the warm-up, and the drain when the last connections finish)."""
    start, end = times[0] + skip, times[-1] - skip
    if end - start < 1:
        start, end = times[0], times[-1]
    lo, hi = bisect.bisect_left(times, start), bisect.bisect_right(times, end)
    buckets: dict[int, int] = {}
    for at in times[lo:hi]:
        second = int(at - start)
        buckets[second] = buckets.get(second, 0) + 1
    whole = [buckets.get(s, 0) for s in range(int(end - start))] or [hi - lo]
    return Throughput(
        sustained_per_second=(hi - lo) / (end - start),
        window_seconds=end - start,
        window_leads=hi - lo,
        per_second_min=min(whole),
        per_second_median=statistics.median(whole),
        per_second_max=max(whole),
    )


def memory_trend(samples: list[RssSample], times: list[float]) -> dict[str, Any]:
    """Server RSS against leads posted so far, and its least-squares slope per 100k leads
    (fitted after the first 10% of the run, once caches and pools are filled)."""
    points = [(bisect.bisect_right(times, s.at), s.total_kib) for s in samples]
    total = len(times)
    middle = min(points, key=lambda p: abs(p[0] - total / 2))
    fitted = [p for p in points if p[0] >= total * 0.1]
    slope = None
    if len(fitted) >= 3 and fitted[-1][0] > fitted[0][0]:
        xs, ys = [float(p[0]) for p in fitted], [float(p[1]) for p in fitted]
        slope = statistics.linear_regression(xs, ys).slope * 100_000 / MIB
    return {
        "samples": len(samples),
        "start_mib": round(points[0][1] / MIB, 1),
        "middle_mib": round(middle[1] / MIB, 1),
        "middle_at_leads": middle[0],
        "end_mib": round(points[-1][1] / MIB, 1),
        "max_mib": round(max(p[1] for p in points) / MIB, 1),
        "slope_mib_per_100k_leads": None if slope is None else round(slope, 2),
        "per_process_start_end_mib": {
            str(pid): [round(kib / MIB, 1), round(samples[-1].per_pid_kib.get(pid, 0) / MIB, 1)]
            for pid, kib in samples[0].per_pid_kib.items()
        },
        "trace": [[p[0], round(p[1] / MIB, 1)] for p in points[:: max(1, len(points) // 60)]],
    }


def latency_ms(result: WrkResult) -> dict[str, float]:
    return {k: round(v / 1000, 2) for k, v in result.figures["latency_us"].items()}


# The run --------------------------------------------------------------------------------------


def shard_files(
    scratch: Scratch, name: str, start: int, count: int, seller: Seller, threads: int
) -> tuple[list[Path], list[int]]:
    bodies = lead_bodies(start, count, seller_username=seller.username)
    paths = write_shards(scratch.workdir, name, bodies, threads)
    sizes = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    return paths, sizes


def postgres_pids_of(scratch: Scratch) -> list[int]:
    if scratch.kind != "postgres":
        return []
    return postgres_pids(scratch.url.rsplit("/", 1)[1])


def server_environment(scratch: Scratch, src: Path | None) -> dict[str, str]:
    environment = scratch.environment()
    if src is not None:
        environment["PYTHONPATH"] = str(src.resolve())
    return environment


def run_application(args: argparse.Namespace, scratch: Scratch) -> dict[str, Any]:
    seller = create_seller(scratch)
    started = time.perf_counter()
    warm_paths, warm_sizes = shard_files(
        scratch, "warmup", 0, args.warmup_leads, seller, args.client_threads
    )
    paths, sizes = shard_files(
        scratch, "measured", args.warmup_leads, args.leads, seller, args.client_threads
    )
    total = args.warmup_leads + args.leads
    paced_shards = []
    for i, target in enumerate(args.paced):
        count = target * args.paced_seconds
        paced_shards.append(
            shard_files(scratch, f"paced{i}", total, count, seller, args.client_threads)
        )
        total += count
    log(f"generated {total:,} bodies in {time.perf_counter() - started:.1f}s")

    server = Server(server_environment(scratch, args.src), workers=args.server_workers)
    server.start(scratch.workdir / "server.log")
    try:
        log(f"server up at {server.base_url}, pids {server.pids()}; warming up")
        warm = post_leads(
            server.base_url,
            shards=warm_paths,
            shard_sizes=warm_sizes,
            api_key=seller.api_key,
            connections=args.concurrency,
            workdir=scratch.workdir,
            name="warmup",
            max_seconds=args.max_seconds,
        )
        log(f"warm-up: {warm.figures['statuses']} in {warm.wall_seconds:.1f}s")
        healthz = get_path(
            f"{server.base_url}/healthz",
            threads=args.client_threads,
            connections=args.concurrency,
            seconds=args.healthz_seconds,
            workdir=scratch.workdir,
            name="healthz",
        )
        log(f"GET /healthz: {healthz.figures['requests'] / healthz.wall_seconds:,.0f} req/s")

        server_pids = server.pids()
        worker_pids = server.worker_pids()
        postgres_pids = postgres_pids_of(scratch)
        log(f"measured run: {args.leads:,} leads")
        before = cpu_snapshot(server_pids + postgres_pids)
        with RssSampler(server, args.rss_interval) as sampler:
            measured = post_leads(
                server.base_url,
                shards=paths,
                shard_sizes=sizes,
                api_key=seller.api_key,
                connections=args.concurrency,
                workdir=scratch.workdir,
                name="measured",
                max_seconds=args.max_seconds,
            )
            after = cpu_snapshot(server_pids + postgres_pids)
        log(f"measured: {measured.figures['statuses']} in {measured.wall_seconds:.1f}s")
        # Read back before the paced runs add leads of their own.
        times = lead_times(scratch, measured.started_at - 0.5)
        batches = write_batches(scratch, measured.started_at - 0.5)
        paced: list[dict[str, Any]] = []
        for target, (paced_paths, paced_sizes) in zip(args.paced, paced_shards, strict=True):
            run_paced = post_leads(
                server.base_url,
                shards=paced_paths,
                shard_sizes=paced_sizes,
                api_key=seller.api_key,
                connections=args.concurrency,
                workdir=scratch.workdir,
                name=f"paced-{target}",
                max_seconds=args.max_seconds,
                rate=target,
            )
            paced.append(
                {
                    "target_per_second": target,
                    "leads_per_second": round(sum(paced_sizes) / run_paced.wall_seconds, 1),
                    "statuses": run_paced.figures["statuses"],
                    "latency_ms": latency_ms(run_paced),
                }
            )
            log(f"paced at {target:,}/s: {paced[-1]}")
    finally:
        server.stop()

    created = measured.figures["statuses"].get("201", 0)
    steady = throughput(times, args.skip_seconds)
    statuses: dict[str, int] = measured.figures["statuses"]
    socket_errors: dict[str, int] = measured.figures["errors"]
    errors = {
        **{f"http_{code}": n for code, n in statuses.items() if code != "201"},
        **{f"socket_{kind}": n for kind, n in socket_errors.items() if kind != "status"},
    }
    server_cpu = cpu_used(before, after, server_pids)
    postgres_cpu = cpu_used(before, after, postgres_pids)
    machine_busy = after.machine_busy - before.machine_busy
    machine_total = after.machine_total - before.machine_total
    return {
        "database": database_version(scratch),
        "leads_posted": args.leads,
        "leads_created_201": created,
        "leads_in_database": len(times),
        "write_batches": batches,
        "leads_per_batch": round(len(times) / batches, 2) if batches else None,
        "errors": {k: v for k, v in errors.items() if v},
        "sustained": steady.__dict__,
        "overall_leads_per_second": created / measured.wall_seconds,
        "wall_seconds": measured.wall_seconds,
        "latency_ms": latency_ms(measured),
        "healthz": {
            "requests_per_second": healthz.figures["requests"] / healthz.wall_seconds,
            "latency_ms": latency_ms(healthz),
            "errors": {k: v for k, v in healthz.figures["errors"].items() if v},
            "client_cpu_seconds": healthz.cpu_seconds,
        },
        "cpu": {
            "wall_seconds": after.at - before.at,
            "server_seconds": server_cpu,
            "server_ms_per_lead": 1000 * server_cpu / max(created, 1),
            "server_system_seconds": cpu_used(before, after, server_pids, kind=1),
            "server_per_worker_seconds": {
                str(pid): round(cpu_used(before, after, [pid]), 2) for pid in worker_pids
            },
            "postgres_seconds": postgres_cpu,
            "client_seconds": measured.cpu_seconds,
            # Anything else on the machine (other users' jobs, the kernel): noise to watch.
            "other_seconds": machine_busy - server_cpu - postgres_cpu - measured.cpu_seconds,
            "machine_busy_seconds": machine_busy,
            "machine_cores_busy": machine_busy / (after.at - before.at),
            "machine_busy_share": machine_busy / machine_total if machine_total else None,
            "client_share_of_busy": measured.cpu_seconds / machine_busy if machine_busy else None,
            # What the machine's cores would carry if nothing else ran on them and the run
            # stayed CPU-bound: a figure that other people's jobs disturb far less than leads/s.
            "cpu_bound_estimate_leads_per_second": (os.cpu_count() or 1)
            * created
            / max(server_cpu + postgres_cpu + measured.cpu_seconds, 1e-9),
        },
        "server_rss": memory_trend(sampler.samples, times),
        "paced": paced,
    }


def run_bare(args: argparse.Namespace) -> dict[str, Any]:
    shapes = {"both": ["bulk", "per-lead"], "none": []}.get(args.bare, [args.bare])
    results: dict[str, Any] = {}
    for shape in shapes:
        with scratch_database(args.db, "bare") as scratch:
            seller = create_seller(scratch)
            bodies = lead_bodies(
                args.warmup_leads, args.bare_leads, seller_username=seller.username
            )
            rows = bare.adapt(
                bare.build_rows(bodies, seller_id=seller.user_id, seller_username=seller.username),
                sqlite=scratch.kind == "sqlite",
            )
            concurrency = args.concurrency if scratch.kind == "postgres" else 1
            log(f"bare insert, {shape}: {args.bare_leads:,} leads")
            result = bare.insert_bare(scratch, rows, shape=shape, concurrency=concurrency)
            results[shape] = {
                "leads": result.leads,
                "rows": result.rows,
                "seconds": result.seconds,
                "leads_per_second": result.leads_per_second,
                "rows_per_second": result.rows_per_second,
                "connections": 1 if shape == "bulk" else concurrency,
            }
            log(f"bare insert, {shape}: {result.leads_per_second:,.0f} leads/s")
    return results


def ratios(app: dict[str, Any], baselines: dict[str, Any]) -> dict[str, float]:
    rate = app["sustained"]["sustained_per_second"]
    out = {"app_over_healthz": rate / app["healthz"]["requests_per_second"]}
    for shape, figures in baselines.items():
        # A lead is six rows in both, so this is also app rows/s over bare rows/s.
        out[f"app_over_bare_{shape.replace('-', '_')}"] = rate / figures["leads_per_second"]
    return out


def print_table(result: dict[str, Any]) -> None:
    app, base, conf = result["app"], result["baselines"], result["config"]
    lat, hz = app["latency_ms"], app["healthz"]
    cpu, rss = app["cpu"], app["server_rss"]
    steady = app["sustained"]
    lines = [
        "",
        f"Lead intake — {app['database']}, {conf['server_workers']} server worker(s), "
        f"{conf['concurrency']} connections (wrk, {conf['client_threads']} thread), "
        f"{conf['leads']:,} leads after {conf['warmup_leads']:,} warm-up, {conf['cpu_count']} CPUs",
        "",
        f"{'':38}{'per s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}",
        f"{'POST /api/v1/leads, sustained':38}{steady['sustained_per_second']:>10,.0f}"
        f"{lat['p50']:>9.1f}{lat['p95']:>9.1f}{lat['p99']:>9.1f}{lat['max']:>9.1f}",
        f"{'  (whole run incl. ramp and drain)':38}{app['overall_leads_per_second']:>10,.0f}",
        f"{'GET /healthz, same client load':38}{hz['requests_per_second']:>10,.0f}"
        f"{hz['latency_ms']['p50']:>9.1f}{hz['latency_ms']['p95']:>9.1f}"
        f"{hz['latency_ms']['p99']:>9.1f}{hz['latency_ms']['max']:>9.1f}",
    ]
    for shape, figures in base.items():
        label = f"bare insert, {shape} ({figures['connections']} conn)"
        lines.append(
            f"{label:38}{figures['leads_per_second']:>10,.0f}"
            f"   leads/s = {figures['rows_per_second']:,.0f} rows/s"
        )
    lines += [
        "",
        "ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in result["ratios"].items()),
        f"steady window {steady['window_seconds']:.1f}s: per-second min/median/max "
        f"{steady['per_second_min']}/{steady['per_second_median']:g}/{steady['per_second_max']}",
        f"answers: {app['leads_created_201']:,} × 201, in database {app['leads_in_database']:,}, "
        f"errors {app['errors'] or 'none'}",
        f"written in {app['write_batches']:,} transactions ({app['leads_per_batch']} leads each)",
        f"CPU s: server {cpu['server_seconds']:.1f} ({cpu['server_ms_per_lead']:.2f} ms/lead, "
        f"{cpu['server_system_seconds']:.1f} of it in the kernel; "
        f"per worker {list(cpu['server_per_worker_seconds'].values())}), "
        f"postgres {cpu['postgres_seconds']:.1f}, "
        f"wrk {cpu['client_seconds']:.2f} ({100 * (cpu['client_share_of_busy'] or 0):.1f}% of "
        f"busy CPU), other processes {cpu['other_seconds']:.1f}; machine "
        f"{cpu['machine_cores_busy']:.2f} of {conf['cpu_count']} cores busy",
        f"if the bench had the machine to itself (CPU-bound estimate): "
        f"{cpu['cpu_bound_estimate_leads_per_second']:,.0f} leads/s"
        + (
            f"  — WARNING: other processes used {100 * share:.0f}% of the busy CPU"
            if (share := cpu["other_seconds"] / max(cpu["machine_busy_seconds"], 1e-9)) > 0.1
            else ""
        ),
        f"server RSS MiB: start {rss['start_mib']} → middle {rss['middle_mib']} "
        f"(at {rss['middle_at_leads']:,} leads) → end {rss['end_mib']}, max {rss['max_mib']}; "
        f"slope {rss['slope_mib_per_100k_leads']} MiB per 100k leads",
        *(
            f"paced at {p['target_per_second']:,}/s: {p['leads_per_second']:,.0f}/s, latency ms "
            f"p50 {p['latency_ms']['p50']} p95 {p['latency_ms']['p95']} "
            f"p99 {p['latency_ms']['p99']} max {p['latency_ms']['max']}, {p['statuses']}"
            for p in app["paced"]
        ),
        "",
    ]
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = {
        key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
    } | {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "client": "wrk " + "4.1.0 (Debian), bench/intake/intake.lua",
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average_at_start": os.getloadavg(),
    }
    with scratch_database(args.db, "app") as scratch:
        app = run_application(args, scratch)
    baselines = run_bare(args)
    result = {"config": config, "app": app, "baselines": baselines}
    result["ratios"] = ratios(app, baselines)
    print_table(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1, default=str) + "\n")
    log(f"wrote {args.output}")


if __name__ == "__main__":
    main()
