"""What the demo marketplace has been through: life after the sale (issue 6) and the privacy
side (issue 5), so that every page has something real to show.

**After the sale** (M2–M6), between the demo members of :mod:`leadmarket.demo`:

* eight sales from the last week ("history"): four past their return window, settled, and
  ``sunbelt_leads`` paid out; four still in their window. The personal data of all eight was
  destroyed by the 48-hour rule (L4), each a few seconds after its deadline, so the retention
  monitor shows a lateness distribution;
* five sales of today, each with a return: one waiting for the seller (``requested``), one
  approved by the seller (refunded), one denied with a note, one denied and disputed (the
  dispute open in the admin's after-sale queue), and one denied, disputed and decided for the
  buyer by the demo admin (refunded);
* a claim, feedback both ways with replies (so public profiles show ratings), a thread of
  member messages, and a fraud case against ``quotehound`` with three signals (a complaint
  about a lead, a complaint about the member, a message reported as spam).

**Privacy** (P1–P12): three consumer rights requests (an agent's deletion request overdue and
waiting for the officer to review its proof, so the queue shows the overdue first; an agent's
access-to-know request from this week; a consumer's own request to know, answered), a new
version of the privacy notice published by the admin (in effect in two weeks), and a
law-enforcement subpoena entered by the admin, not yet verified by a second admin.

Everything goes through the services the API and the pages call, so the ledger, the audit chain
and the notifications are what they would be. One thing is not: the week of history happens in
a moment, so after selling those eight leads the demo moves their sale's clocks back (the
order's purchase time and return window, the lead's listing time and retention deadline), as
the tests do to let time pass; the audit log and the ledger keep the moment the demo was
loaded. The destruction of their personal data is the real retention sweep, run with its clock
set to a few seconds after each deadline, as the periodic sweep would have run it.

Each part is loaded once: running ``leadmarket demo`` again changes nothing."""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts import repository
from leadmarket.config import Settings
from leadmarket.feedback.service import leave_feedback, reply_to_feedback
from leadmarket.fraud.reports import ReportReason, SubjectType, file_report
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.errors import DomainError
from leadmarket.leads.intake import LeadsKit, create_lead
from leadmarket.messages.service import report_spam, send_message
from leadmarket.models import (
    ClaimCategory,
    DisputeOutcome,
    Feedback,
    Lead,
    LegalDocumentKind,
    LegalRequest,
    Order,
    OrderReturn,
    OutboundMail,
    PrivacyNotice,
    PrivacyRequest,
    ReturnReason,
    User,
)
from leadmarket.orders.service import purchase, settle_due_orders
from leadmarket.payouts.service import request_payout
from leadmarket.privacy.legal.schemas import LegalField, LegalRequestIn
from leadmarket.privacy.legal.service import enter_request
from leadmarket.privacy.notices import NoticeIn, all_versions, publish_notice
from leadmarket.privacy.requests import fulfil_request, submit_request, verify_request
from leadmarket.privacy.retention import purge_expired_lead_data
from leadmarket.privacy.schemas import PrivacyRequestIn
from leadmarket.returns.service import (
    EvidenceFile,
    decide_dispute,
    dispute_return,
    file_claim,
    request_return,
    seller_decides,
)
from leadmarket.verticals.registry import get_vertical

STORY_SEED = 6006  # a fixed story: the same consumers every time, not a secret
NOTICE_VERSION = "1.1"
# How late the retention sweep destroyed each history lead's data, in seconds: what a sweep
# every ``retention_sweep_seconds`` (10 s by default) gives (L4).
DESTRUCTION_LATENESS_SECONDS = (3.4, 0.6, 7.9, 1.8, 12.5, 0.3, 4.2, 2.6)
# What version 1.1 of the privacy notice adds to the version in effect.
AFTER_SALE_SECTION = (
    "After the sale. When a buyer returns a lead or disputes a decision, we keep the reason, "
    "the note and the evidence the parties give, not the consumer's contact details. Feedback "
    "is public under the member's username only. Member messages are seen by the two parties "
    "of the order and, when one is reported, by our fraud reviewers.\n"
)


@dataclass(frozen=True)
class Sale:
    """One sale of the story: who sold what to whom, and how long ago (history only)."""

    key: str
    seller: str
    buyer: str
    vertical: str
    price_cents: int
    age_hours: float = 0.0  # 0: sold today, just now


