"""Lead intake (promises L1, L2, L3, L5, L6, S1): validate, refuse children and duplicates,
record consent evidence, seal the personal data, score quality, and keep only a preview in the
clear. The API, the hosted consumer form and the CSV upload all come through
:func:`create_lead`."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.crypto import random_token
from leadmarket.kit.db import insert_ignoring_conflicts, utcnow
from leadmarket.kit.errors import (
    Conflict,
    DomainError,
    FieldError,
    NotFound,
    ValidationFailed,
    register_validation_problem,
)
from leadmarket.kit.ids import new_id
from leadmarket.leads import quality
from leadmarket.leads.reference import check_postal_code, region_name
from leadmarket.leads.schemas import (
    MINIMUM_AGE,
    MINOR_ERROR,
    LeadIn,
    PreviewOut,
    QualityOut,
    SaleOut,
    age_on,
    normalize_consumer_phone,
)
from leadmarket.leads.vault import BlindIndexer, IndexKind, seal_personal_data
from leadmarket.models import (
    Consent,
    ConsentText,
    Lead,
    LeadBlindIndex,
    LeadStatus,
    LeadVault,
    Role,
    SaleMode,
    User,
)
from leadmarket.verticals.registry import Vertical, get_vertical, validate_attributes


class MinorRefused(DomainError):
    status = 422
    slug = "minor"
    title = "Consumer under 14"
    explanation = (
        "Leadmarket takes no data about children (promise L2): a lead for someone under "
        f"{MINIMUM_AGE} is refused and nothing of the request is stored."
    )


register_validation_problem(MINOR_ERROR, MinorRefused)


class DuplicateLead(Conflict):
    slug = "duplicate-lead"
    title = "Duplicate lead"
    explanation = (
        "The same consumer asked for the same service recently; the earlier lead is named in "
        "`duplicate_of`."
    )


class LeadImmutable(Conflict):
    slug = "lead-immutable"
    title = "A posted lead cannot be changed"
    explanation = (
        "Once a lead is posted the seller cannot change or remove it (promise L5); the "
        "consumer can, through a privacy request."
    )


class LeadsKit:
    """Per-process helpers built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.indexer = BlindIndexer(settings.signing_key())
        settings.keyring()  # fail at start-up, not on the first lead, if the keys are unusable


AGE_BANDS = (
    (18, "14-17"),
    (25, "18-24"),
    (35, "25-34"),
    (45, "35-44"),
    (55, "45-54"),
    (65, "55-64"),
)


def age_band(age: int) -> str:
    for upper, label in AGE_BANDS:
        if age < upper:
            return label
    return "65+"


@dataclass(frozen=True)
class CreatedLead:
    lead: Lead
    certificate: str


def _address_errors(data: LeadIn) -> tuple[str | None, list[FieldError]]:
    address = data.contact.address
    errors: list[FieldError] = []
    if region_name(address.country, address.region) is None:
        errors.append(
            FieldError("contact.address.region", "Not a state or province of this country.")
        )
        return None, errors
    postal, problem = check_postal_code(address.country, address.region, address.postal_code)
    if problem is not None:
        errors.append(FieldError("contact.address.postal_code", problem))
    return postal, errors


async def _refuse_duplicates(
    session: AsyncSession, kit: LeadsKit, vertical: str, digests: list[str], now: dt.datetime
) -> None:
    if kit.settings.duplicate_window_days == 0:
        return
    if session.get_bind().dialect.name == "postgresql":
        # Serialise intake of the same consumer so two concurrent posts cannot both pass the
        # check; different consumers do not wait for each other.
        for digest in sorted(digests):
            await session.execute(select(func.pg_advisory_xact_lock(int(digest[:15], 16))))
    since = now - dt.timedelta(days=kit.settings.duplicate_window_days)
    earlier = await session.scalar(
        select(LeadBlindIndex.lead_id)
        .where(
            LeadBlindIndex.kind.in_([IndexKind.EMAIL.value, IndexKind.PHONE.value]),
            LeadBlindIndex.digest.in_(digests),
            LeadBlindIndex.vertical == vertical,
            LeadBlindIndex.created_at > since,
        )
        .order_by(LeadBlindIndex.created_at)
        .limit(1)
    )
    if earlier is not None:
        raise DuplicateLead(
            f"This consumer already asked for this service in lead {earlier}.",
            extra={"duplicate_of": earlier},
        )


