"""Everything the platform holds about one consumer, found by their identifiers' keyed digests,
and the four things a verified rights request can do with it (P1–P3, P9): report it, erase it,
correct it, and take it off the market.

The request lifecycle (``privacy.requests``) calls these after verifying the requester; nothing
here checks identity. None of these functions commits: the request's job or route owns the
transaction, so a failure leaves nothing half-done (and the webhook deliveries and mails queued
here are outbox rows of that same transaction).

How a consumer is found: intake stores each lead's email and phone only sealed in the lead's
vault and as keyed digests (``lead_blind_indexes``, one HMAC key per kind). :func:`consumer_from`
computes the same digests from what the requester gives; :func:`find_consumer_leads` looks them
up through the ``(kind, digest, created_at)`` index. Every opening of a vault here goes through
:func:`leadmarket.leads.vault.reveal_personal_data` with :attr:`Purpose.RIGHTS_REQUEST`, so it is
in the audit log (``pii.read``, a system actor, the request id as reason).

What cannot be found: 48 hours after a lead is sold, or after its auction ends unsold, its vault
*and its blind indexes* are destroyed (L4). From then on nothing links that lead to the
consumer's email or phone, so it is in no report and no erasure: its personal data no longer
exists, and the disclosure records of its sale can no longer be attributed to the consumer.
Every report says so in its ``note``."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.repository import usernames
from leadmarket.accounts.schemas import check_name, normalize_email
from leadmarket.audit.service import Actor, record
from leadmarket.config import Settings
from leadmarket.kit.db import insert_ignoring_conflicts, utcnow
from leadmarket.kit.errors import FieldError, ValidationFailed
from leadmarket.leads.intake import LeadsKit, lock_consumer
from leadmarket.leads.previews import age_band
from leadmarket.leads.reference import check_postal_code, region_name
from leadmarket.leads.schemas import age_on, check_birth_date, normalize_consumer_phone
from leadmarket.leads.vault import (
    BlindIndexer,
    IndexKind,
    PersonalDataDestroyed,
    Purpose,
    Reader,
    destroy_personal_data,
    reveal_personal_data,
    seal_personal_data,
)
from leadmarket.messages.redaction import redact_lead_messages
from leadmarket.models import (
    AuditEvent,
    Consent,
    ConsumerOptOut,
    DeliveryStatus,
    Disclosure,
    Lead,
    LeadBlindIndex,
    LeadStatus,
    LeadVault,
    LedgerTransaction,
    Order,
    User,
    WebhookDelivery,
)
from leadmarket.notifications.service import queue_mail
from leadmarket.orders.service import LEAD_DELIVERED
from leadmarket.privacy.disclosures import RecipientCategory
from leadmarket.privacy.schemas import CORRECTABLE_FIELDS
from leadmarket.verticals.registry import (
    PI_CATEGORIES,
    FieldSpec,
    get_vertical,
    validate_attributes,
)
from leadmarket.webhooks import service as webhooks
from leadmarket.webhooks.service import PayloadGone, payload_builder

LEAD_ERASED = "lead.erased"
LEAD_CORRECTED = "lead.corrected"
ERASED_ACTION = "pii.erased"
CORRECTED_ACTION = "pii.corrected"

RECIPIENT_CATEGORIES: dict[str, str] = {
    "buyer": "Buyers of leads: businesses offering the service the consumer asked for",
    "service_provider": "Service providers working for Leadmarket",
    "law_enforcement": "Law enforcement, on a verified legal request",
}

SOURCES: dict[str, str] = {
    "form": "Consumer web form (hosted by Leadmarket) of seller {seller}",
    "api": "Seller {seller}, through the lead API",
    "csv": "Seller {seller}, by file upload (CSV)",
    "manual": "Seller {seller}, entered on the seller's pages",
    "ping": "Seller {seller}, through ping/post",
}


def _reason(request_id: str) -> str:
    return f"privacy request {request_id}"


# Finding the consumer ------------------------------------------------------------------------


@dataclass(frozen=True)
class Consumer:
    """Who a request is about, as the keyed digests intake stores: never the plain values."""

    email_digest: str | None
    phone_digest: str | None

    def index_keys(self) -> list[tuple[str, str]]:
        keys = []
        if self.email_digest is not None:
            keys.append((IndexKind.EMAIL.value, self.email_digest))
        if self.phone_digest is not None:
            keys.append((IndexKind.PHONE.value, self.phone_digest))
        return keys


def _email_digest(indexer: BlindIndexer, email: str | None) -> str | None:
    if email is None or not email.strip():
        return None
    try:
        normalized = normalize_email(email.strip())
    except ValueError:
        return None
    return indexer.digest(IndexKind.EMAIL, normalized)


def _phone_digest(indexer: BlindIndexer, phone: str | None) -> str | None:
    if phone is None or not phone.strip():
        return None
    try:
        # Intake reads a number in the address's country; US and Canada share +1, so "US"
        # gives the same E.164 form for both.
        normalized = normalize_consumer_phone(phone, "US")
    except ValueError:
        return None
    return indexer.digest(IndexKind.PHONE, normalized)


def consumer_from(kit: LeadsKit, *, email: str | None, phone: str | None) -> Consumer:
    """Normalise (email as the intake's request model does, phone to E.164 as intake does) and
    digest the requester's identifiers. An identifier that cannot be normalised gives ``None``
    for that digest."""
    return Consumer(
        email_digest=_email_digest(kit.indexer, email),
        phone_digest=_phone_digest(kit.indexer, phone),
    )


def _matches(consumer: Consumer) -> Any:
    return or_(
        *(
            (LeadBlindIndex.kind == kind) & (LeadBlindIndex.digest == digest)
            for kind, digest in consumer.index_keys()
        )
    )


async def find_consumer_leads(
    session: AsyncSession,
    consumer: Consumer,
    *,
    since: dt.datetime | None = None,
    include_past_deadline: bool = False,
) -> list[str]:
    """Ids of the leads whose personal data is still held for this consumer (through the blind
    indexes), newest first, optionally only those created at or after ``since``. One indexed
    statement: ``(kind, digest)`` leads the blind-index index.

    A lead past its ``pii_expires_at`` counts as destroyed (L4) even before the retention
    sweep reaches it, so it is left out, unless ``include_past_deadline``: an erasure takes
    it too, rather than leave its data to the next sweep."""
    if not consumer.index_keys():
        return []
    ids = select(LeadBlindIndex.lead_id).where(_matches(consumer)).distinct().subquery()
    query = (
        select(Lead.id)
        .join(ids, ids.c.lead_id == Lead.id)
        .where(Lead.pii_destroyed_at.is_(None))
        .order_by(Lead.created_at.desc(), Lead.id.desc())
    )
    if not include_past_deadline:
        query = query.where(or_(Lead.pii_expires_at.is_(None), Lead.pii_expires_at > utcnow()))
    if since is not None:
        query = query.where(Lead.created_at >= since)
    return list(await session.scalars(query))


async def _leads(
    session: AsyncSession, lead_ids: Iterable[str], *, lock: bool = False
) -> list[Lead]:
    """The leads, in id order (the lock order, so two requests cannot deadlock)."""
    wanted = sorted(set(lead_ids))
    if not wanted:
        return []
    query = select(Lead).where(Lead.id.in_(wanted)).order_by(Lead.id)
    if lock:
        # Read afresh under the lock: a copy already in the session may predate a sale.
        query = query.with_for_update().execution_options(populate_existing=True)
    return list(await session.scalars(query))


async def _open(
    session: AsyncSession,
    settings: Settings,
    lead_id: str,
    request_id: str,
    fields: Iterable[str] | None = None,
) -> dict[str, Any] | None:
    """A lead's sealed data for the request, audited; None when destroyed, or past its
    deadline, since it was found."""
    if await session.get(LeadVault, lead_id) is None:
        return None
    try:
        return await reveal_personal_data(
            session,
            settings,
            lead_id,
            reader=Reader.privacy_engine(),
            purpose=Purpose.RIGHTS_REQUEST,
            reason=_reason(request_id),
            fields=fields,
        )
    except PersonalDataDestroyed:
        return None


# Verification --------------------------------------------------------------------------------

_VERIFICATION_FIELDS = ("first_name", "last_name", "postal_code", "birth_date", "phone", "email")


def _squash(value: str) -> str:
    return " ".join(value.split()).casefold()


def _postal(value: str) -> str:
    squashed = "".join(value.split()).upper()
    # A US ZIP matches its ZIP+4 and the other way round.
    return squashed[:5] if squashed[:5].isdigit() else squashed


def _point_matches(key: str, given: str, held: Mapping[str, Any]) -> bool:
    if key == "name":
        full = _squash(f"{held.get('first_name', '')} {held.get('last_name', '')}")
        return bool(full.strip()) and _squash(given) == full
    if key == "postal_code":
        return held.get("postal_code") is not None and _postal(given) == _postal(
            str(held["postal_code"])
        )
    if key == "birth_date":
        with contextlib.suppress(ValueError):
            return dt.date.fromisoformat(given.strip()).isoformat() == held.get("birth_date")
        return False
    if key == "phone":
        with contextlib.suppress(ValueError):
            return normalize_consumer_phone(given, "US") == held.get("phone")
        return False
    if key == "email":
        with contextlib.suppress(ValueError):
            return normalize_email(given.strip()) == str(held.get("email", "")).lower()
        return False
    return False


async def count_matching_data_points(
    session: AsyncSession,
    settings: Settings,
    lead_ids: list[str],
    *,
    data_points: Mapping[str, str],
    request_id: str,
) -> int:
    """How many of the requester's extra data points (``name``, ``postal_code``,
    ``birth_date``, ``phone``, ``email``) match the data held in at least one of the leads.
    Opens the vaults for verification only (P4: the values are compared here and not kept);
    each opening is audited under ``request_id``. Unknown keys count as not matching."""
    pending = {k: v for k, v in data_points.items() if isinstance(v, str) and v.strip()}
    matched: set[str] = set()
    for lead_id in lead_ids:
        if not pending:
            break
        held = await _open(session, settings, lead_id, request_id, _VERIFICATION_FIELDS)
        if held is None:
            continue
        for key in [k for k, v in pending.items() if _point_matches(k, v, held)]:
            matched.add(key)
            del pending[key]
    return len(matched)


# The report (P1, P2) -------------------------------------------------------------------------


def _note(settings: Settings) -> str:
    return (
        "This answer covers the personal data Leadmarket still holds about you. A lead's "
        f"personal data is destroyed {settings.pii_retention_hours} hours after it is sold, or "
        "after its auction ends unsold (promise L4), and with it the only link between the lead "
        "and your email address or phone number. Leads destroyed before this request can "
        "therefore no longer be found or attributed to you: they are in none of these lists, "
        "even if they were collected, sold or disclosed in the period covered. Nothing of "
        "their personal data remains to report, correct or delete."
    )


def _purposes(verticals: Iterable[str]) -> list[str]:
    purposes = []
    for slug in sorted(set(verticals)):
        vertical = get_vertical(slug)
        name = vertical.name.lower() if vertical is not None else slug
        purposes.append(
            f"Offering your request for {name} to buyers who provide that service, so that "
            "the buyer who buys it can contact you about it (a sale of the lead)"
        )
    if purposes:
        purposes += [
            "Delivering a sold lead to its buyers and keeping the records of each sale",
            "Checking the quality of leads and preventing fraud (duplicates, unusual activity)",
            "Keeping evidence of the consent you gave on the seller's form",
            "Answering your privacy requests",
        ]
    return purposes


def _categories_of(lead: Lead) -> set[str]:
    vertical = get_vertical(lead.vertical)
    return set(vertical.pi_categories) if vertical is not None else set()


async def build_report(
    session: AsyncSession,
    settings: Settings,
    consumer: Consumer,
    *,
    since: dt.datetime,
    include_pieces: bool,
    request_id: str,
) -> dict[str, Any]:
    """The answer to a right-to-know (``include_pieces=False``) or access request
    (``include_pieces=True``) covering ``since`` to now (P1, P2, P5):
    ``categories_collected``, ``sources``, ``purposes``, ``recipient_categories``,
    ``categories_sold`` ({recipient category: [categories]}),
    ``categories_disclosed_for_business_purpose`` (same shape), built from the disclosure
    records, ``disclosures`` (each record: when, to which recipient, which categories, why),
    and ``pieces`` (one entry per lead: its id, vertical, collected_at and decrypted
    fields) only for access. Every decryption is audited under ``request_id``.

    Categories are the statutory keys of ``verticals.registry.PI_CATEGORIES`` (``labels``
    names them); ``note`` says what cannot be in the report (leads already destroyed)."""
    now = utcnow()
    held_ids = await find_consumer_leads(session, consumer)
    rows = (
        (
            await session.execute(
                select(Lead, User.username)
                .join(User, User.id == Lead.seller_id)
                .where(Lead.id.in_(held_ids))
                .order_by(Lead.created_at.desc(), Lead.id.desc())
            )
        ).all()
        if held_ids
        else []
    )
    collected = [(lead, str(seller)) for lead, seller in rows if lead.created_at >= since]
    disclosures = (
        list(
            await session.scalars(
                select(Disclosure)
                .where(Disclosure.lead_id.in_(held_ids), Disclosure.disclosed_at >= since)
                .order_by(Disclosure.disclosed_at)
            )
        )
        if held_ids
        else []
    )
    categories: set[str] = set()
    sources: list[str] = []
    for lead, seller in collected:
        categories |= _categories_of(lead)
        source = SOURCES.get(lead.source, "Seller {seller}").format(seller=seller)
        if source not in sources:
            sources.append(source)
    sold: dict[str, set[str]] = {}
    business: dict[str, set[str]] = {}
    for disclosure in disclosures:
        target = sold if disclosure.sold else business
        target.setdefault(disclosure.recipient_category, set()).update(disclosure.categories)
    recipients = sorted({d.recipient_category for d in disclosures})
    # A member recipient is named by the public username it trades under (A1).
    names = await usernames(session, (d.recipient_id for d in disclosures))
    report: dict[str, Any] = {
        "period": {"since": since.isoformat(), "until": now.isoformat()},
        "leads_found": len(collected),
        "categories_collected": sorted(categories),
        "sources": sources,
        "purposes": _purposes(lead.vertical for lead, _ in collected),
        "recipient_categories": recipients,
        "categories_sold": {k: sorted(v) for k, v in sorted(sold.items())},
        "categories_disclosed_for_business_purpose": {
            k: sorted(v) for k, v in sorted(business.items())
        },
        "labels": {
            **{k: PI_CATEGORIES[k] for k in sorted(categories) if k in PI_CATEGORIES},
            **{k: RECIPIENT_CATEGORIES.get(k, k) for k in recipients},
        },
        "disclosures": [_disclosure_entry(d, names) for d in disclosures],
        "note": _note(settings),
    }
    if include_pieces:
        report["pieces"] = await _pieces(session, settings, collected, request_id)
    return report


def _disclosure_entry(disclosure: Disclosure, names: Mapping[str, str]) -> dict[str, Any]:
    """One disclosure as the consumer sees it: when, to whom, which categories, why (P1, P2).
    A law-enforcement recipient is not named: a legal request may forbid telling the person
    it is about who asked; its category and date are still listed."""
    recipient: str | None = None
    if disclosure.recipient_category != RecipientCategory.LAW_ENFORCEMENT.value:
        recipient = (
            names.get(disclosure.recipient_id) if disclosure.recipient_id is not None else None
        ) or disclosure.recipient_name
    return {
        "disclosed_at": disclosure.disclosed_at.isoformat(),
        "lead_id": disclosure.lead_id,
        "recipient": recipient,
        "recipient_category": disclosure.recipient_category,
        "categories": sorted(disclosure.categories),
        "purpose": disclosure.purpose,
        "sold": disclosure.sold,
    }


async def _pieces(
    session: AsyncSession, settings: Settings, collected: list[tuple[Lead, str]], request_id: str
) -> list[dict[str, Any]]:
    certificates = (
        dict(
            (
                await session.execute(
                    select(Consent.lead_id, Consent.certificate).where(
                        Consent.lead_id.in_([lead.id for lead, _ in collected])
                    )
                )
            ).all()
        )
        if collected
        else {}
    )
    pieces = []
    for lead, seller in collected:
        values = await _open(session, settings, lead.id, request_id)
        if values is None:
            continue
        attributes = {**lead.preview_attributes, **(values.pop("attributes", None) or {})}
        pieces.append(
            {
                "lead_id": lead.id,
                "vertical": lead.vertical,
                "collected_at": lead.created_at.isoformat(),
                "source": SOURCES.get(lead.source, "Seller {seller}").format(seller=seller),
                "consent_certificate": certificates.get(lead.id),
                "fields": {
                    **values,
                    "city": lead.city,
                    "region": lead.region,
                    "country": lead.country,
                    "attributes": attributes,
                },
            }
        )
    return pieces


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _flatten(f"{prefix}.{key}" if prefix else str(key), inner)
    elif isinstance(value, list):
        for position, inner in enumerate(value):
            yield from _flatten(f"{prefix}.{position}" if prefix else str(position), inner)
    elif value is None:
        yield prefix, ""
    elif isinstance(value, bool):
        yield prefix, "true" if value else "false"
    else:
        yield prefix, str(value)


def report_as_csv(report: Mapping[str, Any]) -> str:
    """The same report, flattened to ``section,key,value`` rows (portable, P1): a section is a
    top-level key; nested keys are joined with dots (``lead_….fields.email``), list positions
    count from 0; a list of categories gives one row per category under its recipient
    category. Values are written as they are (no spreadsheet escaping: a leading ``+`` of a
    phone number is data)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["section", "key", "value"])
    for section, value in report.items():
        if section == "pieces":
            for piece in value:
                lead_id = piece.get("lead_id", "")
                for key, flat in _flatten("", {k: v for k, v in piece.items() if k != "lead_id"}):
                    writer.writerow([section, f"{lead_id}.{key}", flat])
        elif section in ("categories_sold", "categories_disclosed_for_business_purpose"):
            for recipient, categories in value.items():
                for category in categories:
                    writer.writerow([section, recipient, category])
        elif isinstance(value, list) and all(not isinstance(v, Mapping | list) for v in value):
            for item in value:
                writer.writerow([section, "", "" if item is None else str(item)])
        else:
            for key, flat in _flatten("", value):
                writer.writerow([section, key, flat])
    return out.getvalue()