# Sold past their return window (age = window + these hours): settled.
SETTLED_AFTER_WINDOW_HOURS = (36.0, 24.0, 14.0, 7.0)
# Sold past their 48-hour deadline, still in the return window (age = retention + these hours).
DESTROYED_AFTER_RETENTION_HOURS = (19.0, 12.0, 5.0, 2.0)

HISTORY = (
    Sale("h1", "sunbelt_leads", "pacific_mutual_agency", "auto-insurance", 2900),
    Sale("h2", "sunbelt_leads", "evergreen_insurance", "life-insurance", 3400),
    Sale("h3", "sunbelt_leads", "brightpath_loans", "personal-loan", 2200),
    Sale("h4", "quotehound", "lakeside_mortgage", "mortgage", 4500),
    Sale("h5", "sunbelt_leads", "pacific_mutual_agency", "home-insurance", 2600),
    Sale("h6", "homefix_referrals", "evergreen_insurance", "health-insurance", 1900),
    Sale("h7", "homefix_referrals", "brightpath_loans", "auto-insurance", 1800),
    Sale("h8", "sunbelt_leads", "lakeside_mortgage", "mortgage", 3900),
)
TODAY = (
    Sale("r1", "quotehound", "evergreen_insurance", "auto-insurance", 2500),
    Sale("r2", "homefix_referrals", "brightpath_loans", "home-services", 1500),
    Sale("r3", "sunbelt_leads", "lakeside_mortgage", "mortgage", 4200),
    Sale("r4", "quotehound", "pacific_mutual_agency", "auto-insurance", 2700),
    Sale("r5", "quotehound", "evergreen_insurance", "life-insurance", 3100),
)


@dataclass
class StoryCounts:
    orders: int = 0
    returns: int = 0
    disputes: int = 0
    destroyed: int = 0
    payouts: int = 0
    privacy_requests: int = 0
    notices: int = 0
    legal_requests: int = 0
    consumers: dict[str, str] = field(default_factory=dict)  # sale key → consumer email


def _ages(settings: Settings) -> list[float]:
    window, retention = settings.return_window_hours, settings.pii_retention_hours
    return [window + h for h in SETTLED_AFTER_WINDOW_HOURS] + [
        retention + h for h in DESTROYED_AFTER_RETENTION_HOURS
    ]


async def _member(session: AsyncSession, username: str) -> User:
    user = await repository.user_by_username(session, username)
    if user is None:
        raise LookupError(f"demo member {username} is missing")
    return user


async def _sell(
    session: AsyncSession,
    settings: Settings,
    sale: Sale,
    n: int,
    rng: random.Random,
    counts: StoryCounts,
    *,
    sold_at: dt.datetime,
) -> Order:
    """List a fixed-price lead for ``sale.seller`` (a consumer who consented shortly before
    ``sold_at``) and have ``sale.buyer`` buy it, through intake and the Buy button's service."""
    from leadmarket.demo import _demo_lead

    seller = await _member(session, sale.seller)
    buyer = await _member(session, sale.buyer)
    vertical = get_vertical(sale.vertical)
    assert vertical is not None, sale.vertical
    for attempt in range(5):  # a random consumer may collide with one of the market's
        data = _demo_lead(
            seller,
            vertical,
            n * 10 + attempt,
            rng,
            fixed_price_cents=sale.price_cents,
            consent_given_at=sold_at - dt.timedelta(minutes=rng.randint(20, 90)),
        )
        try:
            async with session.begin_nested():
                created = await create_lead(
                    session, LeadsKit(settings), seller=seller, data=data, source="form"
                )
            break
        except DomainError:
            continue
    else:
        raise RuntimeError(f"no demo lead could be listed for sale {sale.key}")
    _, order_id = await purchase(
        session, settings, lead_id=created.lead.id, buyer=buyer, idempotency_key=None
    )
    order = await session.get(Order, order_id)
    assert order is not None
    counts.orders += 1
    counts.consumers[sale.key] = str(data.contact.email)
    return order


async def _move_sale_back(
    session: AsyncSession, settings: Settings, order: Order, sold_at: dt.datetime
) -> None:
    """Let time pass for a history sale (module docstring): the clocks the after-sale rules
    read are moved to when it was sold."""
    lead = await session.get(Lead, order.lead_id, populate_existing=True)
    assert lead is not None
    order.purchased_at = sold_at
    order.return_window_ends_at = sold_at + dt.timedelta(hours=settings.return_window_hours)
    lead.created_at = sold_at - dt.timedelta(minutes=15)
    lead.pii_expires_at = sold_at + dt.timedelta(hours=settings.pii_retention_hours)
    await session.flush()


