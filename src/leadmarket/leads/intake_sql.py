"""The statements of a lead batch on PostgreSQL, sent straight through the driver (asyncpg) on
the session's own connection and transaction.

Why not SQLAlchemy here: a batch of intake was a dozen statements, each costing about 0.3 ms of
CPU through the ORM session to build, compile and bind, plus a per-row price for the multi-row
INSERTs, and a round trip each (on a busy two-core machine the socket write that wakes the
server is itself a good part of the cost). Because ``IN (…)`` lists and multi-row ``VALUES`` are
rendered with one parameter per item, every batch size was also a new statement text, so a new
server-side prepare. Here each statement has one fixed text whatever the batch size (arrays and
``unnest``), so asyncpg prepares it once per connection; all the lookups of a batch go in one
statement (:data:`FIND`) and all its INSERTs in another (data-modifying ``WITH``). The rules
they serve live in :mod:`.intake`; SQLite keeps SQLAlchemy statements there (no round trips to
save in process).

Nothing here decides anything: these functions only read rows and write rows."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Integer, LargeBinary, String, Table
from sqlalchemy.ext.asyncio import AsyncSession

# asyncpg ships no type stubs; the connection is used through these few coroutines.
Driver = Any


async def postgres_driver(session: AsyncSession) -> Driver | None:
    """The asyncpg connection under ``session``, or None on another database. Call it only after
    the session ran a statement of this transaction (SQLAlchemy begins the transaction lazily,
    on its first statement), so that what is sent here is part of it."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection


# Everything a batch's rules ask the database, in one round trip; each branch is tagged with
# what it answers. Velocity counts stop at their cap: the signals only ask "at least the
# limit?", and a seller posting thousands a minute must not make every batch count them all.
# The duplicate look-up probes the index once per digest (LATERAL): with "digest = ANY(…)" and
# statistics a little behind a growing table, PostgreSQL chose to read every email and phone
# index row of the whole window and filter them, so each batch cost more than the one before.
# The Idempotency-Key look-up likewise, once per (principal, key): with "key = ANY(…)" it read
# every record of the seller and filtered them by key (tests/leads/test_hot_plans.py).
#
# It also rechecks the batch's API keys (still live, their account's status, when last marked
# used: ``accounts.repository.recheck_api_keys``) and finds the open fraud case of each of the
# batch's sellers, share-locked in the sellers' order as ``fraud.signals.open_case`` takes
# them, so that a batch raising intake signals needs no statement of its own to find them.
FIND = """
WITH cases AS MATERIALIZED (
    SELECT id, open_key FROM fraud_cases WHERE open_key = ANY($8::text[])
    ORDER BY open_key FOR SHARE
)
SELECT 'replay' AS what, r.principal AS a, r.key AS b, r.request_sha256 AS c,
       r.response::text AS d, r.status_code AS n, NULL::timestamptz AS at
FROM unnest($1::text[]) AS p(principal) CROSS JOIN unnest($2::text[]) AS k(key)
CROSS JOIN LATERAL (
    SELECT principal, key, request_sha256, response, status_code FROM idempotency_records
    WHERE principal = p.principal AND key = k.key
    OFFSET 0  -- one probe of the unique index per (principal, key), as below
) AS r
UNION ALL
SELECT 'opted_out', kind, digest, NULL, NULL, NULL, NULL
FROM consumer_opt_outs
WHERE digest = ANY($3::text[])
UNION ALL
SELECT 'recent', b.digest, b.vertical, b.lead_id, NULL, NULL, b.created_at
FROM unnest($5::text[]) AS d(digest)
CROSS JOIN LATERAL (
    SELECT digest, vertical, lead_id, created_at FROM lead_blind_indexes
    WHERE kind = ANY($4::text[]) AND digest = d.digest AND created_at > $7
      AND vertical = ANY($6::text[])
    OFFSET 0  -- kept a subquery run per digest: not flattened into a join planned as above
) AS b
UNION ALL
SELECT 'seller', k.key, NULL, NULL, NULL, (
    SELECT count(*) FROM (
        SELECT 1 FROM leads
        WHERE seller_id = k.key AND created_at > $9 AND source <> 'csv'
        LIMIT $10
    ) AS recent
)::integer, NULL
FROM unnest($8::text[]) AS k(key)
UNION ALL
SELECT 'address', k.key, NULL, NULL, NULL, (
    SELECT count(*) FROM (
        SELECT 1 FROM lead_blind_indexes
        WHERE kind = 'ip' AND digest = k.key AND created_at > $12
        LIMIT $13
    ) AS recent
)::integer, NULL
FROM unnest($11::text[]) AS k(key)
UNION ALL
SELECT 'api_key', k.id, u.status, NULL, NULL, NULL, k.last_used_at
FROM api_keys AS k JOIN users AS u ON u.id = k.user_id
WHERE k.id = ANY($14::text[]) AND k.revoked_at IS NULL
UNION ALL
SELECT 'case', open_key, id, NULL, NULL, NULL, NULL FROM cases
"""


