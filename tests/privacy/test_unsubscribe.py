"""P7: every outgoing email carries a working unsubscribe link and the RFC 8058 headers, for
every template the code has; one-click unsubscribe is honoured at once (the next marketing
message is suppressed, transactional mail continues); a replayed link is a clear 200 "already
unsubscribed" that changes nothing; a forged link is a clear 404; the GET page only asks."""

from __future__ import annotations

import ast
import datetime as dt
import email
import email.policy
import re
import warnings
from email.message import EmailMessage
from pathlib import Path

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.jobs import Worker
from leadmarket.kit.realtime import LocalBroker
from leadmarket.marketplace.service import close_due_auctions
from leadmarket.models import (
    CommunicationPreference,
    MailSuppression,
    MailTopic,
    OutboundMail,
    User,
)
from leadmarket.notifications.notify import SPECS, Event, template_of
from leadmarket.notifications.service import queue_mail
from leadmarket.tasks import build_registry, build_services
from tests.fixtures.accounts import PASSWORD, signed_in
from tests.fixtures.auctions import open_auction
from tests.fixtures.leads import lead_body
from tests.fixtures.ledger import fund
from tests.fixtures.trades import drive_after_sale_mail, drive_message_and_fraud_mail

SOURCE = Path(__file__).resolve().parents[2] / "src" / "leadmarket"
PREFERENCES = "/api/v1/me/preferences"


async def run_jobs(db: Database, settings: Settings) -> int:
    """Run the queue dry: a job may enqueue another (a notification queues its mail)."""
    worker = Worker(db, build_registry(), build_services(settings), settings)
    done = 0
    while ran := await worker.run_once():
        done += ran
    return done