async def _after_sale(session: AsyncSession, settings: Settings, counts: StoryCounts) -> bool:
    """The sales, returns, disputes, claims, feedback, messages and the fraud case; False if
    the story is there already."""
    if await session.scalar(select(func.count()).select_from(OrderReturn)):
        return False
    rng = random.Random(STORY_SEED)  # noqa: S311 - demo content, not a secret
    now = utcnow()
    orders: dict[str, Order] = {}
    for n, (sale, age) in enumerate(zip(HISTORY, _ages(settings), strict=True)):
        sold_at = now - dt.timedelta(hours=age)
        order = await _sell(session, settings, sale, 100 + n, rng, counts, sold_at=sold_at)
        await _move_sale_back(session, settings, order, sold_at)
        orders[sale.key] = order
    for n, sale in enumerate(TODAY):
        orders[sale.key] = await _sell(session, settings, sale, 200 + n, rng, counts, sold_at=now)

    async def member(username: str) -> User:
        return await _member(session, username)

    admin = await member("admin")
    sunbelt, quotehound = await member("sunbelt_leads"), await member("quotehound")
    homefix = await member("homefix_referrals")
    pacific, lakeside = await member("pacific_mutual_agency"), await member("lakeside_mortgage")
    evergreen, brightpath = await member("evergreen_insurance"), await member("brightpath_loans")

    # Returns: one of each outcome.
    await request_return(
        session,
        settings,
        orders["r1"].id,
        evergreen,
        reason=ReturnReason.DISCONNECTED_OR_WRONG_NUMBER,
        note="Three calls over two days: the number is not in service.",
        evidence_text="Dialer log: 09:12 no tone, 13:40 no tone, next day 10:05 no tone.",
        evidence=EvidenceFile(
            "dialer-log.txt",
            "text/plain",
            b"09:12 not in service\n13:40 not in service\n+1d 10:05 not in service\n",
        ),
    )
    approved = await request_return(
        session,
        settings,
        orders["r2"].id,
        brightpath,
        reason=ReturnReason.DUPLICATE,
        note="We bought the same consumer for the same job from another seller yesterday.",
        evidence_text=None,
    )
    await seller_decides(
        session,
        settings,
        approved.id,
        homefix,
        approve=True,
        note="Fair: the consumer filled in two forms. Refunded.",
    )
    denied = await request_return(
        session,
        settings,
        orders["r3"].id,
        lakeside,
        reason=ReturnReason.OUTSIDE_FILTERS,
        note="Our campaign buys credit scores of 680 and up; this one is lower.",
        evidence_text=None,
    )
    await seller_decides(
        session,
        settings,
        denied.id,
        sunbelt,
        approve=False,
        note="The credit band on the listing was 680-719, inside your filter.",
    )
    disputed = await request_return(
        session,
        settings,
        orders["r4"].id,
        pacific,
        reason=ReturnReason.CONSUMER_NEVER_ASKED,
        note="The consumer says she never asked for an insurance quote.",
        evidence_text="Call recording reference CR-5512, 2 minutes in.",
    )
    await seller_decides(
        session,
        settings,
        disputed.id,
        quotehound,
        approve=False,
        note="We have the consent certificate for this lead.",
    )
    await dispute_return(
        session,
        settings,
        disputed.id,
        pacific,
        note="The page in the consent certificate does not exist, and the consumer was clear.",
    )
    decided = await request_return(
        session,
        settings,
        orders["r5"].id,
        evergreen,
        reason=ReturnReason.FAKE_OR_FRAUDULENT_IDENTITY,
        note="The name and the phone number belong to two different people.",
        evidence_text="The number's owner, reached twice, has another name.",
    )
    await seller_decides(
        session, settings, decided.id, quotehound, approve=False, note="The lead passed our checks."
    )
    dispute = await dispute_return(
        session,
        settings,
        decided.id,
        evergreen,
        note="The seller's checks did not call the number; we did, twice.",
    )
    await decide_dispute(
        session,
        settings,
        dispute.id,
        admin,
        outcome=DisputeOutcome.FOR_BUYER,
        note="The seller could not show that the consumer gave this number. Refunded.",
    )
    counts.returns, counts.disputes = 5, 2

    # A claim about something a return does not cover.
    await file_claim(
        session,
        orders["h6"].id,
        evergreen,
        category=ClaimCategory.MISREPRESENTED,
        text="Listed as a family plan; the consumer wanted cover for one person only.",
    )

    # Feedback both ways, and replies.
    async def review(order: str, author: User, rating: int, comment: str) -> Feedback:
        return await leave_feedback(
            session,
            settings,
            order_id=orders[order].id,
            author=author,
            rating=rating,
            comment=comment,
        )

    good = await review(
        "h1", pacific, 5, "Real, reachable consumer; we wrote the policy the same week."
    )
    await review("h1", sunbelt, 5, "Clear filters, no surprises.")
    await reply_to_feedback(
        session,
        feedback_id=good.id,
        member=sunbelt,
        reply="Thank you! New Phoenix auto leads every morning.",
    )
    await review("h2", evergreen, 4, "Good lead; the consumer preferred a call after 6 pm.")
    await review("h3", brightpath, 5, "Funded in four days.")
    poor = await review("h4", lakeside, 2, "The consumer did not remember asking about a mortgage.")
    await reply_to_feedback(
        session,
        feedback_id=poor.id,
        member=quotehound,
        reply="We keep a consent certificate for every lead; ask us for it.",
    )
    await review("h4", quotehound, 3, "Returned more leads than most buyers.")

    # Member messages: a thread between a buyer and a seller, and a message reported as spam.
    thread = (
        (pacific, "Hello! The consumer also asked about a second home. Do you often get those?"),
        (sunbelt, "About one lead in ten. A campaign filter on property count gets them first."),
        (pacific, "Will do, thanks."),
    )
    for sender, body in thread:
        await send_message(session, settings, order_id=orders["h5"].id, sender=sender, body=body)
    spam = await send_message(
        session,
        settings,
        order_id=orders["h4"].id,
        sender=quotehound,
        body="Bulk mortgage lists: ten thousand aged records for 500 dollars. Reply for a price.",
    )
    await report_spam(
        session,
        settings,
        message_id=spam.message.id,
        reporter=lakeside,
        note="A sales pitch for lists, unrelated to the order.",
    )

    # Complaints: the fraud case against quotehound now has three signals.
    await file_report(
        session,
        settings,
        reporter=pacific,
        subject_type=SubjectType.LEAD,
        subject_id=orders["r4"].lead_id,
        reason=ReportReason.CONSUMER_NEVER_ASKED,
        details="The consumer never filled in a form; the consent page does not load.",
    )
    await file_report(
        session,
        settings,
        reporter=evergreen,
        subject_type=SubjectType.MEMBER,
        subject_id="quotehound",
        reason=ReportReason.FAKE_OR_FRAUDULENT_IDENTITY,
        details="Two of three leads this week named someone other than the phone's owner.",
    )

    # Settlement of the sales past their return window, and a payout.
    await settle_due_orders(session, settings)
    await request_payout(session, settings, sunbelt, currency="USD")
    counts.payouts = 1
    return True


