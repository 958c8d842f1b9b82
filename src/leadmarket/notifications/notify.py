"""The notification center: the one place that decides who is told what, through which channel,
with which words (P7, P8, M3, M6).

Every event the platform tells members about is an :class:`Event` with an :class:`EventSpec`
(its mail topic, whether it is urgent enough for a text message) and a text template under
``templates/notifications/mail/<event>.txt`` (first line ``Subject: …``, a blank line, the
body). Code that has something to say calls a typed ``notify_…`` function here; nothing else
composes member notifications.

**Channels and preferences.**

* **Email**, through :func:`leadmarket.notifications.service.queue_mail` with the event's
  topic, which applies the member's preferences when the mail is queued and again when it is
  sent: transaction mail (outbid, won, lost, sold, cancellations, returns, disputes,
  payouts, feedback, the fraud review's notices, privacy requests) **always goes, even to a
  member who turned the email channel off**: it is about their own money and obligations,
  and P7 keeps it flowing after any opt-out; member-message mail only while the member keeps
  both the email channel and the member-messages topic on (P8); marketing is not sent from
  here at all. A mail not sent is kept as ``suppressed`` with its reason.
* **Text message**, only for the urgent events (outbid, auction won, and the fraud review's
  warning, suspension, closure, withdrawal of leads and alert to the buyers of a fraudulent
  lead: :data:`SPECS`), only to a member who turned the text channel on and has a phone
  number. Transactional or not, a text is never sent without that choice.
* Every email carries the unsubscribe link and the RFC 8058 one-click headers (added when the
  message is composed, for every template).

**What a notification may say.** Ids, usernames, amounts, the vertical and region of a lead,
dates and links: never a consumer's personal data (name, email, phone, address, birth date),
and never what members or admins wrote in free text (a member message, a return's note or
evidence, a reviewer's note: any of them may quote the consumer or name a reporter). Notices
about suspicious activity name the username and the lead (M6).

**The hot paths stay fast.** A bid, an auction close and a sale do not compose mail: they add
one small ``notify.event`` job to their own transaction (an outbox row: durable, and gone
with a rollback) and the worker tells everyone after the commit (:func:`notify_later`). Its
dedupe key makes each event tell each member once, however often the job is retried."""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.jobs import enqueue
from leadmarket.kit.money import format_money
from leadmarket.kit.templating import TEMPLATES_DIR
from leadmarket.models import (
    Auction,
    AuctionOutcome,
    Bid,
    Lead,
    MailTopic,
    Order,
    OrderStatus,
    SaleVia,
    User,
    UserStatus,
)
from leadmarket.notifications.service import queue_mail
from leadmarket.notifications.sms import queue_text_message
from leadmarket.privacy.preferences import stored_preferences

log = logging.getLogger("leadmarket.notifications")

NOTIFY_JOB = "notify.event"
MAIL_TEMPLATES_DIR = TEMPLATES_DIR / "notifications" / "mail"


class Event(enum.StrEnum):
    OUTBID = "outbid"
    AUCTION_WON = "auction_won"
    AUCTION_LOST = "auction_lost"
    AUCTION_ENDED = "auction_ended"  # to the seller: sold or unsold
    LEAD_SOLD = "lead_sold"  # to the seller: bought outright, buy-now, ping/post
    ORDER_CANCELLED = "order_cancelled"  # to the seller: cancelled before delivery
    RETURN_REQUESTED = "return_requested"  # to the seller, who decides
    RETURN_DECIDED = "return_decided"  # to the buyer; to the seller when not theirs
    RETURN_DISPUTED = "return_disputed"  # to the seller whose denial is disputed
    DISPUTE_DECIDED = "dispute_decided"  # to both parties
    PAYOUT_SENT = "payout_sent"
    MESSAGE_RECEIVED = "message_received"
    PRIVACY_REQUEST_UPDATE = "privacy_request_update"
    FEEDBACK_RECEIVED = "feedback_received"
    # The fraud review (M6): to the member it acted on ...
    FRAUD_WARNING = "fraud_warning"
    ACCOUNT_SUSPENDED = "account_suspended"
    ACCOUNT_CLOSED = "account_closed"
    ACCOUNT_REINSTATED = "account_reinstated"
    LEADS_WITHDRAWN = "leads_withdrawn"
    # ... and to members its fraud touched: the bidders of a withdrawn auction, the buyers
    # of a lead confirmed fraudulent.
    AUCTION_WITHDRAWN = "auction_withdrawn"
    FRAUD_ALERT = "fraud_alert"