def eml_files(settings: Settings) -> list[EmailMessage]:
    if not settings.mail_path.exists():
        return []
    messages = []
    for path in sorted(settings.mail_path.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        messages.append(message)
    return messages


def link_of(message: EmailMessage) -> str:
    match = re.fullmatch(r"<(https://[^>]+)>", str(message["List-Unsubscribe"]))
    assert match, f"no https List-Unsubscribe in {message['Subject']!r}"
    return match.group(1)


def body_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def path_of(link: str, settings: Settings) -> str:
    assert link.startswith(settings.base_url + "/unsubscribe/")
    return link[len(settings.base_url) :]


async def opted_in(client: httpx.AsyncClient) -> tuple[dict[str, str], dict[str, str]]:
    account, headers = await signed_in(client)
    put = await client.put(
        PREFERENCES, json={"topics": {"newsletters": True, "promotions": True}}, headers=headers
    )
    assert put.status_code == 200, put.text
    return account, headers


async def newsletter(
    session: AsyncSession,
    settings: Settings,
    account: dict[str, str],
    subject: str,
    topic: MailTopic = MailTopic.NEWSLETTERS,
) -> OutboundMail:
    return await queue_mail(
        session,
        settings,
        to=account["email"],
        subject=subject,
        text_body="What is new at Leadmarket.",
        template=f"test/{topic.value}",
        topic=topic,
        user_id=account["id"],
    )


async def test_one_click_unsubscribe_is_honoured_at_once_and_transactional_mail_continues(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    account, headers = await opted_in(client)
    first = await newsletter(session, settings, account, "November news")
    assert first.status == "queued"
    await run_jobs(db, settings)
    # Queued before the click, sent after it.
    waiting = await newsletter(session, settings, account, "December news")
    assert waiting.status == "queued"
    [sent] = [m for m in eml_files(settings) if m["Subject"] == "November news"]
    assert sent["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = link_of(sent)
    assert link in body_of(sent)

    page = await client.get(path_of(link, settings))
    assert page.status_code == 200 and '<form method="post"' in page.text
    assert await session.scalar(select(func.count()).select_from(MailSuppression)) == 0

    one_click = await client.post(
        path_of(link, settings),
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200
    assert one_click.json()["status"] == "unsubscribed"

    # At once: the next marketing message is suppressed, queued or already waiting.
    nxt = await newsletter(session, settings, account, "January news")
    assert (nxt.status, nxt.suppressed_reason) == ("suppressed", "unsubscribed")
    await run_jobs(db, settings)
    await session.refresh(waiting)
    assert (waiting.status, waiting.suppressed_reason) == ("suppressed", "unsubscribed")
    # The member's stored preferences say what the list does.
    prefs = await client.get(PREFERENCES, headers=headers)
    assert prefs.json()["topics"]["newsletters"] is False
    assert prefs.json()["topics"]["promotions"] is False
    # Transactional mail continues.
    receipt = await queue_mail(
        session,
        settings,
        to=account["email"],
        subject="Your receipt",
        text_body="Thank you.",
        template="test/receipt",
        user_id=account["id"],
    )
    assert receipt.status == "queued"
    await run_jobs(db, settings)
    subjects = [m["Subject"] for m in eml_files(settings)]
    assert subjects[-2:] == ["November news", "Your receipt"]
    assert "December news" not in subjects and "January news" not in subjects

    # A replayed link: a clear 200, nothing changes.
    suppressions = await session.scalar(select(func.count()).select_from(MailSuppression))
    replay = await client.post(path_of(link, settings))
    assert replay.status_code == 200
    assert replay.json()["status"] == "already_unsubscribed"
    assert "already" in replay.json()["detail"]
    assert await session.scalar(select(func.count()).select_from(MailSuppression)) == suppressions

    # Opting in again through the preferences is a new consent: marketing flows again.
    again = await client.put(PREFERENCES, json={"topics": {"newsletters": True}}, headers=headers)
    assert again.status_code == 200
    back = await newsletter(session, settings, account, "February news")
    assert back.status == "queued"


async def member_message_mail(
    session: AsyncSession, settings: Settings, account: dict[str, str], subject: str
) -> OutboundMail:
    return await newsletter(session, settings, account, subject, MailTopic.MEMBER_MESSAGES)


async def test_the_link_in_a_member_message_mail_stops_member_message_mail(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    """P7, P8: the unsubscribe in a mail telling a member about another member's message stops
    that mail (the member-messages preference), not only marketing the member never got."""
    account, headers = await signed_in(client)
    first = await member_message_mail(session, settings, account, "A message about order 1")
    assert first.status == "queued"
    await run_jobs(db, settings)
    [sent] = [m for m in eml_files(settings) if m["Subject"] == "A message about order 1"]
    link = link_of(sent)
    assert link in body_of(sent) and "messages from other members" in body_of(sent)
    page = await client.get(path_of(link, settings))
    assert page.status_code == 200 and "member messages" in page.text

    one_click = await client.post(
        path_of(link, settings),
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200
    assert one_click.json() == {
        "status": "unsubscribed",
        "category": "member_message",
        "detail": one_click.json()["detail"],
    }

    nxt = await member_message_mail(session, settings, account, "A message about order 2")
    assert (nxt.status, nxt.suppressed_reason) == ("suppressed", "preference")
    prefs = await client.get(PREFERENCES, headers=headers)
    assert prefs.json()["topics"]["member_messages"] is False
    assert prefs.json()["channels"]["email"] is True
    # A replayed link changes nothing (transactional mail continues: see the test above).
    replay = await client.post(path_of(link, settings))
    assert replay.status_code == 200 and replay.json()["status"] == "already_unsubscribed"
    # Turning the topic on again in the preferences brings the mail back.
    again = await client.put(
        PREFERENCES, json={"topics": {"member_messages": True}}, headers=headers
    )
    assert again.status_code == 200, again.text
    back = await member_message_mail(session, settings, account, "A message about order 3")
    assert back.status == "queued"


async def test_forged_unsubscribe_links_are_a_clear_404_and_change_nothing(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    account, _ = await opted_in(client)
    await newsletter(session, settings, account, "News")
    await run_jobs(db, settings)
    [message] = [m for m in eml_files(settings) if m["Subject"] == "News"]
    path = path_of(link_of(message), settings)
    token = path.rsplit("/", 1)[1]
    data, mac = token.split(".")
    for forged in (
        f"/unsubscribe/{data}.{mac[:-2]}{'AA' if not mac.endswith('AA') else 'BB'}",
        f"/unsubscribe/{token[:-5]}",
        "/unsubscribe/not-a-token",
    ):
        for method in ("GET", "POST"):
            answer = await client.request(method, forged)
            assert answer.status_code == 404, (method, forged)
            assert answer.json()["type"] == "/problems/unsubscribe-link-invalid"
            assert answer.json()["detail"]
    assert await session.scalar(select(func.count()).select_from(MailSuppression)) == 0
    row = await session.get(CommunicationPreference, account["id"], populate_existing=True)
    assert row is not None and row.newsletters


# Every template ---------------------------------------------------------------------------


def templates_in_source() -> dict[str, str]:
    """Every ``template=`` passed to ``queue_mail`` in the code, with the topic named there
    (literal strings, or module-level constants of the same file)."""
    found: dict[str, str] = {}
    for path in SOURCE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        constants = {
            target.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            name = getattr(call.func, "id", None) or getattr(call.func, "attr", None)
            if name != "queue_mail":
                continue
            keywords = {k.arg: k.value for k in call.keywords}
            template = keywords.get("template")
            if isinstance(template, ast.Constant) and isinstance(template.value, str):
                value = template.value
            elif isinstance(template, ast.Name) and template.id in constants:
                value = constants[template.id]
            else:
                continue  # a template named by a variable: not enumerable statically
            topic = keywords.get("topic")
            found[value] = topic.attr if isinstance(topic, ast.Attribute) else "ACCOUNT"
    return found


async def drive_every_mail_the_code_sends(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    """The real flows behind each template: the member, the lead and the admin do what makes
    the platform write to them."""
    account, headers = await signed_in(client, "buyer")  # accounts/verify_email
    changed = await client.patch(
        "/api/v1/me", json={"email": f"new.{account['email']}"}, headers=headers
    )  # accounts/email_changed (and a new verify_email)
    assert changed.status_code == 200, changed.text
    password = await client.post(
        "/api/v1/me/password",
        json={"current_password": PASSWORD, "new_password": "amber-lantern-quiet-77"},
        headers=headers,
    )  # accounts/password_changed
    assert password.status_code == 204, password.text
    reset = await client.post(
        "/api/v1/auth/password-reset", json={"email": f"new.{account['email']}"}
    )  # accounts/password_reset
    assert reset.status_code == 202, reset.text

    # leads/consent_withdrawn: a buyer bought the lead, then the consumer withdrew.
    _, seller = await signed_in(client, "seller")
    body = lead_body(sale={"mode": "fixed", "price_cents": 2500, "exclusive": True})
    posted = await client.post("/api/v1/leads", json=body, headers=seller)
    assert posted.status_code == 201, posted.text
    _, buyer_headers = await signed_in(client, "buyer")
    me = (await client.get("/api/v1/me", headers=buyer_headers)).json()
    buyer = await session.get(User, me["id"])
    assert buyer is not None
    await fund(session, buyer, 10_000)
    bought = await client.post(
        f"/api/v1/leads/{posted.json()['id']}/purchase", headers=buyer_headers
    )
    assert bought.status_code == 201, bought.text
    withdrawn = await client.post(
        f"/api/v1/consents/{posted.json()['consent_certificate']}/withdrawal",
        json={"email": body["contact"]["email"]},
    )
    assert withdrawn.status_code == 200, withdrawn.text

    # The notification center's events. feedback_received: the buyer rates the seller (and
    # the purchase above left lead_sold for the worker).
    rated = await client.post(
        f"/api/v1/orders/{bought.json()['id']}/feedback", json={"rating": 5}, headers=buyer_headers
    )
    assert rated.status_code == 201, rated.text
    # outbid, auction_won, auction_lost, auction_ended: two buyers bid, the auction closes.
    seller_id = (await client.get("/api/v1/me", headers=seller)).json()["id"]
    auction = await open_auction(session, seller_id)
    bidders = []
    for cents in (2_000, 3_000):
        bidder_account, bidder = await signed_in(client, "buyer")
        bidder_user = await session.get(User, bidder_account["id"])
        assert bidder_user is not None
        await fund(session, bidder_user, 10_000)
        placed = await client.post(
            f"/api/v1/leads/{auction.id}/bids", json={"amount_cents": cents}, headers=bidder
        )
        assert placed.status_code == 201, placed.text
        bidders.append(bidder_account)
    await run_jobs(db, settings)  # the outbid notice goes while the auction is still open
    auction.auction_ends_at = utcnow() - dt.timedelta(seconds=1)
    await session.commit()
    await close_due_auctions(session, settings, LocalBroker())
    await session.commit()
    # The after-sale mail (returns, disputes, cancellation, payout) through the real flows.
    await drive_after_sale_mail(client, session, settings)

    # privacy.request_code: a consumer asks what is known about them.
    asked = await client.post(
        "/api/v1/privacy/requests", json={"type": "know", "email": body["contact"]["email"]}
    )
    assert asked.status_code == 202, asked.text

    # privacy/notice_changed: an admin publishes a new notice version.
    from tests.privacy.test_notice import admin_headers, notice_body

    admin = await admin_headers(client, session)
    published = await client.post(
        "/api/v1/admin/privacy/notices", json=notice_body("7.0"), headers=admin
    )
    assert published.status_code == 201, published.text
    # message_received and the fraud review's notices (warning, suspension, reinstatement,
    # closure, leads and auctions withdrawn, the alert to the buyers of a fraudulent lead).
    await drive_message_and_fraud_mail(client, session, settings)
    await run_jobs(db, settings)


async def test_every_template_the_code_has_carries_a_working_unsubscribe(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    in_source = templates_in_source()
    # The notification center names its templates by event (privacy request updates keep the
    # privacy engine's own names, found above).
    told = [e for e in Event if e is not Event.PRIVACY_REQUEST_UPDATE]
    in_source.update({template_of(e): SPECS[e].topic.name for e in told})
    assert {
        "accounts/verify_email",
        "accounts/email_changed",
        "accounts/password_changed",
        "accounts/password_reset",
        "leads/consent_withdrawn",
        "privacy/notice_changed",
    } <= set(in_source)
    await drive_every_mail_the_code_sends(client, session, settings, db)

    sent = {
        mail.message_id: mail.template
        for mail in await session.scalars(select(OutboundMail).where(OutboundMail.status == "sent"))
    }
    undriven = sorted(set(in_source) - set(sent.values()))
    # Every event of the notification center has its real flow here: none may be left out.
    assert not [t for t in undriven if t.startswith("notify/")], undriven
    if undriven:
        # Templates added by code this test has no real flow for yet: they are still composed
        # by the same code path, so they are checked, but through queue_mail directly.
        warnings.warn(f"no real flow drives {undriven}; add one to this test", stacklevel=1)
        for template in undriven:
            await queue_mail(
                session,
                settings,
                to=f"check.{template.replace('/', '.')}@example.com",
                subject=f"Check {template}",
                text_body="Body.",
                template=template,
                topic=MailTopic.ACCOUNT,
            )
        await run_jobs(db, settings)
        sent = {
            mail.message_id: mail.template
            for mail in await session.scalars(
                select(OutboundMail).where(OutboundMail.status == "sent")
            )
        }

    messages = eml_files(settings)
    assert len(messages) == len(sent) >= len(in_source)
    checked: set[str] = set()
    for message in messages:
        template = sent[str(message["Message-ID"])]
        link = link_of(message)
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click", template
        assert link in body_of(message), template
        page = await client.get(path_of(link, settings))
        assert page.status_code == 200, template
        clicked = await client.post(path_of(link, settings))
        assert clicked.status_code == 200, template
        assert clicked.json()["status"] in ("unsubscribed", "already_unsubscribed")
        checked.add(template)
    assert set(in_source) <= checked
    # Unsubscribing stops marketing only: the transactional mail these flows send continues.
    after = await queue_mail(
        session,
        settings,
        to=messages[0]["To"],
        subject="Still here",
        text_body="Transactional.",
        template="test/after",
        topic=MailTopic.ACCOUNT,
    )
    assert after.status == "queued"
