"""After the sale (M2): cancellation before delivery, returns within the return window, disputes
of denied returns, claims, and the refunds they cause through the ledger (M5).

**Cancellation.** A buyer may cancel an order while it is *not delivered*: the order is held,
its contact was never opened (``orders.contact_opened_at`` is NULL: neither the order page, the
order API nor a webhook delivery has revealed it; see :func:`leadmarket.orders.service.
open_contact`), no webhook delivery of it succeeded, and no return is open. Buying outright
answers with the order and its contact, so such an order is delivered at once; cancellation
matters for orders made without the buyer looking (an auction won at its close, ping/post,
campaigns) until the buyer opens them. The whole check is one conditional UPDATE of the order
row, and opening the contact is a conditional UPDATE of the same row, so the two serialise:
either the cancel wins and the contact is never shown, or the contact was shown and the cancel
is refused. The held price goes back to the buyer's wallet (ledger release); the lead's slot is
freed (``sold_count - 1``) and a fixed-price lead that had sold out is put back on the market
when its personal data is still retained, its consent stands and the consumer did not send
Global Privacy Control; an auctioned lead is not reopened (its auction is over).

**Returns.** Within the return window (``return_window_hours``) the buyer of a held order may
ask to return it, once per order, with a reason code, a note and evidence. Who decides:

1. a buyer an admin trusts (``trusted_buyers``): approved at once;
2. a buyer whose returns in the last ``return_rate_window_days`` would exceed
   ``return_rate_cap_percent`` of their orders in that window (counting this return; only once
   they have ``return_rate_min_orders`` orders in it): an admin reviews it (status ``review``);
3. a buyer trusted by history (at least ``return_trust_min_orders`` orders, approved returns at
   most ``return_trust_max_percent`` of them): approved at once;
4. otherwise the seller, by ``decide_by`` (``return_decision_hours``); silence approves (the
   periodic sweep :func:`enqueue_silent_approvals` queues one job per overdue return); a
   seller's denial after the deadline is refused, an approval is still taken. While the
   fraud review has the seller suspended or closed, an admin may decide it too
   (:func:`admin_reviews`; silence still approves it at the deadline).

An approval for the reason "fake or fraudulent identity", whoever made it, is a fraud signal
against the seller in the same transaction (M6, :func:`_signal_fraud_return`). Every step is
told through the notification center (:mod:`leadmarket.notifications.notify`), in the
transaction of the step.

A seller's denial can be disputed by the buyer until ``dispute_by`` (``return_dispute_hours``);
an admin decides the dispute, finally (one dispute per return, recorded in the audit log). An
admin's denial of a reviewed return is final too. Returns rest on the reason, note and
evidence, never on the lead's personal data, so they work after it is destroyed (L4).

**Money.** The order stays held while its return window is open, and the settlement sweep skips
orders with an open return (requested, in review or disputed). An approved return refunds the
buyer in full, the platform's fee included (the platform does not keep a fee on a sale that did
not stand): a held order's hold is released to the buyer's wallet (order ``cancelled``); a
settled one (a denied return disputed after settlement) is refunded out of the seller's payable
and the platform's fees (order ``refunded``). If the seller was paid out meanwhile, their payable
goes below zero: the seller owes it (``clawed_back``), and their next settlements pay it back
before any payout. Every state change is a conditional UPDATE from the state before (a return
``requested → approved`` happens once, however many approvals race), and the ledger's holds move
once, so money moves exactly once.

Lock order: return row, then order row, then (a fraud return's approval) the seller's fraud
case, then lead row, then the ledger, then the audit head. (Request_return's trusted path holds
the order row before the return's; the fraud review locks no return or order, and takes the
case before the ledger too, so the case between them closes no cycle.)"""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, case, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.audit.service import Actor, record
from leadmarket.config import Settings
from leadmarket.fraud.signals import SignalKind, SignalSource, record_fraud_signal
from leadmarket.kit.crypto import derive_key
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import Conflict, FieldError, NotFound, ValidationFailed
from leadmarket.kit.ids import new_id
from leadmarket.kit.jobs import enqueue
from leadmarket.kit.keyring import open_sealed, seal
from leadmarket.ledger.service import find_account, hold_of, refund_settled_sale, release_hold
from leadmarket.models import (
    OPEN_RETURN_STATUSES,
    AccountKind,
    ClaimCategory,
    ClaimStatus,
    Consent,
    DecidedBy,
    DeliveryStatus,
    DisputeOutcome,
    DisputeStatus,
    Lead,
    LeadStatus,
    Order,
    OrderClaim,
    OrderEvent,
    OrderReturn,
    OrderStatus,
    RefundCause,
    RefundKind,
    ReturnDispute,
    ReturnEvidence,
    ReturnReason,
    ReturnStatus,
    Role,
    SaleMode,
    TrustedBuyer,
    User,
    UserStatus,
    WebhookDelivery,
)
from leadmarket.notifications import notify
from leadmarket.returns.schemas import (
    AfterSaleOut,
    ClaimOut,
    DisputeOut,
    EventOut,
    EvidenceOut,
    ReturnOut,
)

SWEEP_JOB = "returns.approve_silent"
SILENCE_JOB = "returns.approve_silent_one"
SWEEP_BATCH = 200
EVIDENCE_KEY_PURPOSE = "return-evidence"
SYSTEM = "system"

REASON_LABELS: dict[str, str] = {
    ReturnReason.DISCONNECTED_OR_WRONG_NUMBER: "Disconnected or wrong number",
    ReturnReason.FAKE_OR_FRAUDULENT_IDENTITY: "Fake or fraudulent identity",
    ReturnReason.DUPLICATE: "Duplicate of a lead I already had",
    ReturnReason.OUTSIDE_FILTERS: "Outside the filters I bought",
    ReturnReason.CONSUMER_NEVER_ASKED: "The consumer never asked for this",
    ReturnReason.OTHER: "Other (say what in the note)",
}
CLAIM_LABELS: dict[str, str] = {
    ClaimCategory.NOT_RECEIVED: "The lead never reached me",
    ClaimCategory.BILLING: "Billing or payment",
    ClaimCategory.MISREPRESENTED: "The lead was not as described",
    ClaimCategory.CONDUCT: "The other party's conduct",
    ClaimCategory.OTHER: "Something else",
}


# Errors -----------------------------------------------------------------------------------


class NotCancellable(Conflict):
    slug = "order-not-cancellable"
    title = "This order can no longer be cancelled"
    explanation = (
        "An order can be cancelled only before its lead is delivered: while it is held, its "
        "contact has not been opened, no webhook delivery of it succeeded and no return is "
        "open. `why` says which; request a return instead."
    )


