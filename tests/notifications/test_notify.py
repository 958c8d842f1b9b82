"""The notification center (P7, P8, M3, M6): every event has a template, reaches the right
member through the channels their preferences allow, carries the unsubscribe link and the
RFC 8058 headers, and never carries a consumer's personal data. The hot paths (a bid, an
auction's end, a sale) compose no mail themselves: the worker tells everyone after the commit.

Real parts: the app over HTTP for bids and purchases, the job worker on the test database, the
file mail backend whose .eml files are read back."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from email.message import EmailMessage

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database
from leadmarket.kit.jobs import Worker
from leadmarket.kit.realtime import LocalBroker
from leadmarket.marketplace.service import close_due_auctions
from leadmarket.models import (
    CommunicationPreference,
    Job,
    Lead,
    MailStatus,
    Order,
    OutboundMail,
    User,
    UserStatus,
)
from leadmarket.models.preferences import PREFERENCE_DEFAULTS
from leadmarket.notifications import notify
from leadmarket.notifications.notify import SPECS, Event, template_of
from leadmarket.notifications.sms import SEND_TEXT_JOB
from leadmarket.tasks import build_registry, build_services
from tests.fixtures.accounts import signed_in
from tests.fixtures.auctions import open_auction
from tests.fixtures.feedback import Deal, a_deal
from tests.fixtures.ledger import fund


async def run_jobs(db: Database, settings: Settings) -> int:
    worker = Worker(db, build_registry(), build_services(settings), settings)
    done = 0
    while ran := await worker.run_once():  # a job may enqueue another (notify → mail.send)
        done += ran
    return done


async def mails(session: AsyncSession, template: str) -> list[OutboundMail]:
    rows = await session.scalars(
        select(OutboundMail)
        .where(OutboundMail.template == template)
        .order_by(OutboundMail.created_at, OutboundMail.id)
        .execution_options(populate_existing=True)
    )
    return list(rows)


def sent_messages(settings: Settings) -> dict[str, EmailMessage]:
    """The .eml files written by the file mail backend, by Message-ID."""
    found: dict[str, EmailMessage] = {}
    for path in sorted(settings.mail_path.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        found[str(message["Message-ID"])] = message
    return found


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


async def member(session: AsyncSession, account: dict[str, object]) -> User:
    user = await session.get(User, str(account["id"]))
    assert user is not None
    return user


async def set_preferences(session: AsyncSession, user_id: str, **values: bool) -> None:
    row = await session.get(CommunicationPreference, user_id)
    if row is None:
        row = CommunicationPreference(user_id=user_id, **PREFERENCE_DEFAULTS)
        session.add(row)
    for name, value in values.items():
        setattr(row, name, value)
    await session.commit()


async def bid(
    client: httpx.AsyncClient, lead_id: str, auth: dict[str, str], cents: int
) -> httpx.Response:
    response = await client.post(
        f"/api/v1/leads/{lead_id}/bids", json={"amount_cents": cents}, headers=auth
    )
    assert response.status_code == 201, response.text
    return response


def test_every_event_has_a_template_and_a_spec() -> None:
    for event in Event:
        assert event in SPECS
        assert (notify.MAIL_TEMPLATES_DIR / f"{event.value}.txt").is_file(), event
    # Only member messages are per preference; nothing here is marketing (P7: consent first).
    assert {e for e, s in SPECS.items() if not s.transactional} == {Event.MESSAGE_RECEIVED}


async def test_outbid_won_lost_and_ended_are_told_after_the_commit_of_bid_and_close(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    seller, _ = await signed_in(client, "seller")
    first, first_auth = await signed_in(client, "buyer")
    second, second_auth = await signed_in(client, "buyer")
    for account in (first, second):
        await fund(session, await member(session, account), 20_000)
    lead = await open_auction(session, str(seller["id"]))
    await session.commit()

    await bid(client, lead.id, first_auth, 2_000)
    await bid(client, lead.id, second_auth, 3_000)  # the first buyer is outbid
    # The bid composed no mail: it left one job for the worker, told once per outbid bid.
    assert await mails(session, template_of(Event.OUTBID)) == []
    jobs = list(await session.scalars(select(Job).where(Job.kind == notify.NOTIFY_JOB)))
    assert [j.payload["event"] for j in jobs] == ["outbid"]
    await run_jobs(db, settings)
    (outbid,) = await mails(session, template_of(Event.OUTBID))
    assert outbid.to_address == first["email"] and outbid.status == MailStatus.SENT.value
    assert "$20.00" in outbid.text_body and f"/auctions/{lead.id}" in outbid.text_body
    assert second["username"] not in outbid.text_body  # never who outbid you

    stored = await session.get(Lead, lead.id, populate_existing=True)
    assert stored is not None
    stored.auction_ends_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await session.commit()
    assert await close_due_auctions(session, settings, LocalBroker()) == 1
    await session.commit()
    assert await mails(session, template_of(Event.AUCTION_WON)) == []
    await run_jobs(db, settings)

    (won,) = await mails(session, template_of(Event.AUCTION_WON))
    (lost,) = await mails(session, template_of(Event.AUCTION_LOST))
    (ended,) = await mails(session, template_of(Event.AUCTION_ENDED))
    order = await session.scalar(select(Order).where(Order.lead_id == lead.id))
    assert order is not None
    assert won.to_address == second["email"] and f"/orders/{order.id}" in won.text_body
    assert lost.to_address == first["email"] and "another buyer won" in lost.text_body
    assert ended.to_address == seller["email"] and ended.subject.endswith(": sold")
    # Running the worker again tells nobody twice.
    await run_jobs(db, settings)
    told = select(func.count()).where(OutboundMail.template.startswith("notify/"))
    assert await session.scalar(told) == 4
    messages = sent_messages(settings)
    for mail in (outbid, won, lost, ended):
        message = messages[str(mail.message_id)]
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert str(message["List-Unsubscribe"]).strip("<>") in text_of(message)


async def test_an_unsold_auction_tells_the_seller_and_the_bidder_why(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    seller, _ = await signed_in(client, "seller")
    bidder, bidder_auth = await signed_in(client, "buyer")
    await fund(session, await member(session, bidder), 20_000)
    lead = await open_auction(session, str(seller["id"]), reserve_cents=9_000)
    await session.commit()
    await bid(client, lead.id, bidder_auth, 2_000)
    stored = await session.get(Lead, lead.id, populate_existing=True)
    assert stored is not None
    stored.auction_ends_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await session.commit()
    await close_due_auctions(session, settings, LocalBroker())
    await session.commit()
    await run_jobs(db, settings)
    (lost,) = await mails(session, template_of(Event.AUCTION_LOST))
    assert lost.to_address == bidder["email"] and "reserve price was not reached" in lost.text_body
    (ended,) = await mails(session, template_of(Event.AUCTION_ENDED))
    assert ended.to_address == seller["email"] and "unsold" in ended.subject
    assert "personal data is destroyed at" in ended.text_body


async def test_a_sale_outright_tells_the_seller_after_the_commit(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    deal = await a_deal(client, session, settings)
    assert await mails(session, template_of(Event.LEAD_SOLD)) == []
    await run_jobs(db, settings)
    (sold,) = await mails(session, template_of(Event.LEAD_SOLD))
    assert sold.to_address == deal.seller["email"]
    assert deal.buyer["username"] in sold.text_body and "$25.00" in sold.subject
    assert deal.consumer_email not in sold.text_body


async def tell_everything(session: AsyncSession, settings: Settings, deal: Deal) -> None:
    """Each after-sale and fraud-review event through its typed function, with the context the
    features give it (returns, payouts, messages, feedback and the fraud review call these same
    functions; their own tests and the unsubscribe test drive them through the real flows)."""
    order = await session.get(Order, deal.order_id)
    assert order is not None
    seller = await session.get(User, order.seller_id)
    assert seller is not None
    now = dt.datetime.now(dt.UTC)
    await notify.notify_order_cancelled(session, settings, order=order, lead_reopened=True)
    await notify.notify_return_requested(
        session,
        settings,
        order=order,
        return_id="ret_1",
        reason="disconnected_or_wrong_number",
        decide_by=now + dt.timedelta(days=2),
    )
    await notify.notify_return_decided(
        session,
        settings,
        order=order,
        return_id="ret_1",
        outcome="denied",
        decided_by="seller",
        dispute_until=now + dt.timedelta(days=3),
    )
    await notify.notify_return_decided(
        session,
        settings,
        order=order,
        return_id="ret_2",
        outcome="approved",
        decided_by="silence",
        refund_cents=2500,
    )
    await notify.notify_return_disputed(
        session, settings, order=order, return_id="ret_1", dispute_id="dsp_1"
    )
    await notify.notify_dispute_decided(
        session, settings, order=order, dispute_id="dsp_1", in_favour_of="buyer", refund_cents=2500
    )
    await notify.notify_payout_sent(
        session,
        settings,
        seller_id=order.seller_id,
        payout_id="po_1",
        amount_cents=2250,
        currency="USD",
        processor_reference="sandbox-1",
    )
    await notify.notify_message_received(
        session, settings, order=order, message_id="msg_1", sender_id=order.buyer_id
    )
    await notify.notify_feedback_received(
        session,
        settings,
        feedback_id="fb_1",
        order_id=order.id,
        author_id=order.buyer_id,
        subject_id=order.seller_id,
        rating=5,
    )
    for event in (
        Event.FRAUD_WARNING,
        Event.ACCOUNT_SUSPENDED,
        Event.ACCOUNT_REINSTATED,
        Event.LEADS_WITHDRAWN,
        Event.ACCOUNT_CLOSED,
    ):
        await notify.notify_fraud_action(
            session,
            settings,
            event,
            member=seller,
            case_id="frc_1",
            lead_id=order.lead_id,
            grounds=["complaints from members"],
            lead_ids=[order.lead_id],
        )
    await notify.notify_fraud_alert(
        session, settings, lead_id=order.lead_id, seller=seller, now=now
    )
    await session.commit()


async def test_every_after_sale_event_reaches_its_party_with_unsubscribe_and_no_consumer_data(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    deal = await a_deal(client, session, settings)
    await tell_everything(session, settings, deal)
    await run_jobs(db, settings)
    buyer, seller = deal.buyer["email"], deal.seller["email"]
    expected = {
        Event.ORDER_CANCELLED: [seller],
        Event.RETURN_REQUESTED: [seller],
        # Denied: the buyer; approved by silence: the buyer and the seller who did not decide.
        Event.RETURN_DECIDED: [buyer, buyer, seller],
        Event.RETURN_DISPUTED: [seller],
        Event.DISPUTE_DECIDED: [buyer, seller],
        Event.PAYOUT_SENT: [seller],
        Event.MESSAGE_RECEIVED: [seller],
        Event.FEEDBACK_RECEIVED: [seller],
        Event.LEAD_SOLD: [seller],
        Event.FRAUD_WARNING: [seller],
        Event.ACCOUNT_SUSPENDED: [seller],
        Event.ACCOUNT_REINSTATED: [seller],
        Event.LEADS_WITHDRAWN: [seller],
        Event.ACCOUNT_CLOSED: [seller],
        Event.FRAUD_ALERT: [buyer],
    }
    messages = sent_messages(settings)
    order = await session.get(Order, deal.order_id)
    assert order is not None
    from leadmarket.leads.vault import Purpose, Reader, reveal_personal_data

    consumer = await reveal_personal_data(
        session,
        settings,
        order.lead_id,
        reader=Reader("test", "admin"),
        purpose=Purpose.ADMIN_REVIEW,
        reason="check that no mail carries it",
    )
    secrets = [consumer["email"], consumer["last_name"], consumer["phone"], consumer["street"]]
    for event, recipients in expected.items():
        rows = await mails(session, template_of(event))
        assert sorted(m.to_address for m in rows) == sorted(recipients), event
        for mail in rows:
            assert mail.status == MailStatus.SENT.value, event
            message = messages[str(mail.message_id)]
            body = text_of(message)
            assert str(message["List-Unsubscribe"]).strip("<>") in body, event
            assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click", event
            assert "{{" not in body and "None" not in body, event  # every value filled in
            for secret in secrets:
                assert secret not in body and secret not in str(message["Subject"]), event
    # M6: the fraud review's notices name the username and the lead.
    for event in (Event.FRAUD_WARNING, Event.ACCOUNT_SUSPENDED, Event.ACCOUNT_CLOSED):
        (notice,) = await mails(session, template_of(event))
        assert deal.seller["username"] in notice.subject, event
        assert deal.lead_id in notice.text_body and "frc_1" in notice.text_body, event
    (alert,) = await mails(session, template_of(Event.FRAUD_ALERT))
    assert deal.lead_id in alert.subject and deal.seller["username"] in alert.text_body
    assert "fake or fraudulent identity" in alert.text_body  # the window is still open
    (buyer_view,) = [
        m for m in await mails(session, template_of(Event.DISPUTE_DECIDED)) if m.to_address == buyer
    ]
    assert "$25.00 is back in your wallet" in buyer_view.text_body
    assert f"/orders/{deal.order_id}" in buyer_view.text_body
    (silence_seller,) = [
        m for m in await mails(session, template_of(Event.RETURN_DECIDED)) if m.to_address == seller
    ]
    assert "did not decide by the deadline" in silence_seller.text_body
    assert f"/seller/sales/{deal.order_id}" in silence_seller.text_body
    (requested,) = await mails(session, template_of(Event.RETURN_REQUESTED))
    assert "disconnected or wrong number" in requested.text_body


async def test_a_dispute_approval_is_told_once_as_the_dispute_decision(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    deal = await a_deal(client, session, settings)
    order = await session.get(Order, deal.order_id)
    assert order is not None
    told = await notify.notify_return_decided(
        session,
        settings,
        order=order,
        return_id="ret_1",
        outcome="approved",
        decided_by="dispute",
        refund_cents=2500,
    )
    assert told == []
    with pytest.raises(ValueError, match="outcome is one of"):
        await notify.notify_return_decided(
            session, settings, order=order, return_id="ret_1", outcome="maybe", decided_by=None
        )


async def test_email_turned_off_stops_member_message_mail_but_not_transaction_mail(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    deal = await a_deal(client, session, settings)
    off = await client.put(
        "/api/v1/me/preferences", json={"channels": {"email": False}}, headers=deal.seller_auth
    )
    assert off.status_code == 200, off.text
    await tell_everything(session, settings, deal)
    (message_mail,) = await mails(session, template_of(Event.MESSAGE_RECEIVED))
    assert message_mail.status == MailStatus.SUPPRESSED.value
    assert message_mail.suppressed_reason == "preference"
    for event in (Event.RETURN_REQUESTED, Event.PAYOUT_SENT, Event.FRAUD_WARNING):
        (mail,) = await mails(session, template_of(event))
        assert mail.status == MailStatus.QUEUED.value, event  # transactional: still goes
    await run_jobs(db, settings)
    (payout,) = await mails(session, template_of(Event.PAYOUT_SENT))
    assert payout.status == MailStatus.SENT.value


async def test_member_messages_topic_off_suppresses_only_message_mail(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    deal = await a_deal(client, session, settings)
    await set_preferences(session, deal.seller["id"], member_messages=False)
    await tell_everything(session, settings, deal)
    (message_mail,) = await mails(session, template_of(Event.MESSAGE_RECEIVED))
    assert message_mail.status == MailStatus.SUPPRESSED.value
    (feedback_mail,) = await mails(session, template_of(Event.FEEDBACK_RECEIVED))
    assert feedback_mail.status == MailStatus.QUEUED.value


@pytest.mark.parametrize("text_on", [True, False])
async def test_urgent_events_go_by_text_only_to_members_who_turned_texts_on(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, text_on: bool
) -> None:
    deal = await a_deal(client, session, settings)
    await set_preferences(session, deal.seller["id"], text=text_on)
    seller = await member(session, deal.seller)
    assert seller.phone
    texts_before = await session.scalar(select(func.count()).where(Job.kind == SEND_TEXT_JOB))
    (alert,) = await notify.notify_fraud_action(
        session, settings, Event.ACCOUNT_SUSPENDED, member=seller, case_id="frc_1"
    )
    (feedback,) = await notify.notify_feedback_received(
        session,
        settings,
        feedback_id="fb_1",
        order_id=deal.order_id,
        author_id=deal.buyer["id"],
        subject_id=seller.id,
        rating=3,
    )
    assert alert.texted is text_on  # urgent: by text too, only with the channel on
    assert feedback.texted is False  # not urgent: email only
    texts = await session.scalar(select(func.count()).where(Job.kind == SEND_TEXT_JOB))
    assert texts == (texts_before or 0) + (1 if text_on else 0)
    if text_on:
        job = await session.scalar(select(Job).where(Job.kind == SEND_TEXT_JOB))
        assert job is not None and seller.phone not in str(job.payload)  # sealed, not clear


async def test_a_closed_account_is_told_nothing_but_that_the_fraud_review_closed_it(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    deal = await a_deal(client, session, settings)
    seller = await member(session, deal.seller)
    seller.status = UserStatus.CLOSED
    await session.commit()
    before = await session.scalar(select(func.count()).select_from(OutboundMail))
    assert (
        await notify.notify_payout_sent(
            session, settings, seller_id=seller.id, payout_id="po_1", amount_cents=1, currency="USD"
        )
        == []
    )
    assert (
        await notify.notify_fraud_action(
            session, settings, Event.FRAUD_WARNING, member=seller, case_id="frc_1"
        )
        == []
    )
    assert await session.scalar(select(func.count()).select_from(OutboundMail)) == before
    # The ban's own notice reaches the account it closed (its data is kept: P3's exception).
    (closed,) = await notify.notify_fraud_action(
        session, settings, Event.ACCOUNT_CLOSED, member=seller, case_id="frc_1"
    )
    assert closed.mail_status == MailStatus.QUEUED.value
    assert [e for e, spec in SPECS.items() if spec.reaches_closed] == [Event.ACCOUNT_CLOSED]


async def test_a_privacy_requester_with_only_a_phone_is_told_by_text(
    session: AsyncSession, settings: Settings
) -> None:
    notice = await notify.notify_privacy_requester(
        session,
        settings,
        request_id="pr_1",
        email=None,
        phone="+15592345678",
        headline="Your privacy request has been answered",
        message="Open it with your token.",
        kind="privacy.request_answered",
    )
    assert notice.texted and notice.mail_id is None
    job = await session.scalar(select(Job).where(Job.kind == SEND_TEXT_JOB))
    assert job is not None and job.payload["template"] == "privacy.request_answered"