def _stopped_clock(at: dt.datetime) -> Callable[[], dt.datetime]:
    return lambda: at


async def _destroy_history_data(db: Database, settings: Settings, counts: StoryCounts) -> None:
    """The retention sweep (L4) over the history sales, as it would have run: each lead's
    data destroyed a few seconds after its deadline."""
    now = utcnow()
    async with db.transaction() as session:
        deadlines = list(
            await session.scalars(
                select(Lead.pii_expires_at)
                .where(Lead.pii_destroyed_at.is_(None), Lead.pii_expires_at <= now)
                .order_by(Lead.pii_expires_at)
            )
        )
    for n, deadline in enumerate(deadlines):
        assert deadline is not None
        late = DESTRUCTION_LATENESS_SECONDS[n % len(DESTRUCTION_LATENESS_SECONDS)]
        swept_at = min(deadline + dt.timedelta(seconds=late), now)
        result = await purge_expired_lead_data(
            db, settings, now=swept_at, clock=_stopped_clock(swept_at)
        )
        counts.destroyed += result.count


_CODE = re.compile(r"code: (\d{6})")


async def _code_sent_to(session: AsyncSession, address: str) -> str:
    """The one-time code as the consumer reads it in the message sent to them."""
    mail = await session.scalar(
        select(OutboundMail)
        .where(OutboundMail.to_address == address, OutboundMail.template == "privacy.request_code")
        .order_by(OutboundMail.created_at.desc(), OutboundMail.id.desc())
        .limit(1)
    )
    found = _CODE.search(mail.text_body) if mail is not None else None
    if found is None:
        raise LookupError("no privacy request code was sent")
    return found.group(1)


