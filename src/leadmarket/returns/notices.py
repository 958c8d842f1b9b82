"""The mail of the after-sale steps (M2, M5): one composing function per event, each returning
a :class:`Notice` (subject, text, template name) that :func:`send_notice` puts in the outbox as
transactional mail (topic ``account``: it reaches the member even after they opted out of
marketing, P7, and carries the unsubscribe footer like every message).

What they say: order, return, dispute and payout ids, amounts, reason codes, usernames and a
link to the page. Never the consumer's personal data, and never the members' free-text notes or
evidence either: a note may quote the consumer ("the number 555-… is disconnected"), so it stays
behind the sign-in on the order page."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.money import format_money
from leadmarket.models import MailTopic, Order, OrderReturn, Payout, ReturnDispute, User
from leadmarket.notifications.service import queue_mail

# What the pages say after each action (``?done=…``).
PAGE_NOTICES = {
    "cancelled": "The order is cancelled; its price is back in your wallet.",
    "return_requested": "Your return is filed. Its status and history are below.",
    "disputed": "Your dispute is with an admin, whose decision is final.",
    "claim_filed": "Your claim is filed; an admin will answer it here.",
    "approved": "You approved the return; the buyer is refunded.",
    "denied": "You denied the return. The buyer may dispute it to an admin.",
    "paid_out": "Your payout is on its way.",
    "decided": "Decision recorded.",
}


@dataclass(frozen=True)
class Notice:
    subject: str
    text: str
    template: str


def _link(settings: Settings, path: str) -> str:
    return f"{settings.base_url.rstrip('/')}{path}"


def buyer_order_path(order: Order) -> str:
    return f"/orders/{order.id}"


def seller_order_path(order: Order) -> str:
    return f"/seller/sales/{order.id}"


def order_cancelled(settings: Settings, order: Order, seller: User) -> Notice:
    return Notice(
        subject=f"Order {order.id} was cancelled before delivery",
        text=(
            f"Hello {seller.username},\n\n"
            f"The buyer cancelled order {order.id} for lead {order.lead_id} before the lead was "
            f"delivered. The {format_money(order.price_cents, order.currency)} held for it went "
            "back to the buyer; nothing was settled to you.\n\n"
            f"The order: {_link(settings, seller_order_path(order))}\n"
        ),
        template="returns/order_cancelled",
    )


def return_requested(
    settings: Settings, order: Order, ret: OrderReturn, seller: User, buyer: User
) -> Notice:
    decide_by = ret.decide_by.strftime("%Y-%m-%d %H:%M UTC") if ret.decide_by else "soon"
    return Notice(
        subject=f"Return requested for order {order.id}",
        text=(
            f"Hello {seller.username},\n\n"
            f"{buyer.username} asks to return lead {order.lead_id} (order {order.id}, "
            f"{format_money(order.price_cents, order.currency)}), reason: {ret.reason}.\n\n"
            f"Approve or deny it by {decide_by}. If you do not answer by then, the return is "
            "approved and the buyer refunded.\n\n"
            f"Read the buyer's note and evidence and decide: "
            f"{_link(settings, seller_order_path(order))}\n"
        ),
        template="returns/return_requested",
    )


def return_decided(settings: Settings, order: Order, ret: OrderReturn, buyer: User) -> Notice:
    approved = ret.status == "approved"
    if approved:
        outcome = (
            f"approved ({ret.decided_by}). {format_money(ret.refunded_cents or 0, order.currency)} "
            "is back in your wallet."
        )
    elif ret.status == "review":
        outcome = "sent to an admin for review: your returns are above the return-rate cap."
    else:
        until = ret.dispute_by.strftime("%Y-%m-%d %H:%M UTC") if ret.dispute_by else None
        outcome = "denied." + (
            f" You may dispute the denial to an admin until {until}." if until else ""
        )
    return Notice(
        subject=f"Your return for order {order.id} was "
        + ("approved" if approved else "sent for review" if ret.status == "review" else "denied"),
        text=(
            f"Hello {buyer.username},\n\n"
            f"Your return {ret.id} of lead {order.lead_id} (order {order.id}) was {outcome}\n\n"
            f"The order: {_link(settings, buyer_order_path(order))}\n"
        ),
        template="returns/return_decided",
    )


def return_approved_for_seller(
    settings: Settings, order: Order, ret: OrderReturn, seller: User
) -> Notice:
    """The seller did not decide (silence, a trusted buyer, an admin): they are told too."""
    return Notice(
        subject=f"Return of order {order.id} approved",
        text=(
            f"Hello {seller.username},\n\n"
            f"The return {ret.id} of lead {order.lead_id} (order {order.id}) was approved "
            f"({ret.decided_by}); the buyer was refunded "
            f"{format_money(ret.refunded_cents or 0, order.currency)}.\n\n"
            f"The order: {_link(settings, seller_order_path(order))}\n"
        ),
        template="returns/return_approved_seller",
    )


def return_disputed(
    settings: Settings, order: Order, dispute: ReturnDispute, seller: User
) -> Notice:
    return Notice(
        subject=f"The buyer disputes your denial of a return (order {order.id})",
        text=(
            f"Hello {seller.username},\n\n"
            f"The buyer disputed your denial of the return of lead {order.lead_id} "
            f"(order {order.id}). An admin decides dispute {dispute.id}; that decision is "
            "final.\n\n"
            f"The order: {_link(settings, seller_order_path(order))}\n"
        ),
        template="returns/return_disputed",
    )


def dispute_decided(
    settings: Settings, order: Order, dispute: ReturnDispute, member: User, *, buyer: bool
) -> Notice:
    for_buyer = dispute.outcome == "for_buyer"
    outcome = (
        "decided for the buyer: the return is approved and the buyer refunded"
        if for_buyer
        else "decided for the seller: the denial stands"
    )
    path = buyer_order_path(order) if buyer else seller_order_path(order)
    return Notice(
        subject=f"Dispute of order {order.id} decided",
        text=(
            f"Hello {member.username},\n\n"
            f"An admin decided dispute {dispute.id} about lead {order.lead_id} (order "
            f"{order.id}): {outcome}. This decision is final.\n\n"
            f"The order: {_link(settings, path)}\n"
        ),
        template="returns/dispute_decided",
    )


def payout_sent(settings: Settings, payout: Payout, seller: User) -> Notice:
    return Notice(
        subject=f"Payout of {format_money(payout.amount_cents, payout.currency)} sent",
        text=(
            f"Hello {seller.username},\n\n"
            f"We paid out {format_money(payout.amount_cents, payout.currency)} of your settled "
            f"sales (payout {payout.id}, processor reference {payout.processor_reference}).\n\n"
            f"Your payouts: {_link(settings, '/seller/payouts')}\n"
        ),
        template="returns/payout_sent",
    )


async def send_notice(
    session: AsyncSession, settings: Settings, member: User, notice: Notice
) -> None:
    """Queue ``notice`` to ``member`` in the caller's transaction (transactional mail)."""
    await queue_mail(
        session,
        settings,
        to=member.email,
        subject=notice.subject,
        text_body=notice.text,
        template=notice.template,
        topic=MailTopic.ACCOUNT,
        user_id=member.id,
    )