# Telling the buyers --------------------------------------------------------------------------


async def _orders_of(session: AsyncSession, lead_ids: list[str]) -> list[Order]:
    if not lead_ids:
        return []
    return list(
        await session.scalars(
            select(Order).where(Order.lead_id.in_(lead_ids)).order_by(Order.buyer_id, Order.id)
        )
    )


async def _stop_deliveries(session: AsyncSession, orders: list[Order], now: dt.datetime) -> int:
    """Deliveries of the lead itself not yet made end here: they would carry the data."""
    if not orders:
        return 0
    result = await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.order_id.in_([o.id for o in orders]),
            WebhookDelivery.event_type == LEAD_DELIVERED,
            WebhookDelivery.status == DeliveryStatus.PENDING.value,
        )
        .values(status=DeliveryStatus.FAILED.value, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def _notify_buyers(
    session: AsyncSession,
    settings: Settings,
    orders: list[Order],
    *,
    event_type: str,
    subject: str,
    lines: Mapping[str, str],
    closing: str,
) -> list[str]:
    """One signed webhook message per order to the buyer's endpoint (to every address the
    lead was delivered to, signed with the buyer's secret), and one transactional email per
    buyer. Both name orders and leads only, never the consumer's data."""
    by_buyer: dict[str, list[Order]] = {}
    for order in orders:
        by_buyer.setdefault(order.buyer_id, []).append(order)
    for buyer_id, buyer_orders in by_buyer.items():
        endpoint = await webhooks.get_endpoint(session, buyer_id)
        if endpoint is not None:
            # Where each order's lead went, for all of this buyer's orders in one query.
            delivered_to: dict[str, set[str]] = {}
            for order_id, url in await session.execute(
                select(WebhookDelivery.order_id, WebhookDelivery.url).where(
                    WebhookDelivery.order_id.in_([o.id for o in buyer_orders]),
                    WebhookDelivery.event_type == LEAD_DELIVERED,
                )
            ):
                delivered_to.setdefault(order_id, set()).add(url)
            for order in buyer_orders:
                for url in sorted(delivered_to.get(order.id, set()) | {endpoint.url}):
                    await webhooks.enqueue_delivery(
                        session,
                        order_id=order.id,
                        buyer_id=buyer_id,
                        url=url,
                        event_type=event_type,
                    )
        buyer = await session.get(User, buyer_id)
        if buyer is None:
            continue
        listed = "\n".join(f"  order {o.id}, lead {o.lead_id}" for o in buyer_orders)
        body = f"Hello {buyer.username},\n\n{lines['intro']}\n\n{listed}\n\n{closing}\n"
        await queue_mail(
            session,
            settings,
            to=buyer.email,
            subject=subject,
            text_body=body,
            template=event_type,
            user_id=buyer.id,
        )
    return sorted(by_buyer)


async def _order_and_lead(session: AsyncSession, delivery: WebhookDelivery) -> tuple[Order, Lead]:
    order = await session.get(Order, delivery.order_id)
    if order is None or order.buyer_id != delivery.buyer_id:
        raise PayloadGone("The order no longer exists.")
    lead = await session.get(Lead, order.lead_id)
    if lead is None:
        raise PayloadGone("The lead no longer exists.")
    return order, lead


@payload_builder(LEAD_ERASED)
async def lead_erased_payload(
    session: AsyncSession, settings: Settings, delivery: WebhookDelivery
) -> dict[str, Any]:
    """Order and lead ids only: the buyer must delete what it holds of that lead (P3)."""
    order, lead = await _order_and_lead(session, delivery)
    return {
        "order_id": order.id,
        "lead_id": lead.id,
        "erased_at": lead.pii_destroyed_at.isoformat() if lead.pii_destroyed_at else None,
        "reason": "consumer_deletion_request",
    }


@payload_builder(LEAD_CORRECTED)
async def lead_corrected_payload(
    session: AsyncSession, settings: Settings, delivery: WebhookDelivery
) -> dict[str, Any]:
    """Order and lead ids and the names of the corrected fields, never their values: the buyer
    reads the corrected contact from its order while the lead is retained."""
    order, lead = await _order_and_lead(session, delivery)
    latest = await session.scalar(
        select(AuditEvent.fields)
        .where(
            AuditEvent.action == CORRECTED_ACTION,
            AuditEvent.subject_type == "lead",
            AuditEvent.subject_id == lead.id,
        )
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    )
    return {
        "order_id": order.id,
        "lead_id": lead.id,
        "fields": list(latest or []),
        "reason": "consumer_correction_request",
    }


# Erasure (P3) --------------------------------------------------------------------------------


@dataclass
class KeptRecord:
    """Something not erased, and the statutory exception that keeps it (P3)."""

    record: str
    count: int
    legal_reason: str


@dataclass
class ErasureOutcome:
    erased_lead_ids: list[str] = field(default_factory=list)
    kept: list[KeptRecord] = field(default_factory=list)
    notified_buyer_ids: list[str] = field(default_factory=list)
    # Open leads taken off the market because their data is gone.
    withdrawn_lead_ids: list[str] = field(default_factory=list)
    stopped_deliveries: int = 0


async def _count(session: AsyncSession, query: Any) -> int:
    return int(await session.scalar(query) or 0)


async def _kept_records(
    session: AsyncSession, lead_ids: list[str], orders: list[Order]
) -> list[KeptRecord]:
    order_ids = [o.id for o in orders]
    references = sorted({o.id for o in orders} | {o.hold_reference for o in orders})
    transactions = (
        await _count(
            session,
            select(func.count())
            .select_from(LedgerTransaction)
            .where(LedgerTransaction.reference.in_(references)),
        )
        if references
        else 0
    )
    disclosures = await _count(
        session,
        select(func.count()).select_from(Disclosure).where(Disclosure.lead_id.in_(lead_ids)),
    )
    consents = await _count(
        session, select(func.count()).select_from(Consent).where(Consent.lead_id.in_(lead_ids))
    )
    audit = await _count(
        session,
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.subject_type == "lead", AuditEvent.subject_id.in_(lead_ids)),
    )
    kept = [
        KeptRecord(
            "lead previews (vertical, coarse area, age band, answers shown before sale; no "
            "name, contact or address)",
            len(lead_ids),
            "Completing the transaction and legal obligation: the orders refer to them; they no "
            "longer identify the consumer once the vault and blind indexes are destroyed",
        ),
        KeptRecord(
            "orders (ids, prices, dates, buyer and seller)",
            len(order_ids),
            "Completing the transaction and legal obligation (accounting and tax records)",
        ),
        KeptRecord(
            "ledger transactions of those orders",
            transactions,
            "Legal obligation (accounting and tax records of the payments)",
        ),
        KeptRecord(
            "disclosure records (categories, recipient category, purpose; no personal data)",
            disclosures,
            "Legal obligation: records of disclosures and of requests are kept 24 months "
            "(CCPA regulations) and feed the yearly metrics report",
        ),
        KeptRecord(
            "consent certificates (keyed digests of the IP address and browser, page, text, "
            "parties; marked withdrawn)",
            consents,
            "Establishment, exercise or defence of legal claims: proof that contact was "
            "consented to; the digests cannot be reversed and the plain values are destroyed",
        ),
        KeptRecord(
            "audit log entries about those leads (who read or changed them, when; no values)",
            audit,
            "Security and fraud prevention, and proof that this request was carried out; the "
            "log is append-only and hash-chained (A4)",
        ),
    ]
    return [k for k in kept if k.count]


