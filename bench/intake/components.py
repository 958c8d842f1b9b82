"""The price of each piece of an intake request, measured directly as CPU time per call, so
the sampled profile (which a busy machine blurs) can be checked against numbers that do not
depend on what else runs: validation, sealing, digests, quality, one SQL statement built
inline, the same statement built once, the raw driver, one transaction, GET /healthz."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from sqlalchemy import bindparam, select, text

from bench.intake.bodies import lead_bodies
from bench.intake.scratch import Scratch, Seller
from leadmarket.app import create_app
from leadmarket.kit.db import Database, make_engine
from leadmarket.leads import intake, quality
from leadmarket.leads.schemas import LeadIn
from leadmarket.leads.vault import BlindIndexer, IndexKind, seal_personal_data
from leadmarket.models import ApiKey

Row = tuple[str, float]


def _cpu_ms(action: Callable[[int], object], count: int) -> float:
    for i in range(min(count, 50)):
        action(i)
    started = time.process_time()
    for i in range(count):
        action(i)
    return 1000 * (time.process_time() - started) / count


async def _async_cpu_ms(action: Callable[[int], Awaitable[object]], count: int) -> float:
    for i in range(min(count, 50)):
        await action(i)
    started = time.process_time()
    for i in range(count):
        await action(i)
    return 1000 * (time.process_time() - started) / count


def domain_costs(scratch: Scratch, count: int = 2_000) -> list[Row]:
    bodies = [json.dumps(b).encode() for b in lead_bodies(20_000_000, count, seller_username="s")]
    leads = [LeadIn.model_validate_json(body) for body in bodies]
    settings = scratch.settings()
    keyring, indexer = settings.keyring(), BlindIndexer(settings.signing_key())

    def seal(i: int) -> object:
        contact = leads[i].contact
        values = contact.model_dump(mode="json", exclude={"address"})
        values |= {"street": contact.address.street, "postal_code": contact.address.postal_code}
        values |= {"attributes": leads[i].attributes, "consent_ip": str(leads[i].consent.ip)}
        values |= {"consent_user_agent": leads[i].consent.user_agent}
        return seal_personal_data(keyring, "lead_bench", values)

    def digests(i: int) -> object:
        contact = leads[i].contact
        return (
            indexer.digest(IndexKind.EMAIL, contact.email),
            indexer.digest(IndexKind.PHONE, contact.phone),
            indexer.digest(IndexKind.IP, str(leads[i].consent.ip)),
        )

    def signals(i: int) -> object:
        contact = leads[i].contact
        return quality.contact_signals(
            email=contact.email, phone_e164=contact.phone, region=contact.address.region
        )

    return [
        (
            "LeadIn validation (JSON → model)",
            _cpu_ms(lambda i: LeadIn.model_validate_json(bodies[i]), count),
        ),
        ("seal_personal_data (AES-GCM × 10, wrap)", _cpu_ms(seal, count)),
        ("three blind-index digests (HMAC)", _cpu_ms(digests, count)),
        ("quality.contact_signals", _cpu_ms(signals, count)),
    ]


async def _sql_costs(scratch: Scratch, seller: Seller, count: int) -> list[Row]:
    db = Database(make_engine(scratch.url))
    prebuilt = select(ApiKey.id).where(ApiKey.user_id == bindparam("user_id"))
    raw_sql = {
        "postgres": "SELECT id FROM api_keys WHERE user_id = $1",
        "sqlite": "SELECT id FROM api_keys WHERE user_id = ?",
    }[scratch.kind]
    rows: list[Row] = []
    try:
        async with db.transaction() as session:

            async def inline(_: int) -> object:
                return await session.scalar(
                    select(ApiKey.id).where(ApiKey.user_id == seller.user_id)
                )

            async def built_once(_: int) -> object:
                return await session.scalar(prebuilt, {"user_id": seller.user_id})

            connection = await session.connection()

            async def on_connection(_: int) -> object:
                return await connection.scalar(prebuilt, {"user_id": seller.user_id})

            driver: Any = (await connection.get_raw_connection()).driver_connection

            async def raw(_: int) -> object:
                if scratch.kind == "postgres":
                    return await driver.fetchval(raw_sql, seller.user_id)
                cursor = await driver.execute(raw_sql, (seller.user_id,))
                return await cursor.fetchone()

            rows += [
                ("SELECT built inline, AsyncSession.scalar", await _async_cpu_ms(inline, count)),
                ("SELECT built once, AsyncSession.scalar", await _async_cpu_ms(built_once, count)),
                ("SELECT built once, AsyncConnection", await _async_cpu_ms(on_connection, count)),
                ("SELECT through the raw driver", await _async_cpu_ms(raw, count)),
            ]

        async def transaction(_: int) -> object:
            async with db.transaction() as session:
                return await session.execute(text("SELECT 1"))

        rows.append(
            ("transaction: BEGIN, SELECT 1, COMMIT", await _async_cpu_ms(transaction, count // 4))
        )
    finally:
        await db.dispose()
    app = create_app(scratch.settings())
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bench"
        ) as client:

            async def healthz(_: int) -> object:
                return await client.get("/healthz")

            rows.append(
                (
                    "GET /healthz through the app (ASGI, in process)",
                    await _async_cpu_ms(healthz, count),
                )
            )
    finally:
        await app.state.db.dispose()
    return rows


async def intake_costs(scratch: Scratch, seller: Seller, count: int = 2_000) -> list[Row]:
    """Intake below HTTP, per lead: the request model from JSON, :func:`prepare_lead`, and
    batches written as :class:`IntakeBatcher` writes them (each lead with its API key and an
    Idempotency-Key, as the API sends them), at the batch sizes group commit makes under load
    (about 14 at 32 connections today) and at its cap."""
    settings = scratch.settings()
    kit = intake.LeadsKit(settings)
    bodies = [
        json.dumps(b).encode()
        for b in lead_bodies(30_000_000, 3 * count, seller_username=seller.username)
    ]
    api_key_id = await _api_key_id(scratch, seller)

    def prepare(i: int) -> intake.PreparedLead:
        return intake.prepare_lead(
            kit,
            seller_id=seller.user_id,
            seller_username=seller.username,
            data=LeadIn.model_validate_json(bodies[i]),
            source="api",
        )

    def submission(i: int) -> intake.Submission:
        claim = intake.IdempotencyClaim(seller.user_id, f"bench-{i}", f"{i:064x}")
        return intake.Submission(prepare(i), api_key_id=api_key_id, idempotency=claim)

    rows: list[Row] = [("JSON → LeadIn → prepare_lead", _cpu_ms(prepare, count))]
    db = Database(make_engine(scratch.url))
    try:
        start = count
        for size in (14, 100):
            batches = [
                [submission(i) for i in range(first, first + size)]
                for first in range(start, start + count, size)
            ]
            start += count
            written = 0
            # As the server writes them: the group-commit writer's own write_items, on one
            # connection pinned for the whole burst.
            batcher = intake.IntakeBatcher(db, kit)
            async with db.pinned() as pinned:
                started = time.process_time()
                for batch in batches:
                    outcomes = await batcher.write_items(pinned, batch)
                    written += sum(isinstance(o, intake.Written) for o in outcomes)
                cpu = time.process_time() - started
            assert written == sum(map(len, batches)), "every bench lead must be written"
            rows.append((f"batch write (IntakeBatcher), {size} per batch", 1000 * cpu / written))
    finally:
        await db.dispose()
    return rows


async def _api_key_id(scratch: Scratch, seller: Seller) -> str:
    db = Database(make_engine(scratch.url))
    try:
        async with db.transaction() as session:
            key_id = await session.scalar(select(ApiKey.id).where(ApiKey.user_id == seller.user_id))
    finally:
        await db.dispose()
    assert key_id is not None
    return str(key_id)


def component_costs(scratch: Scratch, seller: Seller, count: int = 2_000) -> str:
    rows = domain_costs(scratch, count) + asyncio.run(_sql_costs(scratch, seller, count))
    rows += asyncio.run(intake_costs(scratch, seller, count))
    lines = ["CPU per call, measured directly:"]
    lines += [f"  {label:52}{ms:8.3f} ms" for label, ms in rows]
    return "\n".join(lines)


def main() -> None:
    """``python -m bench.intake.components --db postgres``: the direct costs alone, in a
    scratch database (``PYTHONPATH=/tmp/copy/src`` measures another source tree)."""
    import argparse

    from bench.intake.scratch import create_seller, scratch_database

    parser = argparse.ArgumentParser(prog="python -m bench.intake.components")
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--count", type=int, default=2_000)
    args = parser.parse_args()
    with scratch_database(args.db, "components") as scratch:
        print(component_costs(scratch, create_seller(scratch), args.count))


if __name__ == "__main__":
    main()
