"""Returns feed the fraud review (M6): a return approved for "fake or fraudulent identity", by
the seller, silence, trust, an admin's review or a dispute's decision, is a fraud signal
against the seller in the approval's transaction; a denial or another reason is not; once the
seller has ``fraud_returns_threshold`` of them in the window they are on the admins' fraud
queue with one ``many_fraud_returns`` signal, exactly once even when the approvals race (each
in its own transaction on engines of their own, on SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.fraud.signals import SignalKind
from leadmarket.kit.db import Database, utcnow
from leadmarket.ledger.verify import verify_ledger
from leadmarket.models import FraudCase, FraudSignal, OrderReturn, OutboundMail, User
from leadmarket.returns import service
from leadmarket.returns.service import ReturnReason
from tests.fixtures.ledger import fund, make_member
from tests.fixtures.returns import Member, admin, bought, member
from tests.returns.test_concurrency import Racers, _sold

FAKE = "fake_or_fraudulent_identity"


async def ask(
    client: httpx.AsyncClient, buyer: Member, order_id: str, reason: str = FAKE
) -> dict[str, Any]:
    asked = await client.post(
        f"/api/v1/orders/{order_id}/returns",
        json={"reason": reason, "note": "Nobody of that name lives there."},
        headers=buyer.headers,
    )
    assert asked.status_code == 201, asked.text
    body: dict[str, Any] = asked.json()
    return body


async def signals(session: AsyncSession, kind: SignalKind) -> list[FraudSignal]:
    return list(
        await session.scalars(
            select(FraudSignal)
            .where(FraudSignal.kind == kind.value)
            .order_by(FraudSignal.id)
            .execution_options(populate_existing=True)
        )
    )


async def test_every_way_a_fraud_return_is_approved_signals_and_three_reach_the_queue(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    settings.fraud_returns_threshold = 3
    seller = await member(client, session, "seller")
    reviewer = await admin(client, session)
    buyers = [await member(client, session, "buyer", cents=10_000) for _ in range(6)]
    orders = [(await bought(client, session, settings, seller, b))[0] for b in buyers]

    # Another reason, approved: no signal. A fraud return denied: no signal (yet).
    plain = await ask(client, buyers[0], orders[0], reason="duplicate")
    yes = {"approve": True, "note": None}
    approved = await client.post(
        f"/api/v1/returns/{plain['id']}/decision", json=yes, headers=seller.headers
    )
    assert approved.status_code == 200, approved.text
    denied_one = await ask(client, buyers[1], orders[1])
    denied = await client.post(
        f"/api/v1/returns/{denied_one['id']}/decision",
        json={"approve": False, "note": "The consumer answered."},
        headers=seller.headers,
    )
    assert denied.status_code == 200, denied.text
    assert await signals(session, SignalKind.FRAUD_RETURN) == []

    # 1. The seller approves one.
    by_seller = await ask(client, buyers[2], orders[2])
    assert (
        await client.post(
            f"/api/v1/returns/{by_seller['id']}/decision", json=yes, headers=seller.headers
        )
    ).status_code == 200
    # 2. An admin decides the disputed denial for the buyer.
    dispute = await client.post(
        f"/api/v1/returns/{denied_one['id']}/dispute",
        json={"note": "The number belongs to someone else."},
        headers=buyers[1].headers,
    )
    assert dispute.status_code == 201, dispute.text
    for_buyer = await client.post(
        f"/api/v1/admin/disputes/{dispute.json()['id']}/decision",
        json={"outcome": "for_buyer", "note": "A fake identity."},
        headers=reviewer.headers,
    )
    assert for_buyer.status_code == 200, for_buyer.text
    assert len(await signals(session, SignalKind.FRAUD_RETURN)) == 2
    assert await signals(session, SignalKind.MANY_FRAUD_RETURNS) == []
    # 3. A buyer an admin trusts: approved at once, the third: the seller reaches the queue.
    trusted = await client.put(
        f"/api/v1/admin/trusted-buyers/{buyers[3].username}", headers=reviewer.headers
    )
    assert trusted.status_code in (200, 204), trusted.text
    at_once = await ask(client, buyers[3], orders[3])
    assert at_once["status"] == "approved" and at_once["decided_by"] == "trusted"
    (many,) = await signals(session, SignalKind.MANY_FRAUD_RETURNS)
    assert many.subject_user_id == seller.id and many.details["approved_fraud_returns"] == 3
    # 4. Silence; 5. an admin's review of a return over the buyer's cap.
    by_silence = await ask(client, buyers[4], orders[4])
    later = utcnow() + dt.timedelta(hours=settings.return_decision_hours + 1)
    assert await service.approve_if_silent(session, settings, by_silence["id"], now=later)
    await session.commit()
    settings.return_rate_min_orders, settings.return_rate_cap_percent = 1, 0  # type: ignore[assignment]
    in_review = await ask(client, buyers[5], orders[5])
    assert in_review["status"] == "review"
    reviewed = await client.post(
        f"/api/v1/admin/returns/{in_review['id']}/decision",
        json={"approve": True, "note": "Fake identity, checked."},
        headers=reviewer.headers,
    )
    assert reviewed.status_code == 200, reviewed.text

    fraud = await signals(session, SignalKind.FRAUD_RETURN)
    expected = [by_seller, denied_one, at_once, by_silence, in_review]
    assert sorted(s.dedupe_key or "" for s in fraud) == sorted(
        f"return:{r['id']}" for r in expected
    )
    assert {s.subject_user_id for s in fraud} == {seller.id}
    assert {s.source for s in fraud} == {"returns"}
    decided_by = {s.details["return_id"]: s.details["decided_by"] for s in fraud}
    assert decided_by == {
        by_seller["id"]: "seller",
        denied_one["id"]: "dispute",
        at_once["id"]: "trusted",
        by_silence["id"]: "silence",
        in_review["id"]: "admin",
    }
    for s in fraud:
        ret = await session.get(OrderReturn, s.details["return_id"])
        assert ret is not None and s.lead_id and s.details["order_id"] == ret.order_id
    # One escalation, however many more returns come; the admins see it on the queue.
    assert len(await signals(session, SignalKind.MANY_FRAUD_RETURNS)) == 1
    queue = await client.get("/api/v1/admin/fraud/cases?status=open", headers=reviewer.headers)
    [case] = [c for c in queue.json()["items"] if c["member"]["id"] == seller.id]
    assert case["kinds"] == {"fraud_return": 5, "many_fraud_returns": 1}
    # The dispute's approval was told once to each party, as the dispute's decision.
    buyer_mail = [
        m.template
        for m in await session.scalars(
            select(OutboundMail).where(OutboundMail.user_id == buyers[1].id)
        )
        if m.template.startswith("notify/")
    ]
    assert sorted(buyer_mail) == ["notify/dispute_decided", "notify/return_decided"]
    session.expire_all()
    assert (await verify_ledger(session)).ok


async def test_racing_fraud_return_approvals_put_each_seller_on_the_queue_exactly_once(
    committed_db: Database, database_url: str, settings: Settings
) -> None:
    """Exactly the threshold's number of approvals per seller, all at once: without the case
    lock each would count only itself and what had committed, and none might escalate."""
    settings.fraud_returns_threshold = 3
    sellers: list[str] = []
    return_ids: list[tuple[str, str]] = []  # (seller, return)
    async with committed_db.transaction() as session:
        for _ in range(4):
            seller = await make_member(session, "seller")
            sellers.append(seller.id)
            for _ in range(3):
                buyer = await make_member(session)  # one return each: no return-rate cap
                await fund(session, buyer, 10_000)
                order_id = await _sold(session, settings, seller, buyer)
                ret = await service.request_return(
                    session,
                    settings,
                    order_id,
                    buyer,
                    reason=ReturnReason.FAKE_OR_FRAUDULENT_IDENTITY,
                    note=None,
                    evidence_text=None,
                )
                assert ret.status == "requested"
                return_ids.append((seller.id, ret.id))

    def approve(seller_id: str, return_id: str) -> Callable[[AsyncSession], Awaitable[Any]]:
        async def call(session: AsyncSession) -> None:
            user = await session.get(User, seller_id)
            assert user is not None
            await service.seller_decides(
                session, settings, return_id, user, approve=True, note=None
            )

        return call

    racers = Racers(database_url)
    try:
        outcomes = await racers.run([approve(s, r) for s, r in return_ids])
    finally:
        await racers.close()
    assert outcomes == ["ok"] * len(return_ids)

    async with committed_db.transaction() as session:
        for seller_id in sellers:
            kinds = list(
                await session.scalars(
                    select(FraudSignal.kind).where(FraudSignal.subject_user_id == seller_id)
                )
            )
            assert sorted(kinds) == ["fraud_return"] * 3 + ["many_fraud_returns"], seller_id
            cases = await session.scalar(
                select(func.count()).where(
                    FraudCase.subject_user_id == seller_id, FraudCase.status == "open"
                )
            )
            assert cases == 1
        assert (await verify_ledger(session)).ok
