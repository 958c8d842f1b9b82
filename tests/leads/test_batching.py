"""Group commit of API intake (:class:`IntakeBatcher`): leads posted at the same moment are
written together, and every rule still holds for each of them: duplicates of one consumer in
the same batch or in two processes' batches (one lead, the rest 409 naming it), Idempotency-Key
replays, a revoked key refused at write time, one bad lead unable to sink the others."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine, utcnow
from leadmarket.kit.errors import DomainError
from leadmarket.leads.intake import (
    IdempotencyClaim,
    IntakeBatcher,
    LeadsKit,
    Submission,
    Written,
    prepare_lead,
    write_leads,
)
from leadmarket.leads.schemas import LeadIn
from leadmarket.models import (
    ApiKey,
    ConsumerOptOut,
    IdempotencyRecord,
    Lead,
    LeadBlindIndex,
    LeadVault,
    User,
)
from tests.fixtures.accounts import bearer, signed_in
from tests.fixtures.leads import lead_body

pytestmark = pytest.mark.committed


async def api_key_of_a_seller(client: httpx.AsyncClient) -> dict[str, str]:
    _, auth = await signed_in(client, "seller")
    created = await client.post("/api/v1/api-keys", json={"name": "crm"}, headers=auth)
    assert created.status_code == 201, created.text
    return bearer(created.json()["key"])


async def count(db: Database, model: Any) -> int:
    async with db.transaction() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def seller_with_a_key(client: httpx.AsyncClient, db: Database) -> str:
    await api_key_of_a_seller(client)
    async with db.transaction() as session:
        seller = await session.scalar(select(User.id).where(User.role == "seller"))
    assert seller is not None
    return seller


def new_submission(kit: LeadsKit, seller_id: str) -> Submission:
    data = LeadIn.model_validate(lead_body())
    return Submission(
        prepare_lead(kit, seller_id=seller_id, seller_username="x", data=data, source="api")
    )


def same_consumer(vertical: str, email: str) -> dict[str, Any]:
    body = lead_body(vertical)
    body["contact"]["email"] = email
    return body


async def test_concurrent_posts_share_batches_and_each_gets_its_own_answer(
    committed_client: httpx.AsyncClient, committed_app: FastAPI, committed_db: Database
) -> None:
    key = await api_key_of_a_seller(committed_client)
    # 30 different consumers, and one consumer posted 10 times at once.
    bodies = [lead_body() for _ in range(30)]
    repeated = [same_consumer("auto-insurance", "twice@example.com") for _ in range(10)]
    answers = await asyncio.gather(
        *(committed_client.post("/api/v1/leads", json=b, headers=key) for b in bodies + repeated)
    )

    batcher: IntakeBatcher = committed_app.state.intake
    assert batcher.largest_batch > 1, "concurrent posts were written one by one"
    assert [a.status_code for a in answers[:30]] == [201] * 30
    repeated_statuses = Counter(a.status_code for a in answers[30:])
    assert repeated_statuses == {201: 1, 409: 9}
    (winner,) = [a.json()["id"] for a in answers[30:] if a.status_code == 201]
    assert {a.json()["duplicate_of"] for a in answers[30:] if a.status_code == 409} == {winner}
    ids = [a.json()["id"] for a in answers if a.status_code == 201]
    assert len(set(ids)) == 31
    assert await count(committed_db, Lead) == 31
    assert await count(committed_db, LeadVault) == 31
    assert await count(committed_db, LeadBlindIndex) == 31 * 3


async def test_one_idempotency_key_posted_concurrently_makes_one_lead(
    committed_client: httpx.AsyncClient, committed_db: Database
) -> None:
    key = await api_key_of_a_seller(committed_client)
    body = lead_body()
    headers = {**key, "Idempotency-Key": "order-77"}
    answers = await asyncio.gather(
        *(committed_client.post("/api/v1/leads", json=body, headers=headers) for _ in range(8))
    )
    created = [a.json()["id"] for a in answers if a.status_code == 201]
    assert created and len(set(created)) == 1
    # The others were told to retry (same batch) or got the first answer replayed.
    assert all(a.status_code in (201, 409) for a in answers)
    assert await count(committed_db, Lead) == 1
    retried = await committed_client.post("/api/v1/leads", json=body, headers=headers)
    assert retried.status_code == 201 and retried.json()["id"] == created[0]
    other_body = await committed_client.post("/api/v1/leads", json=lead_body(), headers=headers)
    assert other_body.status_code == 409
    assert await count(committed_db, Lead) == 1


async def test_a_key_revoked_after_it_was_cached_posts_nothing(
    committed_client: httpx.AsyncClient, committed_db: Database
) -> None:
    _, auth = await signed_in(committed_client, "seller")
    created = await committed_client.post("/api/v1/api-keys", json={"name": "crm"}, headers=auth)
    key = bearer(created.json()["key"])
    first = await committed_client.post("/api/v1/leads", json=lead_body(), headers=key)
    assert first.status_code == 201  # the key's principal is now in the per-process cache
    revoked = await committed_client.delete(
        f"/api/v1/api-keys/{created.json()['id']}", headers=auth
    )
    assert revoked.status_code == 204
    second = await committed_client.post("/api/v1/leads", json=lead_body(), headers=key)
    assert second.status_code == 401
    assert second.headers["content-type"].startswith("application/problem+json")
    assert await count(committed_db, Lead) == 1


async def test_a_lead_that_fails_in_the_database_does_not_sink_its_batch(
    committed_client: httpx.AsyncClient, committed_db: Database, settings: Settings
) -> None:
    seller_id = await seller_with_a_key(committed_client, committed_db)
    kit = LeadsKit(settings)

    def prepared(seller_id: str) -> Submission:
        return new_submission(kit, seller_id)

    batcher = IntakeBatcher(committed_db, kit)
    # No such seller: the foreign key refuses the row, which no check before the INSERT foresees.
    good, orphan, also_good = prepared(seller_id), prepared("usr_nobody"), prepared(seller_id)
    results = await asyncio.gather(
        *(batcher.submit(s) for s in (good, orphan, also_good)), return_exceptions=True
    )
    assert isinstance(results[0], Written) and results[0].status_code == 201
    assert isinstance(results[1], Exception) and not isinstance(results[1], DomainError)
    assert isinstance(results[2], Written) and results[2].status_code == 201
    async with committed_db.transaction() as session:
        stored = set(await session.scalars(select(Lead.id)))
    assert stored == {good.prepared.id, also_good.prepared.id}


async def test_two_processes_batching_the_same_consumer_store_one_lead(
    committed_client: httpx.AsyncClient,
    committed_db: Database,
    settings: Settings,
    database_url: str,
) -> None:
    """Two servers on one database, each with its own batcher and connection pool."""
    await api_key_of_a_seller(committed_client)
    async with committed_db.transaction() as session:
        seller = await session.scalar(select(User).where(User.role == "seller"))
        key_id = await session.scalar(select(ApiKey.id))
    assert seller is not None
    kit = LeadsKit(settings)
    other = Database(make_engine(database_url))
    try:
        batchers = [IntakeBatcher(committed_db, kit), IntakeBatcher(other, kit)]
        submissions = []
        for n in range(12):
            data = LeadIn.model_validate(same_consumer("mortgage", "one@example.com"))
            prepared = prepare_lead(
                kit, seller_id=seller.id, seller_username="s", data=data, source="api"
            )
            submissions.append((batchers[n % 2], Submission(prepared, api_key_id=key_id)))
        results = await asyncio.gather(
            *(b.submit(s) for b, s in submissions), return_exceptions=True
        )
    finally:
        await other.dispose()
    created = [r for r in results if isinstance(r, Written)]
    refused = [r for r in results if isinstance(r, DomainError)]
    assert len(created) == 1 and len(refused) == 11
    assert {r.status for r in refused} == {409}
    assert await count(committed_db, Lead) == 1


async def test_velocity_counts_the_leads_earlier_in_the_same_batch(
    committed_client: httpx.AsyncClient, committed_db: Database, settings: Settings
) -> None:
    await api_key_of_a_seller(committed_client)
    async with committed_db.transaction() as session:
        seller = await session.scalar(select(User).where(User.role == "seller"))
    assert seller is not None
    kit = LeadsKit(settings.model_copy(update={"velocity_seller_per_minute": 3}))
    submissions = [
        Submission(
            prepare_lead(
                kit,
                seller_id=seller.id,
                seller_username="s",
                data=LeadIn.model_validate(lead_body()),
                source="api",
            )
        )
        for _ in range(5)
    ]
    async with committed_db.transaction() as session:
        outcomes = await write_leads(session, kit, submissions)
    flagged = [
        any(r["code"] == "seller_burst" for r in o.body["quality"]["reasons"])
        for o in outcomes
        if isinstance(o, Written)
    ]
    assert flagged == [False, False, False, True, True]


async def test_one_batch_judges_every_rule_and_stores_only_the_new_leads(
    committed_client: httpx.AsyncClient, committed_db: Database, settings: Settings
) -> None:
    """Every refusal next to new leads in one write_leads call, all decided by the batch's one
    lookup (one statement on PostgreSQL): a replayed and a reused Idempotency-Key, an opted-out
    consumer, a duplicate of a stored lead and one of a lead earlier in the batch."""
    await api_key_of_a_seller(committed_client)
    async with committed_db.transaction() as session:
        seller = await session.scalar(select(User).where(User.role == "seller"))
    assert seller is not None
    kit = LeadsKit(settings)

    def submission(body: dict[str, Any], key: str | None = None, sha: str = "a" * 64) -> Submission:
        prepared = prepare_lead(
            kit,
            seller_id=seller.id,
            seller_username="s",
            data=LeadIn.model_validate(body),
            source="api",
        )
        claim = IdempotencyClaim(seller.id, key, sha) if key is not None else None
        return Submission(prepared, idempotency=claim)

    stored = submission(same_consumer("mortgage", "stored@example.com"))
    keyed = submission(lead_body(), key="first")
    async with committed_db.transaction() as session:
        first = await write_leads(session, kit, [stored, keyed])
        opted_out = prepare_lead(
            kit,
            seller_id=seller.id,
            seller_username="s",
            data=LeadIn.model_validate(same_consumer("home-services", "gone@example.com")),
            source="api",
        )
        session.add(ConsumerOptOut(digest=opted_out.email_digest, kind="email", request_id="r1"))
    assert all(isinstance(o, Written) and o.status_code == 201 for o in first)
    first_answer = first[1]
    assert isinstance(first_answer, Written)

    batch = [
        submission(lead_body(), key="first"),  # same key, same body: the first answer again
        submission(lead_body(), key="first", sha="b" * 64),  # same key, another body
        Submission(opted_out),
        submission(same_consumer("mortgage", "stored@example.com")),  # the stored lead's
        submission(same_consumer("auto-insurance", "twice@example.com"), key="new"),
        submission(same_consumer("auto-insurance", "twice@example.com")),  # the one before
        submission(same_consumer("auto-insurance", "stored@example.com")),  # other vertical
    ]
    async with committed_db.transaction() as session:
        outcomes = await write_leads(session, kit, batch)

    replay, reused, refused, duplicate, new, twice, other_vertical = outcomes
    assert isinstance(replay, Written) and not replay.is_new
    assert (replay.status_code, replay.body) == (201, first_answer.body)
    assert isinstance(reused, DomainError) and reused.status == 409
    assert isinstance(refused, DomainError) and refused.slug == "consumer-opted-out"
    assert isinstance(duplicate, DomainError) and duplicate.slug == "duplicate-lead"
    assert duplicate.extra == {"duplicate_of": stored.prepared.id}
    assert isinstance(new, Written) and new.is_new
    assert isinstance(twice, DomainError) and twice.extra == {"duplicate_of": new.body["id"]}
    assert isinstance(other_vertical, Written) and other_vertical.status_code == 201
    created = new.created
    assert created is not None and created.lead.id == new.body["id"]
    async with committed_db.transaction() as session:
        leads = set(await session.scalars(select(Lead.id)))
        vaults = set(await session.scalars(select(LeadVault.lead_id)))
        indexes = set(await session.scalars(select(LeadBlindIndex.lead_id)))
        records = dict(
            (await session.execute(select(IdempotencyRecord.key, IdempotencyRecord.response))).all()
        )
    expected = {stored.prepared.id, keyed.prepared.id, new.body["id"], other_vertical.body["id"]}
    assert leads == vaults == indexes == expected
    assert records == {"first": first_answer.body, "new": new.body}


async def test_a_failed_batch_is_rolled_back_whole_and_its_connection_serves_the_next(
    committed_client: httpx.AsyncClient, committed_db: Database, settings: Settings
) -> None:
    """On PostgreSQL the writer runs the batch's transaction itself on its pinned connection
    (``write_leads_postgres``): a batch the database refuses leaves none of its rows and no
    transaction open, and the next batch on the same connection commits."""
    seller_id = await seller_with_a_key(committed_client, committed_db)
    kit = LeadsKit(settings)

    def prepared(seller_id: str) -> Submission:
        return new_submission(kit, seller_id)

    batcher = IntakeBatcher(committed_db, kit)
    good, orphan, later = prepared(seller_id), prepared("usr_nobody"), prepared(seller_id)
    async with committed_db.pinned() as pinned:
        with pytest.raises(Exception, match=r"(?i)foreign key") as refused:
            await batcher.write_items(pinned, [good, orphan])
        assert not isinstance(refused.value, DomainError)
        async with pinned.driver_connection() as connection:
            if not committed_db.is_sqlite:
                assert not connection.is_in_transaction()
        (outcome,) = await batcher.write_items(pinned, [later])
        assert isinstance(outcome, Written) and outcome.status_code == 201
    async with committed_db.transaction() as session:
        assert set(await session.scalars(select(Lead.id))) == {later.prepared.id}
        digests = set(await session.scalars(select(LeadBlindIndex.lead_id)))
        assert digests == {later.prepared.id}


async def test_a_batch_marks_its_api_key_used_at_most_once_a_minute(
    committed_client: httpx.AsyncClient, committed_db: Database, settings: Settings
) -> None:
    await api_key_of_a_seller(committed_client)
    async with committed_db.transaction() as session:
        seller = await session.scalar(select(User).where(User.role == "seller"))
        key = await session.scalar(select(ApiKey))
        assert seller is not None and key is not None
        key_id, seller_id = key.id, seller.id
        long_ago = utcnow() - dt.timedelta(minutes=5)
        key.last_used_at = long_ago
    kit = LeadsKit(settings)
    batcher = IntakeBatcher(committed_db, kit)

    async def post() -> None:
        data = LeadIn.model_validate(lead_body())
        prepared = prepare_lead(
            kit, seller_id=seller_id, seller_username="s", data=data, source="api"
        )
        written = await batcher.submit(Submission(prepared, api_key_id=key_id))
        assert written.status_code == 201

    async def last_used() -> dt.datetime:
        async with committed_db.transaction() as session:
            value = await session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))
        assert value is not None
        return value

    await post()
    touched = await last_used()
    assert touched > long_ago + dt.timedelta(minutes=4)
    await post()  # within the minute: the key row is not written again
    assert await last_used() == touched
