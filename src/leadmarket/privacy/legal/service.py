"""Law-enforcement requests (promise P10), one rule in one place each:

* **Entered** by an admin with the agency, the officer's contact, the kind of legal document and
  its reference, the document itself (sealed under the request's own data key, wrapped by the
  master key), the subject (a member's username or a lead id) and the P10 fields asked for.
* **Verified** by a *second* admin: one conditional UPDATE (``… WHERE status = 'entered' AND
  entered_by <> :me``), backed by a check constraint, so no admin verifies their own entry and
  two verifications cannot race. Or **rejected**, with the reason, by any admin.
* **Produced** only once verified (again one conditional UPDATE): the production holds only the
  P10 fields the request asks for, and notes what could not be produced (a lead's destroyed
  personal data, L4; records the platform never keeps). It is kept sealed, recorded as a
  disclosure to law enforcement (P2) and in the audit log, and downloadable by admins, each
  download audited (A4)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer

from leadmarket.accounts import repository
from leadmarket.audit.service import Actor, record
from leadmarket.config import Settings
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import Conflict, FieldError, Forbidden, NotFound, ValidationFailed
from leadmarket.kit.ids import new_id
from leadmarket.kit.keyring import Keyring, WrappedKey, new_data_key, open_sealed, seal
from leadmarket.leads.vault import (
    PersonalDataDestroyed,
    Purpose,
    Reader,
    is_past_retention,
    reveal_personal_data,
)
from leadmarket.models import (
    AuditEvent,
    Lead,
    LegalDocumentKind,
    LegalRequest,
    LegalRequestStatus,
    LegalSubjectKind,
    Order,
    User,
    UserSession,
    UserStatus,
)
from leadmarket.privacy.disclosures import (
    DisclosureKind,
    DisclosurePurpose,
    LegalBasis,
    record_disclosure,
)
from leadmarket.privacy.legal.schemas import FIELD_CATEGORIES, LegalField, LegalRequestIn

# Rows of purchase and listing history in one production; beyond it the production says so.
MAX_HISTORY_ROWS = 5_000
NO_FRAUD_RECORDS = (
    "Fraud complaints: the platform keeps no record of fraud complaints, so none can be produced."
)


class SecondAdminRequired(Forbidden):
    slug = "second-admin-required"
    title = "Another admin must verify this request"
    explanation = (
        "A law-enforcement request is verified by a second admin, never by the one who entered "
        "it (promise P10)."
    )


class LegalRequestNotReady(Conflict):
    slug = "legal-request-state"
    title = "The request is not in a state that allows this"
    explanation = (
        "A law-enforcement request is verified once, while it is entered; produced once, after "
        "it is verified; rejected only before it is produced. `status` says where it is."
    )


# Sealing -----------------------------------------------------------------------------------


def _context(request_id: str, part: str) -> bytes:
    return f"legal|{request_id}|{part}".encode()


def _data_key(keyring: Keyring, request: LegalRequest) -> bytes:
    return keyring.unwrap(WrappedKey(request.key_version, request.wrapped_key), request.id)


@dataclass(frozen=True)
class Document:
    filename: str
    content_type: str
    data: bytes


def _document_of(body: LegalRequestIn) -> Document:
    """The document as sent: text, or a base64 file. Exactly one of the two."""
    has_text = bool(body.document_text and body.document_text.strip())
    has_file = body.document_base64 is not None
    if has_text == has_file:
        message = (
            "Send the legal document as text or as a file, not both."
            if has_text
            else ("The legal document is required: as text or as a file.")
        )
        raise ValidationFailed(message, errors=[FieldError("document_text", message)])
    if has_text:
        assert body.document_text is not None
        return Document("document.txt", "text/plain; charset=utf-8", body.document_text.encode())
    try:
        data = base64.b64decode(body.document_base64 or "", validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if not data:
        raise ValidationFailed(
            "The document is not valid base64.",
            errors=[FieldError("document_base64", "Not valid base64, or empty.")],
        )
    filename = " ".join((body.document_filename or "").split())
    if not filename:
        raise ValidationFailed(
            "Name the document's file.",
            errors=[FieldError("document_filename", "Required with document_base64.")],
        )
    content_type = (body.document_content_type or "").strip() or "application/octet-stream"
    if "\n" in content_type or "\r" in content_type or "/" not in content_type:
        raise ValidationFailed(
            "Not a media type.",
            errors=[FieldError("document_content_type", "A media type, e.g. application/pdf.")],
        )
    return Document(filename, content_type, data)


# Entering, verifying, rejecting ------------------------------------------------------------


async def enter_request(
    session: AsyncSession, settings: Settings, *, admin_id: str, body: LegalRequestIn
) -> LegalRequest:
    document = _document_of(body)
    if (body.subject_username is None) == (body.subject_lead_id is None):
        message = "Name the subject: a member's username or a lead id, exactly one."
        raise ValidationFailed(message, errors=[FieldError("subject_username", message)])
    subject_user_id: str | None = None
    subject_lead_id: str | None = None
    if body.subject_username is not None:
        member = await repository.user_by_username(session, body.subject_username.strip())
        if member is None:
            raise ValidationFailed(
                "No member has this username.",
                errors=[FieldError("subject_username", "No member has this username.")],
            )
        subject_user_id = member.id
    else:
        lead = await session.get(Lead, (body.subject_lead_id or "").strip())
        if lead is None:
            raise ValidationFailed(
                "No lead has this id.",
                errors=[FieldError("subject_lead_id", "No lead has this id.")],
            )
        subject_lead_id = lead.id
    wanted = set(body.fields)
    fields = [f.value for f in LegalField if f in wanted]  # P10's order, each once

    request_id = new_id("lgr")
    keyring = settings.keyring()
    data_key = new_data_key()
    wrapped = keyring.wrap(data_key, request_id)
    request = LegalRequest(
        id=request_id,
        status=LegalRequestStatus.ENTERED.value,
        agency=body.agency,
        officer_name=body.officer_name,
        officer_email=body.officer_email,
        officer_phone=body.officer_phone or None,
        document_kind=body.document_kind.value,
        document_reference=body.document_reference,
        document_filename=document.filename,
        document_content_type=document.content_type,
        document_size=len(document.data),
        document_sha256=hashlib.sha256(document.data).hexdigest(),
        key_version=wrapped.version,
        wrapped_key=wrapped.wrapped,
        document_sealed=seal(data_key, document.data, _context(request_id, "document")),
        subject_kind=(
            LegalSubjectKind.MEMBER.value if subject_user_id else LegalSubjectKind.LEAD.value
        ),
        subject_user_id=subject_user_id,
        subject_lead_id=subject_lead_id,
        fields_requested=fields,
        entered_by=admin_id,
        entered_at=utcnow(),
    )
    session.add(request)
    await session.flush()
    await record(
        session,
        actor=Actor("user", admin_id),
        action="legal.entered",
        subject_type="legal_request",
        subject_id=request_id,
        fields=fields,
        details={
            "document_kind": request.document_kind,
            "subject_kind": request.subject_kind,
            "subject_id": subject_user_id or subject_lead_id,
        },
    )
    return request


async def get_request(session: AsyncSession, request_id: str) -> LegalRequest:
    request = await session.get(LegalRequest, request_id, populate_existing=True)
    if request is None:
        raise NotFound("No law-enforcement request has this id.")
    return request


async def list_requests(
    session: AsyncSession, *, status: str | None, limit: int, before_id: str | None
) -> list[LegalRequest]:
    """Newest first; one more than ``limit`` tells the caller there is a next page."""
    query = select(LegalRequest).order_by(LegalRequest.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(LegalRequest.status == status)
    if before_id is not None:
        query = query.where(LegalRequest.id < before_id)
    return list(await session.scalars(query))


async def _claim(
    session: AsyncSession,
    request_id: str,
    *,
    allowed_from: Sequence[str],
    conditions: Sequence[Any] = (),
    **values: Any,
) -> LegalRequest:
    """Move the request on with one conditional UPDATE; refuse with the reason if it cannot."""
    claimed = await session.execute(
        update(LegalRequest)
        .where(LegalRequest.id == request_id, LegalRequest.status.in_(allowed_from), *conditions)
        .values(**values)
        .returning(LegalRequest.id)
        .execution_options(synchronize_session=False)
    )
    if claimed.one_or_none() is None:
        current = await get_request(session, request_id)
        raise LegalRequestNotReady(
            f"This request is {current.status}.", extra={"status": current.status}
        )
    return await get_request(session, request_id)


async def verify_request(session: AsyncSession, request_id: str, *, admin_id: str) -> LegalRequest:
    current = await get_request(session, request_id)
    if current.entered_by == admin_id:
        raise SecondAdminRequired("You entered this request; another admin must verify it.")
    request = await _claim(
        session,
        request_id,
        allowed_from=[LegalRequestStatus.ENTERED.value],
        conditions=[LegalRequest.entered_by != admin_id],
        status=LegalRequestStatus.VERIFIED.value,
        verified_by=admin_id,
        verified_at=utcnow(),
    )
    await record(
        session,
        actor=Actor("user", admin_id),
        action="legal.verified",
        subject_type="legal_request",
        subject_id=request_id,
        details={"entered_by": request.entered_by},
    )
    return request


async def reject_request(
    session: AsyncSession, request_id: str, *, admin_id: str, reason: str
) -> LegalRequest:
    reason = " ".join(reason.split())
    if len(reason) < 5:
        raise ValidationFailed(
            "Say why the request is rejected.",
            errors=[FieldError("reason", "At least 5 characters.")],
        )
    request = await _claim(
        session,
        request_id,
        allowed_from=[LegalRequestStatus.ENTERED.value, LegalRequestStatus.VERIFIED.value],
        status=LegalRequestStatus.REJECTED.value,
        rejected_by=admin_id,
        rejected_at=utcnow(),
        rejection_reason=reason[:1000],
    )
    await record(
        session,
        actor=Actor("user", admin_id),
        action="legal.rejected",
        subject_type="legal_request",
        subject_id=request_id,
        reason=reason[:200],
    )
    return request


# Producing ---------------------------------------------------------------------------------


@dataclass
class Collected:
    data: dict[str, Any]
    notes: list[str]


def _stamp(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat() if value is not None else None


async def _lead_history(session: AsyncSession, lead: Lead) -> dict[str, Any]:
    seller = await session.get(User, lead.seller_id)
    orders = await session.execute(
        select(Order, User.username)
        .join(User, User.id == Order.buyer_id)
        .where(Order.lead_id == lead.id)
        .order_by(Order.purchased_at)
    )
    return {
        "listing": {
            "lead_id": lead.id,
            "vertical": lead.vertical,
            "seller_username": seller.username if seller else None,
            "listed_at": _stamp(lead.created_at),
            "status": lead.status,
        },
        "purchases": [
            {
                "order_id": order.id,
                "buyer_username": buyer,
                "purchased_at": _stamp(order.purchased_at),
                "price_cents": order.price_cents,
                "currency": order.currency,
                "status": order.status,
            }
            for order, buyer in orders
        ],
    }


# Which sealed vault fields each P10 field needs for a lead.
_VAULT_FIELDS: dict[LegalField, tuple[str, ...]] = {
    LegalField.NAME: ("first_name", "last_name"),
    LegalField.POSTCODE: ("postal_code",),
    LegalField.TELEPHONE: ("phone",),
    LegalField.EMAIL: ("email",),
    LegalField.IP_ADDRESS: ("consent_ip",),
}


async def _collect_lead(
    session: AsyncSession,
    settings: Settings,
    request: LegalRequest,
    fields: list[LegalField],
    reader: Reader,
) -> Collected:
    assert request.subject_lead_id is not None
    lead = await session.get(Lead, request.subject_lead_id)
    if lead is None:
        raise NotFound("The lead of this request no longer exists.")
    collected = Collected({}, [])
    needed = sorted({v for f in fields for v in _VAULT_FIELDS.get(f, ())})
    sealed: dict[str, Any] = {}
    # Past its retention deadline the data counts as destroyed even if the sweep is late (L4):
    # the platform promised it would be gone, so it is not handed to anyone.
    destroyed = is_past_retention(lead, utcnow())
    if needed and not destroyed:
        try:
            sealed = await reveal_personal_data(
                session,
                settings,
                lead.id,
                reader=reader,
                purpose=Purpose.LEGAL_REQUEST,
                reason=f"law-enforcement request {request.id}",
                fields=needed,
            )
        except PersonalDataDestroyed:
            destroyed = True
    gone = [f.value for f in fields if f in _VAULT_FIELDS]
    if destroyed and gone:
        when = _stamp(lead.pii_destroyed_at or lead.pii_expires_at) or "earlier"
        collected.notes.append(
            f"The lead's personal data was destroyed on {when} (it is kept at most 48 hours "
            f"after the sale or the end of its auction); these fields no longer exist and "
            f"cannot be produced: {', '.join(gone)}. Only what remains is produced."
        )
    for field in fields:
        value: Any = None
        if field is LegalField.NAME and not destroyed:
            value = (
                " ".join(str(sealed[k]) for k in ("first_name", "last_name") if sealed.get(k))
                or None
            )
        elif field is LegalField.CITY:
            value = lead.city
        elif field is LegalField.STATE:
            value = lead.region
        elif field in _VAULT_FIELDS and not destroyed:
            value = sealed.get(_VAULT_FIELDS[field][0])
        elif field is LegalField.USER_ID_HISTORY:
            collected.notes.append(
                "User ID history: a lead's consumer has no member account, so there is none."
            )
        elif field is LegalField.FRAUD_COMPLAINTS:
            value = []
            collected.notes.append(NO_FRAUD_RECORDS)
        elif field is LegalField.PURCHASE_AND_LISTING_HISTORY:
            value = await _lead_history(session, lead)
        collected.data[field.value] = value
    return collected


async def _member_history(session: AsyncSession, user: User) -> tuple[dict[str, Any], bool]:
    purchases = await session.execute(
        select(Order, Lead.vertical)
        .join(Lead, Lead.id == Order.lead_id)
        .where(Order.buyer_id == user.id)
        .order_by(Order.purchased_at)
        .limit(MAX_HISTORY_ROWS + 1)
    )
    bought = [
        {
            "order_id": order.id,
            "lead_id": order.lead_id,
            "vertical": vertical,
            "purchased_at": _stamp(order.purchased_at),
            "price_cents": order.price_cents,
            "currency": order.currency,
            "status": order.status,
        }
        for order, vertical in purchases
    ]
    listed = [
        {
            "lead_id": lead.id,
            "vertical": lead.vertical,
            "listed_at": _stamp(lead.created_at),
            "status": lead.status,
            "times_sold": lead.sold_count,
        }
        for lead in await session.scalars(
            select(Lead)
            .where(Lead.seller_id == user.id)
            .order_by(Lead.created_at)
            .limit(MAX_HISTORY_ROWS + 1)
        )
    ]
    cut = len(bought) > MAX_HISTORY_ROWS or len(listed) > MAX_HISTORY_ROWS
    return {
        "purchases": bought[:MAX_HISTORY_ROWS],
        "listings": listed[:MAX_HISTORY_ROWS],
    }, cut


async def _collect_member(
    session: AsyncSession, request: LegalRequest, fields: list[LegalField]
) -> Collected:
    assert request.subject_user_id is not None
    user = await session.get(User, request.subject_user_id, populate_existing=True)
    if user is None:
        raise NotFound("The member of this request no longer exists.")
    collected = Collected({}, [])
    closed = user.status == UserStatus.CLOSED.value
    if closed:
        collected.notes.append(
            f"The member closed their account on {_stamp(user.closed_at)}; their name, email "
            "address, telephone number and address were erased then and cannot be produced."
        )
    address = user.address or {}
    for field in fields:
        value: Any = None
        if field is LegalField.NAME and not closed:
            value = user.name
        elif field is LegalField.CITY and not closed:
            value = address.get("city")
        elif field is LegalField.STATE and not closed:
            value = address.get("region")
        elif field is LegalField.POSTCODE and not closed:
            value = address.get("postal_code")
        elif field is LegalField.TELEPHONE and not closed:
            value = user.phone
        elif field is LegalField.EMAIL and not closed:
            value = user.email
        elif field is LegalField.USER_ID_HISTORY:
            changes = await session.scalars(
                select(AuditEvent)
                .where(
                    AuditEvent.subject_id == user.id,
                    AuditEvent.action == "account.updated",
                )
                .order_by(AuditEvent.seq)
            )
            value = {
                "account_id": user.id,
                "current_username": user.username,
                "registered_at": _stamp(user.created_at),
                "username_changed_at": [
                    _stamp(e.at) for e in changes if "username" in (e.fields or [])
                ],
            }
            collected.notes.append(
                "User ID history: earlier usernames are not kept, only when they changed."
            )
        elif field is LegalField.IP_ADDRESS:
            rows = await session.execute(
                select(
                    UserSession.ip,
                    func.min(UserSession.created_at),
                    func.max(UserSession.last_used_at),
                )
                .where(UserSession.user_id == user.id, UserSession.ip.is_not(None))
                .group_by(UserSession.ip)
                .order_by(func.min(UserSession.created_at))
            )
            value = [
                {"ip": ip, "first_seen": _stamp(first), "last_seen": _stamp(last)}
                for ip, first, last in rows
            ]
        elif field is LegalField.FRAUD_COMPLAINTS:
            value = []
            collected.notes.append(NO_FRAUD_RECORDS)
        elif field is LegalField.PURCHASE_AND_LISTING_HISTORY:
            value, cut = await _member_history(session, user)
            if cut:
                collected.notes.append(
                    f"Purchase and listing history: only the first {MAX_HISTORY_ROWS} of each "
                    "are produced."
                )
        collected.data[field.value] = value
    return collected


def _has_value(value: Any) -> bool:
    return value not in (None, [], {}, "")


async def produce(
    session: AsyncSession, settings: Settings, request_id: str, *, admin: Reader
) -> dict[str, Any]:
    """Generate the production of a verified request, once. Returns it (as JSON-ready data)."""
    now = utcnow()
    request = await _claim(
        session,
        request_id,
        allowed_from=[LegalRequestStatus.VERIFIED.value],
        status=LegalRequestStatus.PRODUCED.value,
        produced_by=admin.user_id,
        produced_at=now,
    )
    known = {f.value for f in LegalField}
    fields = [LegalField(f) for f in request.fields_requested if f in known]
    if request.subject_lead_id is not None:
        collected = await _collect_lead(session, settings, request, fields, admin)
        subject = {"kind": LegalSubjectKind.LEAD.value, "lead_id": request.subject_lead_id}
    else:
        collected = await _collect_member(session, request, fields)
        names = await repository.usernames(session, [request.subject_user_id])
        subject = {
            "kind": LegalSubjectKind.MEMBER.value,
            "username": names.get(request.subject_user_id or "", ""),
        }
    # Belt and braces: nothing outside the request's P10 fields leaves the building.
    assert set(collected.data) <= set(request.fields_requested) <= {f.value for f in LegalField}
    production = {
        "legal_request_id": request.id,
        "agency": request.agency,
        "document_kind": request.document_kind,
        "document_reference": request.document_reference,
        "subject": subject,
        "fields_requested": list(request.fields_requested),
        "produced_at": _stamp(now),
        "data": collected.data,
        "notes": collected.notes,
    }
    produced_fields = [name for name, value in collected.data.items() if _has_value(value)]
    keyring = settings.keyring()
    request.production_sealed = seal(
        _data_key(keyring, request),
        json.dumps(production, sort_keys=True).encode(),
        _context(request.id, "production"),
    )
    request.production_fields = produced_fields
    disclosure_id: str | None = None
    if produced_fields:
        disclosure = record_disclosure(
            session,
            DisclosureKind.LAW_ENFORCEMENT,
            lead_id=request.subject_lead_id,
            subject_user_id=request.subject_user_id,
            recipient_name=request.agency,
            categories={c for f in produced_fields for c in FIELD_CATEGORIES[LegalField(f)]},
            purpose=DisclosurePurpose.LEGAL_REQUEST,
            legal_basis=LegalBasis(LegalDocumentKind(request.document_kind).value),
            basis_reference=request.document_reference,
            legal_request_id=request.id,
            at=now,
        )
        disclosure.id = new_id("dsc")
        disclosure_id = disclosure.id
    await session.flush()
    await record(
        session,
        actor=Actor("user", admin.user_id),
        action="legal.produced",
        subject_type="legal_request",
        subject_id=request.id,
        fields=produced_fields,
        details={
            "subject_kind": request.subject_kind,
            "subject_id": request.subject_lead_id or request.subject_user_id,
            "disclosure_id": disclosure_id,
        },
    )
    return production


async def _sealed(session: AsyncSession, request_id: str, column: Any) -> LegalRequest:
    request = await session.scalar(
        select(LegalRequest)
        .where(LegalRequest.id == request_id)
        .options(undefer(column))
        .execution_options(populate_existing=True)
    )
    if request is None:
        raise NotFound("No law-enforcement request has this id.")
    return request


async def read_production(
    session: AsyncSession, settings: Settings, request_id: str, *, admin_id: str
) -> dict[str, Any]:
    """The production as it was handed over; each read is in the audit log (A4)."""
    request = await _sealed(session, request_id, LegalRequest.production_sealed)
    if request.production_sealed is None:
        raise LegalRequestNotReady(
            f"Nothing was produced; this request is {request.status}.",
            extra={"status": request.status},
        )
    plain = open_sealed(
        _data_key(settings.keyring(), request),
        request.production_sealed,
        _context(request.id, "production"),
    )
    await record(
        session,
        actor=Actor("user", admin_id),
        action="legal.production_read",
        subject_type="legal_request",
        subject_id=request.id,
        fields=request.production_fields or [],
    )
    production: dict[str, Any] = json.loads(plain)
    return production


async def read_document(
    session: AsyncSession, settings: Settings, request_id: str, *, admin_id: str
) -> Document:
    request = await _sealed(session, request_id, LegalRequest.document_sealed)
    data = open_sealed(
        _data_key(settings.keyring(), request),
        request.document_sealed,
        _context(request.id, "document"),
    )
    await record(
        session,
        actor=Actor("user", admin_id),
        action="legal.document_read",
        subject_type="legal_request",
        subject_id=request.id,
    )
    return Document(request.document_filename, request.document_content_type, data)


# Key rotation ------------------------------------------------------------------------------


async def rewrap_legal_keys(
    session: AsyncSession, keyring: Keyring, *, batch_size: int = 500
) -> int:
    """Re-wrap every request's data key under the current master key (``leadmarket keys
    rotate``), so retiring an old master key never makes a legal document unreadable."""
    done = 0
    while True:
        rows = (
            await session.execute(
                select(LegalRequest.id, LegalRequest.key_version, LegalRequest.wrapped_key)
                .where(LegalRequest.key_version != keyring.current)
                .limit(batch_size)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not rows:
            return done
        for request_id, version, wrapped in rows:
            fresh = keyring.rewrap(WrappedKey(version, wrapped), request_id)
            await session.execute(
                update(LegalRequest)
                .where(LegalRequest.id == request_id)
                .values(key_version=fresh.version, wrapped_key=fresh.wrapped)
            )
        done += len(rows)


async def legal_key_versions_in_use(session: AsyncSession) -> set[int]:
    return set(await session.scalars(select(LegalRequest.key_version).distinct()))
