"""Orders (M1, M2, L4, L6, P2): buying a lead outright, the sale step every way of selling
shares (:func:`sell`), what each party may read of an order, and settlement after the return
window.

How a sale stays exact under any concurrency (issue 4 §7):

* **A slot on the lead** is taken by one conditional UPDATE, ``sold_count = sold_count + 1 …
  WHERE status = 'open' AND sold_count < cap``; the same statement closes the lead (``sold``)
  when it takes the last slot and then starts the retention clock (``pii_expires_at``, L4:
  the sale has closed; ``privacy.retention`` lists the other ways a sale closes). On
  PostgreSQL the UPDATE row-locks the lead and re-checks its condition against the committed
  row, on SQLite the transaction holds the write lock: a shared lead never sells
  more than ``max_buyers`` times, an exclusive one once.
* **One order per buyer and lead**: ``INSERT … ON CONFLICT (lead_id, buyer_id) DO NOTHING``.
* **Funds** are held by the ledger's conditional UPDATE (:func:`ledger.service.hold_funds`).
* All of it runs in one SAVEPOINT: a refusal at any step (sold out, already bought, not enough
  funds) leaves nothing behind, not even the slot.

Locks are always taken in the same order (lead row, ledger accounts, audit head), so concurrent
sales never deadlock one another on PostgreSQL."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.audit.service import Actor, record
from leadmarket.config import Settings
from leadmarket.kit.db import UTCDateTime, insert_ignoring_conflicts, utcnow
from leadmarket.kit.errors import Conflict, Forbidden, NotFound
from leadmarket.kit.idempotency import previous_answer, remember_answer, request_fingerprint
from leadmarket.kit.ids import new_id
from leadmarket.kit.realtime import Broker, LocalBroker
from leadmarket.leads.service import consent_withdrawn_at
from leadmarket.leads.vault import (
    LIVE_ORDER_STATUSES,
    PersonalDataDestroyed,
    Purpose,
    Reader,
    reveal_personal_data,
)
from leadmarket.ledger.service import HoldClosed, hold_funds, hold_of, platform_fee, settle_sale
from leadmarket.models import (
    AuctionOutcome,
    Consent,
    HoldStatus,
    Lead,
    LeadStatus,
    Order,
    OrderStatus,
    Role,
    SaleMode,
    SaleVia,
    User,
)
from leadmarket.notifications.notify import Event, notify_later
from leadmarket.orders.schemas import AddressOut, ContactOut, OrderOut
from leadmarket.privacy.disclosures import (
    DisclosureKind,
    DisclosurePurpose,
    LegalBasis,
    record_disclosure,
)
from leadmarket.privacy.retention import listing_ends_at, listing_length
from leadmarket.returns.service import no_open_return
from leadmarket.verticals.registry import CONSENT_EVIDENCE_CATEGORIES, get_vertical
from leadmarket.webhooks import service as webhooks

LEAD_DELIVERED = "lead.delivered"
# What a buyer gets of the sealed data: the contact and the answers, not the consent evidence
# (the consumer's IP address and browser), which the transaction does not need (L6).
BUYER_FIELDS = (
    "first_name",
    "last_name",
    "email",
    "phone",
    "birth_date",
    "street",
    "postal_code",
    "attributes",
)


# Errors -----------------------------------------------------------------------------------


class LeadNotForSale(Conflict):
    slug = "lead-not-for-sale"
    title = "This lead is not for sale"
    explanation = (
        "The lead was withdrawn, has been sold to its last buyer, or its auction has ended. "
        "`lead_status` says which."
    )


class NoFixedPrice(Conflict):
    slug = "no-fixed-price"
    title = "This lead has no price to buy it at"
    explanation = "An auction without a buy-now price is sold to the best bid; bid on it instead."


class OwnLead(Forbidden):
    slug = "own-lead"
    title = "You cannot buy your own lead"
    explanation = "A seller's own leads are not for sale to them."


class AlreadyBought(Conflict):
    slug = "already-bought"
    title = "You bought this lead already"
    explanation = "Each buyer buys a shared lead at most once; your order has it."


class FundsMismatch(Conflict):
    slug = "funds-not-held"
    title = "The funds for this sale are not held"
    explanation = "The hold named for this sale is not an open hold of this buyer's for its price."


# Selling ----------------------------------------------------------------------------------


def sale_terms(lead: Lead, now: dt.datetime) -> tuple[int, SaleVia]:
    """The price a buyer can buy ``lead`` at now, and how; refuses an auction without buy-now."""
    if lead.sale_mode == SaleMode.FIXED.value and lead.price_cents:
        return lead.price_cents, SaleVia.FIXED
    if lead.sale_mode == SaleMode.AUCTION.value and lead.buy_now_cents:
        if lead.auction_ends_at is not None and lead.auction_ends_at <= now:
            raise LeadNotForSale("The auction has ended.", extra={"lead_status": "ended"})
        return lead.buy_now_cents, SaleVia.BUY_NOW
    raise NoFixedPrice("This lead is sold by auction only; place a bid instead.")


def _cap() -> Any:
    return case((Lead.exclusive.is_(True), 1), else_=Lead.max_buyers)


async def existing_order(session: AsyncSession, lead_id: str, buyer_id: str) -> Order | None:
    """The buyer's order of this lead, if they bought it (one order per buyer and lead)."""
    order: Order | None = await session.scalar(
        select(Order).where(Order.lead_id == lead_id, Order.buyer_id == buyer_id)
    )
    return order