async def _rights_requests(session: AsyncSession, settings: Settings, counts: StoryCounts) -> None:

    if await session.scalar(select(func.count()).select_from(PrivacyRequest)):
        return
    if not {"r1", "r3", "r4"} <= counts.consumers.keys():
        return  # the sales were loaded by an earlier run: their consumers are not known here
    kit = LeadsKit(settings)
    now = utcnow()
    asks = (
        # (consumer, what, received days ago, on behalf, answered)
        (
            counts.consumers["r1"],
            {
                "type": "delete",
                "on_behalf": "agent",
                "agent_name": "Rowan Ellis",
                "proof_text": "Signed authorization from the consumer, dated last month.",
                "details": "Please delete everything you hold about my client.",
            },
            50.0,
            False,
        ),
        (
            counts.consumers["r4"],
            {
                "type": "know",
                "on_behalf": "agent",
                "agent_name": "Casey Morgan",
                "proof_text": "Power of attorney, page 2 names me as the consumer's agent.",
            },
            3.0,
            False,
        ),
        (counts.consumers["r3"], {"type": "know"}, 12.0, True),
    )
    for email, fields, days_ago, answered in asks:
        received = now - dt.timedelta(days=days_ago)
        request, _token = await submit_request(
            session,
            settings,
            kit,
            PrivacyRequestIn.model_validate({"email": email, **fields}),
            client_ip="203.0.113.50",
            now=received,
        )
        code = await _code_sent_to(session, email)
        await verify_request(
            session, settings, request.id, code, now=received + dt.timedelta(seconds=40)
        )
        if answered:
            await fulfil_request(
                session, settings, request.id, now=received + dt.timedelta(hours=1)
            )
        counts.privacy_requests += 1


async def _notice_and_legal(session: AsyncSession, settings: Settings, counts: StoryCounts) -> None:

    admin = await _member(session, "admin")
    taken = await session.scalar(
        select(PrivacyNotice.id).where(PrivacyNotice.version == NOTICE_VERSION)
    )
    if taken is None:
        now = utcnow()
        # The new version is the one in effect with a section added.
        current = max(
            (v for v in await all_versions(session) if v.effective_at <= now),
            key=lambda v: v.effective_at,
            default=None,
        )
        await publish_notice(
            session,
            settings,
            NoticeIn(
                version=NOTICE_VERSION,
                effective_at=now + dt.timedelta(days=14),
                summary="A new section on returns, disputes, feedback and member messages: "
                "what each keeps and who sees it.",
                body=(current.body.rstrip() + "\n\n" if current is not None else "")
                + AFTER_SALE_SECTION,
            ),
            admin=admin,
        )
        counts.notices += 1
    if not await session.scalar(select(func.count()).select_from(LegalRequest)):
        await enter_request(
            session,
            settings,
            admin_id=admin.id,
            body=LegalRequestIn(
                agency="Maricopa County Sheriff's Office",
                officer_name="Detective Alex Moreno",
                officer_email="a.moreno@sheriff.example.gov",
                officer_phone="+16025550177",
                document_kind=LegalDocumentKind.SUBPOENA,
                document_reference="GJ-2026-0412",
                document_text="Grand jury subpoena GJ-2026-0412 for the records of the member "
                "quotehound: identity, addresses used, fraud complaints, and its lead listings "
                "and sales since January 2026.",
                subject_username="quotehound",
                fields=[
                    LegalField.NAME,
                    LegalField.EMAIL,
                    LegalField.IP_ADDRESS,
                    LegalField.FRAUD_COMPLAINTS,
                    LegalField.PURCHASE_AND_LISTING_HISTORY,
                ],
            ),
        )
        counts.legal_requests += 1


async def load_demo_story(db: Database, settings: Settings) -> StoryCounts:
    """Load the story once (module docstring). The demo members, their leads and the buyers'
    money must be there (:func:`leadmarket.demo.load_demo_data` loads them first)."""
    counts = StoryCounts()
    async with db.transaction() as session:
        told = await _after_sale(session, settings, counts)
    if told:
        await _destroy_history_data(db, settings, counts)
    async with db.transaction() as session:
        await _rights_requests(session, settings, counts)
    async with db.transaction() as session:
        await _notice_and_legal(session, settings, counts)
    return counts
