"""The same rows with no application in between: what the database alone costs.

For each lead body the rows the intake writes are computed before timing starts (a lead, its
vault with random bytes of the sizes real ciphertexts have, three blind indexes, a consent),
then inserted straight through the driver (asyncpg / sqlite3), in two shapes:

* **bulk**: executemany, 1,000 leads per transaction on one connection (the ceiling);
* **per lead**: one transaction per lead, as the application commits, over the same number of
  concurrent connections as the HTTP clients (PostgreSQL) or one connection (SQLite, whose
  writers take turns anyway)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs ship with asyncpg

from bench.intake.scratch import Scratch
from leadmarket.kit.ids import new_id
from leadmarket.models import Consent, ConsentText, Lead, LeadBlindIndex, LeadVault
from leadmarket.verticals.registry import get_vertical

BULK_BATCH = 1_000
Row = tuple[Any, ...]
LEAD_COLUMNS = [c.name for c in Lead.__table__.columns]
VAULT_COLUMNS = [c.name for c in LeadVault.__table__.columns]
INDEX_COLUMNS = [c.name for c in LeadBlindIndex.__table__.columns if c.name != "id"]
CONSENT_COLUMNS = [c.name for c in Consent.__table__.columns]
TEXT_COLUMNS = [c.name for c in ConsentText.__table__.columns]
SEALED_FIELDS = (
    ("first_name", ("contact", "first_name")),
    ("last_name", ("contact", "last_name")),
    ("email", ("contact", "email")),
    ("phone", ("contact", "phone")),
    ("birth_date", ("contact", "birth_date")),
    ("street", ("contact", "address", "street")),
    ("postal_code", ("contact", "address", "postal_code")),
    ("consent_ip", ("consent", "ip")),
    ("consent_user_agent", ("consent", "user_agent")),
)


@dataclass
class LeadRows:
    lead: Row
    vault: Row
    indexes: list[Row]
    consent: Row


@dataclass
class BareRows:
    texts: list[Row] = field(default_factory=list)
    leads: list[LeadRows] = field(default_factory=list)

    @property
    def row_count(self) -> int:
        return len(self.texts) + len(self.leads) * 6


def _dig(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = body
    for part in path:
        value = value[part]
    return value


def _fake_ciphertext(value: Any) -> str:
    # nonce (12) + ciphertext (as long as the JSON) + tag (16), base64: the vault's real sizes.
    return base64.b64encode(os.urandom(28 + len(json.dumps(value)))).decode()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def build_rows(
    bodies: Iterable[dict[str, Any]], *, seller_id: str, seller_username: str
) -> BareRows:
    """Rows in the database's own column order; timestamps and JSON stay Python objects here
    and are adapted per driver by :func:`adapt`."""
    rows = BareRows()
    texts: dict[str, str] = {}
    now = dt.datetime.now(dt.UTC)
    for body in bodies:
        vertical = get_vertical(body["vertical"])
        assert vertical is not None
        contact, address, sale = body["contact"], body["contact"]["address"], body["sale"]
        attributes: dict[str, Any] = body["attributes"]
        preview = {k: v for k, v in attributes.items() if (s := vertical.field(k)) and s.preview}
        sealed = {k: v for k, v in attributes.items() if k not in preview}
        lead_id = new_id("lead")
        lead: dict[str, Any] = {
            "id": lead_id,
            "seller_id": seller_id,
            "vertical": vertical.slug,
            "status": "open",
            "source": "api",
            "country": address["country"],
            "region": address["region"],
            "city": address["city"],
            "postal_prefix": address["postal_code"][:3],
            "age_band": "35-44",
            "preview_attributes": preview,
            "quality_score": 100,
            "quality_reasons": [],
            "sale_mode": sale["mode"],
            "currency": "USD",
            "reserve_cents": sale.get("reserve_cents"),
            "buy_now_cents": sale.get("buy_now_cents"),
            "price_cents": sale.get("price_cents"),
            "duration_minutes": sale.get("duration_minutes"),
            "exclusive": sale["exclusive"],
            "max_buyers": sale.get("max_buyers", 1),
            "auction_ends_at": (
                now + dt.timedelta(minutes=60) if sale["mode"] == "auction" else None
            ),
            "created_at": now,
            "pii_expires_at": None,
            "pii_destroyed_at": None,
            "sold_count": 0,
        }
        fields = {name: _fake_ciphertext(_dig(body, path)) for name, path in SEALED_FIELDS}
        if sealed:
            fields["attributes"] = _fake_ciphertext(sealed)
        vault = {
            "lead_id": lead_id,
            "key_version": 1,
            "wrapped_key": os.urandom(60),
            "sealed_fields": fields,
            "created_at": now,
        }
        text = body["consent"]["disclosure_text"]
        text_sha256 = _sha256(text)
        texts[text_sha256] = text
        consent = {
            "id": new_id("cns"),
            "certificate": "cert_" + secrets.token_urlsafe(24),
            "lead_id": lead_id,
            "seller_id": seller_id,
            "vertical": vertical.slug,
            "text_sha256": text_sha256,
            "given_at": dt.datetime.fromisoformat(body["consent"]["given_at"]),
            "page_url": body["consent"]["page_url"].split("?")[0],
            "parties": [seller_username, f"Leadmarket buyers of {vertical.name.lower()} leads"],
            "ip_digest": _sha256("ip:" + body["consent"]["ip"]),
            "user_agent_digest": _sha256(body["consent"]["user_agent"]),
            "recorded_at": now,
            "withdrawn_at": None,
            "global_privacy_control": False,
        }
        indexes = [
            (lead_id, kind, _sha256(f"{kind}:{value}"), vertical.slug, now)
            for kind, value in (
                ("email", contact["email"]),
                ("phone", contact["phone"]),
                ("ip", body["consent"]["ip"]),
            )
        ]
        rows.leads.append(
            LeadRows(
                lead=tuple(lead[c] for c in LEAD_COLUMNS),
                vault=tuple(vault[c] for c in VAULT_COLUMNS),
                indexes=indexes,
                consent=tuple(consent[c] for c in CONSENT_COLUMNS),
            )
        )
    rows.texts = [(sha, text, now) for sha, text in texts.items()]
    return rows


def _adapt_value(value: Any, sqlite: bool) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value)
    if sqlite and isinstance(value, dt.datetime):
        # SQLAlchemy's SQLite storage format for DateTime.
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def adapt(rows: BareRows, *, sqlite: bool) -> BareRows:
    def row(values: Row) -> Row:
        return tuple(_adapt_value(v, sqlite) for v in values)

    return BareRows(
        texts=[row(r) for r in rows.texts],
        leads=[
            LeadRows(
                lead=row(r.lead),
                vault=row(r.vault),
                indexes=[row(i) for i in r.indexes],
                consent=row(r.consent),
            )
            for r in rows.leads
        ],
    )


def _insert(table: str, columns: Sequence[str], *, sqlite: bool) -> str:
    marks = ", ".join("?" if sqlite else f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608


def _statements(sqlite: bool) -> tuple[str, str, str, str, str]:
    return (
        _insert("consent_texts", TEXT_COLUMNS, sqlite=sqlite),
        _insert("leads", LEAD_COLUMNS, sqlite=sqlite),
        _insert("lead_vaults", VAULT_COLUMNS, sqlite=sqlite),
        _insert("lead_blind_indexes", INDEX_COLUMNS, sqlite=sqlite),
        _insert("consents", CONSENT_COLUMNS, sqlite=sqlite),
    )


@dataclass(frozen=True)
class BareResult:
    shape: str
    leads: int
    rows: int
    seconds: float

    @property
    def leads_per_second(self) -> float:
        return self.leads / self.seconds

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds


# PostgreSQL ---------------------------------------------------------------------------------


async def _postgres_bulk(dsn: str, rows: BareRows) -> float:
    texts_sql, lead_sql, vault_sql, index_sql, consent_sql = _statements(sqlite=False)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.executemany(texts_sql, rows.texts)
        started = time.perf_counter()
        for i in range(0, len(rows.leads), BULK_BATCH):
            batch = rows.leads[i : i + BULK_BATCH]
            async with connection.transaction():
                await connection.executemany(lead_sql, [r.lead for r in batch])
                await connection.executemany(vault_sql, [r.vault for r in batch])
                await connection.executemany(index_sql, [x for r in batch for x in r.indexes])
                await connection.executemany(consent_sql, [r.consent for r in batch])
        return time.perf_counter() - started
    finally:
        await connection.close()


async def _postgres_per_lead(dsn: str, rows: BareRows, concurrency: int) -> float:
    texts_sql, lead_sql, vault_sql, index_sql, consent_sql = _statements(sqlite=False)
    connections = [await asyncpg.connect(dsn) for _ in range(concurrency)]
    try:
        await connections[0].executemany(texts_sql, rows.texts)
        queue = iter(rows.leads)

        async def insert_all(connection: asyncpg.Connection) -> None:
            for lead in queue:
                async with connection.transaction():
                    await connection.execute(lead_sql, *lead.lead)
                    await connection.execute(vault_sql, *lead.vault)
                    await connection.executemany(index_sql, lead.indexes)
                    await connection.execute(consent_sql, *lead.consent)

        started = time.perf_counter()
        await asyncio.gather(*(insert_all(c) for c in connections))
        return time.perf_counter() - started
    finally:
        for connection in connections:
            await connection.close()


# SQLite -------------------------------------------------------------------------------------


def _sqlite_connection(scratch: Scratch) -> sqlite3.Connection:
    """The application's pragmas (kit.db), so both pay for the same durability."""
    connection = sqlite3.connect(scratch.sqlite_path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=30000", "secure_delete=ON"):
        connection.execute(f"PRAGMA {pragma}")
    return connection


def _sqlite_run(scratch: Scratch, rows: BareRows, batch: int) -> float:
    texts_sql, lead_sql, vault_sql, index_sql, consent_sql = _statements(sqlite=True)
    connection = _sqlite_connection(scratch)
    try:
        connection.executemany(texts_sql, rows.texts)
        started = time.perf_counter()
        for i in range(0, len(rows.leads), batch):
            chunk = rows.leads[i : i + batch]
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(lead_sql, [r.lead for r in chunk])
            connection.executemany(vault_sql, [r.vault for r in chunk])
            connection.executemany(index_sql, [x for r in chunk for x in r.indexes])
            connection.executemany(consent_sql, [r.consent for r in chunk])
            connection.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        connection.close()


def insert_bare(scratch: Scratch, rows: BareRows, *, shape: str, concurrency: int) -> BareResult:
    """Time the insert of ``rows`` (already adapted) into ``scratch`` in the given shape."""
    if scratch.kind == "sqlite":
        seconds = _sqlite_run(scratch, rows, BULK_BATCH if shape == "bulk" else 1)
    elif shape == "bulk":
        seconds = asyncio.run(_postgres_bulk(scratch.postgres_dsn, rows))
    else:
        seconds = asyncio.run(_postgres_per_lead(scratch.postgres_dsn, rows, concurrency))
    return BareResult(shape=shape, leads=len(rows.leads), rows=len(rows.leads) * 6, seconds=seconds)