async def _why_not(
    session: AsyncSession, settings: Settings, lead_id: str, buyer_id: str
) -> Exception:
    """The reason a slot could not be taken, read after the conditional UPDATE refused."""
    lead = await session.get(Lead, lead_id, populate_existing=True)
    if lead is None:
        return NotFound("No such lead.")
    if lead.seller_id == buyer_id:
        return OwnLead("This is your own lead.")
    if await existing_order(session, lead_id, buyer_id) is not None:
        return AlreadyBought("You bought this lead already.")
    if lead.status == LeadStatus.SOLD.value:
        return LeadNotForSale(
            "This lead has been sold to its last buyer.", extra={"lead_status": lead.status}
        )
    ends = listing_ends_at(lead, settings)
    if lead.sale_mode == SaleMode.FIXED.value and ends is not None and ends <= utcnow():
        return LeadNotForSale("This lead's listing has ended.", extra={"lead_status": "ended"})
    return LeadNotForSale(f"This lead is {lead.status}.", extra={"lead_status": lead.status})


def disclosed_categories(vertical_slug: str) -> list[str]:
    """The vertical's categories of personal data a buyer receives: all but the consent
    evidence, which is not disclosed to buyers."""
    vertical = get_vertical(vertical_slug)
    if vertical is None:
        return []
    return sorted(set(vertical.pi_categories) - CONSENT_EVIDENCE_CATEGORIES)


