"""The thread page of an order over a real HTTP stack: the two parties only, a refused message
shown again with the reason and nothing stored, CSRF on every form, and the report forms
feeding the fraud queue."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.messages import views
from leadmarket.models import FraudSignal, MemberMessage
from tests.fixtures.trades import party, trade
from tests.ledger.test_wallet_page import field, sign_in


async def count(session: AsyncSession, model: type[object]) -> int:
    return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_the_seller_answers_and_reports_from_the_thread_page(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    t = await trade(client, session, settings)
    sent = await client.post(
        f"/api/v1/orders/{t.order_id}/messages",
        json={"body": "Is the phone number a mobile?"},
        headers=t.buyer.headers,
    )
    assert sent.status_code == 201
    await sign_in(client, t.seller.username)
    url = f"/orders/{t.order_id}/messages"
    page = await client.get(url)
    assert page.status_code == 200
    assert "Is the phone number a mobile?" in page.text and t.buyer.username in page.text
    assert t.buyer.email not in page.text and t.consumer_email not in page.text
    token = field(page.text, "csrf_token")

    assert (await client.post(url, data={"body": "no token"})).status_code == 403
    empty = await client.post(url, data={"csrf_token": token, "body": "   "})
    assert empty.status_code == 422 and "Write a message." in empty.text
    long_text = "x" * (settings.message_max_chars + 1)
    too_long = await client.post(url, data={"csrf_token": token, "body": long_text})
    assert too_long.status_code == 422 and long_text in too_long.text  # kept for editing
    assert await count(session, MemberMessage) == 1

    answered = await client.post(url, data={"csrf_token": token, "body": "Yes, a mobile."})
    assert answered.status_code == 303
    assert answered.headers["location"].startswith(url + "?done=sent")
    assert await count(session, MemberMessage) == 2

    message_id = sent.json()["id"]
    spam = await client.post(f"{url}/{message_id}/spam-report", data={"csrf_token": token})
    assert spam.status_code == 303
    again = await client.post(f"{url}/{message_id}/spam-report", data={"csrf_token": token})
    assert again.status_code == 409 and "already" in again.text
    complaint = await client.post(
        f"/orders/{t.order_id}/report",
        data={"csrf_token": token, "about": "member", "reason": "harassment", "details": "Rude"},
    )
    assert complaint.status_code == 303
    no_reason = await client.post(
        f"/orders/{t.order_id}/report", data={"csrf_token": token, "about": "lead", "reason": ""}
    )
    assert no_reason.status_code == 422
    kinds = (await session.scalars(select(FraudSignal.kind).order_by(FraudSignal.id))).all()
    assert kinds == ["spam_report", "complaint"]


async def test_a_member_who_is_not_a_party_finds_no_thread(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    t = await trade(client, session, settings)
    stranger = await party(client, session, "buyer")
    await sign_in(client, stranger.username)
    url = f"/orders/{t.order_id}/messages"
    page = await client.get(url)
    assert page.status_code == 404
    home = await client.get("/account")
    token = field(home.text, "csrf_token")
    posted = await client.post(url, data={"csrf_token": token, "body": "Want cheap leads?"})
    assert posted.status_code == 404
    assert await count(session, MemberMessage) == 0


async def test_the_page_shows_the_newest_messages_of_a_long_thread(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(views, "PAGE_MESSAGES", 3)
    t = await trade(client, session, settings)
    for n in range(5):
        sent = await client.post(
            f"/api/v1/orders/{t.order_id}/messages",
            json={"body": f"note number {n}"},
            headers=t.buyer.headers,
        )
        assert sent.status_code == 201
    await sign_in(client, t.seller.username)
    page = await client.get(f"/orders/{t.order_id}/messages")
    assert [f"note number {n}" in page.text for n in range(5)] == [False, False, True, True, True]
    # Opening the page read them all: the next message is worth an email again.
    unread = await session.scalar(
        select(func.count()).where(
            MemberMessage.recipient_id == t.seller.user.id, MemberMessage.read_at.is_(None)
        )
    )
    assert unread == 0
    api = await client.get(
        f"/api/v1/orders/{t.order_id}/messages", params={"limit": 2}, headers=t.buyer.headers
    )
    assert [m["body"] for m in api.json()["items"]] == ["note number 0", "note number 1"]
    rest = await client.get(
        f"/api/v1/orders/{t.order_id}/messages",
        params={"limit": 10, "cursor": api.json()["next_cursor"]},
        headers=t.buyer.headers,
    )
    assert [m["body"] for m in rest.json()["items"]] == [f"note number {n}" for n in range(2, 5)]
    assert rest.json()["next_cursor"] is None
