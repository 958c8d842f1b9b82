"""Finding all of one consumer's data among 1,000,000 leads (privacy issue, target < 50 ms).

    .venv/bin/python -m bench.consumer_lookup.run [--leads 1000000] [--samples 300]

A scratch PostgreSQL database gets ``--leads`` leads written straight through asyncpg's COPY
(rows generated here, not through intake, which would take hours): each with its vault, its
three blind indexes (email, phone, client address; the digests are the real keyed digests of
``leads.vault.BlindIndexer``), its consent record, and a disclosure for every sold lead. About
70% of the consumers have one lead, the rest two to four; 30% of the leads are already
destroyed (no vault, no indexes), as after the 48-hour rule. The sampled consumers' vaults are
sealed for real (``seal_personal_data``); the others hold placeholder bytes of the same shape.

Then, for ``--samples`` random consumers, each in its own transaction (rolled back), it times
``privacy.consumer_data``:

* **find**: ``consumer_from`` + ``find_consumer_leads`` by email and phone;
* **report**: ``build_report`` for a right to know (find, the leads with their sellers, the
  disclosure records and the two lists);
* **access**: ``build_report`` with the pieces (each lead's vault opened and the read audited);

and, as the baseline in the same run, a primary-key read of one random lead row
(``session.get(Lead, id)``, in a transaction of its own like the others). Prints p50/p99/max
per operation and the ratio to the baseline; writes ``bench/results/consumer-lookup.json``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import platform
import random
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs ship with asyncpg

from bench.intake.scratch import Scratch, scratch_database
from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine
from leadmarket.kit.ids import new_id
from leadmarket.leads.intake import LeadsKit
from leadmarket.leads.vault import IndexKind, seal_personal_data
from leadmarket.models import Lead
from leadmarket.orders.service import disclosed_categories
from leadmarket.privacy.consumer_data import build_report, consumer_from, find_consumer_leads
from leadmarket.verticals.registry import all_verticals

RESULTS = Path(__file__).resolve().parents[1] / "results" / "consumer-lookup.json"
CHUNK = 50_000
VERTICALS = [v.slug for v in all_verticals()]
# Fresno (559) exchanges that phonenumbers accepts: no N11, no 555.
EXCHANGES = [n for n in range(200, 1000) if n % 100 != 11 and n != 555]
CONSENT_TEXT = "I agree that the seller and Leadmarket buyers may contact me about my request."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.consumer_lookup.run", description=__doc__
    )
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def email_of(consumer: int) -> str:
    return f"consumer.{consumer}@example.com"


def phone_of(consumer: int) -> str:
    return f"+1559{EXCHANGES[consumer // 10_000]}{consumer % 10_000:04d}"


class Plan:
    """Which consumer each lead belongs to, which leads are sold and which destroyed."""

    def __init__(self, leads: int, rng: random.Random) -> None:
        consumers = int(leads * 0.7)
        self.consumer = list(range(consumers)) + [
            rng.randrange(consumers) for _ in range(leads - consumers)
        ]
        rng.shuffle(self.consumer)
        self.consumers = consumers
        self.sold = [rng.random() < 0.4 for _ in range(leads)]
        # Destroyed: sold or ended more than 48 hours ago (30% of all leads).
        self.destroyed = [rng.random() < 0.3 for _ in range(leads)]
        now = dt.datetime.now(dt.UTC)
        self.created = [
            now - dt.timedelta(seconds=rng.randrange(365 * 86400)) for _ in range(leads)
        ]
        self.ids = [new_id("lead") for _ in range(leads)]

    def held_consumers(self) -> list[int]:
        return sorted({c for c, d in zip(self.consumer, self.destroyed, strict=True) if not d})


async def _copy(
    connection: Any, table: str, columns: list[str], rows: list[tuple[Any, ...]]
) -> None:
    await connection.copy_records_to_table(table, records=rows, columns=columns)


LEAD_COLUMNS = [
    "id",
    "seller_id",
    "vertical",
    "status",
    "source",
    "country",
    "region",
    "city",
    "postal_prefix",
    "age_band",
    "preview_attributes",
    "quality_score",
    "quality_reasons",
    "sale_mode",
    "currency",
    "reserve_cents",
    "buy_now_cents",
    "price_cents",
    "duration_minutes",
    "exclusive",
    "max_buyers",
    "sold_count",
    "auction_ends_at",
    "created_at",
    "pii_expires_at",
    "pii_destroyed_at",
]


def _chunks(n: int) -> Iterator[range]:
    for start in range(0, n, CHUNK):
        yield range(start, min(n, start + CHUNK))


async def load(
    scratch: Scratch, settings: Settings, plan: Plan, sample: set[int]
) -> dict[str, Any]:
    kit = LeadsKit(settings)
    keyring = settings.keyring()
    connection = await asyncpg.connect(scratch.postgres_dsn)
    started = time.perf_counter()
    try:
        now = dt.datetime.now(dt.UTC)
        sellers = [new_id("usr") for _ in range(20)]
        buyers = [new_id("usr") for _ in range(200)]
        await _copy(
            connection,
            "users",
            [
                "id",
                "email",
                "username",
                "username_key",
                "role",
                "status",
                "password_hash",
                "password_changed_at",
                "created_at",
                "updated_at",
            ],
            [
                (
                    uid,
                    f"{role}{i}@example.com",
                    f"{role}{i}",
                    f"{role}{i}",
                    role,
                    "active",
                    "x",
                    now,
                    now,
                    now,
                )
                for role, ids in (("seller", sellers), ("buyer", buyers))
                for i, uid in enumerate(ids)
            ],
        )
        text_sha = "0" * 64
        await connection.execute(
            "INSERT INTO consent_texts (sha256, text, created_at) VALUES ($1, $2, $3)",
            text_sha,
            CONSENT_TEXT,
            now,
        )
        digests: dict[int, tuple[str, str]] = {}

        def digest_of(consumer: int) -> tuple[str, str]:
            found = digests.get(consumer)
            if found is None:
                found = (
                    kit.indexer.digest(IndexKind.EMAIL, email_of(consumer)),
                    kit.indexer.digest(IndexKind.PHONE, phone_of(consumer)),
                )
                digests[consumer] = found
            return found

        ip_digests = [
            kit.indexer.digest(IndexKind.IP, f"198.51.{i // 256}.{i % 256}") for i in range(4096)
        ]
        placeholder_key = secrets.token_bytes(60)
        placeholder_fields = json.dumps(
            {
                name: base64.b64encode(secrets.token_bytes(40)).decode()
                for name in (
                    "first_name",
                    "last_name",
                    "email",
                    "phone",
                    "birth_date",
                    "street",
                    "postal_code",
                    "attributes",
                    "consent_ip",
                    "consent_user_agent",
                )
            }
        )
        categories = {v: json.dumps(disclosed_categories(v)) for v in VERTICALS}
        counts = dict.fromkeys(("leads", "vaults", "indexes", "consents", "disclosures"), 0)
        loaded_at = dt.datetime.now(dt.UTC)
        for part in _chunks(len(plan.ids)):
            leads, vaults, indexes, consents, disclosures = [], [], [], [], []
            for i in part:
                lead_id, consumer, created = plan.ids[i], plan.consumer[i], plan.created[i]
                vertical = VERTICALS[i % len(VERTICALS)]
                sold, destroyed = plan.sold[i], plan.destroyed[i]
                expires = created + dt.timedelta(hours=49) if sold or destroyed else None
                if expires is not None and not destroyed:
                    # Still held, so its deadline is still ahead (past it, the data counts as
                    # destroyed and a rights request leaves the lead out).
                    expires = max(expires, loaded_at + dt.timedelta(hours=1))
                leads.append(
                    (
                        lead_id,
                        sellers[i % len(sellers)],
                        vertical,
                        "sold" if sold else ("unsold" if destroyed else "open"),
                        "api",
                        "US",
                        "CA",
                        "Fresno",
                        "936",
                        "35-44",
                        "{}",
                        90,
                        "[]",
                        "fixed",
                        "USD",
                        None,
                        None,
                        2500,
                        None,
                        True,
                        1,
                        1 if sold else 0,
                        None,
                        created,
                        expires,
                        expires + dt.timedelta(minutes=1) if destroyed and expires else None,
                    )
                )
                if not destroyed:
                    if consumer in sample:
                        sealed = seal_personal_data(
                            keyring,
                            lead_id,
                            {
                                "first_name": "Ana",
                                "last_name": f"Silva{consumer}",
                                "email": email_of(consumer),
                                "phone": phone_of(consumer),
                                "birth_date": "1980-04-02",
                                "street": "1 Olive Ave",
                                "postal_code": "93650",
                                "attributes": {"vehicle_year": 2015},
                                "consent_ip": "198.51.0.1",
                                "consent_user_agent": "Mozilla/5.0",
                            },
                        )
                        vaults.append(
                            (
                                lead_id,
                                sealed.key_version,
                                sealed.wrapped_key,
                                json.dumps(sealed.sealed_fields),
                                created,
                            )
                        )
                    else:
                        vaults.append((lead_id, 1, placeholder_key, placeholder_fields, created))
                    email_digest, phone_digest = digest_of(consumer)
                    for kind, digest in (
                        ("email", email_digest),
                        ("phone", phone_digest),
                        ("ip", ip_digests[i % len(ip_digests)]),
                    ):
                        indexes.append((lead_id, kind, digest, vertical, created))
                consents.append(
                    (
                        new_id("cns"),
                        f"cert_{lead_id}",
                        lead_id,
                        sellers[i % len(sellers)],
                        vertical,
                        text_sha,
                        created,
                        "https://quotes.example.com/",
                        '["seller"]',
                        ip_digests[i % len(ip_digests)],
                        "0" * 64,
                        created,
                        None,
                    )
                )
                if sold:
                    disclosures.append(
                        (
                            new_id("dsc"),
                            lead_id,
                            buyers[i % len(buyers)],
                            "buyer",
                            categories[vertical],
                            "sale",
                            True,
                            None,
                            created,
                        )
                    )
            await _copy(connection, "leads", LEAD_COLUMNS, leads)
            await _copy(
                connection,
                "lead_vaults",
                ["lead_id", "key_version", "wrapped_key", "sealed_fields", "created_at"],
                vaults,
            )
            await _copy(
                connection,
                "lead_blind_indexes",
                ["lead_id", "kind", "digest", "vertical", "created_at"],
                indexes,
            )
            await _copy(
                connection,
                "consents",
                [
                    "id",
                    "certificate",
                    "lead_id",
                    "seller_id",
                    "vertical",
                    "text_sha256",
                    "given_at",
                    "page_url",
                    "parties",
                    "ip_digest",
                    "user_agent_digest",
                    "recorded_at",
                    "withdrawn_at",
                ],
                consents,
            )
            await _copy(
                connection,
                "disclosures",
                [
                    "id",
                    "lead_id",
                    "recipient_id",
                    "recipient_category",
                    "categories",
                    "purpose",
                    "sold",
                    "order_id",
                    "disclosed_at",
                ],
                disclosures,
            )
            for name, rows in (
                ("leads", leads),
                ("vaults", vaults),
                ("indexes", indexes),
                ("consents", consents),
                ("disclosures", disclosures),
            ):
                counts[name] += len(rows)
            print(
                f"  loaded {part.stop:,} leads ({time.perf_counter() - started:.0f} s)", flush=True
            )
        await connection.execute("ANALYZE")
        counts["load_seconds"] = round(time.perf_counter() - started, 1)
        return counts
    finally:
        await connection.close()


def summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p90_ms": round(cuts[89], 3),
        "p99_ms": round(cuts[98], 3),
        "max_ms": round(ms[-1], 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


async def timed(db: Database, operation: Callable[[Any], Awaitable[Any]]) -> tuple[float, Any]:
    """One operation in a transaction of its own, rolled back (the access report writes its
    audit entries); the time covers the whole transaction."""
    session = db.new_session()
    try:
        started = time.perf_counter()
        result = await operation(session)
        elapsed = time.perf_counter() - started
        await session.rollback()
        return elapsed, result
    finally:
        await session.close()


async def measure(
    settings: Settings, plan: Plan, sample: list[int], rng: random.Random
) -> dict[str, Any]:
    db = Database(make_engine(settings.database_url))
    kit = LeadsKit(settings)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=366)
    times: dict[str, list[float]] = {"pk": [], "find": [], "report": [], "access": []}
    found: list[int] = []
    pieces = 0
    try:
        warmup = sample[: min(30, len(sample))]
        for phase, consumers in (("warmup", warmup), ("measured", sample)):
            for consumer in consumers:
                lead_id = plan.ids[rng.randrange(len(plan.ids))]
                pk, _ = await timed(db, lambda s, lead_id=lead_id: s.get(Lead, lead_id))
                who = consumer_from(kit, email=email_of(consumer), phone=phone_of(consumer))

                def find(s: Any, who: Any = who) -> Awaitable[list[str]]:
                    return find_consumer_leads(s, who)

                def report(s: Any, who: Any = who, pieces: bool = False) -> Awaitable[Any]:
                    return build_report(
                        s, settings, who, since=since, include_pieces=pieces, request_id="bench"
                    )

                t_find, ids = await timed(db, find)
                t_report, _ = await timed(db, report)
                t_access, answer = await timed(db, lambda s, report=report: report(s, pieces=True))
                if phase == "measured":
                    times["pk"].append(pk)
                    times["find"].append(t_find)
                    times["report"].append(t_report)
                    times["access"].append(t_access)
                    found.append(len(ids))
                    pieces += len(answer["pieces"])
                    expected = (
                        sum(
                            1
                            for c, d in zip(plan.consumer, plan.destroyed, strict=True)
                            if c == consumer and not d
                        )
                        if len(found) <= 20
                        else None
                    )
                    if expected is not None and expected != len(ids):
                        raise SystemExit(
                            f"consumer {consumer}: found {len(ids)}, expected {expected}"
                        )
    finally:
        await db.dispose()
    result = {name: summary(values) for name, values in times.items()}
    base = result["pk"]["p50_ms"]
    for name in ("find", "report", "access"):
        result[name]["p50_ratio_to_pk"] = round(result[name]["p50_ms"] / base, 1)
    result["leads_per_consumer"] = {
        "mean": round(statistics.fmean(found), 2),
        "max": max(found),
        "pieces_opened": pieces,
    }
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    print(f"planning {args.leads:,} leads", flush=True)
    plan = Plan(args.leads, rng)
    sample = rng.sample(plan.held_consumers(), args.samples)
    with scratch_database("postgres", "lookup") as scratch:
        settings = scratch.settings()
        counts = asyncio.run(load(scratch, settings, plan, set(sample)))
        print(f"loaded: {counts}", flush=True)
        result = asyncio.run(measure(settings, plan, sample, rng))
    out = {
        "benchmark": "consumer_lookup",
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "database": "postgresql",
        "leads": args.leads,
        "consumers": plan.consumers,
        "samples": args.samples,
        "rows": counts,
        "target": "find all of one consumer's data among 1,000,000 leads < 50 ms",
        "results": result,
    }
    print()
    print(f"{'operation':<44} {'p50':>8} {'p99':>8} {'max':>8}  ÷pk p50")
    labels = {
        "pk": "baseline: primary-key read of one lead",
        "find": "find_consumer_leads (email + phone)",
        "report": "build_report, right to know",
        "access": "build_report, access (vaults opened, audited)",
    }
    for name, label in labels.items():
        r = result[name]
        ratio = r.get("p50_ratio_to_pk", 1.0)
        figures = f"{r['p50_ms']:>6.2f}ms {r['p99_ms']:>6.2f}ms {r['max_ms']:>6.2f}ms"
        print(f"{label:<44} {figures}  {ratio}")
    print(f"leads per sampled consumer: {result['leads_per_consumer']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