async def sell(
    session: AsyncSession,
    settings: Settings,
    *,
    lead_id: str,
    buyer_id: str,
    price_cents: int,
    via: SaleVia,
    funds_held_as: str | None = None,
    deliver_to: str | None = None,
    actor: Actor | None = None,
) -> Order:
    """Sell the lead to ``buyer_id`` at ``price_cents``: the one sale step of buying outright,
    auctions and ping/post. Takes a slot on the lead (closing it at its cap), creates the
    order, holds the price in the buyer's funds (or checks the hold ``funds_held_as`` made
    earlier, e.g. for the winning bid), records the disclosure (P2) and the sale in the audit
    log, and queues the delivery to ``deliver_to`` or else the buyer's webhook endpoint, if any.

    Raises NotFound, :class:`OwnLead`, :class:`AlreadyBought`, :class:`LeadNotForSale`,
    :class:`FundsMismatch` or the ledger's ``InsufficientFunds``; then nothing is changed."""
    now = utcnow()
    order_id = new_id("ord")
    expires = literal(now + dt.timedelta(hours=settings.pii_retention_hours), UTCDateTime())
    async with session.begin_nested():
        cap = _cap()
        claimed = (
            await session.execute(
                update(Lead)
                .where(
                    Lead.id == lead_id,
                    # An expression, not the bare column, so no index on status is ever taken
                    # instead of the primary key: with statistics from when the table was small,
                    # PostgreSQL read every open lead to find this one (test_hot_plans).
                    Lead.status.concat("") == LeadStatus.OPEN.value,
                    Lead.sold_count < cap,
                    Lead.seller_id != buyer_id,
                    # A fixed-price listing ends (and its retention clock starts) in time.
                    or_(
                        Lead.sale_mode != SaleMode.FIXED.value,
                        Lead.created_at > now - listing_length(settings),
                    ),
                )
                .values(
                    sold_count=Lead.sold_count + 1,
                    status=case(
                        (Lead.sold_count + 1 >= cap, LeadStatus.SOLD.value), else_=Lead.status
                    ),
                    # L4: the clock starts when the sale closes, i.e. this sale takes the last
                    # place (an exclusive lead's only one); a shared lead's auction or listing
                    # end closes it otherwise (privacy.retention).
                    pii_expires_at=case(
                        (Lead.sold_count + 1 >= cap, func.coalesce(Lead.pii_expires_at, expires)),
                        else_=Lead.pii_expires_at,
                    ),
                )
                .returning(Lead.seller_id, Lead.currency, Lead.vertical)
                .execution_options(synchronize_session=False)
            )
        ).one_or_none()
        if claimed is None:
            raise await _why_not(session, settings, lead_id, buyer_id)
        seller_id, currency, vertical = str(claimed[0]), str(claimed[1]), str(claimed[2])
        inserted = await session.execute(
            insert_ignoring_conflicts(
                session, Order, index_elements=[Order.lead_id, Order.buyer_id]
            ).values(
                id=order_id,
                lead_id=lead_id,
                buyer_id=buyer_id,
                seller_id=seller_id,
                price_cents=price_cents,
                currency=currency,
                status=OrderStatus.HELD.value,
                via=via.value,
                hold_reference=funds_held_as or order_id,
                purchased_at=now,
                return_window_ends_at=now + dt.timedelta(hours=settings.return_window_hours),
            )
        )
        if int(getattr(inserted, "rowcount", 0) or 0) != 1:
            raise AlreadyBought("You bought this lead already.")
        if funds_held_as is None:
            await hold_funds(
                session,
                buyer_id=buyer_id,
                amount_cents=price_cents,
                currency=currency,
                reference=order_id,
            )
        else:
            hold = await hold_of(session, funds_held_as)
            if (
                hold is None
                or hold.status != HoldStatus.HELD.value
                or hold.buyer_id != buyer_id
                or hold.currency != currency
                or hold.amount_cents < price_cents
            ):
                raise FundsMismatch("The funds for this sale are not held.")
        certificate = await session.scalar(
            select(Consent.certificate).where(Consent.lead_id == lead_id)
        )
        record_disclosure(
            session,
            DisclosureKind.SALE,
            lead_id=lead_id,
            recipient_id=buyer_id,
            categories=disclosed_categories(vertical),
            purpose=DisclosurePurpose.SALE,
            # P9: sold only under the consumer's consent, whose certificate is the evidence.
            legal_basis=LegalBasis.CONSUMER_CONSENT,
            basis_reference=certificate,
            order_id=order_id,
            at=now,
        )
        await record(
            session,
            actor=actor or Actor("user", buyer_id),
            action="lead.sold",
            subject_type="lead",
            subject_id=lead_id,
            details={
                "order_id": order_id,
                "buyer_id": buyer_id,
                "seller_id": seller_id,
                "price_cents": price_cents,
                "currency": currency,
                "via": via.value,
            },
        )
        url = deliver_to
        if url is None:
            endpoint = await webhooks.get_endpoint(session, buyer_id)
            url = endpoint.url if endpoint is not None else None
        if url is not None:
            await webhooks.enqueue_delivery(
                session, order_id=order_id, buyer_id=buyer_id, url=url, event_type=LEAD_DELIVERED
            )
        if via is not SaleVia.AUCTION:
            # The seller is told after the commit; an auction's end tells its own sales.
            await notify_later(session, Event.LEAD_SOLD, order_id)
        await session.flush()
    order = await session.get(Order, order_id)
    assert order is not None
    # The lead row changed under the ORM's feet: load it afresh for whoever reads it next.
    await session.get(Lead, lead_id, populate_existing=True)
    return order


