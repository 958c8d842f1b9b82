"""Fraud and suspicious activity (M6) against the real API, database, ledger and mail outbox:
members' complaints become cases on the admin's queue (once each, within a daily quota, never
about something the reporter may not see); intake turns low-quality leads into one tallied
signal per seller; approved fraud returns escalate past the threshold; an admin's suspension
stops the member's sessions and API keys at once and withdraws their open auctions with the
holds released (the ledger verifies); a warning names the username and the lead; buyers of a
lead confirmed fraudulent are alerted; every action is in the audit log."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.fraud.signals import (
    SignalKind,
    SignalSource,
    record_fraud_signal,
    sellers_with_many_fraud_returns,
)
from leadmarket.kit.realtime import LocalBroker
from leadmarket.ledger.service import wallet_summary
from leadmarket.ledger.verify import verify_ledger
from leadmarket.marketplace import service as marketplace
from leadmarket.models import (
    AuditEvent,
    Campaign,
    FraudCase,
    FraudSignal,
    HoldStatus,
    Job,
    Lead,
    LedgerHold,
    Order,
    OutboundMail,
    User,
)
from leadmarket.notifications.notify import NOTIFY_JOB
from tests.fixtures.accounts import PASSWORD, login
from tests.fixtures.auctions import open_auction
from tests.fixtures.leads import lead_body
from tests.fixtures.ledger import fund
from tests.fixtures.orders import make_lead
from tests.fixtures.trades import Party, admin, party, trade
from tests.ledger.test_wallet_page import sign_in

REPORTS = "/api/v1/reports"
CASES = "/api/v1/admin/fraud/cases"


async def case_of(session: AsyncSession, member: Party) -> FraudCase:
    case = await session.scalar(
        select(FraudCase)
        .where(FraudCase.subject_user_id == member.user.id)
        .order_by(FraudCase.id.desc())
        .execution_options(populate_existing=True)
    )
    assert case is not None
    return case


async def signals_in(session: AsyncSession, case: FraudCase) -> int:
    """The case's signals, counting repeats (what the queue shows)."""
    total = await session.scalar(
        select(func.sum(FraudSignal.occurrences)).where(FraudSignal.case_id == case.id)
    )
    return int(total or 0)


async def mails(session: AsyncSession, address: str, template: str) -> list[OutboundMail]:
    return list(
        await session.scalars(
            select(OutboundMail).where(
                OutboundMail.to_address == address, OutboundMail.template == template
            )
        )
    )


async def act(
    client: httpx.AsyncClient, reviewer: Party, case_id: str, action: str, **extra: str
) -> httpx.Response:
    return await client.post(
        f"{CASES}/{case_id}/actions",
        json={"action": action, "note": "Reviewed the reports and the leads.", **extra},
        headers=reviewer.headers,
    )