async def erase_consumer(
    session: AsyncSession,
    settings: Settings,
    consumer: Consumer,
    *,
    request_id: str,
    now: dt.datetime,
) -> ErasureOutcome:
    """Shred the consumer's data everywhere it is still held, tell each buyer who received it
    (signed webhook event and email) and list what is kept and why.

    For each lead of the consumer, locked in id order: an open lead leaves the market
    (``withdrawn``, so a running auction closes without a sale and releases its bids), the
    deliveries of it not yet made stop, its vault (data key and ciphertext) and blind indexes
    are deleted (:func:`destroy_personal_data`), its consent is marked withdrawn, and the
    erasure is in the audit log. The consent certificate itself is kept (it holds only digests;
    see :class:`KeptRecord`)."""
    outcome = ErasureOutcome()
    lead_ids = await find_consumer_leads(session, consumer, include_past_deadline=True)
    if not lead_ids:
        return outcome
    leads = await _leads(session, lead_ids, lock=True)
    lead_ids = [lead.id for lead in leads if lead.pii_destroyed_at is None]
    orders = await _orders_of(session, lead_ids)
    outcome.stopped_deliveries = await _stop_deliveries(session, orders, now)
    # Copies typed into member messages go too (L4, M4), while the vaults can still be opened.
    await redact_lead_messages(session, settings.keyring(), lead_ids)
    for lead in leads:
        if lead.pii_destroyed_at is not None:
            continue
        if lead.status == LeadStatus.OPEN.value:
            lead.status = LeadStatus.WITHDRAWN.value
            outcome.withdrawn_lead_ids.append(lead.id)
        await destroy_personal_data(session, lead, now=now)
        await record(
            session,
            actor=Actor.system(),
            action=ERASED_ACTION,
            subject_type="lead",
            subject_id=lead.id,
            reason=_reason(request_id),
        )
        outcome.erased_lead_ids.append(lead.id)
    await session.execute(
        update(Consent)
        .where(Consent.lead_id.in_(lead_ids), Consent.withdrawn_at.is_(None))
        .values(withdrawn_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.flush()
    outcome.notified_buyer_ids = await _notify_buyers(
        session,
        settings,
        orders,
        event_type=LEAD_ERASED,
        subject="A consumer asked to delete their data: delete these leads",
        lines={
            "intro": "The consumer of the leads below asked Leadmarket to delete their "
            "personal data (a deletion request under the CCPA). We have deleted it; as a "
            "recipient of the lead you must delete the consumer's personal data you received "
            "with it, and pass the request on to anyone you shared it with."
        },
        closing="Your orders and their payments are not affected.",
    )
    outcome.kept = await _kept_records(session, lead_ids, orders)
    return outcome


# Correction (P3) -----------------------------------------------------------------------------

_NAME_FIELDS = ("first_name", "last_name")


@dataclass
class CorrectionOutcome:
    corrected_lead_ids: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    notified_buyer_ids: list[str] = field(default_factory=list)


def _one_line(value: str, limit: int) -> str:
    text = " ".join(value.split())
    if not text:
        raise ValueError("This field is required.")
    if len(text) > limit:
        raise ValueError(f"Use at most {limit} characters.")
    return text


def _person_name(value: str) -> str:
    text = check_name(value)
    if len(text) > 100:
        raise ValueError("Use at most 100 characters.")
    return text


def _clean_correction(key: str, value: str) -> dict[str, Any]:
    """The sealed or preview values a correction sets, checked as intake checks them; raises
    ValueError with a message that never repeats the value."""
    if key == "name":
        parts = " ".join(value.split()).rsplit(" ", 1)
        if len(parts) != 2:
            raise ValueError("Give the first and the last name.")
        return {"first_name": _person_name(parts[0]), "last_name": _person_name(parts[1])}
    if key in _NAME_FIELDS:
        return {key: _person_name(value)}
    if key == "email":
        try:
            return {"email": normalize_email(value.strip())}
        except ValueError:
            raise ValueError("Not a valid email address.") from None
    if key == "phone":
        return {"phone": normalize_consumer_phone(value, "US")}
    if key == "birth_date":
        try:
            day = dt.date.fromisoformat(value.strip())
        except ValueError:
            raise ValueError("Use the form YYYY-MM-DD.") from None
        return {"birth_date": check_birth_date(day).isoformat()}
    if key == "address.street":
        return {"street": _one_line(value, 200)}
    if key == "address.city":
        return {"city": _one_line(value, 100)}
    if key == "address.region":
        return {"region": value.strip().upper()}
    if key == "address.postal_code":
        return {"postal_code": value.strip()}
    raise KeyError(key)


def _check_corrections(corrections: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Everything checkable without the held data: (new values, attribute corrections)."""
    errors: list[FieldError] = []
    values: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    if not corrections:
        errors.append(FieldError("corrections", "Name at least one field to correct."))
    for key, value in corrections.items():
        if not isinstance(value, str):
            errors.append(FieldError(key, "Must be text."))
            continue
        if key.startswith("attributes.") and len(key) > len("attributes."):
            attributes[key.removeprefix("attributes.")] = value
            continue
        try:
            values.update(_clean_correction(key, value))
        except KeyError:
            errors.append(
                FieldError(
                    key,
                    "This field cannot be corrected: use one of "
                    + ", ".join(CORRECTABLE_FIELDS)
                    + " or attributes.<name>.",
                )
            )
        except ValueError as exc:
            errors.append(FieldError(key, str(exc)))
    if "name" in corrections and any(k in corrections for k in _NAME_FIELDS):
        errors.append(FieldError("name", "Give either name or first_name/last_name, not both."))
    if errors:
        raise ValidationFailed(
            "; ".join(f"{e.field}: {e.message}" for e in errors[:5]), errors=errors
        )
    return values, attributes


def _typed(spec: FieldSpec, value: str) -> object:
    """A correction arrives as text; read it as the field's type so that the vertical's own
    check judges it (a value that does not read is passed on as text and refused there)."""
    text = value.strip()
    with contextlib.suppress(ValueError):
        if spec.type == "integer":
            return int(text)
        if spec.type == "number":
            return float(text)
    if spec.type == "boolean" and text.lower() in ("true", "yes", "false", "no"):
        return text.lower() in ("true", "yes")
    return value


@dataclass
class _Planned:
    lead: Lead
    sealed: dict[str, Any]
    lead_changes: dict[str, Any]
    held: dict[str, Any]

    @property
    def changed(self) -> bool:
        return self.sealed != self.held or any(
            getattr(self.lead, name) != value for name, value in self.lead_changes.items()
        )


def _plan(
    lead: Lead,
    held: dict[str, Any],
    values: Mapping[str, Any],
    attributes: Mapping[str, str],
    errors: list[FieldError],
) -> _Planned:
    """The lead's new sealed values and row changes, checked against the lead itself (its
    country and state, its vertical's attributes). Errors are appended, named by field."""
    sealed = dict(held)
    lead_changes: dict[str, Any] = {}
    for key in ("first_name", "last_name", "email", "phone", "birth_date", "street"):
        if key in values:
            sealed[key] = values[key]
    if "phone" in values:
        # The number must be of the lead's own country, as at intake.
        try:
            sealed["phone"] = normalize_consumer_phone(values["phone"], lead.country)
        except ValueError as exc:
            errors.append(FieldError("phone", str(exc)))
    if "birth_date" in values:
        born = dt.date.fromisoformat(values["birth_date"])
        lead_changes["age_band"] = age_band(age_on(born, lead.created_at.date()))
    if "city" in values:
        lead_changes["city"] = values["city"]
    region = values.get("region", lead.region)
    if "region" in values or "postal_code" in values:
        if region_name(lead.country, region) is None:
            errors.append(FieldError("address.region", "Not a state or province of this country."))
        else:
            postal, problem = check_postal_code(
                lead.country, region, values.get("postal_code", str(held.get("postal_code", "")))
            )
            if problem is not None or postal is None:
                field_name = "address.postal_code" if "postal_code" in values else "address.region"
                errors.append(FieldError(field_name, problem or "Not a postal code."))
            else:
                sealed["postal_code"] = postal
                lead_changes["region"] = region
                lead_changes["postal_prefix"] = postal[:3]
    if attributes:
        vertical = get_vertical(lead.vertical)
        if vertical is not None:
            mine = {
                name: _typed(spec, v)
                for name, v in attributes.items()
                if (spec := vertical.field(name)) is not None
            }
            if mine:
                current = {**lead.preview_attributes, **(held.get("attributes") or {})}
                cleaned, problems = validate_attributes(vertical, {**current, **mine})
                errors.extend(p for p in problems if p.field.removeprefix("attributes.") in mine)
                preview = {
                    n: v for n, v in cleaned.items() if (s := vertical.field(n)) and s.preview
                }
                sealed["attributes"] = {
                    n: v for n, v in cleaned.items() if n not in preview
                } or None
                lead_changes["preview_attributes"] = preview
    return _Planned(lead, sealed, lead_changes, held)


async def correct_consumer(
    session: AsyncSession,
    settings: Settings,
    consumer: Consumer,
    corrections: Mapping[str, str],
    *,
    request_id: str,
) -> CorrectionOutcome:
    """Re-seal the corrected fields (e.g. ``name``, ``phone``, ``address.city``) in every lead
    still held, refresh the blind indexes, and tell each buyer who received the old values.
    Raises ``ValidationFailed`` (nothing changed) for an unknown field or an invalid value.

    Values are checked as intake checks them (names, email syntax, E.164 phone of the lead's
    country, birth date and the under-14 rule, state and postal code agreeing). Each lead's
    data is re-sealed under a **new** data key, so the old values cannot be opened again from
    any copy of the old ciphertext once the old wrapped key row is overwritten. The email and
    phone blind indexes are recomputed; the preview (city, state, postal prefix, age band,
    preview answers) follows the corrected values."""
    values, attributes = _check_corrections(corrections)
    outcome = CorrectionOutcome(fields=sorted(corrections))
    lead_ids = await find_consumer_leads(session, consumer)
    leads = await _leads(session, lead_ids, lock=True)
    errors: list[FieldError] = []
    planned: list[_Planned] = []
    for lead in leads:
        held = await _open(session, settings, lead.id, request_id)
        if held is None:
            continue
        planned.append(_plan(lead, held, values, attributes, errors))
    if attributes:
        declared = {
            name
            for p in planned
            if (vertical := get_vertical(p.lead.vertical)) is not None
            for name in attributes
            if vertical.field(name) is not None
        }
        errors += [
            FieldError(f"attributes.{name}", "No lead of this consumer has this attribute.")
            for name in sorted(set(attributes) - declared)
        ]
    if errors:
        unique = list({(e.field, e.message): e for e in errors}.values())
        raise ValidationFailed(
            "; ".join(f"{e.field}: {e.message}" for e in unique[:5]), errors=unique
        )
    indexer = LeadsKit(settings).indexer
    keyring = settings.keyring()
    # A lead the correction does not change (the value was already right, or the attribute is
    # not of its vertical) keeps its vault and its buyers hear nothing.
    for plan in [p for p in planned if p.changed]:
        lead = plan.lead
        fresh = seal_personal_data(keyring, lead.id, plan.sealed)
        vault = await session.get(LeadVault, lead.id)
        assert vault is not None
        vault.key_version = fresh.key_version
        vault.wrapped_key = fresh.wrapped_key
        vault.sealed_fields = fresh.sealed_fields
        for name, value in plan.lead_changes.items():
            setattr(lead, name, value)
        for kind, field_name in ((IndexKind.EMAIL, "email"), (IndexKind.PHONE, "phone")):
            if field_name in values:
                await session.execute(
                    update(LeadBlindIndex)
                    .where(LeadBlindIndex.lead_id == lead.id, LeadBlindIndex.kind == kind.value)
                    .values(digest=indexer.digest(kind, str(plan.sealed[field_name])))
                    .execution_options(synchronize_session=False)
                )
        await record(
            session,
            actor=Actor.system(),
            action=CORRECTED_ACTION,
            subject_type="lead",
            subject_id=lead.id,
            fields=outcome.fields,
            reason=_reason(request_id),
        )
        outcome.corrected_lead_ids.append(lead.id)
    await session.flush()
    orders = await _orders_of(session, outcome.corrected_lead_ids)
    outcome.notified_buyer_ids = await _notify_buyers(
        session,
        settings,
        orders,
        event_type=LEAD_CORRECTED,
        subject="A consumer corrected their data: update these leads",
        lines={
            "intro": "The consumer of the leads below asked Leadmarket to correct their "
            f"personal data (fields: {', '.join(outcome.fields)}). Update the copy you "
            "received: the order shows the corrected values while the lead is retained."
        },
        closing="Your orders and their payments are not affected.",
    )
    return outcome


# Opt-out of sale and sharing (P9) ------------------------------------------------------------


@dataclass
class OptOutOutcome:
    withdrawn_lead_ids: list[str] = field(default_factory=list)
    stopped_deliveries: int = 0


async def opt_out_consumer(
    session: AsyncSession,
    settings: Settings,
    consumer: Consumer,
    *,
    request_id: str,
    now: dt.datetime,
) -> OptOutOutcome:
    """Opt the consumer out of sale and sharing (P9): open leads leave the market, pending
    deliveries stop, and new leads of this consumer are refused at intake from now on.

    The email and phone digests go into ``consumer_opt_outs`` (digests only), which intake
    checks for every batch (``leads.intake.ConsumerOptedOut``, 409, nothing stored). A fresh
    consent on a new form does **not** lift the opt-out: sellers collect consent on their own
    forms, and a new checkbox is no proof that this consumer changed their mind; lifting it
    would take a verified request of the consumer's own (not built yet). Leads already sold
    stay with their buyers (the opt-out looks forward), but any delivery not yet made stops."""
    keys = consumer.index_keys()
    outcome = OptOutOutcome()
    if not keys:
        return outcome
    # Serialised with intake batches of this consumer: a batch in flight commits its lead
    # first (and it is withdrawn below), or waits and finds the registry entry.
    await lock_consumer(session, [digest for _, digest in keys])
    await session.execute(
        insert_ignoring_conflicts(session, ConsumerOptOut),
        [
            {"digest": digest, "kind": kind, "request_id": request_id, "created_at": now}
            for kind, digest in keys
        ],
    )
    lead_ids = await find_consumer_leads(session, consumer)
    leads = await _leads(session, lead_ids, lock=True)
    for lead in leads:
        if lead.status == LeadStatus.OPEN.value:
            lead.status = LeadStatus.WITHDRAWN.value
            outcome.withdrawn_lead_ids.append(lead.id)
            await record(
                session,
                actor=Actor.system(),
                action="lead.withdrawn",
                subject_type="lead",
                subject_id=lead.id,
                reason=f"opt-out of sale, {_reason(request_id)}",
            )
    outcome.stopped_deliveries = await _stop_deliveries(
        session, await _orders_of(session, [lead.id for lead in leads]), now
    )
    await session.flush()
    return outcome