async def purchase(
    session: AsyncSession,
    settings: Settings,
    *,
    lead_id: str,
    buyer: User,
    idempotency_key: str | None,
    broker: Broker | None = None,
) -> tuple[int, str]:
    """A buyer buys a lead outright at its fixed or buy-now price (``POST
    /api/v1/leads/{id}/purchase`` and the Buy button): ``(201, order id)``. The same
    ``idempotency_key`` gives the first answer's order again; with another lead, 409.

    A buy-now that takes an auctioned lead's last place ends its auction in the same
    transaction (M1, M5): the leading bidder's hold is released and every bidder is told, so
    no bidder's money stays held after the answer. ``broker`` tells the auction's live pages
    after the commit (without one, as in the demo's history, nobody is watching)."""
    fingerprint = request_fingerprint({"orders.purchase": lead_id})
    if idempotency_key is not None:
        earlier = await previous_answer(session, buyer.id, idempotency_key, fingerprint)
        if earlier is not None:
            return earlier.status_code, str(earlier.response["id"])
    lead = await session.get(Lead, lead_id)
    if lead is None:
        raise NotFound("No such lead.")
    if lead.seller_id == buyer.id:
        raise OwnLead("This is your own lead.")
    if await existing_order(session, lead_id, buyer.id) is not None:
        raise AlreadyBought("You bought this lead already.")
    if lead.status != LeadStatus.OPEN.value:
        raise await _why_not(session, settings, lead_id, buyer.id)
    price_cents, via = sale_terms(lead, utcnow())
    ended = False
    async with session.begin_nested():  # a refused sale leaves the auction as it was
        if via is SaleVia.BUY_NOW:
            # The auction's holds are released before the sale takes its own hold and the
            # audit head, keeping the lock order of every sale (lead, ledger, audit).
            ended = await _end_auction_bought_now(session, settings, lead_id, buyer.id)
        order = await sell(
            session,
            settings,
            lead_id=lead_id,
            buyer_id=buyer.id,
            price_cents=price_cents,
            via=via,
        )
    if ended and broker is not None:
        from leadmarket.marketplace.service import publish_state  # (see just below)

        await publish_state(session, settings, broker, lead_id)
    if idempotency_key is not None:
        # The remembered answer names the order only: no contact data in that table.
        await remember_answer(
            session, buyer.id, idempotency_key, fingerprint, 201, {"id": order.id}
        )
    return 201, order.id