class ReturnWindowClosed(Conflict):
    slug = "return-window-closed"
    title = "The return window has closed"
    explanation = (
        "A lead can be returned only within the return window after its sale "
        "(`return_window_ends_at`). Nothing was changed; file a claim if something else is wrong."
    )


class OrderNotReturnable(Conflict):
    slug = "order-not-returnable"
    title = "This order cannot be returned"
    explanation = "The order was cancelled or refunded already, or has settled."


class ReturnExists(Conflict):
    slug = "return-exists"
    title = "This order has a return already"
    explanation = "Each order can be returned once; `return_id` names its return."


class ReturnDecided(Conflict):
    slug = "return-decided"
    title = "This return is not waiting for that decision"
    explanation = (
        "The return was already decided, or is waiting for someone else (an admin reviews "
        "returns above the buyer's return-rate cap and disputes). `return_status` says where "
        "it is."
    )


class DecisionDeadlinePassed(Conflict):
    slug = "return-decision-deadline-passed"
    title = "The deadline to deny this return has passed"
    explanation = (
        "A seller who does not answer a return by its `decide_by` time approves it; a denial "
        "after the deadline is refused."
    )


class NotDisputable(Conflict):
    slug = "return-not-disputable"
    title = "This return cannot be disputed"
    explanation = (
        "Only a seller's denial can be disputed, once, before its `dispute_by` time; an admin's "
        "decision is final."
    )


class DisputeDecided(Conflict):
    slug = "dispute-decided"
    title = "This dispute is decided"
    explanation = "An admin's decision of a dispute is final; it cannot be decided again."


class ClaimClosed(Conflict):
    slug = "claim-closed"
    title = "This claim is closed"
    explanation = "The claim was resolved or rejected already."


class ClaimExists(Conflict):
    slug = "claim-exists"
    title = "You have an open claim on this order"
    explanation = "An admin handles it; wait for its answer before filing another."


# Small helpers ----------------------------------------------------------------------------