@dataclass
class FoundRows:
    replays: dict[tuple[str, str], tuple[str, int, dict[str, Any]]] = field(default_factory=dict)
    opted_out: set[tuple[str, str]] = field(default_factory=set)
    # (digest, vertical, lead id), newest first
    recent: list[tuple[str, str, str]] = field(default_factory=list)
    seller_recent: dict[str, int] = field(default_factory=dict)
    ip_recent: dict[str, int] = field(default_factory=dict)
    # API key id → (its account's status, when it was last marked used), live keys only
    api_keys: dict[str, tuple[str, dt.datetime | None]] = field(default_factory=dict)
    # seller id → their open fraud case (share-locked until the transaction ends)
    open_cases: dict[str, str] = field(default_factory=dict)


async def find(
    driver: Driver,
    *,
    principals: list[str],
    keys: list[str],
    digests: list[str],
    kinds: list[str],
    duplicate_digests: list[str],
    verticals: list[str],
    duplicate_since: dt.datetime,
    sellers: list[str],
    seller_since: dt.datetime,
    seller_cap: int,
    addresses: list[str],
    address_since: dt.datetime,
    address_cap: int,
    api_keys: list[str],
) -> FoundRows:
    """Earlier answers of these Idempotency-Keys, opted-out consumers among these digests,
    recent leads of these consumers in these verticals, the velocity counts, the live API keys
    among ``api_keys`` and the sellers' open fraud cases."""
    rows = await driver.fetch(
        FIND,
        principals,
        keys,
        digests,
        kinds,
        duplicate_digests,
        verticals,
        duplicate_since,
        sellers,
        seller_since,
        seller_cap,
        addresses,
        address_since,
        address_cap,
        api_keys,
    )
    found = FoundRows()
    recent: list[tuple[dt.datetime, str, str, str]] = []
    for row in rows:
        what, a, b = row["what"], row["a"], row["b"]
        if what == "replay":
            found.replays[(a, b)] = (row["c"], row["n"], json.loads(row["d"]))
        elif what == "opted_out":
            found.opted_out.add((a, b))
        elif what == "recent":
            recent.append((row["at"], a, b, row["c"]))
        elif what == "seller":
            found.seller_recent[a] = row["n"]
        elif what == "address":
            found.ip_recent[a] = row["n"]
        elif what == "api_key":
            found.api_keys[a] = (b, row["at"])
        else:
            found.open_cases[a] = b
    recent.sort(key=lambda r: r[0], reverse=True)
    found.recent = [(digest, vertical, lead_id) for _, digest, vertical, lead_id in recent]
    return found


# The INSERTs of a batch ------------------------------------------------------------------------


