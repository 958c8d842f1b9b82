"""CPU cost of one lead, in process, for one or more source trees measured in the same run.

    .venv/bin/python -m bench.intake.cpu --db postgres --leads 1000 --rounds 3 \\
        --src src --src /tmp/scratch/src

Throughput on a shared two-core machine swings with whatever else runs on it; the CPU time the
application spends per lead swings much less. For each source tree (a scratch copy with a
change, against the checked-out one), a fresh process imports leadmarket from that tree, makes
a scratch database, and posts leads one at a time through the whole ASGI app (httpx's ASGI
transport: middleware, validation, auth, service, SQL, commit; no HTTP parsing). The trees take
turns for ``--rounds`` rounds and the medians are compared with the first tree."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.intake.scratch import Scratch, Seller

REPO_ROOT = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.intake.cpu")
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--leads", type=int, default=1_000, help="Leads timed per round.")
    parser.add_argument("--warmup-leads", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--src",
        type=Path,
        action="append",
        default=None,
        help="A src/ folder holding leadmarket; repeat to compare (default: the checkout's).",
    )
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def measure_here(args: argparse.Namespace) -> dict[str, Any]:
    """One round in this process, with whichever leadmarket ``sys.path`` finds first."""
    # Imported here: the parent process must not import leadmarket from the checkout.
    from bench.intake.scratch import create_seller, scratch_database

    with scratch_database(args.db, "cpu") as scratch:
        seller = create_seller(scratch)
        return asyncio.run(_post_leads(args, scratch, seller))


async def _post_leads(args: argparse.Namespace, scratch: Scratch, seller: Seller) -> dict[str, Any]:
    import httpx
    from sqlalchemy import event

    from bench.intake.bodies import lead_bodies
    from leadmarket.app import create_app

    bodies = list(lead_bodies(0, args.warmup_leads + args.leads, seller_username=seller.username))
    app = create_app(scratch.settings())
    statements: Counter[str] = Counter()

    def on_execute(*call: Any) -> None:
        statements[str(call[2]).split(None, 1)[0]] += 1

    event.listen(app.state.db.engine.sync_engine, "before_cursor_execute", on_execute)
    headers = {"Authorization": f"Bearer {seller.api_key}"}
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bench", headers=headers
        ) as client:
            for body in bodies[: args.warmup_leads]:
                response = await client.post("/api/v1/leads", json=body)
                assert response.status_code == 201, response.text
            statements.clear()
            cpu, wall = time.process_time(), time.perf_counter()
            for body in bodies[args.warmup_leads :]:
                response = await client.post("/api/v1/leads", json=body)
                assert response.status_code == 201, response.text
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await app.state.db.dispose()
    return {
        "cpu_ms_per_lead": 1000 * cpu / args.leads,
        "wall_ms_per_lead": 1000 * wall / args.leads,
        "statements_per_lead": {k: n / args.leads for k, n in sorted(statements.items())},
    }


def one_round(args: argparse.Namespace, src: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "bench.intake.cpu",
        "--one",
        f"--db={args.db}",
        f"--leads={args.leads}",
        f"--warmup-leads={args.warmup_leads}",
    ]
    completed = subprocess.run(  # noqa: S603 - our interpreter, our arguments
        command,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": f"{src.resolve()}{os.pathsep}{REPO_ROOT}"},
        capture_output=True,
        text=True,
        check=False,
    )
    line = next((ln for ln in completed.stdout.splitlines() if ln.startswith("{")), None)
    if completed.returncode != 0 or line is None:
        raise RuntimeError(f"round failed for {src}:\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(line)
    return result


def main() -> None:
    args = parse_args()
    if args.one:
        print(json.dumps(measure_here(args)))
        return
    trees: list[Path] = args.src or [REPO_ROOT / "src"]
    rounds: dict[Path, list[dict[str, Any]]] = {tree: [] for tree in trees}
    for number in range(1, args.rounds + 1):
        for tree in trees:
            rounds[tree].append(one_round(args, tree))
            last = rounds[tree][-1]
            print(
                f"round {number} {tree}: {last['cpu_ms_per_lead']:.2f} ms CPU, "
                f"{last['wall_ms_per_lead']:.2f} ms wall per lead",
                file=sys.stderr,
                flush=True,
            )
    base: float | None = None
    print(
        f"\n{args.db}, {args.leads} leads one at a time per round, median of {args.rounds} rounds"
    )
    print(f"{'source tree':48}{'CPU ms/lead':>12}{'vs first':>10}{'wall ms':>9}  statements/lead")
    for tree, results in rounds.items():
        cpu = statistics.median(r["cpu_ms_per_lead"] for r in results)
        wall = statistics.median(r["wall_ms_per_lead"] for r in results)
        base = base or cpu
        counts = results[-1]["statements_per_lead"]
        shown = ", ".join(f"{k} {v:g}" for k, v in counts.items())
        print(f"{str(tree)[-48:]:48}{cpu:>12.2f}{cpu / base:>10.2f}{wall:>9.2f}  {shown}")


if __name__ == "__main__":
    main()
