"""Member messages (M4, P7, P8, M6) over the real API: only the two parties of an order write to
each other and see each other's username and nothing more; bad input is a clear 4xx with
nothing stored; a sender is rate-limited and cannot paste one text into many threads; the
recipient's member-message preference decides the email, never whether the message is kept;
the email carries the unsubscribe link; a spam report lands on the fraud queue."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from email.message import EmailMessage

import httpx
import pytest
from sqlalchemy import Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.jobs import Worker
from leadmarket.models import FraudCase, FraudSignal, MemberMessage, OutboundMail
from leadmarket.notifications.notify import Event, template_of
from leadmarket.tasks import build_registry, build_services
from tests.fixtures.leads import lead_body
from tests.fixtures.ledger import fund
from tests.fixtures.staff import staff_member
from tests.fixtures.trades import Trade, admin, party, trade


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "messages_per_hour": 5,
            "messages_per_day": 8,
            "message_same_text_max_threads": 2,
            "message_max_chars": 200,
        }
    )


NEW_MESSAGE_TEMPLATE = template_of(Event.MESSAGE_RECEIVED)


def messages_url(order_id: str) -> str:
    return f"/api/v1/orders/{order_id}/messages"


async def send(
    client: httpx.AsyncClient, t: Trade, text: str, *, by: str = "buyer"
) -> httpx.Response:
    headers = t.buyer.headers if by == "buyer" else t.seller.headers
    return await client.post(messages_url(t.order_id), json={"body": text}, headers=headers)


async def stored(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(MemberMessage)) or 0)


def message_mails(address: str) -> Select[tuple[OutboundMail]]:
    return select(OutboundMail).where(
        OutboundMail.to_address == address, OutboundMail.template == NEW_MESSAGE_TEMPLATE
    )


async def run_jobs(db: Database, settings: Settings) -> int:
    return await Worker(db, build_registry(), build_services(settings), settings).run_once()


def eml_to(settings: Settings, address: str) -> list[EmailMessage]:
    found = []
    for path in sorted(settings.mail_path.glob("*.eml")) if settings.mail_path.exists() else []:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        if message["To"] == address and "sent you a message" in str(message["Subject"]):
            found.append(message)
    return found


async def test_only_the_two_parties_write_and_read_the_thread(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    t = await trade(client, session, settings)
    first = await send(client, t, "Hello, when did the consumer fill in the form?")
    assert first.status_code == 201, first.text
    assert first.json()["sender"] == t.buyer.username
    assert first.json()["recipient"] == t.seller.username
    reply = await send(client, t, "Yesterday evening.\nCall after 5 pm.", by="seller")
    assert reply.status_code == 201, reply.text

    for viewer, other in ((t.buyer, t.seller), (t.seller, t.buyer)):
        thread = await client.get(messages_url(t.order_id), headers=viewer.headers)
        assert thread.status_code == 200
        items = thread.json()["items"]
        assert [m["body"] for m in items] == [
            "Hello, when did the consumer fill in the form?",
            "Yesterday evening.\nCall after 5 pm.",
        ]
        assert {m["sender"] for m in items} == {viewer.username, other.username}
        # L6/M4: the thread shows usernames only, never the other party's contact details.
        assert other.email not in thread.text
        assert other.account["phone"] not in thread.text
        assert t.consumer_email not in thread.text

    # Someone with no order with them: told the order does not exist, and nothing is stored.
    outsider = await party(client, session, "buyer")
    other_seller = await party(client, session, "seller")
    before = await stored(session)
    for stranger in (outsider, other_seller):
        refused = await client.post(
            messages_url(t.order_id), json={"body": "Buy my leads!"}, headers=stranger.headers
        )
        assert refused.status_code == 404
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert (
            await client.get(messages_url(t.order_id), headers=stranger.headers)
        ).status_code == 404
    # Staff have no threads at all.
    _, support = await staff_member(client, session, "support")
    assert (await client.get(messages_url(t.order_id), headers=support)).status_code == 403
    assert await stored(session) == before == 2


async def test_bad_messages_are_refused_with_the_field_and_nothing_is_stored(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    t = await trade(client, session, settings)
    for body, field in (
        ({"body": "   \n  "}, "body"),
        ({"body": "x" * (settings.message_max_chars + 1)}, "body"),
        ({"body": "bell\x07"}, "body"),
        ({}, "body"),
        # No way to name a recipient, let alone a list of them.
        ({"body": "hi", "to": ["a@example.com", "b@example.com"]}, "to"),
    ):
        refused = await client.post(messages_url(t.order_id), json=body, headers=t.buyer.headers)
        assert refused.status_code == 422, body
        problem = refused.json()
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert any(e["field"].endswith(field) for e in problem["errors"]), problem
    too_long = await send(client, t, "y" * (settings.message_max_chars + 1))
    assert str(settings.message_max_chars) in too_long.json()["errors"][0]["message"]
    # Exactly at the limit is fine.
    assert (await send(client, t, "z" * settings.message_max_chars)).status_code == 201
    assert await stored(session) == 1


async def test_a_sender_is_rate_limited_per_hour_and_per_day(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    t = await trade(client, session, settings)
    for n in range(settings.messages_per_hour):
        assert (await send(client, t, f"message {n}")).status_code == 201
    over = await send(client, t, "one too many")
    assert over.status_code == 429
    assert 1 <= int(over.headers["Retry-After"]) <= 3600
    assert await stored(session) == settings.messages_per_hour
    # The other party is not limited by the sender's count.
    assert (await send(client, t, "my reply", by="seller")).status_code == 201

    # Two hours later the hourly window is clear, but the daily cap still counts them.
    await session.execute(
        update(MemberMessage)
        .where(MemberMessage.sender_id == t.buyer.user.id)
        .values(created_at=utcnow() - dt.timedelta(hours=2))
    )
    await session.commit()
    left_today = settings.messages_per_day - settings.messages_per_hour
    for n in range(left_today):
        assert (await send(client, t, f"later {n}")).status_code == 201
    daily = await send(client, t, "over the daily cap")
    assert daily.status_code == 429
    assert "day" in daily.json()["detail"]
    assert int(daily.headers["Retry-After"]) > 3600


async def test_one_text_pasted_into_many_threads_is_refused_and_flagged(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await party(client, session, "seller")
    trades = [await trade(client, session, settings, seller=seller) for _ in range(3)]
    pitch = "Special offer: 50% off all my leads this week! Reply now."
    for t in trades[: settings.message_same_text_max_threads]:
        assert (await send(client, t, pitch, by="seller")).status_code == 201
    # Changing case and spacing does not make it another text.
    bulk = await send(client, trades[-1], pitch.upper().replace(" ", "  "), by="seller")
    assert bulk.status_code == 403
    assert bulk.json()["type"].endswith("/bulk-messaging")
    assert await stored(session) == settings.message_same_text_max_threads
    signal = await session.scalar(select(FraudSignal).where(FraudSignal.kind == "bulk_messaging"))
    assert signal is not None and signal.subject_user_id == seller.user.id
    # A different text to that buyer is fine.
    assert (
        await send(client, trades[-1], "Your lead's details are in the order.", by="seller")
    ).status_code == 201


async def test_preference_off_keeps_the_message_and_sends_no_email(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    t = await trade(client, session, settings)
    off = await client.put(
        "/api/v1/me/preferences",
        json={"topics": {"member_messages": False}},
        headers=t.seller.headers,
    )
    assert off.status_code == 200, off.text
    assert (await send(client, t, "Is this consumer still interested?")).status_code == 201

    thread = await client.get(messages_url(t.order_id), headers=t.seller.headers)
    assert [m["body"] for m in thread.json()["items"]] == ["Is this consumer still interested?"]
    [mail] = list(await session.scalars(message_mails(t.seller.email)))
    assert (mail.status, mail.suppressed_reason) == ("suppressed", "preference")
    await run_jobs(db, settings)
    assert eml_to(settings, t.seller.email) == []


async def test_the_notification_has_an_unsubscribe_link_and_comes_once_per_unread_batch(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    t = await trade(client, session, settings)
    secret = "The consumer prefers calls on Tuesday."
    assert (await send(client, t, secret)).status_code == 201
    assert (await send(client, t, "And not before 9.")).status_code == 201
    await run_jobs(db, settings)
    [message] = eml_to(settings, t.seller.email)
    assert t.buyer.username in message["Subject"] and t.order_id in message["Subject"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = str(message["List-Unsubscribe"]).strip("<>")
    assert link.startswith(settings.base_url + "/unsubscribe/")
    part = message.get_body(("plain",))
    assert part is not None
    text = str(part.get_content())
    assert link in text
    assert f"/orders/{t.order_id}/messages" in text
    assert secret not in text  # the text stays on the site, where it can be reported
    assert t.buyer.email not in text
    # The link works.
    clicked = await client.post(link[len(settings.base_url) :])
    assert clicked.status_code == 200

    # Once the seller read the thread, the next message is worth a new email.
    assert (await client.get(messages_url(t.order_id), headers=t.seller.headers)).status_code == 200
    assert (await send(client, t, "Any news?")).status_code == 201
    mails = list(await session.scalars(message_mails(t.seller.email)))
    assert len(mails) == 2
    first = (await client.get(messages_url(t.order_id), headers=t.buyer.headers)).json()["items"][0]
    assert first["read_at"] is not None


async def test_a_spam_report_goes_to_the_fraud_queue_once(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    t = await trade(client, session, settings)
    spam = (await send(client, t, "Cheap followers, visit my site", by="seller")).json()
    url = f"/api/v1/messages/{spam['id']}/spam-report"
    # The sender cannot report their own message; a stranger cannot see it.
    assert (await client.post(url, headers=t.seller.headers)).status_code == 404
    stranger = await party(client, session, "buyer")
    assert (await client.post(url, headers=stranger.headers)).status_code == 404

    reported = await client.post(url, json={"details": "Unsolicited ad"}, headers=t.buyer.headers)
    assert reported.status_code == 201, reported.text
    again = await client.post(url, headers=t.buyer.headers)
    assert again.status_code == 409
    assert again.json()["type"].endswith("/already-reported")

    case = await session.scalar(
        select(FraudCase).where(FraudCase.subject_user_id == t.seller.user.id)
    )
    assert case is not None and case.status == "open"
    reviewer = await admin(client, session)
    queue = await client.get("/api/v1/admin/fraud/cases", headers=reviewer.headers)
    [row] = [c for c in queue.json()["items"] if c["id"] == case.id]
    assert row["member"]["username"] == t.seller.username
    assert row["kinds"] == {"spam_report": 1} and row["signal_count"] == 1
    assert row["last_signal_at"] is not None
    detail = (
        await client.get(f"/api/v1/admin/fraud/cases/{case.id}", headers=reviewer.headers)
    ).json()
    [signal] = detail["signals"]
    assert signal["message_body"] == "Cheap followers, visit my site"
    assert signal["reporter"] == t.buyer.username
    assert signal["details"]["note"] == "Unsolicited ad"


async def test_the_consumers_contact_details_cannot_be_pasted_into_a_message(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    """L4: the consumer's email and phone are destroyed 48 hours after the sale; a copy in a
    thread would outlive them. Found through the lead's blind indexes, however it is written."""
    seller = await party(client, session, "seller")
    body = lead_body(sale={"mode": "fixed", "price_cents": 2500, "exclusive": True})
    posted = await client.post("/api/v1/leads", json=body, headers=seller.headers)
    assert posted.status_code == 201, posted.text
    buyer = await party(client, session, "buyer")
    await fund(session, buyer.user, 10_000)
    await session.commit()
    bought = await client.post(
        f"/api/v1/leads/{posted.json()['id']}/purchase", headers=buyer.headers
    )
    assert bought.status_code == 201, bought.text
    url = messages_url(bought.json()["id"])
    email_address = body["contact"]["email"]
    phone = body["contact"]["phone"]  # E.164, e.g. +15595550123
    national = f"({phone[2:5]}) {phone[5:8]}-{phone[8:]}"
    for text in (
        f"Is {email_address.upper()} right?",
        f"I called {national} twice, no answer.",
        f"Try {phone[2:5]}.{phone[5:8]}.{phone[8:]} maybe",
    ):
        refused = await client.post(url, json={"body": text}, headers=buyer.headers)
        assert refused.status_code == 422, text
        assert "consumer" in refused.json()["errors"][0]["message"]
    assert await stored(session) == 0
    # Other addresses and numbers are the members' business.
    mine = "Reach me at sales@leadhunter.example or (415) 555-0100 if needed."
    assert (await client.post(url, json={"body": mine}, headers=buyer.headers)).status_code == 201