def _array_type(column_type: Any) -> tuple[str, str]:
    """The PostgreSQL array type a column's values travel in, and the cast back to the
    column's type (JSON travels as text)."""
    if isinstance(column_type, JSON):
        return "text[]", "::json"
    if isinstance(column_type, Boolean):
        return "boolean[]", ""
    if isinstance(column_type, Integer):
        return "integer[]", ""
    if isinstance(column_type, LargeBinary):
        return "bytea[]", ""
    if isinstance(column_type, DateTime) or isinstance(
        getattr(column_type, "impl", None), DateTime
    ):
        return "timestamptz[]", ""
    if isinstance(column_type, String):
        return "text[]", ""
    raise TypeError(f"no array type for {column_type!r}")


# What to do with a row whose key is already there: False fails the statement, True skips the
# row, a string is the clause itself (``ON CONFLICT (…) DO UPDATE …``, written by our code).
OnConflict = bool | str
# What one table of a batch gets: the table, what a row already there does, and the columns
# written (the keys of its row dicts; defaults fill the others).
TableShape = tuple[Table, OnConflict, tuple[str, ...]]


def _on_conflict(clause: OnConflict) -> str:
    if isinstance(clause, str):
        return " " + clause
    return " ON CONFLICT DO NOTHING" if clause else ""


@cache
def _batch_insert(shapes: tuple[TableShape, ...]) -> str:
    """One statement writing every table of a batch, each from one array per column, in the
    order given (PostgreSQL checks foreign keys at the end of the statement). Cached per shape:
    in practice two texts, with and without Idempotency-Key records."""
    clauses: list[str] = []
    number = 0
    for position, (table, on_conflict, names) in enumerate(shapes):
        arrays, selected = [], []
        for name in names:
            number += 1
            array_type, cast = _array_type(table.c[name].type)
            arrays.append(f"${number}::{array_type}")
            selected.append(f'"{name}"{cast}')
        quoted = ", ".join(f'"{name}"' for name in names)
        # Names and types come from the models, never from input; values travel as parameters.
        clauses.append(
            f'w{position} AS (INSERT INTO "{table.name}" ({quoted}) '  # noqa: S608
            f"SELECT {', '.join(selected)} FROM unnest({', '.join(arrays)}) AS u({quoted})"
            f"{_on_conflict(on_conflict)})"
        )
    return "WITH " + ",\n".join(clauses) + "\nSELECT 1"


async def insert_batch(
    driver: Driver, tables: Sequence[tuple[Table, OnConflict, Sequence[Mapping[str, Any]]]]
) -> None:
    """Write each ``(table, on_conflict, rows)`` in one statement; every row of a table has the
    same keys. Tables without rows are left out."""
    shapes: list[TableShape] = []
    arguments: list[list[Any]] = []
    for table, on_conflict, rows in tables:
        if not rows:
            continue
        names = tuple(column.name for column in table.columns if column.name in rows[0])
        shapes.append((table, on_conflict, names))
        for name in names:
            if isinstance(table.c[name].type, JSON):
                arguments.append([json.dumps(row[name]) for row in rows])
            else:
                arguments.append([row[name] for row in rows])
    if shapes:
        await driver.execute(_batch_insert(tuple(shapes)), *arguments)


# A batch's own transaction ------------------------------------------------------------------


def begin_and_lock(keys: Sequence[int], *, begin: bool) -> str:
    """``BEGIN`` (when ``begin``) and the batch's advisory locks, all keys in one statement in
    ascending order (see ``intake.take_advisory_locks``). The keys are integers computed by
    intake (never input), so they are written into the text: a statement without parameters
    goes by the simple query protocol, the only one that carries two statements in one round
    trip."""
    listed = ",".join(str(int(key)) for key in sorted(keys))
    locks = f"SELECT count(pg_advisory_xact_lock(k)) FROM unnest('{{{listed}}}'::bigint[]) AS k"  # noqa: S608
    return f"BEGIN; {locks}" if begin else locks


# recheck_api_keys' "marked used at most once a minute per key": $1 now, $2 the keys, $3 a
# minute ago.
MARK_API_KEYS_USED = """
UPDATE api_keys SET last_used_at = $1
WHERE id = ANY($2::text[]) AND revoked_at IS NULL AND (last_used_at IS NULL OR last_used_at < $3)
"""
