"""Matching benchmark: 10,000 varied campaigns over all verticals, 20,000 lead previews, the
index (``campaigns.matching``) against a linear scan of the same compiled campaigns, measured in
the same run. Prints per-lead p50/p99 in microseconds and writes ``bench/results/matching.json``.

    .venv/bin/python -m bench.matching.run [--campaigns 10000] [--leads 20000] [--seed 7]

Every campaign is a real one: its body passes ``CampaignIn`` and the vertical checks of
``campaigns.service``, exactly as the API would store it. Every lead's answer from the index is
compared with the linear scan's; a difference stops the run."""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import platform
import random
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from leadmarket.campaigns import service
from leadmarket.campaigns.matching import (
    AGE_BAND_BOUNDS,
    CompiledCampaign,
    LeadPreview,
    build_index,
    linear_scan,
)
from leadmarket.campaigns.schemas import DAYS
from leadmarket.leads.reference import CA_PROVINCES, US_STATES
from leadmarket.verticals.registry import FieldSpec, Vertical, all_verticals

RESULTS = Path(__file__).resolve().parents[1] / "results" / "matching.json"
ZONES = (
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "America/Phoenix",
    "America/Toronto",
    "America/Vancouver",
)
REGIONS = sorted(US_STATES) + sorted(CA_PROVINCES)
# A pool of postal prefixes: campaigns target some, leads come from all of them.
US_PREFIXES = [f"{n:03d}" for n in range(10, 1000)]
CA_PREFIXES = [f"{a}{d}{b}" for a in "KLMHT" for d in "0123456789" for b in "ABCEGHJ"]


def _value(rng: random.Random, spec: FieldSpec) -> Any:
    if spec.enum is not None:
        return rng.choice(spec.enum)
    if spec.type == "boolean":
        return rng.random() < 0.5
    low = int(spec.minimum if spec.minimum is not None else 0)
    high = int(spec.maximum if spec.maximum is not None else low + 100)
    return rng.randint(low, high)