async def _velocity(
    session: AsyncSession, kit: LeadsKit, seller_id: str, ip_digest: str, now: dt.datetime
) -> tuple[int, int]:
    """How many recent leads the seller and the consumer's address have, counted only up to the
    signal's limit: the signal asks "at least the limit?", and a busy seller posting thousands
    a minute must not make every post scan all of them."""
    seller_recent = await session.scalar(
        select(func.count()).select_from(
            select(Lead.id)
            .where(Lead.seller_id == seller_id, Lead.created_at > now - dt.timedelta(minutes=1))
            .limit(kit.settings.velocity_seller_per_minute)
            .subquery()
        )
    )
    ip_recent = await session.scalar(
        select(func.count()).select_from(
            select(LeadBlindIndex.id)
            .where(
                LeadBlindIndex.kind == IndexKind.IP.value,
                LeadBlindIndex.digest == ip_digest,
                LeadBlindIndex.created_at > now - dt.timedelta(hours=1),
            )
            .limit(kit.settings.velocity_ip_per_hour)
            .subquery()
        )
    )
    return int(seller_recent or 0), int(ip_recent or 0)


def default_parties(seller: User, vertical: Vertical) -> list[str]:
    return [seller.username, f"Leadmarket buyers of {vertical.name.lower()} leads"]


async def create_lead(
    session: AsyncSession, kit: LeadsKit, *, seller: User, data: LeadIn, source: str
) -> CreatedLead:
    now = utcnow()
    vertical = get_vertical(data.vertical)
    if vertical is None:
        raise ValidationFailed(
            "Unknown vertical.",
            errors=[FieldError("vertical", "No such vertical; GET /api/v1/verticals lists them.")],
        )
    attributes, errors = validate_attributes(vertical, data.attributes)
    postal, address_errors = _address_errors(data)
    errors += address_errors
    if errors:
        raise ValidationFailed(
            "; ".join(f"{e.field}: {e.message}" for e in errors[:5]), errors=errors
        )
    assert postal is not None
    contact = data.contact
    address = contact.address

    email_digest = kit.indexer.digest(IndexKind.EMAIL, contact.email)
    phone_digest = kit.indexer.digest(IndexKind.PHONE, contact.phone)
    ip_digest = kit.indexer.digest(IndexKind.IP, str(data.consent.ip))
    await _refuse_duplicates(session, kit, vertical.slug, [email_digest, phone_digest], now)

    seller_recent, ip_recent = await _velocity(session, kit, seller.id, ip_digest, now)
    signals = quality.contact_signals(
        email=contact.email, phone_e164=contact.phone, region=address.region
    ) + quality.velocity_signals(
        seller_recent=seller_recent,
        seller_limit=kit.settings.velocity_seller_per_minute,
        ip_recent=ip_recent,
        ip_limit=kit.settings.velocity_ip_per_hour,
    )

    sale = data.sale
    preview_attributes: dict[str, Any] = {}
    sealed_attributes: dict[str, Any] = {}
    for name, value in attributes.items():
        spec = vertical.field(name)
        # The vertical's loader guarantees a preview field is never identifying, free text or a
        # protected characteristic (L6); everything else stays sealed with the contact data.
        if spec is not None and spec.preview:
            preview_attributes[name] = value
        else:
            sealed_attributes[name] = value

    lead = Lead(
        id=new_id("lead"),
        seller_id=seller.id,
        vertical=vertical.slug,
        status=LeadStatus.OPEN.value,
        source=source,
        country=address.country,
        region=address.region,
        city=address.city,
        postal_prefix=postal[:3],
        age_band=age_band(age_on(contact.birth_date, now.date())),
        preview_attributes=preview_attributes,
        quality_score=quality.score(signals),
        quality_reasons=[s.as_dict() for s in signals],
        sale_mode=sale.mode,
        currency=sale.currency,
        reserve_cents=sale.reserve_cents,
        buy_now_cents=sale.buy_now_cents,
        price_cents=sale.price_cents,
        duration_minutes=sale.duration_minutes,
        exclusive=sale.exclusive,
        max_buyers=sale.max_buyers or 1,
        auction_ends_at=(
            now + dt.timedelta(minutes=sale.duration_minutes or 60)
            if sale.mode == SaleMode.AUCTION.value
            else None
        ),
        created_at=now,
    )
    session.add(lead)
    await session.flush()
    session.add(
        seal_personal_data(
            kit.settings.keyring(),
            lead.id,
            {
                "first_name": contact.first_name,
                "last_name": contact.last_name,
                "email": contact.email,
                "phone": contact.phone,
                "birth_date": contact.birth_date.isoformat(),
                "street": address.street,
                "postal_code": postal,
                "attributes": sealed_attributes or None,
                "consent_ip": str(data.consent.ip),
                "consent_user_agent": data.consent.user_agent,
            },
        )
    )
    session.add_all(
        LeadBlindIndex(
            lead_id=lead.id, kind=kind.value, digest=digest, vertical=vertical.slug, created_at=now
        )
        for kind, digest in (
            (IndexKind.EMAIL, email_digest),
            (IndexKind.PHONE, phone_digest),
            (IndexKind.IP, ip_digest),
        )
    )
    certificate = await _record_consent(session, kit, lead, seller, vertical, data, now)
    return CreatedLead(lead=lead, certificate=certificate)


