"""M3 through the pages (cookie session and CSRF, real HTTP stack): the buyer leaves feedback
from the order page, the seller answers from their order feedback page and rates the buyer,
the public profile shows the average, the stars and the reply by username; a missing rating
is shown on the page with nothing stored; a signed-in member reports it from the profile and
an admin hides it from the queue (audited)."""

from __future__ import annotations

import re

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.models import AuditEvent, Feedback, FeedbackReport, User
from tests.fixtures.feedback import a_deal
from tests.ledger.test_wallet_page import field, sign_in


def form_after(html: str, action: str) -> str:
    match = re.search(rf'<form method="post" action="{re.escape(action)}".*?</form>', html, re.S)
    assert match, f"no form posting to {action}"
    return match.group(0)


async def test_buyer_rates_from_the_order_page_seller_replies_and_the_profile_shows_both(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    deal = await a_deal(client, session, settings)
    await sign_in(client, deal.buyer["username"])
    order_page = await client.get(f"/orders/{deal.order_id}")
    assert order_page.status_code == 200
    form = form_after(order_page.text, f"/orders/{deal.order_id}/feedback")
    csrf = field(form, "csrf_token")

    missing = await client.post(
        f"/orders/{deal.order_id}/feedback",
        data={"csrf_token": csrf, "comment": "Forgot the stars", "back": "/orders/x"},
    )
    assert missing.status_code == 422
    assert "Choose 1 to 5 stars." in missing.text and "Forgot the stars" in missing.text
    assert await session.scalar(select(func.count()).select_from(Feedback)) == 0
    forged = await client.post(
        f"/orders/{deal.order_id}/feedback", data={"csrf_token": "nope", "rating": "5"}
    )
    assert forged.status_code == 403
    assert await session.scalar(select(func.count()).select_from(Feedback)) == 0

    left = await client.post(
        f"/orders/{deal.order_id}/feedback",
        data={
            "csrf_token": csrf,
            "rating": "4",
            "comment": "Real person, answered at once.",
            "back": f"/orders/{deal.order_id}",
        },
    )
    assert left.status_code == 303, left.text
    assert left.headers["location"] == f"/orders/{deal.order_id}?done=left"
    shown = await client.get(left.headers["location"])
    assert "Real person, answered at once." in shown.text
    assert 'action="/feedback/' in shown.text  # the edit form, within the edit window
    twice = await client.post(
        f"/orders/{deal.order_id}/feedback", data={"csrf_token": csrf, "rating": "1"}
    )
    assert twice.status_code == 409 and "already" in twice.text.lower()
    assert await session.scalar(select(func.count()).select_from(Feedback)) == 1

    await client.post("/signout", data={"csrf_token": csrf})
    await sign_in(client, deal.seller["username"])
    seller_view = await client.get(f"/orders/{deal.order_id}/feedback")
    assert seller_view.status_code == 200
    assert "Real person, answered at once." in seller_view.text
    (feedback,) = await session.scalars(select(Feedback))
    reply_form = form_after(seller_view.text, f"/feedback/{feedback.id}/reply")
    seller_csrf = field(reply_form, "csrf_token")
    replied = await client.post(
        f"/feedback/{feedback.id}/reply",
        data={
            "csrf_token": seller_csrf,
            "reply": "Thank you, come again.",
            "back": f"/members/{deal.seller['username']}",
        },
    )
    assert replied.status_code == 303
    assert replied.headers["location"] == f"/members/{deal.seller['username']}?done=replied"
    rated_buyer = await client.post(
        f"/orders/{deal.order_id}/feedback", data={"csrf_token": seller_csrf, "rating": "5"}
    )
    assert rated_buyer.status_code == 303

    profile = await client.get(f"/members/{deal.seller['username']}")
    assert profile.status_code == 200
    assert "4.00 out of 5 (1 rating)" in profile.text
    assert "Thank you, come again." in profile.text
    assert deal.buyer["username"] in profile.text
    for secret in (deal.buyer["email"], deal.buyer["name"], deal.consumer_email):
        assert secret not in profile.text
    sales = await client.get("/seller/sales")
    assert f'href="/orders/{deal.order_id}/feedback"' in sales.text
    # A visitor sees the same profile, without any form.
    await client.post("/signout", data={"csrf_token": seller_csrf})
    client.cookies.clear()
    public = await client.get(f"/members/{deal.buyer['username']}")
    assert "5.00 out of 5" in public.text and '<form method="post"' not in public.text


async def test_a_report_from_the_profile_reaches_the_admin_queue_and_hiding_is_audited(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    deal = await a_deal(client, session, settings)
    left = await client.post(
        f"/api/v1/orders/{deal.order_id}/feedback",
        json={"rating": 1, "comment": "Thieves and liars"},
        headers=deal.buyer_auth,
    )
    feedback_id = left.json()["id"]
    await sign_in(client, deal.seller["username"])
    profile = await client.get(f"/members/{deal.seller['username']}")
    report_form = form_after(profile.text, f"/feedback/{feedback_id}/report")
    reported = await client.post(
        f"/feedback/{feedback_id}/report",
        data={
            "csrf_token": field(report_form, "csrf_token"),
            "reason": "abusive",
            "note": "Insults only",
            "back": f"/members/{deal.seller['username']}",
        },
    )
    assert reported.status_code == 303
    assert await session.scalar(select(func.count()).select_from(FeedbackReport)) == 1
    await client.post("/signout", data={"csrf_token": field(report_form, "csrf_token")})

    from tests.fixtures.accounts import register

    admin = await register(client, "buyer")
    user = await session.get(User, admin["id"])
    assert user is not None
    user.role = "admin"
    await session.commit()
    await sign_in(client, admin["username"])
    queue = await client.get("/admin/feedback")
    assert queue.status_code == 200
    assert "Thieves and liars" in queue.text and "Insults only" in queue.text
    assert 'href="/admin/feedback" aria-current="page"' in queue.text  # in the admin's nav
    hide_form = form_after(queue.text, f"/admin/feedback/{feedback_id}/hide")
    hidden = await client.post(
        f"/admin/feedback/{feedback_id}/hide",
        data={"csrf_token": field(hide_form, "csrf_token"), "reason": "Abuse, no facts"},
    )
    assert hidden.status_code == 303 and hidden.headers["location"] == "/admin/feedback?done=hidden"
    assert (
        await session.scalar(select(func.count()).where(AuditEvent.action == "feedback.hidden"))
        == 1
    )
    public = await client.get(f"/members/{deal.seller['username']}")
    assert "Thieves and liars" not in public.text and "No ratings yet" in public.text