async def _end_auction_bought_now(
    session: AsyncSession, settings: Settings, lead_id: str, buyer_id: str
) -> bool:
    """End the auction of ``lead_id`` if a sale now takes its last place; whether it did. The
    lead's row is locked first, as a bid locks it: a bid being judged finishes (its hold is
    then the one released here), and a bid after this waits and finds the lead sold."""
    # The marketplace sells through this module, so it is imported here, when first needed.
    from leadmarket.marketplace.service import end_auction, places_left

    lead = await session.scalar(
        select(Lead)
        .where(Lead.id == lead_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if lead is None or lead.status != LeadStatus.OPEN.value or places_left(lead) > 1:
        return False  # not for sale (the sale says why), or a shared lead's auction goes on
    # Its pages are told only once the sale has gone through (a refused sale, rolled back
    # to before this, must not tell them the auction closed): this broker reaches nobody.
    ended = await end_auction(
        session, settings, LocalBroker(), lead, AuctionOutcome.BOUGHT_OUTRIGHT, buyer_next=buyer_id
    )
    return ended is not None


# Reading ----------------------------------------------------------------------------------


def _is_party(order: Order, viewer: User) -> bool:
    return viewer.id in (order.buyer_id, order.seller_id)


async def get_order(session: AsyncSession, order_id: str, viewer: User) -> Order:
    """The order, for its buyer and its seller; anyone else is told nothing exists."""
    order = await session.get(Order, order_id)
    if order is None or not _is_party(order, viewer):
        raise NotFound("No such order.")
    return order


async def list_orders(
    session: AsyncSession, viewer: User, *, limit: int, before_id: str | None = None
) -> list[Order]:
    """A buyer's orders, or a seller's sales, newest first (``limit`` + 1 rows)."""
    mine = Order.seller_id if viewer.role == Role.SELLER.value else Order.buyer_id
    query = select(Order).where(mine == viewer.id).order_by(Order.id.desc()).limit(limit + 1)
    if before_id is not None:
        query = query.where(Order.id < before_id)
    return list(await session.scalars(query))


async def _mark_contact_opened(session: AsyncSession, order: Order) -> bool:
    """Record that the buyer got the contact (the lead is delivered from then on, so the order
    can no longer be cancelled, issue 6): one conditional UPDATE of the order row, which
    serialises with a cancellation's (:func:`leadmarket.returns.service.cancel_order`). False
    if the order is no longer live (cancelled meanwhile): then nothing is revealed."""
    now = utcnow()
    moved = await session.execute(
        update(Order)
        .where(Order.id == order.id, Order.status.in_(LIVE_ORDER_STATUSES))
        .values(contact_opened_at=func.coalesce(Order.contact_opened_at, now))
        .execution_options(synchronize_session=False)
    )
    await session.refresh(order, attribute_names=["status", "contact_opened_at"])
    return int(getattr(moved, "rowcount", 0) or 0) == 1


async def open_contact(
    session: AsyncSession, settings: Settings, order: Order, reader: User
) -> dict[str, Any] | None:
    """The order's sealed data for its buyer while retained (through the vault, audited), or
    None: for anyone else, once destroyed or past ``pii_expires_at``, and once the consumer
    withdrew their consent (L3: no further disclosure; see :mod:`leadmarket.leads.service`)."""
    if reader.id != order.buyer_id:
        return None
    if await consent_withdrawn_at(session, order.lead_id) is not None:
        return None
    if order.contact_opened_at is None and not await _mark_contact_opened(session, order):
        return None
    try:
        return await reveal_personal_data(
            session,
            settings,
            order.lead_id,
            reader=Reader(reader.id, reader.role),
            purpose=Purpose.BUYER_ORDER,
            reason=f"order {order.id}",
            fields=BUYER_FIELDS,
        )
    except (PersonalDataDestroyed, NotFound):
        return None


def _contact_of(lead: Lead, values: dict[str, Any]) -> ContactOut:
    return ContactOut(
        first_name=values.get("first_name"),
        last_name=values.get("last_name"),
        email=values.get("email"),
        phone=values.get("phone"),
        birth_date=values.get("birth_date"),
        address=AddressOut(
            street=values.get("street"),
            city=lead.city,
            region=lead.region,
            postal_code=values.get("postal_code"),
            country=lead.country,
        ),
    )


async def order_out(
    session: AsyncSession,
    settings: Settings,
    order: Order,
    viewer: User,
    *,
    reveal_contact: bool = True,
) -> OrderOut:
    """The order as ``viewer`` may see it. ``reveal_contact=False`` leaves the contact closed
    (the order page of an order not yet delivered, which the buyer may still cancel)."""
    lead = await session.get(Lead, order.lead_id)
    assert lead is not None
    values = await open_contact(session, settings, order, viewer) if reveal_contact else None
    attributes = dict(lead.preview_attributes)
    if values is not None:
        attributes.update(values.get("attributes") or {})
    buyer = await session.get(User, order.buyer_id)
    seller = await session.get(User, order.seller_id)
    consent = await session.scalar(select(Consent).where(Consent.lead_id == order.lead_id))
    return OrderOut(
        id=order.id,
        lead_id=order.lead_id,
        price_cents=order.price_cents,
        currency=order.currency,
        status=order.status,
        via=order.via,
        vertical=lead.vertical,
        purchased_at=order.purchased_at,
        return_window_ends_at=order.return_window_ends_at,
        settled_at=order.settled_at,
        fee_cents=order.fee_cents,
        expected_fee_cents=platform_fee(order.price_cents, settings.platform_fee_percent),
        contact_opened_at=order.contact_opened_at,
        pii_expires_at=lead.pii_expires_at,
        pii_destroyed_at=lead.pii_destroyed_at,
        consent_withdrawn_at=consent.withdrawn_at if consent is not None else None,
        resale_prohibited=consent is not None and consent.global_privacy_control,
        contact=_contact_of(lead, values) if values is not None else None,
        attributes=attributes,
        buyer=buyer.username if buyer is not None else None,
        seller=seller.username if seller is not None else "",
    )


@dataclass(frozen=True)
class SalesSummary:
    currency: str
    sales: int
    held_cents: int  # sold, still in the return window
    settled_cents: int  # paid out, before fees
    fees_cents: int
    earned_cents: int  # settled less fees


async def sales_summary(session: AsyncSession, seller_id: str) -> list[SalesSummary]:
    """A seller's sales and revenue per currency."""
    held = func.sum(case((Order.status == OrderStatus.HELD.value, Order.price_cents), else_=0))
    settled_status = Order.status == OrderStatus.SETTLED.value
    settled = func.sum(case((settled_status, Order.price_cents), else_=0))
    fees = func.sum(case((settled_status, Order.fee_cents), else_=0))
    rows = await session.execute(
        select(Order.currency, func.count(), held, settled, fees)
        .where(Order.seller_id == seller_id)
        .group_by(Order.currency)
        .order_by(Order.currency)
    )
    return [
        SalesSummary(
            currency=str(currency),
            sales=int(count),
            held_cents=int(h or 0),
            settled_cents=int(s or 0),
            fees_cents=int(f or 0),
            earned_cents=int(s or 0) - int(f or 0),
        )
        for currency, count, h, s, f in rows
    ]


# Settlement -------------------------------------------------------------------------------

SETTLE_JOB = "orders.settle_due"
SETTLE_BATCH = 500


async def settle_due_orders(
    session: AsyncSession, settings: Settings, *, now: dt.datetime | None = None
) -> int:
    """Pay the seller (less the platform fee) for every held order whose return window has
    ended, up to :data:`SETTLE_BATCH` per call. Rows are claimed with ``FOR UPDATE SKIP LOCKED``
    on PostgreSQL, so several workers share the work; each hold settles once in any case."""
    now = now or utcnow()
    due = (
        await session.scalars(
            select(Order)
            .where(
                Order.status == OrderStatus.HELD.value,
                Order.return_window_ends_at <= now,
                # An open return (requested, in review, disputed) keeps the money held until
                # it is decided (issue 6).
                no_open_return(),
            )
            .order_by(Order.return_window_ends_at, Order.id)
            .limit(SETTLE_BATCH)
            .with_for_update(skip_locked=True)
        )
    ).all()
    settled: list[tuple[Order, int]] = []
    for order in due:
        try:
            settlement = await settle_sale(
                session,
                reference=order.hold_reference,
                seller_id=order.seller_id,
                fee_percent=settings.platform_fee_percent,
                price_cents=order.price_cents,
            )
        except (HoldClosed, NotFound):
            continue  # the hold moved on elsewhere; the ledger check reports any mismatch
        order.status = OrderStatus.SETTLED.value
        order.settled_at = now
        order.fee_cents = settlement.fee_cents
        settled.append((order, settlement.fee_cents))
    # The audit entries come last: the audit head is the one row every money path locks at its
    # end, so a batch that took it after its first order while locking the next order's ledger
    # accounts could deadlock with a sale, a refund or a payout doing the same in their order.
    for order, fee_cents in settled:
        await record(
            session,
            actor=Actor.system(),
            action="order.settled",
            subject_type="order",
            subject_id=order.id,
            details={"price_cents": order.price_cents, "fee_cents": fee_cents},
        )
    await session.flush()
    return len(settled)