def _attribute_rule(rng: random.Random, spec: FieldSpec) -> Any:
    if spec.enum is not None:
        return rng.sample(spec.enum, rng.randint(1, max(1, len(spec.enum) // 2)))
    if spec.type == "boolean":
        return rng.random() < 0.7
    low = int(spec.minimum if spec.minimum is not None else 0)
    high = int(spec.maximum if spec.maximum is not None else low + 100)
    a, b = sorted((rng.randint(low, high), rng.randint(low, high)))
    return rng.choice([{"min": a}, {"max": b}, {"min": a, "max": b}])


def campaign_body(rng: random.Random, vertical: Vertical) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    where = rng.random()
    if where < 0.30:  # a handful of ZIP/postal areas
        pool = US_PREFIXES if rng.random() < 0.85 else CA_PREFIXES
        filters["postal_prefixes"] = rng.sample(pool, rng.randint(1, 30))
    elif where < 0.80:  # some states or provinces
        filters["regions"] = rng.sample(REGIONS, rng.randint(1, 6))
    # else: anywhere
    if rng.random() < 0.5:
        low = rng.choice([18, 25, 35, 45])
        filters["age_min"] = low
        filters["age_max"] = rng.choice([h for h in (34, 44, 54, 64, 120) if h >= low])
    if rng.random() < 0.5:
        filters["min_quality"] = rng.randint(30, 90)
    previewed = [spec for spec in vertical.fields if spec.preview]
    chosen = rng.sample(previewed, rng.randint(0, min(3, len(previewed))))
    filters["attributes"] = {spec.name: _attribute_rule(rng, spec) for spec in chosen}
    body: dict[str, Any] = {
        "name": "bench",
        "vertical": vertical.slug,
        "filters": filters,
        "bid_cents": rng.randint(100, 10_000),
        "timezone": rng.choice(ZONES),
        "exclusive_only": rng.random() < 0.2,
    }
    if rng.random() < 0.4:
        start = rng.randint(0, 12)
        body["schedule"] = {
            "days": rng.sample(DAYS, rng.randint(3, 7)),
            "start_hour": start,
            "end_hour": rng.randint(start + 4, 24),
        }
    return body


def make_campaigns(rng: random.Random, count: int) -> list[SimpleNamespace]:
    """Campaign rows as ``service.active_campaign_rows`` would give them."""
    verticals = all_verticals()
    rows = []
    for number in range(count):
        data, filters = service.check_campaign(campaign_body(rng, rng.choice(verticals)))
        row = SimpleNamespace(
            id=f"cmp_{number:08d}",
            buyer_id=f"usr_{number % 700:04d}",
            vertical=data.vertical,
            filters=filters,
            bid_cents=data.bid_cents,
            currency=data.currency,
            timezone=data.timezone,
            schedule=data.schedule.model_dump() if data.schedule else None,
            exclusive_only=data.exclusive_only,
        )
        rows.append(row)
    return rows


def make_previews(rng: random.Random, count: int) -> list[tuple[LeadPreview, dt.datetime]]:
    verticals = all_verticals()
    bands = list(AGE_BAND_BOUNDS)
    start = dt.datetime(2026, 11, 16, tzinfo=dt.UTC)  # a Monday
    leads = []
    for _ in range(count):
        vertical = rng.choice(verticals)
        canadian = rng.random() < 0.1
        region = rng.choice(sorted(CA_PROVINCES) if canadian else sorted(US_STATES))
        preview = LeadPreview(
            vertical=vertical.slug,
            region=region,
            postal_prefix=rng.choice(CA_PREFIXES if canadian else US_PREFIXES),
            age_band=rng.choice(bands[1:]),
            quality_score=min(100, max(0, int(rng.gauss(75, 15)))),
            exclusive=rng.random() < 0.6,
            attributes={
                spec.name: _value(rng, spec)
                for spec in vertical.fields
                if spec.preview and (spec.required or rng.random() < 0.5)
            },
            country="CA" if canadian else "US",
        )
        leads.append((preview, start + dt.timedelta(minutes=rng.randint(0, 7 * 24 * 60 - 1))))
    return leads


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def summary(samples_ns: list[int]) -> dict[str, float]:
    micros = sorted(ns / 1000 for ns in samples_ns)
    return {
        "p50_us": round(percentile(micros, 0.50), 1),
        "p99_us": round(percentile(micros, 0.99), 1),
        "max_us": round(micros[-1], 1),
        "mean_us": round(statistics.fmean(micros), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--campaigns", type=int, default=10_000)
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    started = time.perf_counter()
    rows = make_campaigns(rng, args.campaigns)
    leads = make_previews(rng, args.leads)
    print(
        f"built {len(rows)} campaigns and {len(leads)} previews "
        f"in {time.perf_counter() - started:.1f} s"
    )

    build_started = time.perf_counter_ns()
    index = build_index(rows)
    build_ms = (time.perf_counter_ns() - build_started) / 1e6
    # The baseline scans the same campaigns, compiled the same way.
    campaigns = [CompiledCampaign(row) for row in rows]

    gc.collect()
    index_ns: list[int] = []
    linear_ns: list[int] = []
    matched = 0
    clock = time.perf_counter_ns
    for preview, now in leads:
        t0 = clock()
        found = index.match(preview, now)
        t1 = clock()
        expected = linear_scan(campaigns, preview, now)
        t2 = clock()
        index_ns.append(t1 - t0)
        linear_ns.append(t2 - t1)
        if [c.id for c in found] != [c.id for c in expected]:
            raise SystemExit(f"index and linear scan disagree on {preview}")
        matched += len(found)

    result = {
        "campaigns": len(campaigns),
        "leads": len(leads),
        "seed": args.seed,
        "index_build_ms": round(build_ms, 1),
        "matches_per_lead": round(matched / len(leads), 2),
        "index": summary(index_ns),
        "linear_scan": summary(linear_ns),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    result["speedup_p50"] = round(
        result["linear_scan"]["p50_us"] / max(result["index"]["p50_us"], 0.1), 1
    )
    print(f"index built in {build_ms:.1f} ms; {result['matches_per_lead']} matches per lead")
    print(f"{'':14}{'p50 µs':>10}{'p99 µs':>10}{'max µs':>10}{'mean µs':>10}")
    for name in ("index", "linear_scan"):
        s = result[name]
        print(f"{name:14}{s['p50_us']:>10}{s['p99_us']:>10}{s['max_us']:>10}{s['mean_us']:>10}")
    print(f"speed-up at p50: {result['speedup_p50']}x; target p99 < 1000 µs per lead")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
