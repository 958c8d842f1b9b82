"""The statements of every lead intake cost O(batch), not O(table), on PostgreSQL: each batch
takes its advisory locks, rechecks its API keys, looks up its Idempotency-Keys, the opt-out
registry, its consumers' earlier leads (duplicates) and the seller's and the address's recent
leads (velocity), then writes; none of it may read a table in proportion to its size.

The trap this pins: with ``digest = ANY(…)``, PostgreSQL read every email and phone index row
of the 30-day window and filtered them by digest, so each batch cost more than the one before
(see ``FIND`` in ``leads.intake_sql``). What it takes to fall in: statistics taken while the
tables held a single lead, on a table grown far past them (as where autovacuum is off or
behind). With a hundred leads analysed, or none at all, PostgreSQL 15 plans even the old
statement well, so here the tables are analysed holding one lead, then grown to ten thousand
behind the statistics' back, and the real requests' statements are measured with EXPLAIN
ANALYZE as the code sends them (``tests.fixtures.plans``). Both the old duplicate look-up and
the old Idempotency-Key look-up (``key = ANY(…)`` left as a filter: all of the seller's
records read) fail this test."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.fixtures.accounts import bearer, signed_in
from tests.fixtures.leads import lead_body
from tests.fixtures.plans import (
    assert_reads_bounded,
    explained_statements,
    fresh_tables,
    generic_plans,
    multiply_rows,
    table_reads,
)

# Earlier leads in the tables: each has an email, a phone and an address index row.
LEADS = 10_000
# How many rows one table access of a one-lead batch may read: its own consumer's earlier
# leads (a duplicate consumer here has LEADS / 1000 of them), the velocity counts' caps, and
# slack; far below the tables' sizes.
BOUND = 300

GROWN = ("leads", "lead_blind_indexes", "idempotency_records", "consumer_opt_outs")


@pytest.fixture(autouse=True)
def only_postgres(is_postgres: bool) -> None:
    if not is_postgres:
        pytest.skip(
            "query plans and their statistics are PostgreSQL's; SQLite has no planner to mislead"
        )


async def copy_template(session: AsyncSession, template_lead: str, copies: range) -> None:
    """Copies of the template lead (created over the last 30 days by the same seller from the
    same address, every thousandth one by the same consumer), with its blind-index rows, an
    Idempotency-Key record each and two opted-out consumers each."""
    lead = {"lead": template_lead}
    spread = "t.created_at - make_interval(secs => (g * 97) % 2592000)"
    await multiply_rows(
        session, "leads", "t.id = :lead", copies, lead, id="t.id || '_' || g", created_at=spread
    )
    await multiply_rows(
        session,
        "lead_blind_indexes",
        "t.lead_id = :lead",
        copies,
        lead,
        id=None,
        lead_id="t.lead_id || '_' || g",
        digest="CASE WHEN t.kind = 'ip' OR g % 1000 = 0 THEN t.digest "
        "ELSE encode(sha256(convert_to(t.kind || g, 'UTF8')), 'hex') END",
        created_at=spread,
    )
    await multiply_rows(
        session,
        "idempotency_records",
        "t.key = 'first'",
        copies,
        id=None,
        key="t.key || g",
        created_at=spread,
    )
    await session.execute(
        text(
            "INSERT INTO consumer_opt_outs (digest, kind, request_id, created_at) "
            "SELECT encode(sha256(convert_to('opted-out' || g, 'UTF8')), 'hex'), k, 'req', now() "
            f"FROM generate_series({copies.start}, {copies.stop - 1}) AS g "
            "CROSS JOIN (VALUES ('email'), ('phone')) AS v(k)"
        )
    )


async def grow_behind_stale_statistics(session: AsyncSession, template_lead: str) -> None:
    """The tables analysed while they hold one lead (the statistics every later plan in this
    transaction sees), then grown to ``LEADS`` copies of it."""
    for table in GROWN:
        await session.execute(text(f"ANALYZE {table}"))
    await copy_template(session, template_lead, range(1, LEADS + 1))


async def test_a_lead_batch_reads_rows_in_proportion_to_the_batch_not_the_tables(
    client: httpx.AsyncClient, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fresh_tables(session, GROWN)
    _, auth = await signed_in(client, "seller")
    created = await client.post("/api/v1/api-keys", json={"name": "crm"}, headers=auth)
    key = bearer(created.json()["key"])
    earlier = lead_body()
    first = await client.post(
        "/api/v1/leads", json=earlier, headers={**key, "Idempotency-Key": "first"}
    )
    assert first.status_code == 201, first.text
    await grow_behind_stale_statistics(session, first.json()["id"])
    fresh = lead_body()

    with explained_statements(monkeypatch) as recording:
        taken = await client.post(
            "/api/v1/leads", json=fresh, headers={**key, "Idempotency-Key": "fresh"}
        )
        replayed = await client.post(
            "/api/v1/leads", json=fresh, headers={**key, "Idempotency-Key": "fresh"}
        )
        again = lead_body()
        again["contact"]["email"] = earlier["contact"]["email"]
        duplicate = await client.post("/api/v1/leads", json=again, headers=key)

    assert taken.status_code == 201, taken.text
    assert (replayed.status_code, replayed.json()) == (201, taken.json())
    assert duplicate.status_code == 409, duplicate.text
    assert_reads_bounded(recording, GROWN, BOUND)
    # The duplicate and velocity look-ups go down the (kind, digest, created_at) index by
    # digest, one probe per digest, and never read a window of other consumers' rows.
    blind = [
        r for s in recording.statements for r in table_reads(s) if r.table == "lead_blind_indexes"
    ]
    assert blind, recording.describe()
    for read in blind:
        assert read.index_cond is not None and "digest" in read.index_cond, recording.describe()

    # The same on the generic plans PostgreSQL may switch a prepared statement to.
    async with generic_plans(session) as generic:
        other = lead_body()
        taken = await client.post(
            "/api/v1/leads", json=other, headers={**key, "Idempotency-Key": "other"}
        )
        replayed = await client.post(
            "/api/v1/leads", json=other, headers={**key, "Idempotency-Key": "other"}
        )
        duplicate = await client.post("/api/v1/leads", json=again, headers=key)
    assert (taken.status_code, replayed.status_code, duplicate.status_code) == (201, 201, 409)
    assert generic.touching("lead_blind_indexes"), generic.describe()
    assert_reads_bounded(generic, GROWN, BOUND)
