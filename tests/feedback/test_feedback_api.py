"""M3 over the real HTTP stack: each party of an order rates the other once; the rating, the
comment and the one reply are public by username only (A1) with the average and the count per
star; bad input (no order, someone else's order, twice, out of range, contact data in the text,
too late) is a clear 4xx with nothing changed; abuse reports reach the admins, who can hide the
feedback (audited), after which it counts nowhere."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.feedback import service
from leadmarket.kit.db import Database
from leadmarket.kit.errors import DomainError
from leadmarket.ledger.service import deposit
from leadmarket.models import (
    AuditEvent,
    Feedback,
    FeedbackReport,
    Order,
    OutboundMail,
    SaleVia,
    User,
)
from leadmarket.orders.service import sell
from leadmarket.payments.processor import SandboxProcessor
from tests.fixtures.accounts import signed_in
from tests.fixtures.feedback import Deal, a_deal
from tests.fixtures.ledger import make_member
from tests.fixtures.orders import make_lead
from tests.fixtures.staff import staff_member


async def count(session: AsyncSession, model: type[object]) -> int:
    return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def leave(
    client: httpx.AsyncClient, deal: Deal, auth: dict[str, str], **body: object
) -> httpx.Response:
    return await client.post(f"/api/v1/orders/{deal.order_id}/feedback", json=body, headers=auth)


async def test_each_party_rates_the_other_once_and_the_profile_shows_it_by_username(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    deal = await a_deal(client, session, settings)
    by_buyer = await leave(client, deal, deal.buyer_auth, rating=4, comment="Good lead, quick.")
    assert by_buyer.status_code == 201, by_buyer.text
    body = by_buyer.json()
    assert body["rating"] == 4 and body["author"] == deal.buyer["username"]
    assert body["subject"] == deal.seller["username"] and body["author_role"] == "buyer"
    by_seller = await leave(client, deal, deal.seller_auth, rating=5)
    assert by_seller.status_code == 201, by_seller.text
    assert by_seller.json()["subject"] == deal.buyer["username"]

    profile = await client.get(f"/api/v1/members/{deal.seller['username']}")
    assert profile.status_code == 200
    shown = profile.json()
    assert shown["rating_average"] == 4.0 and shown["rating_count"] == 1
    assert shown["rating_counts"] == {"5": 0, "4": 1, "3": 0, "2": 0, "1": 0}
    (item,) = shown["feedback"]
    assert item["author"] == deal.buyer["username"] and item["comment"] == "Good lead, quick."
    # Usernames only: neither member's name or contact data, nor the consumer's.
    for secret in (
        deal.buyer["email"],
        deal.buyer["phone"],
        deal.buyer["name"],
        deal.seller["email"],
        deal.consumer_email,
        "Olive Ave",
    ):
        assert secret not in profile.text
    both = await client.get(f"/api/v1/orders/{deal.order_id}/feedback", headers=deal.buyer_auth)
    assert both.json()["given"]["rating"] == 4 and both.json()["received"]["rating"] == 5
    assert both.json()["can_leave"] is False

    # The rated member is told, through the notification center, without the consumer.
    (mail,) = await session.scalars(
        select(OutboundMail).where(
            OutboundMail.template == "notify/feedback_received",
            OutboundMail.to_address == deal.seller["email"],
        )
    )
    assert deal.buyer["username"] in mail.text_body and "4 out of 5" in mail.subject
    assert deal.consumer_email not in mail.text_body

    lead = await client.get(f"/api/v1/leads/{deal.lead_id}", headers=deal.seller_auth)
    assert lead.json()["seller"] == {"username": deal.seller["username"], "rating": 4.0}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rating": 0}, "rating"),
        ({"rating": 6}, "rating"),
        ({"rating": "5"}, "rating"),
        ({"rating": 4.5}, "rating"),
        ({}, "rating"),
        ({"rating": 3, "comment": "Call ana.silva@example.com"}, "comment"),
        ({"rating": 3, "comment": "Her number is (559) 234-5678"}, "comment"),
        ({"rating": 3, "comment": "x" * 1001}, "comment"),
        ({"rating": 3, "stars": 3}, "stars"),
    ],
)
async def test_bad_feedback_is_a_422_naming_the_field_and_changes_nothing(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    body: dict[str, object],
    field: str,
) -> None:
    deal = await a_deal(client, session, settings)
    response = await leave(client, deal, deal.buyer_auth, **body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert any(e["field"].endswith(field) for e in response.json()["errors"]), response.json()
    assert await count(session, Feedback) == 0
    assert (
        await session.scalar(
            select(func.count()).where(OutboundMail.template == "notify/feedback_received")
        )
        == 0
    )


async def test_no_order_someone_elses_order_twice_or_too_late_is_refused(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    deal = await a_deal(client, session, settings)
    _, stranger = await signed_in(client, "buyer")
    missing = await client.post(
        "/api/v1/orders/ord_00000000000000000000000000/feedback",
        json={"rating": 5},
        headers=deal.buyer_auth,
    )
    assert missing.status_code == 404
    not_theirs = await leave(client, deal, stranger, rating=1, comment="Never bought this")
    assert not_theirs.status_code == 404  # nobody learns the order exists
    first = await leave(client, deal, deal.buyer_auth, rating=2)
    assert first.status_code == 201
    twice = await leave(client, deal, deal.buyer_auth, rating=5)
    assert twice.status_code == 409
    assert twice.json()["type"].endswith("/feedback-already-left")
    assert twice.json()["feedback_id"] == first.json()["id"]
    rows = list(await session.scalars(select(Feedback)))
    assert [(f.rating, f.author_id) for f in rows] == [(2, deal.buyer["id"])]

    order = await session.get(Order, deal.order_id)
    assert order is not None
    order.purchased_at -= dt.timedelta(days=settings.feedback_window_days, minutes=1)
    await session.commit()
    late = await leave(client, deal, deal.seller_auth, rating=3)
    assert late.status_code == 409 and late.json()["type"].endswith("/feedback-period-over")
    assert await count(session, Feedback) == 1


async def test_only_the_author_changes_feedback_and_only_within_the_edit_window(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    deal = await a_deal(client, session, settings)
    left = (await leave(client, deal, deal.buyer_auth, rating=2, comment="Slow")).json()
    path = f"/api/v1/feedback/{left['id']}"

    by_other = await client.patch(path, json={"rating": 1}, headers=deal.seller_auth)
    assert by_other.status_code == 403
    nothing = await client.patch(path, json={}, headers=deal.buyer_auth)
    assert nothing.status_code == 422
    changed = await client.patch(path, json={"rating": 4}, headers=deal.buyer_auth)
    assert changed.status_code == 200, changed.text
    assert changed.json()["rating"] == 4 and changed.json()["comment"] == "Slow"
    assert changed.json()["edited_at"] is not None
    cleared = await client.patch(path, json={"comment": None}, headers=deal.buyer_auth)
    assert cleared.json()["comment"] is None and cleared.json()["rating"] == 4

    row = await session.get(Feedback, left["id"], populate_existing=True)
    assert row is not None
    row.editable_until = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await session.commit()
    final = await client.patch(path, json={"rating": 1}, headers=deal.buyer_auth)
    assert final.status_code == 409 and final.json()["type"].endswith("/feedback-edit-closed")
    row = await session.get(Feedback, left["id"], populate_existing=True)
    assert row is not None and row.rating == 4


async def test_the_rated_member_replies_once_in_public(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    deal = await a_deal(client, session, settings)
    left = (await leave(client, deal, deal.buyer_auth, rating=3)).json()
    path = f"/api/v1/feedback/{left['id']}/reply"

    by_author = await client.post(path, json={"reply": "I agree"}, headers=deal.buyer_auth)
    assert by_author.status_code == 403
    with_contact = await client.post(
        path, json={"reply": "Write to me at seller@example.com"}, headers=deal.seller_auth
    )
    assert with_contact.status_code == 422
    assert with_contact.json()["errors"][0]["field"] == "reply"
    blank = await client.post(path, json={"reply": "   "}, headers=deal.seller_auth)
    assert blank.status_code == 422
    replied = await client.post(path, json={"reply": "Thanks, fixed."}, headers=deal.seller_auth)
    assert replied.status_code == 201, replied.text
    again = await client.post(path, json={"reply": "Changed mind"}, headers=deal.seller_auth)
    assert again.status_code == 409 and again.json()["type"].endswith("/feedback-already-replied")

    profile = (await client.get(f"/api/v1/members/{deal.seller['username']}")).json()
    assert profile["feedback"][0]["reply"]["text"] == "Thanks, fixed."
    listed = await client.get(f"/api/v1/members/{deal.seller['username']}/feedback?limit=1")
    assert listed.json()["items"][0]["reply"]["text"] == "Thanks, fixed."


async def test_reports_reach_the_admins_who_hide_feedback_with_an_audited_reason(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    deal = await a_deal(client, session, settings)
    left = (await leave(client, deal, deal.buyer_auth, rating=1, comment="Crooks!")).json()
    kept = (await leave(client, deal, deal.seller_auth, rating=5, comment="Fine buyer")).json()
    _, reporter = await signed_in(client, "buyer")
    reports = f"/api/v1/feedback/{left['id']}/reports"

    bad_reason = await client.post(reports, json={"reason": "hate-it"}, headers=reporter)
    assert bad_reason.status_code == 422
    filed = await client.post(reports, json={"reason": "abusive"}, headers=reporter)
    assert filed.status_code == 201, filed.text
    twice = await client.post(reports, json={"reason": "spam"}, headers=reporter)
    assert twice.status_code == 409
    own = await client.post(reports, json={"reason": "false"}, headers=deal.buyer_auth)
    assert own.status_code == 422 and own.json()["errors"][0]["field"] == "subject_id"
    by_subject = await client.post(
        reports, json={"reason": "false", "note": "Never said that"}, headers=deal.seller_auth
    )
    assert by_subject.status_code == 201
    other = await client.post(
        f"/api/v1/feedback/{kept['id']}/reports", json={"reason": "other"}, headers=reporter
    )
    assert other.status_code == 201
    assert await count(session, FeedbackReport) == 3

    _, admin = await staff_member(client, session, "admin")
    queue = await client.get("/api/v1/admin/feedback/reports", headers=admin)
    assert queue.status_code == 200
    assert {r["feedback"]["id"] for r in queue.json()["items"]} == {left["id"], kept["id"]}

    short = await client.post(
        f"/api/v1/admin/feedback/{left['id']}/hide", json={"reason": "no"}, headers=admin
    )
    assert short.status_code == 422
    hidden = await client.post(
        f"/api/v1/admin/feedback/{left['id']}/hide",
        json={"reason": "Insults, no facts about the order"},
        headers=admin,
    )
    assert hidden.status_code == 200, hidden.text
    again = await client.post(
        f"/api/v1/admin/feedback/{left['id']}/hide",
        json={"reason": "Insults, no facts about the order"},
        headers=admin,
    )
    assert again.status_code == 409
    (event,) = await session.scalars(
        select(AuditEvent).where(AuditEvent.action == "feedback.hidden")
    )
    assert event.subject_id == left["id"] and event.reason == "Insults, no facts about the order"
    assert event.details is not None and event.details["reports_upheld"] == 2

    profile = (await client.get(f"/api/v1/members/{deal.seller['username']}")).json()
    assert profile["rating_count"] == 0 and profile["rating_average"] is None
    assert profile["feedback"] == []
    assert (
        await client.post(reports, json={"reason": "spam"}, headers=reporter)
    ).status_code == 404
    patch = await client.patch(
        f"/api/v1/feedback/{left['id']}", json={"rating": 5}, headers=deal.buyer_auth
    )
    assert patch.status_code == 404

    (open_report,) = (await client.get("/api/v1/admin/feedback/reports", headers=admin)).json()[
        "items"
    ]
    assert open_report["feedback"]["id"] == kept["id"]
    dismissed = await client.post(
        f"/api/v1/admin/feedback/reports/{open_report['id']}/dismiss",
        json={"note": "Ordinary feedback"},
        headers=admin,
    )
    assert dismissed.status_code == 200 and dismissed.json()["status"] == "dismissed"
    assert (
        await client.post(
            f"/api/v1/admin/feedback/reports/{open_report['id']}/dismiss", json={}, headers=admin
        )
    ).status_code == 409
    assert (
        await session.scalar(
            select(func.count()).where(AuditEvent.action == "feedback.report_dismissed")
        )
        == 1
    )
    everything = await client.get("/api/v1/admin/feedback/reports?status=upheld", headers=admin)
    assert len(everything.json()["items"]) == 2
    buyer_profile = (await client.get(f"/api/v1/members/{deal.buyer['username']}")).json()
    assert buyer_profile["rating_average"] == 5.0


async def test_two_racing_requests_leave_one_feedback(
    committed_db: Database, settings: Settings
) -> None:
    """Two requests for the same order's feedback at once: one wins, the other is a 409 and
    nothing of it remains (the unique constraint holds even past the service's own check)."""
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        buyer = await make_member(session, "buyer")
        lead, _ = await make_lead(session, settings, seller)
        await deposit(
            session, SandboxProcessor(), member_id=buyer.id, amount_cents=5000, currency="USD"
        )
        order = await sell(
            session,
            settings,
            lead_id=lead.id,
            buyer_id=buyer.id,
            price_cents=2500,
            via=SaleVia.FIXED,
        )
        order_id, buyer_id = order.id, buyer.id

    async def attempt(rating: int) -> str:
        try:
            async with committed_db.transaction() as session:
                author = await session.get(User, buyer_id)
                assert author is not None
                await service.leave_feedback(
                    session,
                    settings,
                    order_id=order_id,
                    author=author,
                    rating=rating,
                    comment=None,
                )
        except DomainError as exc:
            return exc.slug
        return "ok"

    outcomes = await asyncio.gather(attempt(1), attempt(5))
    assert sorted(outcomes) == ["feedback-already-left", "ok"]
    async with committed_db.transaction() as session:
        assert await count(session, Feedback) == 1