async def _record_consent(
    session: AsyncSession,
    kit: LeadsKit,
    lead: Lead,
    seller: User,
    vertical: Vertical,
    data: LeadIn,
    now: dt.datetime,
) -> str:
    text = data.consent.disclosure_text
    sha256 = hashlib.sha256(text.encode()).hexdigest()
    await session.execute(
        insert_ignoring_conflicts(session, ConsentText).values(
            sha256=sha256, text=text, created_at=now
        )
    )
    certificate = "cert_" + random_token(24)
    session.add(
        Consent(
            certificate=certificate,
            lead_id=lead.id,
            seller_id=seller.id,
            vertical=vertical.slug,
            text_sha256=sha256,
            given_at=data.consent.given_at,
            page_url=data.consent.page_url,
            parties=default_parties(seller, vertical),
            ip_digest=kit.indexer.digest(IndexKind.IP, str(data.consent.ip)),
            user_agent_digest=hashlib.sha256(data.consent.user_agent.encode()).hexdigest(),
            recorded_at=now,
        )
    )
    await session.flush()
    return certificate


# Reading -----------------------------------------------------------------------------------


def quality_of(lead: Lead) -> QualityOut:
    return QualityOut(score=lead.quality_score, reasons=list(lead.quality_reasons))


def preview_of(lead: Lead) -> PreviewOut:
    vertical = get_vertical(lead.vertical)
    return PreviewOut(
        vertical=lead.vertical,
        vertical_name=vertical.name if vertical else lead.vertical,
        country=lead.country,
        region=lead.region,
        city=lead.city,
        postal_prefix=lead.postal_prefix,
        age_band=lead.age_band,
        attributes=dict(lead.preview_attributes),
        created_at=lead.created_at,
        quality=quality_of(lead),
    )


def sale_of(lead: Lead, *, show_reserve: bool) -> SaleOut:
    return SaleOut(
        mode=lead.sale_mode,
        currency=lead.currency,
        reserve_cents=lead.reserve_cents if show_reserve else None,
        buy_now_cents=lead.buy_now_cents,
        price_cents=lead.price_cents,
        duration_minutes=lead.duration_minutes,
        exclusive=lead.exclusive,
        max_buyers=lead.max_buyers,
        ends_at=lead.auction_ends_at,
    )


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
    """The consumer withdraws; honoured from now on (L3): an unsold lead leaves the market.
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
        consent.withdrawn_at = utcnow()
        lead = await session.get(Lead, consent.lead_id, with_for_update=True)
        if lead is not None and lead.status == LeadStatus.OPEN.value:
            lead.status = LeadStatus.WITHDRAWN.value
    return consent


async def vault_exists(session: AsyncSession, lead_id: str) -> bool:
    return await session.get(LeadVault, lead_id) is not None