@dataclass(frozen=True)
class EventSpec:
    topic: MailTopic
    # Also by text message, to a member who turned the text channel on.
    urgent: bool = False
    # Told even to a closed account: the notice that the fraud review closed it (the account
    # keeps its data then, P3's fraud exception). Every other event skips closed accounts.
    reaches_closed: bool = False

    @property
    def transactional(self) -> bool:
        return self.topic.category.value == "transactional"


_ACCOUNT = EventSpec(MailTopic.ACCOUNT)
_URGENT = EventSpec(MailTopic.ACCOUNT, urgent=True)
SPECS: dict[Event, EventSpec] = {
    Event.OUTBID: _URGENT,
    Event.AUCTION_WON: _URGENT,
    Event.AUCTION_LOST: _ACCOUNT,
    Event.AUCTION_ENDED: _ACCOUNT,
    Event.LEAD_SOLD: _ACCOUNT,
    Event.ORDER_CANCELLED: _ACCOUNT,
    Event.RETURN_REQUESTED: _ACCOUNT,
    Event.RETURN_DECIDED: _ACCOUNT,
    Event.RETURN_DISPUTED: _ACCOUNT,
    Event.DISPUTE_DECIDED: _ACCOUNT,
    Event.PAYOUT_SENT: _ACCOUNT,
    Event.MESSAGE_RECEIVED: EventSpec(MailTopic.MEMBER_MESSAGES),
    Event.PRIVACY_REQUEST_UPDATE: _ACCOUNT,
    Event.FEEDBACK_RECEIVED: _ACCOUNT,
    Event.FRAUD_WARNING: _URGENT,
    Event.ACCOUNT_SUSPENDED: _URGENT,
    Event.ACCOUNT_CLOSED: EventSpec(MailTopic.ACCOUNT, urgent=True, reaches_closed=True),
    Event.ACCOUNT_REINSTATED: _ACCOUNT,
    Event.LEADS_WITHDRAWN: _URGENT,
    Event.AUCTION_WITHDRAWN: _ACCOUNT,
    Event.FRAUD_ALERT: _URGENT,
}


def template_of(event: Event) -> str:
    """The name recorded on the outbox row (``outbound_mail.template``)."""
    return f"notify/{event.value}"


