"""A member the fraud review stopped (M6) can do nothing more, and says so: with the credentials
they had, leaving feedback, sending messages, asking for a return or a payout is a 403
``account-not-active`` problem saying why, with nothing changed. Their counterparts are not
stranded: the returns waiting for a stopped seller are decided by admins, and the seller's
scheduled payouts wait until a reinstatement."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import utcnow
from leadmarket.models import (
    Feedback,
    FraudSignal,
    MemberMessage,
    OrderReturn,
    OutboundMail,
    Payout,
    User,
    UserStatus,
)
from leadmarket.orders import service as orders
from leadmarket.payouts import service as payouts
from leadmarket.returns import service as returns
from tests.fixtures.accounts import signed_in
from tests.fixtures.trades import Party, Trade, admin, party, trade
from tests.ledger.test_wallet_page import field, sign_in

REPORTS = "/api/v1/reports"


async def stop(
    client: httpx.AsyncClient, member: Party, reporter: Party, reviewer: Party, action: str
) -> None:
    """A complaint, then the admin's ``action`` on the member's case."""
    body = {"subject_type": "member", "subject_id": member.username, "reason": "scam"}
    assert (await client.post(REPORTS, json=body, headers=reporter.headers)).status_code == 201
    cases = await client.get("/api/v1/admin/fraud/cases", headers=reviewer.headers)
    [case] = [c for c in cases.json()["items"] if c["member"]["id"] == member.user.id]
    done = await client.post(
        f"/api/v1/admin/fraud/cases/{case['id']}/actions",
        json={"action": action, "note": "Confirmed by the review."},
        headers=reviewer.headers,
    )
    assert done.status_code == 200, done.text


async def stored(session: AsyncSession) -> dict[str, int]:
    counts = {}
    for model in (Feedback, MemberMessage, OrderReturn, Payout):
        counts[model.__name__] = int(
            await session.scalar(select(func.count()).select_from(model)) or 0
        )
    return counts


def refused_as_stopped(response: httpx.Response, detail: str) -> None:
    assert response.status_code == 403, response.text
    problem = response.json()
    assert problem["type"] == "/problems/account-not-active"
    assert problem["detail"] == detail


async def settled_sale(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, seller: Party
) -> Trade:
    paid = await trade(client, session, settings, seller=seller)
    later = utcnow() + dt.timedelta(hours=settings.return_window_hours + 1)
    assert await orders.settle_due_orders(session, settings, now=later) >= 1
    await session.commit()
    return paid


@pytest.mark.parametrize(
    ("action", "detail"),
    [
        ("suspend", "This account is suspended."),
        ("ban", "This account was closed by Leadmarket's fraud review."),
    ],
)
@pytest.mark.parametrize("who", ["buyer", "seller"])
async def test_a_stopped_member_can_do_nothing_and_is_told_why(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    who: str,
    action: str,
    detail: str,
) -> None:
    # A settled sale (money to pay out), then an order still in its return window.
    paid = await settled_sale(client, session, settings, await party(client, session, "seller"))
    t = await trade(client, session, settings, seller=paid.seller)
    reviewer = await admin(client, session)
    stopped, other = (t.buyer, t.seller) if who == "buyer" else (t.seller, t.buyer)
    await stop(client, stopped, other, reviewer, action)
    before = await stored(session)

    attempts: list[tuple[str, dict[str, Any]]] = [
        (f"/api/v1/orders/{t.order_id}/feedback", {"rating": 1}),
        (f"/api/v1/orders/{t.order_id}/messages", {"body": "Hello?"}),
    ]
    if who == "buyer":
        attempts.append((f"/api/v1/orders/{t.order_id}/returns", {"reason": "duplicate"}))
    else:
        attempts.append(("/api/v1/payouts", {}))
    for path, body in attempts:
        refused_as_stopped(await client.post(path, json=body, headers=stopped.headers), detail)
    assert await stored(session) == before
    # Their counterpart is not the one refused: they are told the other party is not active.
    blocked = await client.post(
        f"/api/v1/orders/{t.order_id}/messages", json={"body": "Hi"}, headers=other.headers
    )
    assert blocked.status_code == 409
    assert blocked.json()["type"] == "/problems/counterpart-inactive"


async def test_a_live_session_of_a_suspended_account_is_refused_too(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    """A request authenticated in the instant a suspension commits has a live credential of a
    suspended account: the same 403, not a silent success."""
    account, headers = await signed_in(client, "buyer")
    user = await session.get(User, account["id"])
    assert user is not None
    user.status = UserStatus.SUSPENDED.value
    await session.commit()
    refused_as_stopped(
        await client.post("/api/v1/orders/ord_x/feedback", json={"rating": 5}, headers=headers),
        "This account is suspended.",
    )


async def test_returns_waiting_for_a_suspended_seller_are_decided_by_admins(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    paid = await settled_sale(client, session, settings, await party(client, session, "seller"))
    t = await trade(client, session, settings, seller=paid.seller)
    reviewer = await admin(client, session)
    asked = await client.post(
        f"/api/v1/orders/{t.order_id}/returns",
        json={"reason": "fake_or_fraudulent_identity", "note": "Nobody by that name."},
        headers=t.buyer.headers,
    )
    assert asked.status_code == 201, asked.text
    return_id = asked.json()["id"]
    decide = f"/api/v1/admin/returns/{return_id}/decision"
    body = {"approve": True, "note": "The seller is suspended; the identity was fake."}

    # While the seller can decide, it is theirs to decide.
    early = await client.post(decide, json=body, headers=reviewer.headers)
    assert early.status_code == 409 and "its seller decides it" in early.json()["detail"]
    assert await returns.admin_queue_returns(session, limit=10) == []

    await stop(client, t.seller, t.buyer, reviewer, "suspend")
    await sign_in(client, reviewer.username)
    queue = await client.get("/admin/after-sale")
    assert queue.status_code == 200 and return_id in queue.text
    decided = await client.post(
        f"/admin/after-sale/returns/{return_id}",
        data={
            "csrf_token": field(queue.text, "csrf_token"),
            "form_key": field(queue.text, "form_key"),
            "decision": "approve",
            "note": body["note"],
        },
    )
    assert decided.status_code == 303, decided.text
    ret = await session.get(OrderReturn, return_id, populate_existing=True)
    assert ret is not None
    assert (ret.status, ret.decided_by, ret.refunded_cents) == ("approved", "admin", 2500)
    # The fraud return counts against the seller; both parties are told.
    signal = await session.scalar(
        select(FraudSignal).where(FraudSignal.dedupe_key == f"return:{return_id}")
    )
    assert signal is not None and signal.subject_user_id == t.seller.user.id
    told = {
        (m.user_id, m.template)
        for m in await session.scalars(
            select(OutboundMail).where(OutboundMail.template == "notify/return_decided")
        )
    }
    assert told == {
        (t.buyer.user.id, "notify/return_decided"),
        (t.seller.user.id, "notify/return_decided"),
    }

    # The suspended seller's settled money waits; after a reinstatement it is paid.
    seller_id = t.seller.user.id
    session.expire_all()  # as the payout job's own session would read them
    assert not await payouts.pay_seller_scheduled(session, settings, seller_id, "USD")
    assert await session.scalar(select(func.count()).select_from(Payout)) == 0
    cases = await client.get("/api/v1/admin/fraud/cases", headers=reviewer.headers)
    [case] = [c for c in cases.json()["items"] if c["member"]["id"] == seller_id]
    back = await client.post(
        f"/api/v1/admin/fraud/cases/{case['id']}/actions",
        json={"action": "reinstate", "note": "Settled with the buyers."},
        headers=reviewer.headers,
    )
    assert back.status_code == 200, back.text
    session.expire_all()
    assert await payouts.pay_seller_scheduled(session, settings, seller_id, "USD")
    assert await session.scalar(select(func.count()).select_from(Payout)) == 1