async def test_a_complaint_opens_a_case_once_and_only_about_what_the_reporter_may_see(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    t = await trade(client, session, settings)
    report = {"subject_type": "lead", "subject_id": t.lead.id, "reason": "consumer_never_asked"}
    # The buyer no longer sees the sold lead on the market, but bought it: may report it.
    filed = await client.post(
        REPORTS, json={**report, "details": "Consumer says no"}, headers=t.buyer.headers
    )
    assert filed.status_code == 201, filed.text
    again = await client.post(REPORTS, json=report, headers=t.buyer.headers)
    assert again.status_code == 409
    # The same seller by username, spelled in another case: same case, a second signal.
    about_member = {
        "subject_type": "member",
        "subject_id": t.seller.username.upper(),
        "reason": "scam",
    }
    assert (
        await client.post(REPORTS, json=about_member, headers=t.buyer.headers)
    ).status_code == 201
    assert (
        await client.post(REPORTS, json=about_member, headers=t.buyer.headers)
    ).status_code == 409
    case = await case_of(session, t.seller)
    assert case.status == "open" and await signals_in(session, case) == 2
    kinds = (
        await session.scalars(select(FraudSignal.reason).where(FraudSignal.case_id == case.id))
    ).all()
    assert sorted(kinds) == ["consumer_never_asked", "scam"]

    stranger = await party(client, session, "buyer")
    refusals = [
        # A sold lead the stranger never bought: as unknown as for the lead's own page.
        (stranger, {"subject_type": "lead", "subject_id": t.lead.id, "reason": "other"}, 404),
        (stranger, {"subject_type": "member", "subject_id": "nobody_here", "reason": "other"}, 404),
        (stranger, {"subject_type": "message", "subject_id": "mm_nothing", "reason": "spam"}, 404),
        (t.seller, {"subject_type": "lead", "subject_id": t.lead.id, "reason": "other"}, 422),
        (
            stranger,
            {"subject_type": "member", "subject_id": stranger.username, "reason": "spam"},
            422,
        ),
        (
            stranger,
            {"subject_type": "member", "subject_id": t.seller.username, "reason": "mean"},
            422,
        ),
        # Feedback is taken (the feedback feature resolves it), with its own reasons.
        (stranger, {"subject_type": "feedback", "subject_id": "fb_1", "reason": "spam"}, 404),
        (stranger, {"subject_type": "feedback", "subject_id": "fb_1", "reason": "scam"}, 422),
        (stranger, {"subject_type": "lead", "subject_id": t.lead.id, "reason": "abusive"}, 422),
        (stranger, {"subject_type": "lead", "subject_id": t.lead.id}, 422),
    ]
    for who, body, expected in refusals:
        response = await client.post(REPORTS, json=body, headers=who.headers)
        assert response.status_code == expected, (body, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    assert await signals_in(session, await case_of(session, t.seller)) == 2


async def test_reports_are_capped_per_member_per_day(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    settings.fraud_reports_per_day = 2
    reporter = await party(client, session, "buyer")
    targets = [await party(client, session, "seller") for _ in range(3)]
    codes = []
    for target in targets:
        body = {"subject_type": "member", "subject_id": target.username, "reason": "scam"}
        codes.append((await client.post(REPORTS, json=body, headers=reporter.headers)).status_code)
    assert codes == [201, 201, 429]
    assert await session.scalar(select(func.count()).select_from(FraudSignal)) == 2


async def test_intake_tallies_low_quality_leads_into_one_signal_per_seller(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await party(client, session, "seller")
    # Every lead is "low quality" under this threshold; a clean run writes nothing first.
    posted = await client.post("/api/v1/leads", json=lead_body(), headers=seller.headers)
    assert posted.status_code == 201, posted.text
    assert await session.scalar(select(func.count()).select_from(FraudSignal)) == 0
    settings.fraud_low_quality_score = 101
    lead_ids = []
    for _ in range(2):
        posted = await client.post("/api/v1/leads", json=lead_body(), headers=seller.headers)
        assert posted.status_code == 201, posted.text
        lead_ids.append(posted.json()["id"])
    [signal] = (
        await session.scalars(select(FraudSignal).execution_options(populate_existing=True))
    ).all()
    assert (signal.kind, signal.source, signal.subject_user_id) == (
        "low_quality_lead",
        "intake",
        seller.user.id,
    )
    assert signal.occurrences == 2 and signal.lead_id == lead_ids[-1]
    case = await case_of(session, seller)
    assert await signals_in(session, case) == 2 and case.id == signal.case_id


async def test_approved_fraud_returns_escalate_a_seller_past_the_threshold(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await party(client, session, "seller")
    settings.fraud_returns_threshold = 3

    async def approved(return_id: str) -> None:
        await record_fraud_signal(
            session,
            kind=SignalKind.FRAUD_RETURN,
            subject_user_id=seller.user.id,
            source=SignalSource.RETURNS,
            details={"return_id": return_id},
            dedupe_key=f"return:{return_id}",
            settings=settings,
        )

    await approved("ret_0")
    await approved("ret_0")  # a retried call for the same return is not a second return
    await approved("ret_1")
    assert (await session.scalars(select(FraudSignal.kind))).all() == ["fraud_return"] * 2
    await approved("ret_2")
    kinds = (await session.scalars(select(FraudSignal.kind).order_by(FraudSignal.id))).all()
    assert kinds.count("fraud_return") == 3
    assert kinds.count("many_fraud_returns") == 1
    assert await sellers_with_many_fraud_returns(session, settings) == [(seller.user.id, 3)]
    # 3 returns and the escalation.
    assert await signals_in(session, await case_of(session, seller)) == 4
    settings.fraud_returns_threshold = 4
    assert await sellers_with_many_fraud_returns(session, settings) == []


async def test_suspension_stops_sessions_and_keys_at_once_and_withdraws_open_auctions(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await party(client, session, "seller")
    key = await client.post("/api/v1/api-keys", json={"name": "crm"}, headers=seller.headers)
    assert key.status_code == 201, key.text
    api_key = {"Authorization": f"Bearer {key.json()['key']}"}
    assert (await client.get("/api/v1/me", headers=api_key)).status_code == 200
    auction = await open_auction(session, seller.user.id)
    fixed, _ = await make_lead(session, settings, seller.user, price_cents=2000)
    bidder = await party(client, session, "buyer")
    await fund(session, bidder.user, 10_000)
    await session.commit()
    bid = await client.post(
        f"/api/v1/leads/{auction.id}/bids", json={"amount_cents": 3000}, headers=bidder.headers
    )
    assert bid.status_code == 201, bid.text
    assert (await wallet_summary(session, bidder.user.id, "USD")).held_cents == 3000
    complaint = {"subject_type": "member", "subject_id": seller.username, "reason": "scam"}
    assert (await client.post(REPORTS, json=complaint, headers=bidder.headers)).status_code == 201
    case = await case_of(session, seller)

    reviewer = await admin(client, session)
    done = await act(client, reviewer, case.id, "suspend")
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "closed" and done.json()["resolution"] == "suspended"

    # At once: the bearer session, the API key and a new sign-in are all refused, saying why.
    for credential in (seller.headers, api_key):
        refused = await client.get("/api/v1/me", headers=credential)
        assert refused.status_code == 403
        assert refused.json()["type"] == "/problems/account-not-active"
        assert refused.json()["detail"] == "This account is suspended."
    signin = await client.post(
        "/api/v1/auth/login",
        json={"login": seller.username, "password": PASSWORD, "remember": False},
    )
    assert signin.status_code == 403
    assert signin.json()["type"] == "/problems/account-not-active"
    # Open leads left the market; the bidder's hold went back to their wallet.
    for lead_id in (auction.id, fixed.id):
        lead = await session.get(Lead, lead_id, populate_existing=True)
        assert lead is not None and lead.status == "withdrawn" and lead.pii_expires_at is not None
    hold = await session.get(LedgerHold, bid.json()["id"], populate_existing=True)
    assert hold is not None and hold.status == HoldStatus.RELEASED.value
    wallet = await wallet_summary(session, bidder.user.id, "USD")
    assert (wallet.balance_cents, wallet.held_cents) == (10_000, 0)
    assert (await verify_ledger(session)).ok
    # Off the market: buyers no longer see it, let alone bid on it.
    rebid = await client.post(
        f"/api/v1/leads/{auction.id}/bids", json={"amount_cents": 4000}, headers=bidder.headers
    )
    assert rebid.status_code == 404

    # Told, by name and lead; the bidder too, once (not again by the auction's end).
    [notice] = await mails(session, seller.email, "notify/account_suspended")
    assert seller.username in notice.subject and case.id in notice.text_body
    assert "complaints from members" in notice.text_body
    assert "Reviewed the reports" not in notice.text_body  # the admin's note stays on the case
    [released] = await mails(session, bidder.email, "notify/auction_withdrawn")
    assert auction.id in released.subject and seller.username in released.text_body
    assert "$30.00" in released.subject
    assert await mails(session, bidder.email, "notify/auction_lost") == []
    told_later = await session.scalars(select(Job.payload).where(Job.kind == NOTIFY_JOB))
    assert auction.id not in {payload["ref"] for payload in told_later}
    # Audited, with what it did.
    event = await session.scalar(select(AuditEvent).where(AuditEvent.action == "fraud.suspend"))
    assert (
        event is not None
        and event.subject_id == seller.user.id
        and event.actor_id == reviewer.user.id
    )
    assert event.details is not None
    assert sorted(event.details["leads_withdrawn"]) == sorted([auction.id, fixed.id])
    assert event.details["holds_released"] == [bid.json()["id"]]
    # A decided case takes no second decision; the member can be reinstated.
    assert (await act(client, reviewer, case.id, "ban")).status_code == 409
    back = await act(client, reviewer, case.id, "reinstate")
    assert back.status_code == 200, back.text
    assert await login(client, seller.username)  # signs in again
    assert (await client.get("/api/v1/me", headers=api_key)).status_code == 401  # keys stay revoked


async def test_a_suspended_web_session_is_signed_out_at_once(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    buyer = await party(client, session, "buyer")
    campaign = Campaign(
        buyer_id=buyer.user.id,
        name="Auto",
        vertical="auto-insurance",
        filters={},
        bid_cents=1000,
        currency="USD",
        timezone="UTC",
        active=True,
    )
    session.add(campaign)
    await session.commit()
    await sign_in(client, buyer.username)
    assert (await client.get("/orders")).status_code == 200
    complaint = {"subject_type": "member", "subject_id": buyer.username, "reason": "harassment"}
    other = await party(client, session, "seller")
    assert (await client.post(REPORTS, json=complaint, headers=other.headers)).status_code == 201
    reviewer = await admin(client, session)
    case = await case_of(session, buyer)
    assert (await act(client, reviewer, case.id, "suspend")).status_code == 200
    page = await client.get("/orders")
    assert page.status_code == 303 and page.headers["location"].startswith("/signin")
    await session.refresh(campaign)
    assert campaign.active is False  # a suspended buyer's campaigns buy nothing more


async def test_a_warning_names_the_username_and_the_lead_and_nothing_of_the_consumer(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    t = await trade(client, session, settings)
    complaint = {
        "subject_type": "lead",
        "subject_id": t.lead.id,
        "reason": "fake_or_fraudulent_identity",
    }
    assert (await client.post(REPORTS, json=complaint, headers=t.buyer.headers)).status_code == 201
    reviewer = await admin(client, session)
    case = await case_of(session, t.seller)
    # Without a reason there is no decision.
    blank = await client.post(
        f"{CASES}/{case.id}/actions", json={"action": "warn", "note": " "}, headers=reviewer.headers
    )
    assert blank.status_code == 422 and blank.json()["errors"][0]["field"] == "note"
    assert await mails(session, t.seller.email, "notify/fraud_warning") == []

    warned = await act(client, reviewer, case.id, "warn")
    assert warned.status_code == 200, warned.text
    [mail] = await mails(session, t.seller.email, "notify/fraud_warning")
    assert t.seller.username in mail.subject and t.lead.id in mail.subject
    assert t.seller.username in mail.text_body and t.lead.id in mail.text_body
    assert t.consumer_email not in mail.text_body and "Silva" not in mail.text_body
    user = await session.get(User, t.seller.user.id, populate_existing=True)
    assert user is not None and user.status == "active"
    assert (await case_of(session, t.seller)).resolution == "warned"
    # After the decision, the same complaint is heard again, in a new case.
    assert (await client.post(REPORTS, json=complaint, headers=t.buyer.headers)).status_code == 201
    assert (await case_of(session, t.seller)).id != case.id


async def test_buyers_of_a_lead_confirmed_fraudulent_are_alerted(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    t = await trade(client, session, settings)
    complaint = {
        "subject_type": "lead",
        "subject_id": t.lead.id,
        "reason": "fake_or_fraudulent_identity",
    }
    assert (await client.post(REPORTS, json=complaint, headers=t.buyer.headers)).status_code == 201
    reviewer = await admin(client, session)
    case = await case_of(session, t.seller)
    someone_elses, _ = await make_lead(
        session, settings, (await party(client, session, "seller")).user
    )
    await session.commit()
    wrong = await act(client, reviewer, case.id, "confirm_lead_fraud", lead_id=someone_elses.id)
    assert wrong.status_code == 422
    missing = await act(client, reviewer, case.id, "confirm_lead_fraud")
    assert missing.status_code == 422

    confirmed = await act(client, reviewer, case.id, "confirm_lead_fraud", lead_id=t.lead.id)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "open"  # still to be decided about the seller
    [alert] = await mails(session, t.buyer.email, "notify/fraud_alert")
    assert t.lead.id in alert.subject
    assert t.seller.username in alert.text_body and t.order_id in alert.text_body
    assert t.consumer_email not in alert.text_body
    [action] = confirmed.json()["actions"]
    assert action["effects"]["buyers_alerted"] == [t.order_id]


async def test_ban_closes_the_account_for_good(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await party(client, session, "seller")
    lead = await open_auction(session, seller.user.id)
    reporter = await party(client, session, "buyer")
    await session.commit()
    body = {"subject_type": "lead", "subject_id": lead.id, "reason": "scam"}
    assert (await client.post(REPORTS, json=body, headers=reporter.headers)).status_code == 201
    reviewer = await admin(client, session)
    case = await case_of(session, seller)
    assert (await act(client, reviewer, case.id, "ban")).status_code == 200
    user = await session.get(User, seller.user.id, populate_existing=True)
    assert user is not None and user.status == "closed" and user.email == seller.email
    signin = await client.post(
        "/api/v1/auth/login",
        json={"login": seller.username, "password": PASSWORD, "remember": False},
    )
    assert signin.status_code == 401
    assert (await act(client, reviewer, case.id, "reinstate")).status_code == 409
    assert len(await mails(session, seller.email, "notify/account_closed")) == 1


async def test_the_admin_pages_list_cases_and_act_with_csrf(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    from tests.ledger.test_wallet_page import field

    t = await trade(client, session, settings)
    body = {"subject_type": "member", "subject_id": t.seller.username, "reason": "spam"}
    assert (await client.post(REPORTS, json=body, headers=t.buyer.headers)).status_code == 201
    case = await case_of(session, t.seller)
    reviewer = await admin(client, session)
    await sign_in(client, reviewer.username)
    queue = await client.get("/admin/fraud")
    assert queue.status_code == 200 and t.seller.username in queue.text
    page = await client.get(f"/admin/fraud/{case.id}")
    assert page.status_code == 200 and "complaint" in page.text
    token = field(page.text, "csrf_token")
    refused = await client.post(f"/admin/fraud/{case.id}/actions", data={"action": "dismiss"})
    assert refused.status_code == 403  # no CSRF token
    no_note = await client.post(
        f"/admin/fraud/{case.id}/actions", data={"csrf_token": token, "action": "dismiss"}
    )
    assert no_note.status_code == 422 and "Between 5 and" in no_note.text
    done = await client.post(
        f"/admin/fraud/{case.id}/actions",
        data={"csrf_token": token, "action": "dismiss", "note": "Not spam: a question."},
    )
    assert done.status_code == 303
    assert (await case_of(session, t.seller)).resolution == "dismissed"


@pytest.mark.parametrize("action", ["suspend", "withdraw_leads"])
async def test_withdrawing_auctions_concurrently_with_bids_keeps_the_ledger_exact(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, action: str
) -> None:
    """The withdrawal goes through the marketplace's end of auction: outbid holds were already
    released by the bids, the leader's is released once, and the ledger checks out."""
    seller = await party(client, session, "seller")
    auctions = [await open_auction(session, seller.user.id) for _ in range(2)]
    bidders = [await party(client, session, "buyer") for _ in range(2)]
    for bidder in bidders:
        await fund(session, bidder.user, 20_000)
    await session.commit()
    broker = LocalBroker()
    for lead in auctions:
        for amount, bidder in ((2000, bidders[0]), (2600, bidders[1])):
            await marketplace.place_bid(
                session, settings, broker, lead_id=lead.id, buyer=bidder.user, amount_cents=amount
            )
    await session.commit()
    body = {"subject_type": "member", "subject_id": seller.username, "reason": "scam"}
    assert (await client.post(REPORTS, json=body, headers=bidders[0].headers)).status_code == 201
    reviewer = await admin(client, session)
    case = await case_of(session, seller)
    assert (await act(client, reviewer, case.id, action)).status_code == 200
    for bidder in bidders:
        wallet = await wallet_summary(session, bidder.user.id, "USD")
        assert (wallet.balance_cents, wallet.held_cents) == (20_000, 0)
    assert (await verify_ledger(session)).ok
    # Every bidder hears of both auctions, once each: the leader that both holds are
    # released, the outbid bidder that nothing was held for them any more.
    led = await mails(session, bidders[1].email, "notify/auction_withdrawn")
    assert len(led) == 2 and all("$26.00 is released" in m.subject for m in led)
    outbid = await mails(session, bidders[0].email, "notify/auction_withdrawn")
    assert len(outbid) == 2 and all("nothing is held" in m.text_body for m in outbid)


async def test_a_suspended_bidder_wins_no_auction_and_gets_the_hold_back(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await party(client, session, "seller")
    lead = await open_auction(session, seller.user.id)
    honest, cheat = await party(client, session, "buyer"), await party(client, session, "buyer")
    for bidder in (honest, cheat):
        await fund(session, bidder.user, 10_000)
    await session.commit()
    broker = LocalBroker()
    await marketplace.place_bid(
        session, settings, broker, lead_id=lead.id, buyer=honest.user, amount_cents=2000
    )
    await marketplace.place_bid(
        session, settings, broker, lead_id=lead.id, buyer=cheat.user, amount_cents=5000
    )
    await session.commit()
    body = {"subject_type": "member", "subject_id": cheat.username, "reason": "scam"}
    assert (await client.post(REPORTS, json=body, headers=seller.headers)).status_code == 201
    reviewer = await admin(client, session)
    assert (
        await act(client, reviewer, (await case_of(session, cheat)).id, "suspend")
    ).status_code == 200

    locked = await session.get(Lead, lead.id, populate_existing=True)
    assert locked is not None
    orders = await marketplace.close_auction(session, settings, broker, locked)
    assert len(orders) == 1
    order = await session.get(Order, orders[0])
    assert order is not None and order.buyer_id == honest.user.id
    # Priced as if the suspended bid had never been: the honest maximum alone.
    assert order.price_cents == settings.auction_opening_bid_cents
    cheat_wallet = await wallet_summary(session, cheat.user.id, "USD")
    assert (cheat_wallet.balance_cents, cheat_wallet.held_cents) == (10_000, 0)
    assert (await verify_ledger(session)).ok
