"""Returns, disputes and claims through the real API (M2, M5): the whole flow with its money,
history and mail; each bad input a clear 4xx with nothing changed; silence approves; trusted
buyers are approved at once; the return-rate cap sends returns to an admin; a dispute's decision
is final; a refund after settlement, and a claw-back after a payout; the ledger verifies clean
after every one of them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.jobs import Worker
from leadmarket.leads.vault import destroy_personal_data
from leadmarket.ledger.verify import verify_ledger
from leadmarket.models import (
    AuditEvent,
    Job,
    Lead,
    Order,
    OrderReturn,
    ReturnDispute,
    ReturnEvidence,
)
from leadmarket.orders import service as orders
from leadmarket.returns import service
from leadmarket.tasks import build_registry, build_services
from tests.fixtures.returns import (
    FEE,
    PRICE,
    Member,
    admin,
    bought,
    mails_to,
    member,
    payable,
    problem,
    wallet,
)


async def request_return(
    client: httpx.AsyncClient, buyer: Member, order_id: str, **body: Any
) -> httpx.Response:
    return await client.post(
        f"/api/v1/orders/{order_id}/returns",
        json={"reason": "disconnected_or_wrong_number", **body},
        headers=buyer.headers,
    )


async def ledger_ok(session: AsyncSession) -> None:
    session.expire_all()  # the API's requests changed rows this session has loaded
    report = await verify_ledger(session)
    assert report.ok, report.problems


async def state(session: AsyncSession, buyer_id: str, seller_id: str) -> dict[str, Any]:
    """Everything a refused request must leave alone."""
    return {
        "wallet": await wallet(session, buyer_id),
        "payable": await payable(session, seller_id),
        "returns": await session.scalar(select(func.count()).select_from(OrderReturn)),
        "disputes": await session.scalar(select(func.count()).select_from(ReturnDispute)),
        "orders": [
            (o.id, o.status)
            for o in await session.scalars(
                select(Order).order_by(Order.id).execution_options(populate_existing=True)
            )
        ],
        "audit": await session.scalar(select(func.count()).select_from(AuditEvent)),
    }


async def test_a_return_approved_by_the_seller_refunds_the_buyer(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await member(client, session, "seller")
    buyer = await member(client, session, "buyer", cents=10_000)
    order_id, consumer_email = await bought(client, session, settings, seller, buyer)
    assert await wallet(session, buyer.id) == (10_000 - PRICE, PRICE)

    reasons = await client.get("/api/v1/returns/reasons", headers=buyer.headers)
    assert "fake_or_fraudulent_identity" in {r["code"] for r in reasons.json()}
    before = await client.get(f"/api/v1/orders/{order_id}/after-sale", headers=buyer.headers)
    assert before.json()["returnable"] is True
    # Bought outright: the answer carried the contact, so the lead is delivered.
    assert before.json()["cancellable"] is False

    created = await request_return(
        client,
        buyer,
        order_id,
        note="Three calls, the number is disconnected.",
        evidence_text="Called 3 times on 2026-11-20.",
    )
    assert created.status_code == 201, created.text
    ret = created.json()
    assert ret["status"] == "requested"
    decide_by = dt.datetime.fromisoformat(ret["decide_by"])
    expected = utcnow() + dt.timedelta(hours=settings.return_decision_hours)
    assert abs((decide_by - expected).total_seconds()) < 60
    # The seller was told, with no consumer data and not the buyer's own words either.
    [told] = [m for m in await mails_to(session, seller.id) if m.template.startswith("notify/")]
    assert told.template == "notify/return_requested" and told.topic == "account"
    assert consumer_email not in told.text_body and "disconnected." not in told.text_body
    assert order_id in told.text_body and f"/seller/sales/{order_id}" in told.text_body

    # The seller sees the return (reason, note, evidence) in their list and decides.
    listed = await client.get("/api/v1/returns", headers=seller.headers)
    assert [r["id"] for r in listed.json()["items"]] == [ret["id"]]
    assert listed.json()["items"][0]["note"] == "Three calls, the number is disconnected."
    decided = await client.post(
        f"/api/v1/returns/{ret['id']}/decision",
        json={"approve": True},
        headers={**seller.headers, "Idempotency-Key": "approve-1"},
    )
    assert decided.status_code == 200, decided.text
    assert decided.json()["status"] == "approved"
    assert (decided.json()["refund_kind"], decided.json()["refunded_cents"]) == ("released", PRICE)
    again = await client.post(
        f"/api/v1/returns/{ret['id']}/decision",
        json={"approve": True},
        headers={**seller.headers, "Idempotency-Key": "approve-1"},
    )
    assert again.json() == decided.json()  # the same key: the first answer, no second refund

    assert await wallet(session, buyer.id) == (10_000, 0)
    order = await session.get(Order, order_id, populate_existing=True)
    assert order is not None
    assert (order.status, order.refund_cause) == ("cancelled", "return")
    # The returned lead's contact is no longer the buyer's to see.
    detail = await client.get(f"/api/v1/orders/{order_id}", headers=buyer.headers)
    assert detail.json()["contact"] is None
    after = (
        await client.get(f"/api/v1/orders/{order_id}/after-sale", headers=buyer.headers)
    ).json()
    assert [e["event"] for e in after["history"]] == ["return_requested", "return_approved"]
    assert after["return"]["decided_by"] == "seller"
    decided_mail = [m for m in await mails_to(session, buyer.id) if m.template.startswith("not")]
    assert [m.template for m in decided_mail] == ["notify/return_decided"]
    assert consumer_email not in decided_mail[0].text_body
    assert "approved by the seller" in decided_mail[0].text_body
    # The seller decided it: they are not told their own decision.
    assert "notify/return_decided" not in {m.template for m in await mails_to(session, seller.id)}
    # Settlement finds nothing to pay the seller, ever.
    later = utcnow() + dt.timedelta(hours=settings.return_window_hours + 1)
    assert await orders.settle_due_orders(session, settings, now=later) == 0
    assert await payable(session, seller.id) == 0
    await ledger_ok(session)


async def test_bad_returns_are_refused_with_nothing_changed(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await member(client, session, "seller")
    buyer = await member(client, session, "buyer", cents=10_000)
    stranger = await member(client, session, "buyer", cents=10_000)
    order_id, _ = await bought(client, session, settings, seller, buyer)
    late_id, _ = await bought(client, session, settings, seller, buyer)
    late = await session.get(Order, late_id)
    assert late is not None
    late.return_window_ends_at = utcnow() - dt.timedelta(seconds=1)  # the window has closed
    await session.flush()
    snapshot = await state(session, buyer.id, seller.id)

    after_window = await request_return(client, buyer, late_id)
    body = problem(after_window, 409, "return-window-closed")
    assert "return_window_ends_at" in body
    problem(await request_return(client, stranger, order_id), 404, "not-found")
    problem(await request_return(client, seller, order_id), 403, "forbidden")
    problem(await request_return(client, buyer, "ord_nope"), 404, "not-found")
    unknown = await request_return(client, buyer, order_id, reason="did_not_like_it")
    assert problem(unknown, 422, "validation-error")["errors"][0]["field"] == "reason"
    other = await request_return(client, buyer, order_id, reason="other", note="   ")
    assert problem(other, 422, "validation-error")["errors"] == [
        {"field": "note", "message": "Required when the reason is 'other'."}
    ]
    extra = await request_return(client, buyer, order_id, refund_me="twice")
    assert problem(extra, 422, "validation-error")["errors"][0]["field"] == "refund_me"
    assert await state(session, buyer.id, seller.id) == snapshot

    first = await request_return(client, buyer, order_id)
    assert first.status_code == 201
    snapshot = await state(session, buyer.id, seller.id)
    twice = await request_return(client, buyer, order_id)
    assert problem(twice, 409, "return-exists")["return_id"] == first.json()["id"]
    return_id = first.json()["id"]
    # Another seller, the buyer, a denial without a note, a dispute before any denial.
    other_seller = await member(client, session, "seller")
    problem(
        await client.post(
            f"/api/v1/returns/{return_id}/decision",
            json={"approve": True},
            headers=other_seller.headers,
        ),
        404,
        "not-found",
    )
    problem(
        await client.post(
            f"/api/v1/returns/{return_id}/decision", json={"approve": True}, headers=buyer.headers
        ),
        403,
        "forbidden",
    )
    silent = await client.post(
        f"/api/v1/returns/{return_id}/decision", json={"approve": False}, headers=seller.headers
    )
    assert problem(silent, 422, "validation-error")["errors"][0]["field"] == "note"
    problem(
        await client.post(
            f"/api/v1/returns/{return_id}/dispute", json={"note": "no"}, headers=buyer.headers
        ),
        409,
        "return-not-disputable",
    )
    problem(
        await client.post(
            f"/api/v1/returns/{return_id}/dispute",
            json={"note": "mine now"},
            headers=stranger.headers,
        ),
        404,
        "not-found",
    )
    problem(
        await client.get(f"/api/v1/returns/{return_id}", headers=stranger.headers),
        404,
        "not-found",
    )
    # An Idempotency-Key reused for another request.
    keyed = {**seller.headers, "Idempotency-Key": "k1"}
    denied = await client.post(
        f"/api/v1/returns/{return_id}/decision",
        json={"approve": False, "note": "The number answered when I called."},
        headers=keyed,
    )
    assert denied.status_code == 200
    snapshot = await state(session, buyer.id, seller.id)
    problem(
        await client.post(
            f"/api/v1/returns/{return_id}/decision", json={"approve": True}, headers=keyed
        ),
        409,
        "idempotency-key-reused",
    )
    problem(
        await client.post(
            f"/api/v1/returns/{return_id}/decision",
            json={"approve": True},
            headers=seller.headers,
        ),
        409,
        "return-decided",
    )
    assert await state(session, buyer.id, seller.id) == snapshot
    await ledger_ok(session)


async def test_silence_approves_and_a_late_denial_is_refused(
    client: httpx.AsyncClient, db: Database, session: AsyncSession, settings: Settings
) -> None:
    seller = await member(client, session, "seller")
    buyer = await member(client, session, "buyer", cents=10_000)
    order_id, _ = await bought(client, session, settings, seller, buyer)
    return_id = (await request_return(client, buyer, order_id)).json()["id"]

    assert await service.enqueue_silent_approvals(session) == 0
    assert not await service.approve_if_silent(session, settings, return_id)
    ret = await session.get(OrderReturn, return_id, populate_existing=True)
    assert ret is not None and ret.decide_by is not None
    past_deadline = ret.decide_by + dt.timedelta(seconds=1)
    ret.decide_by = utcnow() - dt.timedelta(seconds=1)  # the seller's time ran out
    await session.flush()
    late = await client.post(
        f"/api/v1/returns/{return_id}/decision",
        json={"approve": False, "note": "Too late?"},
        headers=seller.headers,
    )
    problem(late, 409, "return-decision-deadline-passed")

    # The worker's periodic sweep finds it and queues its approval, which the worker runs.
    worker = Worker(db, build_registry(), build_services(settings), settings)
    worker._clock = lambda: past_deadline  # type: ignore[method-assign]
    await worker.schedule_periodic(past_deadline)
    await worker.run_once()
    jobs = await session.scalars(select(Job).where(Job.kind == service.SILENCE_JOB))
    assert [(j.status, j.payload) for j in jobs] == [("done", {"return_id": return_id})]
    assert not await service.approve_if_silent(session, settings, return_id, now=past_deadline)
    ret = await session.get(OrderReturn, return_id, populate_existing=True)
    assert ret is not None
    assert (ret.status, ret.decided_by, ret.refund_kind) == ("approved", "silence", "released")
    assert await wallet(session, buyer.id) == (10_000, 0)
    # Both sides are told; the seller learns their silence approved it.
    [seller_told] = [
        m for m in await mails_to(session, seller.id) if m.template == "notify/return_decided"
    ]
    assert "did not decide by the deadline" in seller_told.text_body
    await ledger_ok(session)


async def test_trusted_buyers_are_approved_at_once(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await member(client, session, "seller")
    buyer = await member(client, session, "buyer", cents=10_000)
    staff = await admin(client, session)
    order_id, _ = await bought(client, session, settings, seller, buyer)
    problem(
        await client.put(f"/api/v1/admin/trusted-buyers/{buyer.username}", headers=seller.headers),
        403,
        "forbidden",
    )
    trusted = await client.put(
        f"/api/v1/admin/trusted-buyers/{buyer.username}", headers=staff.headers
    )
    assert trusted.status_code == 204
    problem(
        await client.put("/api/v1/admin/trusted-buyers/nobody_here", headers=staff.headers),
        404,
        "not-found",
    )

    created = await request_return(client, buyer, order_id)
    assert created.status_code == 201
    assert (created.json()["status"], created.json()["decided_by"]) == ("approved", "trusted")
    assert await wallet(session, buyer.id) == (10_000, 0)

    # Trust by history: enough orders and few approved returns (settings), no admin needed.
    untrusted = await client.delete(
        f"/api/v1/admin/trusted-buyers/{buyer.username}", headers=staff.headers
    )
    assert untrusted.status_code == 204
    second, _ = await bought(client, session, settings, seller, buyer)
    asked = await request_return(client, buyer, second)
    assert asked.json()["status"] == "requested"  # 1 approved of 2 orders: not trusted

    history_settings = settings.model_copy(
        update={"return_trust_min_orders": 3, "return_trust_max_percent": 40}
    )
    buyer_user = await buyer.user(session)
    third, _ = await bought(client, session, settings, seller, buyer)
    ret = await service.request_return(
        session,
        history_settings,
        third,
        buyer_user,
        reason=service.ReturnReason.DUPLICATE,
        note=None,
        evidence_text=None,
    )
    assert (ret.status, ret.decided_by) == ("approved", "trusted")  # 1 of 3 = 33% <= 40%
    await ledger_ok(session)


async def test_over_the_return_rate_cap_an_admin_reviews(
    client: httpx.AsyncClient, app: Any, session: AsyncSession, settings: Settings
) -> None:
    app.state.settings = settings.model_copy(
        update={"return_rate_min_orders": 2, "return_rate_cap_percent": 15}
    )
    seller = await member(client, session, "seller")
    buyer = await member(client, session, "buyer", cents=10_000)
    staff = await admin(client, session)
    first, _ = await bought(client, session, settings, seller, buyer)
    await bought(client, session, settings, seller, buyer)

    created = await request_return(client, buyer, first)
    assert created.json()["status"] == "review"  # 1 return for 2 orders: 50% > 15%
    assert created.json()["decide_by"] is None
    assert "above the 15% cap" in created.json()["review_reason"]
    return_id = created.json()["id"]
    problem(
        await client.post(
            f"/api/v1/returns/{return_id}/decision", json={"approve": True}, headers=seller.headers
        ),
        409,
        "return-decided",
    )
    # Review returns are not the silence sweep's business.
    later = utcnow() + dt.timedelta(days=30)
    assert await service.enqueue_silent_approvals(session, now=later) == 0
    assert not await service.approve_if_silent(session, settings, return_id, now=later)
    queue = await client.get("/api/v1/returns?status=review", headers=staff.headers)
    assert [r["id"] for r in queue.json()["items"]] == [return_id]
    no_reason = await client.post(
        f"/api/v1/admin/returns/{return_id}/decision",
        json={"approve": True, "note": " "},
        headers=staff.headers,
    )
    problem(no_reason, 422, "validation-error")
    decided = await client.post(
        f"/api/v1/admin/returns/{return_id}/decision",
        json={"approve": True, "note": "Call logs check out."},
        headers=staff.headers,
    )
    assert decided.status_code == 200, decided.text
    assert (decided.json()["status"], decided.json()["decided_by"]) == ("approved", "admin")
    assert await wallet(session, buyer.id) == (10_000 - PRICE, PRICE)
    await ledger_ok(session)


async def test_a_dispute_is_decided_once_and_finally(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await member(client, session, "seller")
    buyer = await member(client, session, "buyer", cents=10_000)
    staff = await admin(client, session)
    order_id, _ = await bought(client, session, settings, seller, buyer)
    return_id = (await request_return(client, buyer, order_id)).json()["id"]
    denied = await client.post(
        f"/api/v1/returns/{return_id}/decision",
        json={"approve": False, "note": "It rang fine."},
        headers=seller.headers,
    )
    assert denied.json()["dispute_by"] is not None
    opened = await client.post(
        f"/api/v1/returns/{return_id}/dispute",
        json={"note": "It did not."},
        headers=buyer.headers,
    )
    assert opened.status_code == 201, opened.text
    dispute_id = opened.json()["id"]
    problem(
        await client.post(
            f"/api/v1/returns/{return_id}/dispute", json={"note": "again"}, headers=buyer.headers
        ),
        409,
        "return-not-disputable",
    )
    problem(
        await client.post(
            f"/api/v1/admin/disputes/{dispute_id}/decision",
            json={"outcome": "for_buyer", "note": "x"},
            headers=seller.headers,
        ),
        403,
        "forbidden",
    )
    listed = await client.get("/api/v1/admin/disputes?status=open", headers=staff.headers)
    assert [d["id"] for d in listed.json()["items"]] == [dispute_id]
    decided = await client.post(
        f"/api/v1/admin/disputes/{dispute_id}/decision",
        json={"outcome": "for_seller", "note": "The seller's call log shows an answer."},
        headers=staff.headers,
    )
    assert decided.status_code == 200, decided.text
    assert decided.json()["outcome"] == "for_seller"
    snapshot = await state(session, buyer.id, seller.id)
    problem(
        await client.post(
            f"/api/v1/admin/disputes/{dispute_id}/decision",
            json={"outcome": "for_buyer", "note": "Changed my mind."},
            headers=staff.headers,
        ),
        409,
        "dispute-decided",
    )
    problem(
        await client.post(
            f"/api/v1/returns/{return_id}/dispute", json={"note": "again"}, headers=buyer.headers
        ),
        409,
        "return-not-disputable",
    )
    assert await state(session, buyer.id, seller.id) == snapshot
    ret = (await client.get(f"/api/v1/returns/{return_id}", headers=buyer.headers)).json()
    assert ret["status"] == "denied" and ret["dispute_by"] is None
    assert ret["dispute"]["outcome"] == "for_seller"
    # Recorded in the audit log with the admin's reason.
    [event] = await session.scalars(
        select(AuditEvent).where(AuditEvent.action == "dispute.decided")
    )
    assert (event.actor_id, event.subject_id) == (staff.id, dispute_id)
    assert event.reason == "The seller's call log shows an answer."
    # Both parties are told.
    for who in (buyer, seller):
        assert "notify/dispute_decided" in {m.template for m in await mails_to(session, who.id)}
    # The seller is paid once the window passes.
    later = utcnow() + dt.timedelta(hours=settings.return_window_hours + 1)
    assert await orders.settle_due_orders(session, settings, now=later) == 1
    assert await payable(session, seller.id) == PRICE - FEE
    await ledger_ok(session)


async def dispute_after_settlement(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> tuple[Member, Member, Member, str, str]:
    """A denied return whose order settled (a denied return is not open), then disputed."""
    seller = await member(client, session, "seller")
    buyer = await member(client, session, "buyer", cents=10_000)
    staff = await admin(client, session)
    order_id, _ = await bought(client, session, settings, seller, buyer)
    return_id = (await request_return(client, buyer, order_id)).json()["id"]
    await client.post(
        f"/api/v1/returns/{return_id}/decision",
        json={"approve": False, "note": "It rang fine."},
        headers=seller.headers,
    )
    later = utcnow() + dt.timedelta(hours=settings.return_window_hours + 1)
    assert await orders.settle_due_orders(session, settings, now=later) == 1
    assert await payable(session, seller.id) == PRICE - FEE
    opened = await client.post(
        f"/api/v1/returns/{return_id}/dispute", json={"note": "It did not."}, headers=buyer.headers
    )
    assert opened.status_code == 201
    return seller, buyer, staff, order_id, opened.json()["id"]


async def test_a_dispute_won_after_settlement_refunds_from_the_sellers_payable(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller, buyer, staff, order_id, dispute_id = await dispute_after_settlement(
        client, session, settings
    )
    decided = await client.post(
        f"/api/v1/admin/disputes/{dispute_id}/decision",
        json={"outcome": "for_buyer", "note": "Disconnected: the carrier confirms."},
        headers=staff.headers,
    )
    assert decided.status_code == 200, decided.text
    ret = await session.scalar(
        select(OrderReturn)
        .where(OrderReturn.order_id == order_id)
        .execution_options(populate_existing=True)
    )
    assert ret is not None
    assert (ret.status, ret.decided_by, ret.refund_kind) == ("approved", "dispute", "refunded")
    assert (ret.refunded_cents, ret.clawed_back_cents) == (PRICE, None)
    # The fee is refunded too: the buyer gets the whole price back.
    assert await wallet(session, buyer.id) == (10_000, 0)
    assert await payable(session, seller.id) == 0
    order = await session.get(Order, order_id, populate_existing=True)
    assert order is not None and order.status == "refunded"
    await ledger_ok(session)


async def test_a_dispute_won_after_a_payout_is_clawed_back(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller, buyer, staff, order_id, dispute_id = await dispute_after_settlement(
        client, session, settings
    )
    paid = await client.post("/api/v1/payouts", json={}, headers=seller.headers)
    assert paid.status_code == 201, paid.text
    assert paid.json()["amount_cents"] == PRICE - FEE
    decided = await client.post(
        f"/api/v1/admin/disputes/{dispute_id}/decision",
        json={"outcome": "for_buyer", "note": "Fraudulent identity."},
        headers=staff.headers,
    )
    assert decided.status_code == 200, decided.text
    ret = await session.scalar(
        select(OrderReturn)
        .where(OrderReturn.order_id == order_id)
        .execution_options(populate_existing=True)
    )
    assert ret is not None
    assert (ret.refund_kind, ret.refunded_cents) == ("clawed_back", PRICE)
    assert ret.clawed_back_cents == PRICE - FEE
    assert await wallet(session, buyer.id) == (10_000, 0)
    assert await payable(session, seller.id) == -(PRICE - FEE)  # the seller owes it
    nothing = await client.post("/api/v1/payouts", json={}, headers=seller.headers)
    assert problem(nothing, 409, "nothing-to-pay-out")["balance_cents"] == -(PRICE - FEE)
    await ledger_ok(session)

    # The next sale's settlement pays the debt back before anything is paid out.
    other_buyer = await member(client, session, "buyer", cents=10_000)
    await bought(client, session, settings, seller, other_buyer, price_cents=5000)
    later = utcnow() + dt.timedelta(hours=settings.return_window_hours + 1)
    assert await orders.settle_due_orders(session, settings, now=later) == 1
    assert await payable(session, seller.id) == 5000 - 500 - (PRICE - FEE)
    await ledger_ok(session)


async def test_settlement_waits_while_a_return_is_open(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await member(client, session, "seller")
    buyer = await member(client, session, "buyer", cents=10_000)
    order_id, _ = await bought(client, session, settings, seller, buyer)
    await request_return(client, buyer, order_id)
    later = utcnow() + dt.timedelta(hours=settings.return_window_hours + 1)
    assert await orders.settle_due_orders(session, settings, now=later) == 0
    order = await session.get(Order, order_id, populate_existing=True)
    assert order is not None and order.status == "held"
    await ledger_ok(session)


async def test_returns_work_after_the_leads_personal_data_is_destroyed(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await member(client, session, "seller")
    buyer = await member(client, session, "buyer", cents=10_000)
    order_id, _ = await bought(client, session, settings, seller, buyer)
    order = await session.get(Order, order_id)
    assert order is not None
    lead = await session.get(Lead, order.lead_id, populate_existing=True)
    assert lead is not None
    await destroy_personal_data(session, lead, now=utcnow())
    await session.flush()
    created = await request_return(client, buyer, order_id, reason="fake_or_fraudulent_identity")
    assert created.status_code == 201, created.text
    decided = await client.post(
        f"/api/v1/returns/{created.json()['id']}/decision",
        json={"approve": True},
        headers=seller.headers,
    )
    assert decided.json()["refunded_cents"] == PRICE
    await ledger_ok(session)


async def test_evidence_files_are_sealed_and_served_back_as_downloads(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await member(client, session, "seller")
    buyer = await member(client, session, "buyer", cents=10_000)
    stranger = await member(client, session, "buyer")
    order_id, _ = await bought(client, session, settings, seller, buyer)
    return_id = (await request_return(client, buyer, order_id)).json()["id"]
    content = b"<script>alert(1)</script> call log: 3 attempts, number disconnected"
    uploaded = await client.post(
        f"/api/v1/returns/{return_id}/evidence",
        files={"evidence": ("../../calls.html", content, "text/html")},
        headers=buyer.headers,
    )
    assert uploaded.status_code == 201, uploaded.text
    evidence = uploaded.json()
    assert (evidence["filename"], evidence["uploaded_by"]) == ("calls.html", "buyer")
    row = await session.get(ReturnEvidence, evidence["id"])
    assert row is not None and content not in row.sealed and b"call log" not in row.sealed

    for who in (buyer, seller):
        got = await client.get(evidence["url"], headers=who.headers)
        assert got.status_code == 200
        assert got.content == content
        assert got.headers["content-type"] == "application/octet-stream"
        assert got.headers["content-disposition"] == 'attachment; filename="calls.html"'
        assert got.headers["x-content-type-options"] == "nosniff"
    problem(await client.get(evidence["url"], headers=stranger.headers), 404, "not-found")
    too_big = await client.post(
        f"/api/v1/returns/{return_id}/evidence",
        files={"evidence": ("big.bin", b"x" * (settings.return_evidence_max_bytes + 1))},
        headers=seller.headers,
    )
    assert problem(too_big, 422, "validation-error")["errors"][0]["field"] == "evidence"
    empty = await client.post(
        f"/api/v1/returns/{return_id}/evidence",
        files={"evidence": ("empty.txt", b"")},
        headers=seller.headers,
    )
    problem(empty, 422, "validation-error")
    assert await session.scalar(select(func.count()).select_from(ReturnEvidence)) == 1


async def test_claims_are_filed_by_either_party_and_answered_by_an_admin(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await member(client, session, "seller")
    buyer = await member(client, session, "buyer", cents=10_000)
    stranger = await member(client, session, "buyer")
    staff = await admin(client, session)
    order_id, _ = await bought(client, session, settings, seller, buyer)
    body = {"category": "billing", "text": "I was charged twice?"}
    filed = await client.post(f"/api/v1/orders/{order_id}/claims", json=body, headers=buyer.headers)
    assert filed.status_code == 201, filed.text
    problem(
        await client.post(f"/api/v1/orders/{order_id}/claims", json=body, headers=buyer.headers),
        409,
        "claim-exists",
    )
    problem(
        await client.post(f"/api/v1/orders/{order_id}/claims", json=body, headers=stranger.headers),
        404,
        "not-found",
    )
    blank = await client.post(
        f"/api/v1/orders/{order_id}/claims",
        json={"category": "billing", "text": " \n "},
        headers=seller.headers,
    )
    assert problem(blank, 422, "validation-error")["errors"][0]["field"] == "text"
    seller_claim = await client.post(
        f"/api/v1/orders/{order_id}/claims",
        json={"category": "conduct", "text": "The buyer resold the lead."},
        headers=seller.headers,
    )
    assert seller_claim.json()["filed_by"] == "seller"
    queue = await client.get("/api/v1/claims?status=open", headers=staff.headers)
    assert len(queue.json()["items"]) == 2
    mine = await client.get("/api/v1/claims", headers=stranger.headers)
    assert mine.json()["items"] == []
    claim_id = filed.json()["id"]
    answered = await client.post(
        f"/api/v1/admin/claims/{claim_id}/decision",
        json={"outcome": "resolved", "note": "One charge only; the other was a hold."},
        headers=staff.headers,
    )
    assert answered.json()["status"] == "resolved"
    problem(
        await client.post(
            f"/api/v1/admin/claims/{claim_id}/decision",
            json={"outcome": "rejected", "note": "again"},
            headers=staff.headers,
        ),
        409,
        "claim-closed",
    )
    after = (
        await client.get(f"/api/v1/orders/{order_id}/after-sale", headers=seller.headers)
    ).json()
    assert [c["status"] for c in after["claims"]] == ["resolved", "open"]
    assert "claim_resolved" in [e["event"] for e in after["history"]]