def clean_text(value: str | None, field: str, *, limit: int, required: bool = False) -> str | None:
    """Trimmed text without control characters (newlines and tabs kept), or None when blank;
    422 naming ``field`` when required and blank, or too long."""
    if value is None:
        text = ""
    else:
        text = "".join(
            ch for ch in value if ch in "\n\t" or unicodedata.category(ch)[0] != "C"
        ).strip()
    if not text:
        if required:
            raise ValidationFailed(
                f"Say something in {field}.", errors=[FieldError(field, "Must not be blank.")]
            )
        return None
    if len(text) > limit:
        raise ValidationFailed(
            f"{field} is too long.", errors=[FieldError(field, f"At most {limit} characters.")]
        )
    return text


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def _lock_order(session: AsyncSession, order_id: str) -> Order:
    order = await session.scalar(
        select(Order)
        .where(Order.id == order_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if order is None:
        raise NotFound("No such order.")
    return order


async def _fresh_return(session: AsyncSession, return_id: str) -> OrderReturn:
    ret = await session.get(OrderReturn, return_id, populate_existing=True)
    if ret is None:
        raise NotFound("No such return.")
    return ret


def _event(
    session: AsyncSession,
    order_id: str,
    actor: User | None,
    event: str,
    *,
    subject_id: str | None = None,
    note: str | None = None,
    at: dt.datetime | None = None,
) -> None:
    session.add(
        OrderEvent(
            order_id=order_id,
            at=at or utcnow(),
            actor_id=actor.id if actor is not None else None,
            actor_role=actor.role if actor is not None else SYSTEM,
            event=event,
            subject_id=subject_id,
            note=note,
        )
    )


def _actor(member: User | None) -> Actor:
    return Actor("user", member.id) if member is not None else Actor.system()


# Reading ----------------------------------------------------------------------------------


async def order_for(session: AsyncSession, order_id: str, viewer: User) -> Order:
    """The order for its buyer, its seller, or an admin; anyone else is told nothing exists."""
    order = await session.get(Order, order_id)
    if order is None or (
        viewer.id not in (order.buyer_id, order.seller_id) and viewer.role != Role.ADMIN.value
    ):
        raise NotFound("No such order.")
    return order


async def buyers_order(session: AsyncSession, order_id: str, buyer: User) -> Order:
    order = await session.get(Order, order_id)
    if order is None or order.buyer_id != buyer.id:
        raise NotFound("No such order.")
    return order


async def return_for(session: AsyncSession, return_id: str, viewer: User) -> OrderReturn:
    ret = await session.get(OrderReturn, return_id)
    if ret is None or (
        viewer.id not in (ret.buyer_id, ret.seller_id) and viewer.role != Role.ADMIN.value
    ):
        raise NotFound("No such return.")
    return ret


async def return_of_order(session: AsyncSession, order_id: str) -> OrderReturn | None:
    ret: OrderReturn | None = await session.scalar(
        select(OrderReturn).where(OrderReturn.order_id == order_id)
    )
    return ret


async def dispute_of(session: AsyncSession, return_id: str) -> ReturnDispute | None:
    dispute: ReturnDispute | None = await session.scalar(
        select(ReturnDispute).where(ReturnDispute.return_id == return_id)
    )
    return dispute


async def evidence_of(session: AsyncSession, return_id: str) -> list[ReturnEvidence]:
    return list(
        await session.scalars(
            select(ReturnEvidence)
            .where(ReturnEvidence.return_id == return_id)
            .order_by(ReturnEvidence.id)
        )
    )


async def claims_of(session: AsyncSession, order_id: str) -> list[OrderClaim]:
    return list(
        await session.scalars(
            select(OrderClaim).where(OrderClaim.order_id == order_id).order_by(OrderClaim.id)
        )
    )


async def history_of(session: AsyncSession, order_id: str) -> list[OrderEvent]:
    return list(
        await session.scalars(
            select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
        )
    )


async def list_returns(
    session: AsyncSession,
    viewer: User,
    *,
    status: str | None,
    limit: int,
    before_id: str | None = None,
) -> list[OrderReturn]:
    """A buyer's returns, a seller's, or (admins) everyone's; newest first, ``limit`` + 1."""
    query = select(OrderReturn).order_by(OrderReturn.id.desc()).limit(limit + 1)
    if viewer.role == Role.BUYER.value:
        query = query.where(OrderReturn.buyer_id == viewer.id)
    elif viewer.role == Role.SELLER.value:
        query = query.where(OrderReturn.seller_id == viewer.id)
    if status is not None:
        query = query.where(OrderReturn.status == status)
    if before_id is not None:
        query = query.where(OrderReturn.id < before_id)
    return list(await session.scalars(query))


def _seller_is_stopped() -> Any:
    return exists().where(User.id == OrderReturn.seller_id, User.status != UserStatus.ACTIVE.value)


async def _seller_stopped(session: AsyncSession, ret: OrderReturn) -> bool:
    status = await session.scalar(select(User.status).where(User.id == ret.seller_id))
    return status != UserStatus.ACTIVE.value


async def admin_queue_returns(session: AsyncSession, *, limit: int) -> list[OrderReturn]:
    """The returns admins decide (:func:`admin_reviews`): those in review, and those still
    waiting for a seller the fraud review stopped; oldest first (``limit``)."""
    query = (
        select(OrderReturn)
        .where(
            or_(
                OrderReturn.status == ReturnStatus.REVIEW.value,
                and_(
                    OrderReturn.status == ReturnStatus.REQUESTED.value,
                    _seller_is_stopped(),
                ),
            )
        )
        .order_by(OrderReturn.requested_at, OrderReturn.id)
        .limit(limit)
    )
    return list(await session.scalars(query))


async def list_disputes(
    session: AsyncSession, *, status: str | None, limit: int, before_id: str | None = None
) -> list[ReturnDispute]:
    query = select(ReturnDispute).order_by(ReturnDispute.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(ReturnDispute.status == status)
    if before_id is not None:
        query = query.where(ReturnDispute.id < before_id)
    return list(await session.scalars(query))


async def list_claims(
    session: AsyncSession,
    viewer: User,
    *,
    status: str | None,
    limit: int,
    before_id: str | None = None,
) -> list[OrderClaim]:
    """A member's claims (filed by them or about their orders); admins see all."""
    query = select(OrderClaim).order_by(OrderClaim.id.desc()).limit(limit + 1)
    if viewer.role != Role.ADMIN.value:
        mine = select(Order.id).where(
            (Order.buyer_id == viewer.id) | (Order.seller_id == viewer.id)
        )
        query = query.where(OrderClaim.order_id.in_(mine))
    if status is not None:
        query = query.where(OrderClaim.status == status)
    if before_id is not None:
        query = query.where(OrderClaim.id < before_id)
    return list(await session.scalars(query))


# Cancellation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Why an action is not possible now (shown on the order page, and the 409's detail)."""

    why: str
    detail: str


async def cancel_refusal(session: AsyncSession, order: Order) -> Refusal | None:
    """Why ``order`` cannot be cancelled now, or None if it can."""
    if order.status != OrderStatus.HELD.value:
        return Refusal("status", f"This order is {order.status}.")
    if order.contact_opened_at is not None:
        return Refusal(
            "contact_opened",
            "You opened the lead's contact details: the lead is delivered. Request a return "
            "instead.",
        )
    delivered = await session.scalar(
        select(
            exists().where(
                WebhookDelivery.order_id == order.id,
                WebhookDelivery.status == DeliveryStatus.SUCCEEDED.value,
            )
        )
    )
    if delivered:
        return Refusal(
            "delivered", "The lead was delivered to your webhook. Request a return instead."
        )
    ret = await return_of_order(session, order.id)
    if ret is not None:
        return Refusal("return", "This order has a return.")
    return None


async def _free_slot(session: AsyncSession, lead_id: str, now: dt.datetime) -> bool:
    """Give the cancelled sale's slot back (see the module docstring); True if the lead went
    back on the market."""
    lead = await session.get(Lead, lead_id, populate_existing=True)
    assert lead is not None
    # Read fresh (a withdrawal may have committed since the session loaded the row).
    consent = await session.scalar(
        select(Consent).where(Consent.lead_id == lead_id).execution_options(populate_existing=True)
    )
    reopen = (
        lead.status == LeadStatus.SOLD.value
        and lead.sale_mode == SaleMode.FIXED.value
        and lead.pii_destroyed_at is None
        and (lead.pii_expires_at is None or lead.pii_expires_at > now)
        and (consent is None or consent.withdrawn_at is None)
        # GPC with the lead sent to one buyer: not to be sold on to another (resale_prohibited).
        and not (consent is not None and consent.global_privacy_control)
    )
    await session.execute(
        update(Lead)
        .where(Lead.id == lead_id, Lead.sold_count > 0)
        .values(
            sold_count=Lead.sold_count - 1,
            status=case(
                (Lead.status == LeadStatus.SOLD.value, LeadStatus.OPEN.value), else_=Lead.status
            )
            if reopen
            else Lead.status,
        )
        .execution_options(synchronize_session=False)
    )
    await session.get(Lead, lead_id, populate_existing=True)
    return reopen


async def cancel_order(
    session: AsyncSession, settings: Settings, order_id: str, buyer: User
) -> Order:
    """Cancel the buyer's order before delivery (module docstring); raises NotFound (not the
    buyer's) or :class:`NotCancellable` (with ``why``), changing nothing."""
    await buyers_order(session, order_id, buyer)
    now = utcnow()
    delivered = exists().where(
        WebhookDelivery.order_id == Order.id,
        WebhookDelivery.status == DeliveryStatus.SUCCEEDED.value,
    )
    has_return = exists().where(OrderReturn.order_id == Order.id)
    async with session.begin_nested():
        moved = await session.execute(
            update(Order)
            .where(
                Order.id == order_id,
                Order.buyer_id == buyer.id,
                Order.status == OrderStatus.HELD.value,
                Order.contact_opened_at.is_(None),
                ~delivered,
                ~has_return,
            )
            .values(
                status=OrderStatus.CANCELLED.value,
                refund_cause=RefundCause.CANCELLED.value,
                closed_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        order = await session.get(Order, order_id, populate_existing=True)
        assert order is not None
        if _rowcount(moved) != 1:
            refusal = await cancel_refusal(session, order) or Refusal(
                "status", "This order cannot be cancelled now."
            )
            raise NotCancellable(refusal.detail, extra={"why": refusal.why})
        reopened = await _free_slot(session, order.lead_id, now)
        hold = await release_hold(session, order.hold_reference)
        # Deliveries not yet made are not made any more.
        await session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.order_id == order_id,
                WebhookDelivery.status == DeliveryStatus.PENDING.value,
            )
            .values(status=DeliveryStatus.FAILED.value, finished_at=now)
            .execution_options(synchronize_session=False)
        )
        _event(session, order.id, buyer, "order_cancelled", at=now)
        await record(
            session,
            actor=_actor(buyer),
            action="order.cancelled",
            subject_type="order",
            subject_id=order.id,
            details={
                "released_cents": hold.amount_cents,
                "lead_id": order.lead_id,
                "lead_reopened": reopened,
            },
        )
        await notify.notify_order_cancelled(session, settings, order=order, lead_reopened=reopened)
        await session.flush()
    return order


# Refunds ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refund:
    kind: RefundKind
    cents: int
    clawed_back_cents: int


async def _refund_order(session: AsyncSession, order_id: str, now: dt.datetime) -> Refund:
    """Give the order's money back to its buyer, whatever became of it meanwhile: held →
    release; settled → refund from the seller's payable (clawed back past a payout)."""
    order = await _lock_order(session, order_id)
    if order.status == OrderStatus.HELD.value:
        hold = await release_hold(session, order.hold_reference)
        order.status = OrderStatus.CANCELLED.value
        refund = Refund(RefundKind.RELEASED, hold.amount_cents, 0)
    elif order.status == OrderStatus.SETTLED.value:
        hold = await refund_settled_sale(session, order.hold_reference)
        assert hold.settled_cents is not None
        assert hold.fee_cents is not None
        seller_cents = hold.settled_cents - hold.fee_cents
        payable = await find_account(
            session, AccountKind.SELLER_PAYABLE, order.currency, order.seller_id
        )
        after = payable.balance_cents if payable is not None else 0
        covered = max(0, min(seller_cents, after + seller_cents))
        clawed = seller_cents - covered
        kind = RefundKind.CLAWED_BACK if clawed else RefundKind.REFUNDED
        order.status = OrderStatus.REFUNDED.value
        refund = Refund(kind, hold.settled_cents, clawed)
    else:
        raise OrderNotReturnable(f"This order is {order.status} already.")
    order.refund_cause = RefundCause.RETURN.value
    order.closed_at = now
    await session.flush()
    return refund


async def _signal_fraud_return(session: AsyncSession, settings: Settings, ret: OrderReturn) -> None:
    """An approved return for a fake or fraudulent identity is a fraud signal against the
    seller (M6), in the approval's transaction, once per return (its dedupe key): past
    ``fraud_returns_threshold`` of them in ``fraud_returns_window_days`` the seller is on the
    admins' fraud queue with a ``many_fraud_returns`` signal. Taken before the refund moves any
    money: the signal locks the seller's case (racing approvals count each other's returns, see
    :func:`leadmarket.fraud.signals.record_fraud_signal`) before the ledger, in the order the
    fraud review locks them."""
    lead_id = await session.scalar(select(Order.lead_id).where(Order.id == ret.order_id))
    await record_fraud_signal(
        session,
        kind=SignalKind.FRAUD_RETURN,
        subject_user_id=ret.seller_id,
        lead_id=lead_id,
        source=SignalSource.RETURNS,
        details={
            "return_id": ret.id,
            "order_id": ret.order_id,
            "decided_by": ret.decided_by,
        },
        dedupe_key=f"return:{ret.id}",
        settings=settings,
    )


async def _approve(
    session: AsyncSession,
    settings: Settings,
    ret: OrderReturn,
    *,
    from_status: ReturnStatus,
    decided_by: DecidedBy,
    decider: User | None,
    note: str | None,
    before_audit: Callable[[], Awaitable[None]] | None = None,
) -> OrderReturn:
    """``from_status → approved`` once, and the refund; raises :class:`ReturnDecided` if the
    return is no longer ``from_status`` (another decision won). ``before_audit`` runs after the
    money moved and before the audit entry: the ledger's rows are always locked before the
    audit head, as in every other money path, so these transactions never deadlock them."""
    now = utcnow()
    async with session.begin_nested():
        moved = await session.execute(
            update(OrderReturn)
            .where(OrderReturn.id == ret.id, OrderReturn.status == from_status.value)
            .values(
                status=ReturnStatus.APPROVED.value,
                decided_at=now,
                decided_by=decided_by.value,
                decider_id=decider.id if decider is not None else None,
                decision_note=note,
                dispute_by=None,
            )
            .execution_options(synchronize_session=False)
        )
        ret = await _fresh_return(session, ret.id)
        if _rowcount(moved) != 1:
            raise ReturnDecided(
                f"This return is {ret.status}.", extra={"return_status": ret.status}
            )
        if ret.reason == ReturnReason.FAKE_OR_FRAUDULENT_IDENTITY.value:
            await _signal_fraud_return(session, settings, ret)
        refund = await _refund_order(session, ret.order_id, now)
        ret.refund_kind = refund.kind.value
        ret.refunded_cents = refund.cents
        ret.clawed_back_cents = refund.clawed_back_cents or None
        if before_audit is not None:
            await before_audit()
        _event(
            session, ret.order_id, decider, "return_approved", subject_id=ret.id, note=note, at=now
        )
        await record(
            session,
            actor=_actor(decider),
            action="return.approved",
            subject_type="return",
            subject_id=ret.id,
            details={
                "order_id": ret.order_id,
                "decided_by": decided_by.value,
                "refund_kind": refund.kind.value,
                "refunded_cents": refund.cents,
                "clawed_back_cents": refund.clawed_back_cents,
            },
        )
        order = await _lock_order(session, ret.order_id)
        await notify.notify_return_decided(
            session,
            settings,
            order=order,
            return_id=ret.id,
            outcome="approved",
            decided_by=decided_by.value,
            refund_cents=ret.refunded_cents,
            clawed_back_cents=ret.clawed_back_cents,
        )
        await session.flush()
    return ret


async def _deny(
    session: AsyncSession,
    settings: Settings,
    ret: OrderReturn,
    *,
    from_status: ReturnStatus,
    decided_by: DecidedBy,
    decider: User,
    note: str,
    dispute_by: dt.datetime | None,
) -> OrderReturn:
    now = utcnow()
    moved = await session.execute(
        update(OrderReturn)
        .where(OrderReturn.id == ret.id, OrderReturn.status == from_status.value)
        .values(
            status=ReturnStatus.DENIED.value,
            decided_at=now,
            decided_by=decided_by.value,
            decider_id=decider.id,
            decision_note=note,
            dispute_by=dispute_by,
        )
        .execution_options(synchronize_session=False)
    )
    ret = await _fresh_return(session, ret.id)
    if _rowcount(moved) != 1:
        raise ReturnDecided(f"This return is {ret.status}.", extra={"return_status": ret.status})
    _event(session, ret.order_id, decider, "return_denied", subject_id=ret.id, note=note, at=now)
    await record(
        session,
        actor=_actor(decider),
        action="return.denied",
        subject_type="return",
        subject_id=ret.id,
        details={"order_id": ret.order_id, "decided_by": decided_by.value},
    )
    order = await session.get(Order, ret.order_id)
    assert order is not None
    await notify.notify_return_decided(
        session,
        settings,
        order=order,
        return_id=ret.id,
        outcome="denied",
        decided_by=decided_by.value,
        dispute_until=ret.dispute_by,
    )
    await session.flush()
    return ret


# Requesting a return ----------------------------------------------------------------------


@dataclass(frozen=True)
class EvidenceFile:
    filename: str
    media_type: str
    content: bytes


@dataclass(frozen=True)
class Trust:
    flagged: bool  # an admin trusts the buyer
    orders: int
    approved_returns: int
    by_history: bool


async def buyer_trust(session: AsyncSession, settings: Settings, buyer_id: str) -> Trust:
    flagged = await session.get(TrustedBuyer, buyer_id) is not None
    orders = int(await session.scalar(select(func.count()).where(Order.buyer_id == buyer_id)) or 0)
    approved = int(
        await session.scalar(
            select(func.count()).where(
                OrderReturn.buyer_id == buyer_id,
                OrderReturn.status == ReturnStatus.APPROVED.value,
            )
        )
        or 0
    )
    by_history = (
        orders >= settings.return_trust_min_orders
        and Decimal(approved * 100) <= settings.return_trust_max_percent * orders
    )
    return Trust(flagged, orders, approved, by_history)


@dataclass(frozen=True)
class ReturnRate:
    orders: int
    returns: int  # before the one being asked for

    def over_cap(self, settings: Settings) -> bool:
        if self.orders < max(1, settings.return_rate_min_orders):
            return False
        return Decimal((self.returns + 1) * 100) > settings.return_rate_cap_percent * self.orders


async def return_rate(
    session: AsyncSession, settings: Settings, buyer_id: str, now: dt.datetime
) -> ReturnRate:
    since = now - dt.timedelta(days=settings.return_rate_window_days)
    orders = await session.scalar(
        select(func.count()).where(Order.buyer_id == buyer_id, Order.purchased_at >= since)
    )
    returns = await session.scalar(
        select(func.count()).where(
            OrderReturn.buyer_id == buyer_id, OrderReturn.requested_at >= since
        )
    )
    return ReturnRate(int(orders or 0), int(returns or 0))


def _evidence_key(settings: Settings) -> bytes:
    return derive_key(settings.signing_key(), EVIDENCE_KEY_PURPOSE)


def _safe_filename(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(ch for ch in base if ch.isprintable() and ch not in '"<>:|?*;')
    return kept.strip()[:200] or "evidence"


def add_evidence(
    session: AsyncSession,
    settings: Settings,
    ret: OrderReturn,
    uploader: User,
    upload: EvidenceFile,
) -> ReturnEvidence:
    """Store a file sealed, bound to its own row (a sealed file copied elsewhere won't open)."""
    if not upload.content:
        raise ValidationFailed(
            "The evidence file is empty.", errors=[FieldError("evidence", "The file is empty.")]
        )
    if len(upload.content) > settings.return_evidence_max_bytes:
        message = f"At most {settings.return_evidence_max_bytes} bytes."
        raise ValidationFailed(
            "The evidence file is too large.", errors=[FieldError("evidence", message)]
        )
    evidence = ReturnEvidence(
        return_id=ret.id,
        uploaded_by=uploader.id,
        filename=_safe_filename(upload.filename),
        media_type=(upload.media_type or "application/octet-stream")[:100],
        size_bytes=len(upload.content),
        uploaded_at=utcnow(),
    )
    evidence.id = new_id("evd")
    evidence.sealed = seal(_evidence_key(settings), upload.content, evidence.id.encode())
    session.add(evidence)
    return evidence


def open_evidence(settings: Settings, evidence: ReturnEvidence) -> bytes:
    return open_sealed(_evidence_key(settings), evidence.sealed, evidence.id.encode())


async def upload_evidence(
    session: AsyncSession,
    settings: Settings,
    return_id: str,
    member: User,
    upload: EvidenceFile,
) -> ReturnEvidence:
    """A party adds a file to a return while it is open (or denied and still disputable)."""
    ret = await return_for(session, return_id, member)
    if member.id not in (ret.buyer_id, ret.seller_id):
        raise NotFound("No such return.")
    if ret.status not in (*OPEN_RETURN_STATUSES, ReturnStatus.DENIED.value):
        raise ReturnDecided(
            f"This return is {ret.status}; evidence can no longer be added.",
            extra={"return_status": ret.status},
        )
    evidence = add_evidence(session, settings, ret, member, upload)
    _event(session, ret.order_id, member, "evidence_added", subject_id=evidence.id)
    await session.flush()
    return evidence


async def return_refusal(
    session: AsyncSession, order: Order, now: dt.datetime | None = None
) -> Refusal | None:
    """Why the buyer cannot return ``order`` now, or None if they can."""
    now = now or utcnow()
    ret = await return_of_order(session, order.id)
    if ret is not None:
        return Refusal("exists", "This order has a return already.")
    if order.status in (OrderStatus.CANCELLED.value, OrderStatus.REFUNDED.value):
        return Refusal("status", f"This order is {order.status}.")
    if order.status != OrderStatus.HELD.value or now >= order.return_window_ends_at:
        return Refusal(
            "window",
            "The return window ended on "
            f"{order.return_window_ends_at.strftime('%Y-%m-%d %H:%M UTC')}.",
        )
    return None


async def request_return(
    session: AsyncSession,
    settings: Settings,
    order_id: str,
    buyer: User,
    *,
    reason: ReturnReason,
    note: str | None,
    evidence_text: str | None,
    evidence: EvidenceFile | None = None,
) -> OrderReturn:
    """The buyer asks to return the order (module docstring for who decides). Raises NotFound
    (not the buyer's order), :class:`ReturnExists`, :class:`ReturnWindowClosed`,
    :class:`OrderNotReturnable` or a 422; then nothing is changed."""
    await buyers_order(session, order_id, buyer)
    note = clean_text(note, "note", limit=2000)
    evidence_text = clean_text(evidence_text, "evidence_text", limit=4000)
    if reason is ReturnReason.OTHER and note is None:
        raise ValidationFailed(
            "Say what is wrong with the lead.",
            errors=[FieldError("note", "Required when the reason is 'other'.")],
        )
    async with session.begin_nested():
        order = await _lock_order(session, order_id)
        now = utcnow()
        existing = await return_of_order(session, order_id)
        if existing is not None:
            raise ReturnExists("This order has a return already.", extra={"return_id": existing.id})
        if order.status in (OrderStatus.CANCELLED.value, OrderStatus.REFUNDED.value):
            raise OrderNotReturnable(f"This order is {order.status}.")
        if order.status != OrderStatus.HELD.value or now >= order.return_window_ends_at:
            raise ReturnWindowClosed(
                "The return window of this order ended on "
                f"{order.return_window_ends_at.strftime('%Y-%m-%d %H:%M UTC')}.",
                extra={"return_window_ends_at": order.return_window_ends_at.isoformat()},
            )
        trust = await buyer_trust(session, settings, buyer.id)
        rate = await return_rate(session, settings, buyer.id, now)
        review = not trust.flagged and rate.over_cap(settings)
        ret = OrderReturn(
            order_id=order.id,
            buyer_id=order.buyer_id,
            seller_id=order.seller_id,
            reason=reason.value,
            note=note,
            evidence_text=evidence_text,
            status=(ReturnStatus.REVIEW if review else ReturnStatus.REQUESTED).value,
            requested_at=now,
            decide_by=None if review else now + dt.timedelta(hours=settings.return_decision_hours),
            review_reason=(
                f"{rate.returns + 1} returns for {rate.orders} orders in "
                f"{settings.return_rate_window_days} days, above the "
                f"{settings.return_rate_cap_percent}% cap"
            )
            if review
            else None,
        )
        session.add(ret)
        await session.flush()
        if evidence is not None:
            add_evidence(session, settings, ret, buyer, evidence)
        _event(session, order.id, buyer, "return_requested", subject_id=ret.id, note=note, at=now)
        trusted = trust.flagged or (not review and trust.by_history)
        return_id = ret.id

        async def record_request() -> None:
            await record(
                session,
                actor=_actor(buyer),
                action="return.requested",
                subject_type="return",
                subject_id=return_id,
                details={
                    "order_id": order_id,
                    "reason": reason.value,
                    "review": review,
                    "trusted": trusted,
                },
            )

        if trusted:
            ret = await _approve(
                session,
                settings,
                ret,
                from_status=ReturnStatus.REQUESTED,
                decided_by=DecidedBy.TRUSTED,
                decider=None,
                note="Approved at once: the buyer is trusted.",
                before_audit=record_request,
            )
        elif review:
            await record_request()
            _event(session, order.id, None, "return_sent_to_review", subject_id=ret.id, at=now)
            await notify.notify_return_decided(
                session,
                settings,
                order=order,
                return_id=ret.id,
                outcome="review",
                decided_by=None,
            )
        else:
            await record_request()
            assert ret.decide_by is not None
            await notify.notify_return_requested(
                session,
                settings,
                order=order,
                return_id=ret.id,
                reason=ret.reason,
                decide_by=ret.decide_by,
            )
        await session.flush()
    return ret


# Decisions --------------------------------------------------------------------------------


async def seller_decides(
    session: AsyncSession,
    settings: Settings,
    return_id: str,
    seller: User,
    *,
    approve: bool,
    note: str | None,
) -> OrderReturn:
    """The seller approves or denies a return waiting for them. A denial needs a note (the
    buyer and, on dispute, the admin read it) and must come before ``decide_by``."""
    ret = await return_for(session, return_id, seller)
    if ret.seller_id != seller.id:
        raise NotFound("No such return.")
    note = clean_text(note, "note", limit=2000, required=not approve)
    if ret.status != ReturnStatus.REQUESTED.value:
        raise ReturnDecided(f"This return is {ret.status}.", extra={"return_status": ret.status})
    if approve:
        return await _approve(
            session,
            settings,
            ret,
            from_status=ReturnStatus.REQUESTED,
            decided_by=DecidedBy.SELLER,
            decider=seller,
            note=note,
        )
    now = utcnow()
    if ret.decide_by is not None and now >= ret.decide_by:
        raise DecisionDeadlinePassed(
            "The deadline to decide passed; silence approves the return.",
            extra={"decide_by": ret.decide_by.isoformat()},
        )
    assert note is not None
    return await _deny(
        session,
        settings,
        ret,
        from_status=ReturnStatus.REQUESTED,
        decided_by=DecidedBy.SELLER,
        decider=seller,
        note=note,
        dispute_by=now + dt.timedelta(hours=settings.return_dispute_hours),
    )


async def admin_reviews(
    session: AsyncSession,
    settings: Settings,
    return_id: str,
    admin: User,
    *,
    approve: bool,
    note: str | None,
) -> OrderReturn:
    """An admin decides a return that went to review (over the cap), or one still waiting for
    a seller whose account the fraud review stopped (suspended or closed: they cannot sign in
    to decide, and the buyer should not have to wait for the silence); final either way."""
    ret = await session.get(OrderReturn, return_id)
    if ret is None:
        raise NotFound("No such return.")
    stated = clean_text(note, "note", limit=2000, required=True)
    assert stated is not None
    if ret.status == ReturnStatus.REVIEW.value:
        from_status = ReturnStatus.REVIEW
    elif ret.status == ReturnStatus.REQUESTED.value and await _seller_stopped(session, ret):
        from_status = ReturnStatus.REQUESTED
    else:
        raise ReturnDecided(
            f"This return is {ret.status}"
            + (": its seller decides it." if ret.status == ReturnStatus.REQUESTED.value else "."),
            extra={"return_status": ret.status},
        )
    if approve:
        return await _approve(
            session,
            settings,
            ret,
            from_status=from_status,
            decided_by=DecidedBy.ADMIN,
            decider=admin,
            note=stated,
        )
    return await _deny(
        session,
        settings,
        ret,
        from_status=from_status,
        decided_by=DecidedBy.ADMIN,
        decider=admin,
        note=stated,
        dispute_by=None,
    )


async def dispute_return(
    session: AsyncSession, settings: Settings, return_id: str, buyer: User, *, note: str | None
) -> ReturnDispute:
    """The buyer disputes the seller's denial, once, before ``dispute_by``."""
    ret = await return_for(session, return_id, buyer)
    if ret.buyer_id != buyer.id:
        raise NotFound("No such return.")
    stated = clean_text(note, "note", limit=2000, required=True)
    assert stated is not None
    now = utcnow()
    if ret.status != ReturnStatus.DENIED.value:
        raise NotDisputable(
            f"This return is {ret.status}; only a denied return can be disputed.",
            extra={"return_status": ret.status},
        )
    if ret.dispute_by is None or await dispute_of(session, ret.id) is not None:
        raise NotDisputable(
            "This denial is final: an admin decided it.", extra={"return_status": ret.status}
        )
    if now >= ret.dispute_by:
        raise NotDisputable(
            "The time to dispute this denial has passed.",
            extra={"dispute_by": ret.dispute_by.isoformat()},
        )
    async with session.begin_nested():
        moved = await session.execute(
            update(OrderReturn)
            .where(OrderReturn.id == ret.id, OrderReturn.status == ReturnStatus.DENIED.value)
            .values(status=ReturnStatus.DISPUTED.value)
            .execution_options(synchronize_session=False)
        )
        ret = await _fresh_return(session, ret.id)
        if _rowcount(moved) != 1:
            raise NotDisputable(
                f"This return is {ret.status}.", extra={"return_status": ret.status}
            )
        dispute = ReturnDispute(
            return_id=ret.id,
            order_id=ret.order_id,
            buyer_id=buyer.id,
            note=stated,
            status=DisputeStatus.OPEN.value,
            opened_at=now,
        )
        session.add(dispute)
        await session.flush()
        _event(session, ret.order_id, buyer, "return_disputed", subject_id=dispute.id, note=stated)
        await record(
            session,
            actor=_actor(buyer),
            action="return.disputed",
            subject_type="dispute",
            subject_id=dispute.id,
            details={"return_id": ret.id, "order_id": ret.order_id},
        )
        order = await session.get(Order, ret.order_id)
        assert order is not None
        await notify.notify_return_disputed(
            session, settings, order=order, return_id=ret.id, dispute_id=dispute.id
        )
        await session.flush()
    return dispute


async def decide_dispute(
    session: AsyncSession,
    settings: Settings,
    dispute_id: str,
    admin: User,
    *,
    outcome: DisputeOutcome,
    note: str | None,
) -> ReturnDispute:
    """An admin decides a dispute, finally, once (a conditional UPDATE: concurrent decisions
    leave one winner, the others get :class:`DisputeDecided`); for the buyer the return is
    approved and refunded (whether the order is still held or has settled meanwhile)."""
    stated = clean_text(note, "note", limit=2000, required=True)
    now = utcnow()
    async with session.begin_nested():
        moved = await session.execute(
            update(ReturnDispute)
            .where(ReturnDispute.id == dispute_id, ReturnDispute.status == DisputeStatus.OPEN.value)
            .values(
                status=DisputeStatus.DECIDED.value,
                outcome=outcome.value,
                decided_by=admin.id,
                decided_at=now,
                decision_note=stated,
            )
            .execution_options(synchronize_session=False)
        )
        dispute = await session.get(ReturnDispute, dispute_id, populate_existing=True)
        if dispute is None:
            raise NotFound("No such dispute.")
        if _rowcount(moved) != 1:
            raise DisputeDecided(
                "This dispute was decided already.", extra={"outcome": dispute.outcome}
            )
        ret = await _fresh_return(session, dispute.return_id)
        if outcome is DisputeOutcome.FOR_BUYER:
            ret = await _approve(
                session,
                settings,
                ret,
                from_status=ReturnStatus.DISPUTED,
                decided_by=DecidedBy.DISPUTE,
                decider=admin,
                note=stated,
            )
        else:
            moved = await session.execute(
                update(OrderReturn)
                .where(OrderReturn.id == ret.id, OrderReturn.status == ReturnStatus.DISPUTED.value)
                .values(
                    status=ReturnStatus.DENIED.value,
                    dispute_by=None,
                    decided_at=now,
                    decided_by=DecidedBy.DISPUTE.value,
                    decider_id=admin.id,
                    decision_note=stated,
                )
                .execution_options(synchronize_session=False)
            )
            ret = await _fresh_return(session, ret.id)
            if _rowcount(moved) != 1:
                raise ReturnDecided(
                    f"This return is {ret.status}.", extra={"return_status": ret.status}
                )
        _event(
            session,
            ret.order_id,
            admin,
            "dispute_decided",
            subject_id=dispute.id,
            note=f"{outcome.value}: {stated}",
            at=now,
        )
        await record(
            session,
            actor=_actor(admin),
            action="dispute.decided",
            subject_type="dispute",
            subject_id=dispute.id,
            reason=stated,
            details={"return_id": ret.id, "order_id": ret.order_id, "outcome": outcome.value},
        )
        order = await session.get(Order, ret.order_id)
        assert order is not None
        for_buyer = outcome is DisputeOutcome.FOR_BUYER
        await notify.notify_dispute_decided(
            session,
            settings,
            order=order,
            dispute_id=dispute.id,
            in_favour_of="buyer" if for_buyer else "seller",
            refund_cents=ret.refunded_cents if for_buyer else None,
        )
        await session.flush()
    return dispute


async def enqueue_silent_approvals(session: AsyncSession, *, now: dt.datetime | None = None) -> int:
    """The periodic sweep: a job for every return whose seller let ``decide_by`` pass (up to
    :data:`SWEEP_BATCH` a run), each approving one return in a transaction of its own (a batch
    holding the audit head while it locks the next buyer's accounts could deadlock a sale). The
    dedupe key makes a return's job unique however many sweeps see it."""
    now = now or utcnow()
    due = await session.scalars(
        select(OrderReturn.id)
        .where(
            OrderReturn.status == ReturnStatus.REQUESTED.value,
            OrderReturn.decide_by <= now,
        )
        .order_by(OrderReturn.decide_by, OrderReturn.id)
        .limit(SWEEP_BATCH)
    )
    queued = 0
    for return_id in due:
        job = await enqueue(
            session,
            SILENCE_JOB,
            {"return_id": return_id},
            dedupe_key=f"{SILENCE_JOB}:{return_id}",
        )
        queued += job is not None
    return queued


async def approve_if_silent(
    session: AsyncSession, settings: Settings, return_id: str, *, now: dt.datetime | None = None
) -> bool:
    """Approve the return if its seller let ``decide_by`` pass without deciding; False if it
    is not (or no longer) waiting for them. The approval is conditional, so a seller deciding
    at the same moment, or the job running twice, leaves one decision."""
    now = now or utcnow()
    ret = await session.get(OrderReturn, return_id, populate_existing=True)
    if (
        ret is None
        or ret.status != ReturnStatus.REQUESTED.value
        or ret.decide_by is None
        or ret.decide_by > now
    ):
        return False
    try:
        await _approve(
            session,
            settings,
            ret,
            from_status=ReturnStatus.REQUESTED,
            decided_by=DecidedBy.SILENCE,
            decider=None,
            note="The seller did not decide in time; silence approves.",
        )
    except ReturnDecided:
        return False
    return True


# Claims -----------------------------------------------------------------------------------


async def file_claim(
    session: AsyncSession,
    order_id: str,
    member: User,
    *,
    category: ClaimCategory,
    text: str | None,
) -> OrderClaim:
    """Either party files a claim about the order; one open claim per member and order."""
    order = await session.get(Order, order_id)
    if order is None or member.id not in (order.buyer_id, order.seller_id):
        raise NotFound("No such order.")
    stated = clean_text(text, "text", limit=4000, required=True)
    assert stated is not None
    async with session.begin_nested():
        await _lock_order(session, order_id)
        open_claim = await session.scalar(
            select(OrderClaim.id).where(
                OrderClaim.order_id == order_id,
                OrderClaim.filed_by == member.id,
                OrderClaim.status == ClaimStatus.OPEN.value,
            )
        )
        if open_claim is not None:
            raise ClaimExists(
                "You have an open claim on this order.", extra={"claim_id": open_claim}
            )
        claim = OrderClaim(
            order_id=order_id,
            filed_by=member.id,
            filer_role="buyer" if member.id == order.buyer_id else "seller",
            category=category.value,
            text=stated,
            status=ClaimStatus.OPEN.value,
            filed_at=utcnow(),
        )
        session.add(claim)
        await session.flush()
        _event(session, order_id, member, "claim_filed", subject_id=claim.id)
        await record(
            session,
            actor=_actor(member),
            action="claim.filed",
            subject_type="claim",
            subject_id=claim.id,
            details={"order_id": order_id, "category": category.value},
        )
        await session.flush()
    return claim


async def decide_claim(
    session: AsyncSession,
    claim_id: str,
    admin: User,
    *,
    resolved: bool,
    note: str | None,
) -> OrderClaim:
    """An admin resolves or rejects an open claim, once, with a recorded note."""
    stated = clean_text(note, "note", limit=2000, required=True)
    status = ClaimStatus.RESOLVED if resolved else ClaimStatus.REJECTED
    now = utcnow()
    moved = await session.execute(
        update(OrderClaim)
        .where(OrderClaim.id == claim_id, OrderClaim.status == ClaimStatus.OPEN.value)
        .values(status=status.value, resolved_by=admin.id, resolved_at=now, resolution=stated)
        .execution_options(synchronize_session=False)
    )
    claim = await session.get(OrderClaim, claim_id, populate_existing=True)
    if claim is None:
        raise NotFound("No such claim.")
    if _rowcount(moved) != 1:
        raise ClaimClosed(f"This claim is {claim.status}.", extra={"claim_status": claim.status})
    _event(
        session, claim.order_id, admin, f"claim_{status.value}", subject_id=claim.id, note=stated
    )
    await record(
        session,
        actor=_actor(admin),
        action=f"claim.{status.value}",
        subject_type="claim",
        subject_id=claim.id,
        reason=stated,
        details={"order_id": claim.order_id},
    )
    await session.flush()
    return claim


# Trust ------------------------------------------------------------------------------------


async def set_trusted(session: AsyncSession, admin: User, username: str, *, trusted: bool) -> User:
    """An admin trusts a buyer (their returns are approved at once) or stops trusting them."""
    buyer = await session.scalar(select(User).where(User.username_key == username.casefold()))
    if buyer is None or buyer.role != Role.BUYER.value:
        raise NotFound("No buyer has this username.")
    row = await session.get(TrustedBuyer, buyer.id)
    if trusted and row is None:
        session.add(TrustedBuyer(buyer_id=buyer.id, granted_by=admin.id, granted_at=utcnow()))
    elif not trusted and row is not None:
        await session.delete(row)
    await record(
        session,
        actor=_actor(admin),
        action="buyer.trusted" if trusted else "buyer.untrusted",
        subject_type="user",
        subject_id=buyer.id,
    )
    await session.flush()
    return buyer


# Settlement's view ------------------------------------------------------------------------


def no_open_return() -> Any:
    """For :func:`leadmarket.orders.service.settle_due_orders`: the order has no open return."""
    return ~exists().where(
        and_(OrderReturn.order_id == Order.id, OrderReturn.status.in_(OPEN_RETURN_STATUSES))
    )


# Answers ----------------------------------------------------------------------------------


def evidence_url(evidence: ReturnEvidence) -> str:
    return f"/api/v1/returns/{evidence.return_id}/evidence/{evidence.id}"


def dispute_out(dispute: ReturnDispute) -> DisputeOut:
    return DisputeOut(
        id=dispute.id,
        return_id=dispute.return_id,
        order_id=dispute.order_id,
        status=dispute.status,
        note=dispute.note,
        opened_at=dispute.opened_at,
        outcome=dispute.outcome,
        decided_at=dispute.decided_at,
        decision_note=dispute.decision_note,
    )


def evidence_out(evidence: ReturnEvidence, ret: OrderReturn) -> EvidenceOut:
    return EvidenceOut(
        id=evidence.id,
        filename=evidence.filename,
        media_type=evidence.media_type,
        size_bytes=evidence.size_bytes,
        uploaded_by="buyer" if evidence.uploaded_by == ret.buyer_id else "seller",
        uploaded_at=evidence.uploaded_at,
        url=evidence_url(evidence),
    )


async def hold_amount(session: AsyncSession, order: Order) -> int:
    """What the order's hold was (all of it goes back on a release)."""
    hold = await hold_of(session, order.hold_reference)
    return hold.amount_cents if hold is not None else 0


async def return_out(session: AsyncSession, ret: OrderReturn) -> ReturnOut:
    dispute = await dispute_of(session, ret.id)
    return ReturnOut(
        id=ret.id,
        order_id=ret.order_id,
        status=ret.status,
        reason=ret.reason,
        note=ret.note,
        evidence_text=ret.evidence_text,
        evidence=[evidence_out(e, ret) for e in await evidence_of(session, ret.id)],
        requested_at=ret.requested_at,
        decide_by=ret.decide_by,
        review_reason=ret.review_reason,
        decided_at=ret.decided_at,
        decided_by=ret.decided_by,
        decision_note=ret.decision_note,
        dispute_by=ret.dispute_by,
        refund_kind=ret.refund_kind,
        refunded_cents=ret.refunded_cents,
        clawed_back_cents=ret.clawed_back_cents,
        dispute=dispute_out(dispute) if dispute is not None else None,
    )


def claim_out(claim: OrderClaim) -> ClaimOut:
    return ClaimOut(
        id=claim.id,
        order_id=claim.order_id,
        filed_by=claim.filer_role,
        category=claim.category,
        text=claim.text,
        status=claim.status,
        filed_at=claim.filed_at,
        resolved_at=claim.resolved_at,
        resolution=claim.resolution,
    )


def event_out(event: OrderEvent) -> EventOut:
    return EventOut(
        at=event.at,
        actor=event.actor_role,
        event=event.event,
        subject_id=event.subject_id,
        note=event.note,
    )


async def after_sale_out(session: AsyncSession, order: Order, viewer: User) -> AfterSaleOut:
    """The order's after-sale state for its buyer, seller or an admin: what may be done now,
    its return (with dispute and evidence), claims and history."""
    ret = await return_of_order(session, order.id)
    is_buyer = viewer.id == order.buyer_id
    cancel = await cancel_refusal(session, order) if is_buyer else Refusal("party", "")
    returnable = await return_refusal(session, order) if is_buyer else Refusal("party", "")
    return AfterSaleOut(
        order_id=order.id,
        status=order.status,
        price_cents=order.price_cents,
        currency=order.currency,
        fee_cents=order.fee_cents,
        return_window_ends_at=order.return_window_ends_at,
        cancellable=cancel is None,
        cancel_refusal=cancel.detail or None if cancel is not None else None,
        returnable=returnable is None,
        return_refusal=returnable.detail or None if returnable is not None else None,
        return_=await return_out(session, ret) if ret is not None else None,
        claims=[claim_out(c) for c in await claims_of(session, order.id)],
        history=[event_out(e) for e in await history_of(session, order.id)],
    )
