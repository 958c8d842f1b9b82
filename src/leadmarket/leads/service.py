"""Leads after intake: what buyers and sellers may read (L6), the rule that a posted lead is
final for its seller (L5), consent certificates and their withdrawal (L3). Intake itself is
:mod:`leadmarket.leads.intake`.

**What a withdrawn consent stops (L3).** Withdrawal is honoured from the moment it commits:

* an open lead leaves the market (status ``withdrawn``, under its row lock), so every way of
  selling it refuses from then on: buying outright and buy-now, bids and campaign auto-bids,
  the auction close (which ends a withdrawn lead's auction without a winner and releases the
  holds), ping/post (which sells only the lead it has just created, in the same transaction),
  all through :func:`leadmarket.orders.service.sell`'s conditional UPDATE on ``status = open``;
* its personal data is destroyed like an unsold lead's, ``pii_retention_hours`` after the
  withdrawal (unless a sale already started an earlier clock);
* a buyer who bought it **before** the withdrawal keeps the order (the sale was made with
  consent: price, status and the preview stay), but the contact is no longer disclosed: the
  order shows ``contact: null`` and ``consent_withdrawn_at``, webhook deliveries not yet made
  (queued, retrying or replayed) end as failed with the reason, and the buyer is told by email
  not to contact the consumer. Data the buyer already received cannot be recalled; the email
  is what reaches it."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import Conflict, NotFound
from leadmarket.leads.intake import LeadsKit
from leadmarket.leads.schemas import normalize_consumer_phone
from leadmarket.leads.vault import LIVE_ORDER_STATUSES, IndexKind
from leadmarket.models import (
    Consent,
    ConsentText,
    Lead,
    LeadBlindIndex,
    LeadStatus,
    LeadVault,
    Order,
    Role,
    User,
)
from leadmarket.notifications.service import queue_mail
from leadmarket.privacy.retention import deadline_on_consent_withdrawn

CONSENT_WITHDRAWN_TEMPLATE = "leads/consent_withdrawn"


class LeadImmutable(Conflict):
    slug = "lead-immutable"
    title = "A posted lead cannot be changed"
    explanation = (
        "Once a lead is posted the seller cannot change or remove it (promise L5); the "
        "consumer can, through a privacy request."
    )


# Reading -----------------------------------------------------------------------------------


_STAFF = {Role.ADMIN.value, Role.SUPPORT.value, Role.PRIVACY_OFFICER.value}


def may_see(lead: Lead, viewer: User) -> bool:
    """Sellers see their own leads; buyers see leads on sale (L6: previews only); staff all."""
    if viewer.role in _STAFF or lead.seller_id == viewer.id:
        return True
    return viewer.role == Role.BUYER.value and lead.status == LeadStatus.OPEN.value


async def get_visible_lead(session: AsyncSession, lead_id: str, viewer: User) -> Lead:
    lead = await session.get(Lead, lead_id)
    if lead is None or not may_see(lead, viewer):
        raise NotFound("No such lead.")
    return lead


async def list_visible_leads(
    session: AsyncSession,
    viewer: User,
    *,
    vertical: str | None,
    region: str | None,
    status: str | None,
    limit: int,
    before_id: str | None,
) -> list[Lead]:
    query = select(Lead).order_by(Lead.id.desc()).limit(limit + 1)
    if viewer.role == Role.SELLER.value:
        query = query.where(Lead.seller_id == viewer.id)
        if status is not None:
            query = query.where(Lead.status == status)
    elif viewer.role in _STAFF:
        if status is not None:
            query = query.where(Lead.status == status)
    else:
        if status not in (None, LeadStatus.OPEN.value):
            return []
        query = query.where(Lead.status == LeadStatus.OPEN.value)
    if vertical is not None:
        query = query.where(Lead.vertical == vertical)
    if region is not None:
        query = query.where(Lead.region == region.upper())
    if before_id is not None:
        query = query.where(Lead.id < before_id)
    return list(await session.scalars(query))


async def refuse_change(session: AsyncSession, lead_id: str, viewer: User) -> None:
    """L5: a posted lead is final for its seller; others are told nothing exists."""
    lead = await session.get(Lead, lead_id)
    if lead is None or lead.seller_id != viewer.id:
        raise NotFound("No such lead.")
    raise LeadImmutable(
        "A posted lead cannot be changed or removed; the consumer can correct or delete it "
        "through a privacy request."
    )


async def seller_quality_summary(session: AsyncSession, seller_id: str) -> dict[str, Any]:
    rows = (
        await session.execute(
            select(Lead.quality_score, Lead.quality_reasons).where(Lead.seller_id == seller_id)
        )
    ).all()
    by_reason: dict[str, int] = {}
    for _, reasons in rows:
        for reason in reasons:
            by_reason[str(reason["code"])] = by_reason.get(str(reason["code"]), 0) + 1
    scores = [int(score) for score, _ in rows]
    return {
        "leads": len(scores),
        "average_score": round(sum(scores) / len(scores), 1) if scores else None,
        "below_50": sum(1 for s in scores if s < 50),
        "by_reason": dict(sorted(by_reason.items())),
    }


# Consent -----------------------------------------------------------------------------------


async def consent_by_certificate(
    session: AsyncSession, certificate: str
) -> tuple[Consent, ConsentText]:
    consent = await session.scalar(select(Consent).where(Consent.certificate == certificate))
    if consent is None:
        raise NotFound("No consent has this certificate.")
    text = await session.get(ConsentText, consent.text_sha256)
    assert text is not None
    return consent, text


async def withdraw_consent(
    session: AsyncSession,
    kit: LeadsKit,
    certificate: str,
    *,
    email: str | None,
    phone: str | None,
) -> Consent:
    """The consumer withdraws; honoured from now on (L3): an unsold lead leaves the market, and
    its personal data is destroyed at the next retention sweep (L4) unless a buyer has it.
    Whoever asks must name the email or phone the consent was given with."""
    consent = await session.scalar(
        select(Consent).where(Consent.certificate == certificate).with_for_update()
    )
    if consent is None:
        raise NotFound("No consent has this certificate.")
    digests: list[str] = []
    if email is not None:
        digests.append(kit.indexer.digest(IndexKind.EMAIL, email))
    if phone is not None:
        with contextlib.suppress(ValueError):
            digests.append(
                kit.indexer.digest(IndexKind.PHONE, normalize_consumer_phone(phone, "US"))
            )
    matches = await session.scalar(
        select(func.count())
        .select_from(LeadBlindIndex)
        .where(LeadBlindIndex.lead_id == consent.lead_id, LeadBlindIndex.digest.in_(digests))
    )
    if not matches:
        # Same answer as an unknown certificate: the endpoint must not confirm identities.
        raise NotFound("No consent has this certificate with this email or phone.")
    if consent.withdrawn_at is None:
        now = utcnow()
        consent.withdrawn_at = now
        lead = await session.get(Lead, consent.lead_id, with_for_update=True)
        if lead is not None:
            if lead.status == LeadStatus.OPEN.value:
                lead.status = LeadStatus.WITHDRAWN.value
            # Sold no further, so its data goes as soon as no buyer has a right to it (L4).
            deadline_on_consent_withdrawn(lead, kit.settings, now)
            await _tell_buyers(session, kit, lead, now)
    return consent


async def consent_withdrawn_at(session: AsyncSession, lead_id: str) -> dt.datetime | None:
    """When the consumer withdrew the consent of this lead, or None (L3)."""
    withdrawn: dt.datetime | None = await session.scalar(
        select(Consent.withdrawn_at).where(Consent.lead_id == lead_id)
    )
    return withdrawn


async def _tell_buyers(session: AsyncSession, kit: LeadsKit, lead: Lead, now: dt.datetime) -> None:
    """Email each buyer with a live order of the lead: the consumer withdrew, do not contact
    them. Names the lead and the order only, never the consumer."""
    rows = await session.execute(
        select(Order.id, User.id, User.email, User.username)
        .join(User, User.id == Order.buyer_id)
        .where(Order.lead_id == lead.id, Order.status.in_(LIVE_ORDER_STATUSES))
        .order_by(Order.id)
    )
    base = kit.settings.base_url.rstrip("/")
    for order_id, buyer_id, email, username in rows:
        await queue_mail(
            session,
            kit.settings,
            to=email,
            subject=f"Consent withdrawn for lead {lead.id}: do not contact the consumer",
            text_body=(
                f"Hello {username},\n\n"
                f"The consumer of lead {lead.id}, which you bought (order {order_id}), withdrew "
                f"their consent on {now.strftime('%Y-%m-%d %H:%M UTC')}.\n\n"
                "Do not call, text or email them about this request from now on, and do not "
                "pass their details to anyone. Leadmarket no longer shows or delivers their "
                "contact details; your order itself stands.\n\n"
                f"Your order: {base}/orders/{order_id}\n"
            ),
            template=CONSENT_WITHDRAWN_TEMPLATE,
            user_id=buyer_id,
        )


async def vault_exists(session: AsyncSession, lead_id: str) -> bool:
    return await session.get(LeadVault, lead_id) is not None
