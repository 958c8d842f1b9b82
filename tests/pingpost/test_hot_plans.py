"""The statements of every ping and every post cost O(batch), not O(table), on PostgreSQL.

A ping batch is one statement (``write_pings_postgres``): it rechecks the API keys, claims the
duplicate fingerprints (an upsert on ``ping_fingerprints``) and inserts the pings. A post reads
its ping and its Idempotency-Key, claims the ping, writes the lead through intake and sells it
(``orders.sell``). Pings, fingerprints, leads and orders take rows with every request; here
they are analysed holding one ping and its sale (the statistics that mislead PostgreSQL, see
``tests/leads/test_hot_plans.py``), grown to ten thousand rows, and the real requests'
statements measured with EXPLAIN ANALYZE as the code sends them (``tests.fixtures.plans``).

Two statements failed this before they were changed: the post's claim of its ping (by id and
seller: PostgreSQL went down the seller's index and read all their pings) and the sale's claim
of a place on the lead (by id and ``status = 'open'``: it went down the status index and read
every open lead)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.fixtures.accounts import bearer, signed_in
from tests.fixtures.pingpost import bidding_buyer, ping_body, post_body
from tests.fixtures.plans import (
    assert_reads_bounded,
    explained_statements,
    fresh_tables,
    generic_plans,
    multiply_rows,
)

PINGS = 10_000
COPIES = range(1, PINGS + 1)
BOUND = 300
GROWN = (
    "pings",
    "ping_fingerprints",
    "leads",
    "lead_blind_indexes",
    "idempotency_records",
    "orders",
)


@pytest.fixture(autouse=True)
def only_postgres(is_postgres: bool) -> None:
    if not is_postgres:
        pytest.skip(
            "query plans and their statistics are PostgreSQL's; SQLite has no planner to mislead"
        )


async def grow_behind_stale_statistics(session: AsyncSession, template_ping: str) -> None:
    """Analyse the tables while they hold one ping (and its posted lead), then copy the ping
    and its fingerprint ``PINGS`` times, by the same seller over the last day (half the
    fingerprints still hold their content, as under a steady stream of pings), and its lead
    and order as many times."""
    for table in GROWN:
        await session.execute(text(f"ANALYZE {table}"))
    spread = "t.created_at - make_interval(secs => (g * 97) % 86400)"
    content = "encode(sha256(convert_to('content' || g, 'UTF8')), 'hex')"
    await multiply_rows(
        session,
        "pings",
        "t.id = :ping",
        COPIES,
        {"ping": template_ping},
        id="t.id || '_' || g",
        fingerprint=content,
        created_at=spread,
        expires_at=spread,
        posted_at="NULL",
        outcome="NULL",
        lead_id="NULL",
        order_id="NULL",
    )
    await multiply_rows(
        session,
        "ping_fingerprints",
        "t.ping_id = :ping",
        COPIES,
        {"ping": template_ping},
        fingerprint=content,
        ping_id="t.ping_id || '_' || g",
        expires_at="t.expires_at + make_interval(mins => g % 20 - 10)",
    )
    await multiply_rows(session, "idempotency_records", "true", COPIES, id=None, key="t.key || g")
    # The posted lead and its sale, as many times: open leads (still for sale) and orders.
    await multiply_rows(
        session,
        "leads",
        "true",
        COPIES,
        id="t.id || '_' || g",
        status="'open'",
        sold_count="0",
        created_at=spread,
    )
    await multiply_rows(
        session,
        "lead_blind_indexes",
        "true",
        COPIES,
        id=None,
        lead_id="t.lead_id || '_' || g",
        digest="encode(sha256(convert_to(t.kind || g, 'UTF8')), 'hex')",
        created_at=spread,
    )
    await multiply_rows(
        session,
        "orders",
        "true",
        COPIES,
        id="t.id || '_' || g",
        lead_id="t.lead_id || '_' || g",
        hold_reference="t.hold_reference || '_' || g",
    )


async def test_pings_and_posts_read_rows_in_proportion_to_the_batch_not_the_tables(
    client: httpx.AsyncClient, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fresh_tables(session, GROWN)
    await bidding_buyer(session, bid_cents=3000)
    _, auth = await signed_in(client, "seller")
    created = await client.post("/api/v1/api-keys", json={"name": "crm"}, headers=auth)
    key = bearer(created.json()["key"])
    first = await client.post("/api/v1/ping", json=ping_body(), headers=key)
    assert first.status_code == 200, first.text
    posted = await client.post(
        "/api/v1/post",
        json=post_body(first.json()["ping_id"]),
        headers={**key, "Idempotency-Key": "first"},
    )
    assert posted.status_code == 201, posted.text
    await grow_behind_stale_statistics(session, first.json()["ping_id"])
    body = ping_body(postal_code="93651")

    with explained_statements(monkeypatch) as recording:
        pinged = await client.post("/api/v1/ping", json=body, headers=key)
        again = await client.post("/api/v1/ping", json=body, headers=key)
        post = post_body(pinged.json()["ping_id"], contact__address__postal_code="93651")
        sold = await client.post(
            "/api/v1/post", json=post, headers={**key, "Idempotency-Key": "second"}
        )
        replayed = await client.post(
            "/api/v1/post", json=post, headers={**key, "Idempotency-Key": "second"}
        )

    assert pinged.status_code == 200 and pinged.json()["accepted"], pinged.text
    assert again.status_code == 409, again.text
    assert sold.status_code == 201 and sold.json()["sold"], sold.text
    assert (replayed.status_code, replayed.json()) == (201, sold.json())
    assert_reads_bounded(recording, GROWN, BOUND)
    # The probe saw the ping batch's one statement (twice) and the post's claim of its ping.
    assert len([s for s in recording.statements if "ping_fingerprints" in s.query]) == 2
    assert recording.touching("pings"), recording.describe()

    # The same on the generic plans PostgreSQL may switch a prepared statement to.
    async with generic_plans(session) as generic:
        body = ping_body(postal_code="93652")
        pinged = await client.post("/api/v1/ping", json=body, headers=key)
        again = await client.post("/api/v1/ping", json=body, headers=key)
        post = post_body(pinged.json()["ping_id"], contact__address__postal_code="93652")
        sold = await client.post(
            "/api/v1/post", json=post, headers={**key, "Idempotency-Key": "third"}
        )
    assert (pinged.status_code, again.status_code, sold.status_code) == (200, 409, 201)
    assert sold.json()["sold"], sold.text
    assert generic.touching("pings"), generic.describe()
    assert_reads_bounded(generic, GROWN, BOUND)