_env = Environment(
    loader=FileSystemLoader(str(MAIL_TEMPLATES_DIR)),
    autoescape=False,  # noqa: S701 (plain-text mail: no HTML is ever rendered from it)
    undefined=StrictUndefined,  # a missing value is a bug, not a blank in someone's mail
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["money"] = lambda cents, currency: format_money(cents, currency)
_env.filters["when"] = lambda value: value.strftime("%Y-%m-%d %H:%M UTC")


def render(event: Event, context: Mapping[str, Any]) -> tuple[str, str]:
    """The subject and body of ``event``'s template."""
    text = _env.get_template(f"{event.value}.txt").render(**context)
    head, _, body = text.partition("\n\n")
    if not head.startswith("Subject: ") or "\n" in head:
        raise ValueError(f"template {event.value}.txt must start with one 'Subject:' line")
    return head.removeprefix("Subject: ").strip(), body.lstrip("\n")


@dataclass(frozen=True)
class Notice:
    """What the center did for one recipient."""

    event: Event
    user_id: str | None
    mail_id: str | None
    mail_status: str | None  # queued, or suppressed (with the outbox row's reason)
    texted: bool


def _base(settings: Settings) -> str:
    return settings.base_url.rstrip("/")


async def notify_member(
    session: AsyncSession,
    settings: Settings,
    event: Event,
    user: User | None,
    context: Mapping[str, Any],
) -> Notice | None:
    """Tell ``user`` about ``event`` through the channels their preferences allow (module
    docstring). A closed account (or none) is told nothing, there is nobody left to tell,
    except that the fraud review closed it (:attr:`EventSpec.reaches_closed`)."""
    if user is None:
        return None
    spec = SPECS[event]
    if user.status == UserStatus.CLOSED.value and not spec.reaches_closed:
        return None
    subject, body = render(
        event, {**context, "username": user.username, "base_url": _base(settings)}
    )
    mail = await queue_mail(
        session,
        settings,
        to=user.email,
        subject=subject,
        text_body=body,
        template=template_of(event),
        topic=spec.topic,
        user_id=user.id,
    )
    texted = False
    if spec.urgent and user.phone:
        prefs = await stored_preferences(session, user.id)
        if prefs["text"]:
            await queue_text_message(
                session,
                settings,
                to=user.phone,
                body=f"Leadmarket: {subject}",
                template=template_of(event),
            )
            texted = True
    log.info(
        "member notified",
        extra={"event": event.value, "user_id": user.id, "mail_id": mail.id, "texted": texted},
    )
    return Notice(event, user.id, mail.id, mail.status, texted)


# After the commit: the hot paths' events --------------------------------------------------


async def notify_later(session: AsyncSession, event: Event, ref: str) -> None:
    """Have the worker tell everyone concerned about ``event`` (``ref`` is the outbid bid's
    id, the lead whose auction ended, or the order of a sale) once this transaction commits.
    One row in the caller's transaction; the same event is told once."""
    if event not in _DEFERRED:
        raise ValueError(f"{event.value} is told at once, not later")
    await enqueue(
        session,
        NOTIFY_JOB,
        {"event": event.value, "ref": ref},
        dedupe_key=f"{NOTIFY_JOB}:{event.value}:{ref}",
    )


async def run_deferred(session: AsyncSession, settings: Settings, event: str, ref: str) -> None:
    """The ``notify.event`` job."""
    handler = _DEFERRED.get(Event(event))
    if handler is None:
        raise ValueError(f"{event} is not a deferred event")
    await handler(session, settings, ref)


def _lead_context(lead: Lead) -> dict[str, Any]:
    """What a notification may say about a lead: never its consumer."""
    return {"lead_id": lead.id, "vertical": lead.vertical, "region": lead.region}


async def notify_outbid(session: AsyncSession, settings: Settings, bid_id: str) -> list[Notice]:
    """The buyer whose bid ``bid_id`` was beaten hears the new price (not who beat them)."""
    bid = await session.get(Bid, bid_id)
    if bid is None:
        return []
    lead = await session.get(Lead, bid.lead_id)
    auction = await session.get(Auction, bid.lead_id)
    if lead is None or auction is None or auction.closed_at is not None:
        return []  # ended meanwhile: the outcome mail says everything
    if auction.leader_id == bid.buyer_id:
        return []  # they already answered and lead again
    notice = await notify_member(
        session,
        settings,
        Event.OUTBID,
        await session.get(User, bid.buyer_id),
        {
            **_lead_context(lead),
            "your_max_cents": bid.max_cents,
            "price_cents": auction.current_price_cents or 0,
            "currency": bid.currency,
            "ends_at": auction.ends_at,
        },
    )
    return [notice] if notice else []


async def notify_auction_ended(
    session: AsyncSession, settings: Settings, lead_id: str
) -> list[Notice]:
    """The end of ``lead_id``'s auction, told to everyone who took part: each winner (won,
    with the price and the order), every other bidder (lost, and why), and the seller (sold,
    with the total, or unsold). A lead bought outright mid-auction is told to the seller as a
    sale (:data:`Event.LEAD_SOLD`), so only the bidders hear about it here."""
    lead = await session.get(Lead, lead_id)
    auction = await session.get(Auction, lead_id)
    if lead is None or auction is None or auction.closed_at is None:
        return []
    outcome = AuctionOutcome(auction.outcome or AuctionOutcome.UNSOLD.value)
    orders = list(
        await session.scalars(
            select(Order).where(Order.lead_id == lead_id).order_by(Order.purchased_at, Order.id)
        )
    )
    won = {o.buyer_id: o for o in orders if o.via == SaleVia.AUCTION.value}
    bought_by = {o.buyer_id for o in orders}
    bidders = list(
        await session.scalars(
            select(Bid.buyer_id).where(Bid.lead_id == lead_id).distinct().order_by(Bid.buyer_id)
        )
    )
    base = _lead_context(lead)
    notices: list[Notice | None] = []
    for buyer_id in bidders:
        buyer = await session.get(User, buyer_id)
        if buyer_id in won:
            order = won[buyer_id]
            notices.append(
                await notify_member(
                    session,
                    settings,
                    Event.AUCTION_WON,
                    buyer,
                    {
                        **base,
                        "order_id": order.id,
                        "price_cents": order.price_cents,
                        "currency": order.currency,
                        "return_window_ends_at": order.return_window_ends_at,
                    },
                )
            )
        elif buyer_id not in bought_by:
            notices.append(
                await notify_member(
                    session, settings, Event.AUCTION_LOST, buyer, {**base, "outcome": outcome.value}
                )
            )
    if outcome in (AuctionOutcome.SOLD, AuctionOutcome.UNSOLD):
        sold = [o for o in orders if o.via == SaleVia.AUCTION.value]
        notices.append(
            await notify_member(
                session,
                settings,
                Event.AUCTION_ENDED,
                await session.get(User, lead.seller_id),
                {
                    **base,
                    "sold": bool(sold),
                    "sales": len(sold),
                    "total_cents": sum(o.price_cents for o in sold),
                    "currency": lead.currency,
                    "bidders": len(bidders),
                    "pii_expires_at": lead.pii_expires_at,
                },
            )
        )
    return [n for n in notices if n is not None]


async def notify_lead_sold(
    session: AsyncSession, settings: Settings, order_id: str
) -> list[Notice]:
    """The seller of a lead sold outright (fixed price, buy-now, ping/post) hears the price and
    the buyer's username; an auction's sales are told by :func:`notify_auction_ended`."""
    order = await session.get(Order, order_id)
    if order is None or order.via == SaleVia.AUCTION.value:
        return []
    lead = await session.get(Lead, order.lead_id)
    buyer = await session.get(User, order.buyer_id)
    if lead is None:
        return []
    notice = await notify_member(
        session,
        settings,
        Event.LEAD_SOLD,
        await session.get(User, order.seller_id),
        {
            **_lead_context(lead),
            "order_id": order.id,
            "buyer": buyer.username if buyer is not None else "a buyer",
            "price_cents": order.price_cents,
            "currency": order.currency,
            "via": order.via,
            "return_window_ends_at": order.return_window_ends_at,
        },
    )
    return [notice] if notice else []


async def _outbid(session: AsyncSession, settings: Settings, ref: str) -> None:
    await notify_outbid(session, settings, ref)


async def _auction_ended(session: AsyncSession, settings: Settings, ref: str) -> None:
    await notify_auction_ended(session, settings, ref)


async def _lead_sold(session: AsyncSession, settings: Settings, ref: str) -> None:
    await notify_lead_sold(session, settings, ref)


_DEFERRED = {
    Event.OUTBID: _outbid,
    Event.AUCTION_ENDED: _auction_ended,
    Event.LEAD_SOLD: _lead_sold,
}


# At once, in the caller's transaction: the after-sale and fraud-review events --------------
#
# Each is told in the transaction of the change it is about (an outbox row, gone with a
# rollback), so a refused or rolled-back decision tells nobody, and a decision made once
# (the returns' conditional UPDATEs) is told once.


async def _party(session: AsyncSession, user_id: str) -> User | None:
    return await session.get(User, user_id)


async def _username(session: AsyncSession, user_id: str, fallback: str) -> str:
    user = await _party(session, user_id)
    return user.username if user is not None else fallback


def _order_context(order: Order) -> dict[str, Any]:
    return {
        "order_id": order.id,
        "lead_id": order.lead_id,
        "currency": order.currency,
        "price_cents": order.price_cents,
    }


async def _tell(
    session: AsyncSession,
    settings: Settings,
    event: Event,
    user_id: str,
    context: Mapping[str, Any],
) -> list[Notice]:
    notice = await notify_member(session, settings, event, await _party(session, user_id), context)
    return [notice] if notice else []


async def notify_order_cancelled(
    session: AsyncSession, settings: Settings, *, order: Order, lead_reopened: bool
) -> list[Notice]:
    """The seller hears that the buyer cancelled ``order`` before delivery (M2): nothing is
    settled to them, and whether the lead is back on the market."""
    return await _tell(
        session,
        settings,
        Event.ORDER_CANCELLED,
        order.seller_id,
        {
            **_order_context(order),
            "buyer": await _username(session, order.buyer_id, "the buyer"),
            "lead_reopened": lead_reopened,
        },
    )


async def notify_return_requested(
    session: AsyncSession,
    settings: Settings,
    *,
    order: Order,
    return_id: str,
    reason: str,
    decide_by: dt.datetime,
) -> list[Notice]:
    """The seller is asked to decide a buyer's return of ``order`` by ``decide_by`` (silence
    approves, M2). ``reason`` is the reason code, never the buyer's note or evidence (they may
    quote the consumer): those are read behind the sign-in."""
    return await _tell(
        session,
        settings,
        Event.RETURN_REQUESTED,
        order.seller_id,
        {
            **_order_context(order),
            "return_id": return_id,
            "reason": reason,
            "buyer": await _username(session, order.buyer_id, "the buyer"),
            "decide_by": decide_by,
        },
    )


RETURN_OUTCOMES = ("approved", "denied", "review")


async def notify_return_decided(
    session: AsyncSession,
    settings: Settings,
    *,
    order: Order,
    return_id: str,
    outcome: str,
    decided_by: str | None,
    refund_cents: int | None = None,
    clawed_back_cents: int | None = None,
    dispute_until: dt.datetime | None = None,
) -> list[Notice]:
    """What became of a return (``outcome``: ``approved``, ``denied``, or ``review`` when it
    went to an admin over the buyer's return-rate cap; ``decided_by``: ``seller``,
    ``silence``, ``trusted``, ``admin`` or ``dispute``).

    Who is told: the buyer, always (the refund, or until when a denial can be disputed); the
    seller too when a return of theirs was approved by anyone but them (silence, trust, an
    admin), with the refund and any claw-back. An approval by a dispute's decision is told
    by :func:`notify_dispute_decided` alone, so nobody hears it twice."""
    if outcome not in RETURN_OUTCOMES:
        raise ValueError(f"outcome is one of {RETURN_OUTCOMES}")
    if decided_by == "dispute":
        return []
    context = {
        **_order_context(order),
        "return_id": return_id,
        "outcome": outcome,
        "decided_by": decided_by,
        "refund_cents": refund_cents or 0,
        "clawed_back_cents": clawed_back_cents or 0,
        "dispute_until": dispute_until,
    }
    notices = await _tell(
        session, settings, Event.RETURN_DECIDED, order.buyer_id, {**context, "side": "buyer"}
    )
    if outcome == "approved" and decided_by != "seller":
        notices += await _tell(
            session, settings, Event.RETURN_DECIDED, order.seller_id, {**context, "side": "seller"}
        )
    return notices


async def notify_return_disputed(
    session: AsyncSession, settings: Settings, *, order: Order, return_id: str, dispute_id: str
) -> list[Notice]:
    """The seller hears that the buyer disputes their denial (the buyer's note stays on the
    order page: it may quote the consumer)."""
    return await _tell(
        session,
        settings,
        Event.RETURN_DISPUTED,
        order.seller_id,
        {
            **_order_context(order),
            "return_id": return_id,
            "dispute_id": dispute_id,
            "buyer": await _username(session, order.buyer_id, "the buyer"),
        },
    )


async def notify_dispute_decided(
    session: AsyncSession,
    settings: Settings,
    *,
    order: Order,
    dispute_id: str,
    in_favour_of: str,
    refund_cents: int | None = None,
) -> list[Notice]:
    """Both parties hear an admin's final decision on a dispute (``in_favour_of``: ``buyer``
    or ``seller``), never the admin's note."""
    if in_favour_of not in ("buyer", "seller"):
        raise ValueError("in_favour_of is 'buyer' or 'seller'")
    notices: list[Notice] = []
    for side, user_id in (("buyer", order.buyer_id), ("seller", order.seller_id)):
        notices += await _tell(
            session,
            settings,
            Event.DISPUTE_DECIDED,
            user_id,
            {
                **_order_context(order),
                "dispute_id": dispute_id,
                "side": side,
                "in_favour_of": in_favour_of,
                "refund_cents": refund_cents,
            },
        )
    return notices


async def notify_payout_sent(
    session: AsyncSession,
    settings: Settings,
    *,
    seller_id: str,
    payout_id: str,
    amount_cents: int,
    currency: str,
    processor_reference: str | None = None,
) -> list[Notice]:
    return await _tell(
        session,
        settings,
        Event.PAYOUT_SENT,
        seller_id,
        {
            "payout_id": payout_id,
            "amount_cents": amount_cents,
            "currency": currency,
            "processor_reference": processor_reference,
        },
    )


async def notify_message_received(
    session: AsyncSession,
    settings: Settings,
    *,
    order: Order,
    message_id: str,
    sender_id: str,
) -> list[Notice]:
    """The other party of ``order`` hears that ``sender_id`` wrote (member-message mail: only
    while they keep email and member messages on, P8). The message itself is not quoted: it
    is read on the site, behind the sign-in, where it can be reported as spam. Whether a
    message is told at all (only the first unread one of a thread) is the messages' rule."""
    if sender_id not in (order.buyer_id, order.seller_id):
        raise ValueError("the sender is not a party to the order")
    recipient_id = order.seller_id if sender_id == order.buyer_id else order.buyer_id
    return await _tell(
        session,
        settings,
        Event.MESSAGE_RECEIVED,
        recipient_id,
        {
            "order_id": order.id,
            "lead_id": order.lead_id,
            "message_id": message_id,
            "sender": await _username(session, sender_id, "the other party"),
            "sender_side": "buyer" if sender_id == order.buyer_id else "seller",
        },
    )


async def notify_feedback_received(
    session: AsyncSession,
    settings: Settings,
    *,
    feedback_id: str,
    order_id: str,
    author_id: str,
    subject_id: str,
    rating: int,
) -> list[Notice]:
    """The rated member hears the rating and who left it, and where to reply (M3)."""
    subject = await _party(session, subject_id)
    notice = await notify_member(
        session,
        settings,
        Event.FEEDBACK_RECEIVED,
        subject,
        {
            "feedback_id": feedback_id,
            "order_id": order_id,
            "author": await _username(session, author_id, "a member"),
            "rating": rating,
            "profile": subject.username if subject is not None else "",
        },
    )
    return [notice] if notice else []


# The fraud review (M6): every notice names the member's username and the lead concerned; the
# admin's note stays on the case (it may name a reporter or quote a consumer).

FRAUD_ACTION_EVENTS = frozenset(
    {
        Event.FRAUD_WARNING,
        Event.ACCOUNT_SUSPENDED,
        Event.ACCOUNT_CLOSED,
        Event.ACCOUNT_REINSTATED,
        Event.LEADS_WITHDRAWN,
    }
)


async def notify_fraud_action(
    session: AsyncSession,
    settings: Settings,
    event: Event,
    *,
    member: User,
    case_id: str,
    lead_id: str | None = None,
    grounds: list[str] | None = None,
    lead_ids: list[str] | None = None,
) -> list[Notice]:
    """Tell ``member`` what the fraud review did to their account (``event``: a warning, a
    suspension, a closure, a reinstatement, their open leads withdrawn), naming the lead
    concerned and ``grounds``, the kinds of signals the review looked at (platform words:
    never who reported them, never what anyone wrote)."""
    if event not in FRAUD_ACTION_EVENTS:
        raise ValueError(f"{event.value} is not a fraud review action")
    if event is Event.LEADS_WITHDRAWN and not lead_ids:
        return []
    notice = await notify_member(
        session,
        settings,
        event,
        member,
        {
            "case_id": case_id,
            "lead_id": lead_id,
            "concerning": f"lead {lead_id}" if lead_id else "activity on your account",
            "grounds": list(grounds or ()),
            "lead_ids": list(lead_ids or ()),
            "seller": member.role == "seller",
        },
    )
    return [notice] if notice else []


async def notify_auction_withdrawn(
    session: AsyncSession,
    settings: Settings,
    *,
    lead: Lead,
    seller: User,
    released: Mapping[str, int],
) -> list[Notice]:
    """Every bidder of ``lead``'s auction, withdrawn by the fraud review, hears it with the
    seller's username (M6); the leader also hears that their hold is released (``released``:
    buyer id → cents). One notice per bidder: the auction's end tells nobody else."""
    bidders = list(
        await session.scalars(
            select(Bid.buyer_id).where(Bid.lead_id == lead.id).distinct().order_by(Bid.buyer_id)
        )
    )
    notices: list[Notice] = []
    for buyer_id in bidders:
        notices += await _tell(
            session,
            settings,
            Event.AUCTION_WITHDRAWN,
            buyer_id,
            {
                **_lead_context(lead),
                "seller": seller.username,
                "released_cents": released.get(buyer_id, 0),
                "currency": lead.currency,
            },
        )
    return notices


async def notify_fraud_alert(
    session: AsyncSession, settings: Settings, *, lead_id: str, seller: User, now: dt.datetime
) -> list[tuple[str, Notice | None]]:
    """Each buyer of ``lead_id``, confirmed fraudulent, is alerted (M6: fraud touched their
    account): the lead, the seller's username, their order, and whether they can still return
    it. Returns ``(order id, notice)`` for every order, told or not (a closed account)."""
    orders = list(
        await session.scalars(select(Order).where(Order.lead_id == lead_id).order_by(Order.id))
    )
    alerted: list[tuple[str, Notice | None]] = []
    for order in orders:
        told = await _tell(
            session,
            settings,
            Event.FRAUD_ALERT,
            order.buyer_id,
            {
                **_order_context(order),
                "seller": seller.username,
                "return_open": order.status == OrderStatus.HELD.value
                and now < order.return_window_ends_at,
                "return_window_ends_at": order.return_window_ends_at,
            },
        )
        alerted.append((order.id, told[0] if told else None))
    return alerted


async def notify_privacy_requester(
    session: AsyncSession,
    settings: Settings,
    *,
    request_id: str,
    email: str | None,
    phone: str | None,
    headline: str,
    message: str,
    kind: str,
) -> Notice:
    """An update on a privacy request, to the address the requester gave (they need not be a
    member): by email, or by text to a requester who gave only a phone. ``kind`` names the
    update on the outbox row (``privacy.request_answered`` …); the words come from the
    event's template."""
    context = {
        "request_id": request_id,
        "headline": headline,
        "message": message,
        "base_url": _base(settings),
    }
    subject, body = render(Event.PRIVACY_REQUEST_UPDATE, context)
    if email is not None:
        mail = await queue_mail(
            session,
            settings,
            to=email,
            subject=subject,
            text_body=body,
            template=kind,
            topic=SPECS[Event.PRIVACY_REQUEST_UPDATE].topic,
        )
        return Notice(Event.PRIVACY_REQUEST_UPDATE, None, mail.id, mail.status, False)
    if phone is None:
        raise ValueError("a privacy requester is reached by email or by phone")
    await queue_text_message(
        session, settings, to=phone, body=f"Leadmarket: {subject}.", template=kind
    )
    return Notice(Event.PRIVACY_REQUEST_UPDATE, None, None, None, True)
