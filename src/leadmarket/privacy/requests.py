"""The life of a consumer rights request (P1–P6), from submission to answer and, 24 months later,
deletion. The API, the privacy center pages and the officer's queue all call this module.

* **Submission** needs no account. The request gets a random token (kept as its SHA-256 only)
  and a one-time code sent to the email given, or by text message to the phone. The receipt is
  confirmed in that same message, at once (``confirmed_at``; the rule is 10 business days,
  ``confirm_by``). Nothing is looked up about the consumer at this point: a request about
  someone we do not hold is answered exactly like one about someone we do (same status, same
  body, same message), so the API cannot be used to probe who is in the database.
* **Verification** (P4): the right code, before it expires, within a limited number of
  attempts, proves control of the identifier; after the last wrong attempt or past the code's
  expiry the request is ``expired`` and must be submitted again. Only then is the consumer
  looked up, so "no match" is only ever told to someone who proved the identifier is theirs.
  Specific pieces (``access``) need more: at least :data:`ACCESS_MIN_DATA_POINTS` of the name,
  postal code and birth date given with the request must match the data held. Short of that,
  the request is answered with the categories only, as ``partially_fulfilled`` with reason
  ``insufficient_verification`` (what the CCPA regulations prescribe for an unverifiable
  request for specific pieces). Those data points serve verification only and are deleted as
  soon as they have been compared.
* **Agents and parents** (P4) give a declaration and/or a signed permission; the request is
  fulfilled only once the consumer has verified the code *and* a privacy officer has accepted
  that proof.
* **Fulfilment** runs as a durable job calling :mod:`leadmarket.privacy.consumer_data`; the
  know/access report is stored sealed and downloadable for ``privacy_report_days``. At most
  :data:`MAX_KNOW_ACCESS_PER_YEAR` know/access requests of one consumer are answered in 12
  months; another is denied ``too_many_requests``, with the reason and no fee (P5, P6). The
  answer covers the 12 months before the request.
* **Deadlines** (P5): due 45 days after receipt; a privacy officer may extend once, to 90 days
  after receipt, with a written reason that is emailed to the consumer.

Every change is written to the request's event log (who, when, why)."""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import logging
import secrets
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.audit.service import Actor, record
from leadmarket.config import Settings
from leadmarket.kit.crypto import derive_key, keyed_hash, random_token, token_digest
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import (
    Conflict,
    DomainError,
    FieldError,
    NotFound,
    TooManyRequests,
    ValidationFailed,
)
from leadmarket.kit.ids import new_id
from leadmarket.kit.jobs import enqueue
from leadmarket.kit.keyring import Keyring, WrappedKey, new_data_key, open_sealed, seal
from leadmarket.leads.intake import LeadsKit, take_advisory_locks
from leadmarket.leads.vault import IndexKind
from leadmarket.models import LeadBlindIndex
from leadmarket.models.privacy import (
    FINAL_STATUSES,
    OPEN_STATUSES,
    Channel,
    DenialReason,
    OnBehalf,
    PrivacyRequest,
    PrivacyRequestEvent,
    PrivacyThrottleHit,
    ProofStatus,
    RequestStatus,
    RequestType,
)
from leadmarket.notifications.notify import notify_privacy_requester
from leadmarket.notifications.service import queue_mail
from leadmarket.notifications.sms import queue_text_message
from leadmarket.privacy import consumer_data
from leadmarket.privacy.schemas import PrivacyRequestIn

log = logging.getLogger("leadmarket.privacy")

REQUEST_TOKEN_PREFIX = "prt_"
FULFIL_JOB = "privacy.fulfil_request"
SWEEP_JOB = "privacy.sweep_requests"

CONFIRM_BUSINESS_DAYS = 10
ANSWER_DAYS = 45
EXTENDED_ANSWER_DAYS = 90
LOOKBACK = dt.timedelta(days=365)  # "the 12 months before the request" (P5)
MAX_KNOW_ACCESS_PER_YEAR = 2
ACCESS_MIN_DATA_POINTS = 2
# Requests whose answers count toward the twice-a-year limit: the ones actually answered.
_ANSWERED = (
    RequestStatus.IN_PROGRESS.value,
    RequestStatus.FULFILLED.value,
    RequestStatus.PARTIALLY_FULFILLED.value,
)

TYPE_LABELS = {
    RequestType.KNOW.value: "know what personal information we hold about you",
    RequestType.ACCESS.value: "get a copy of your personal information",
    RequestType.DELETE.value: "delete your personal information",
    RequestType.CORRECT.value: "correct your personal information",
    RequestType.OPT_OUT.value: "opt out of the sale and sharing of your personal information",
}


# Problems ------------------------------------------------------------------------------------


class PrivacyRequestNotFound(NotFound):
    slug = "privacy-request-not-found"
    title = "No such privacy request"
    explanation = (
        "No privacy request has this id, or the token sent with it is not the request's token."
    )


class VerificationCodeWrong(DomainError):
    status = 422
    slug = "verification-code-wrong"
    title = "Wrong code"
    explanation = (
        "The code does not match the one we sent. `attempts_left` says how many tries remain; "
        "after the last one the request expires and must be submitted again."
    )


class VerificationExpired(DomainError):
    status = 410
    slug = "privacy-request-expired"
    title = "Verification expired"
    explanation = (
        "The code expired, or too many wrong codes were entered. Nothing more can be done with "
        "this request: submit a new one and use the code we send."
    )


class AlreadyVerified(Conflict):
    slug = "privacy-request-verified"
    title = "Already verified"
    explanation = "This request's identity check is done; follow its status with its token."


class RequestClosed(Conflict):
    slug = "privacy-request-closed"
    title = "Request already answered"
    explanation = "The request is answered or expired; nothing about it can change any more."


class ExtensionRefused(Conflict):
    slug = "privacy-extension-refused"
    title = "Extension refused"
    explanation = (
        "A request may be extended once only (to 90 days after receipt), while open and before "
        "its 45-day deadline has passed."
    )


class ProofReviewRefused(Conflict):
    slug = "privacy-proof-review-refused"
    title = "No proof to review"
    explanation = "Only an open agent or parent request whose proof awaits review can be decided."


# Dates ---------------------------------------------------------------------------------------


def add_business_days(start: dt.datetime, days: int) -> dt.datetime:
    """``days`` weekdays after ``start`` (public holidays are not counted out: the earlier
    date is the safe one)."""
    current = start
    added = 0
    while added < days:
        current += dt.timedelta(days=1)
        if current.weekday() < 5:
            added += 1
    return current


def add_months(start: dt.datetime, months: int) -> dt.datetime:
    month_index = start.month - 1 + months
    year, month = start.year + month_index // 12, month_index % 12 + 1
    for day in (start.day, 30, 29, 28):
        try:
            return start.replace(year=year, month=month, day=day)
        except ValueError:
            continue
    raise AssertionError("unreachable")


def effective_due(request: PrivacyRequest) -> dt.datetime:
    return request.extended_until or request.due_at


def is_overdue(request: PrivacyRequest, now: dt.datetime) -> bool:
    return request.status in OPEN_STATUSES and effective_due(request) < now


# Sealing: the request's own data key, wrapped by the master keyring ---------------------------


def _context(request_id: str, field: str) -> bytes:
    return f"privacy-request|{request_id}|{field}".encode()


def _data_key(keyring: Keyring, request: PrivacyRequest) -> bytes:
    return keyring.unwrap(WrappedKey(request.key_version, request.wrapped_key), request.id)


def _seal(keyring: Keyring, request: PrivacyRequest, field: str, value: Any) -> bytes:
    return seal(
        _data_key(keyring, request), json.dumps(value).encode(), _context(request.id, field)
    )


def _open(keyring: Keyring, request: PrivacyRequest, field: str) -> Any:
    sealed: bytes | None = getattr(request, f"{field}_sealed")
    if sealed is None:
        return None
    return json.loads(open_sealed(_data_key(keyring, request), sealed, _context(request.id, field)))


def mask_email(address: str) -> str:
    local, _, domain = address.partition("@")
    name, _, tld = domain.rpartition(".")
    return f"{local[:1]}…@{name[:1]}….{tld}"[:40]


def mask_phone(number: str) -> str:
    return f"…{number[-2:]}"


# Events and throttling -----------------------------------------------------------------------


@dataclass(frozen=True)
class Who:
    """Who changed a request: the requester (holding its token or code), the platform, or a
    staff member."""

    type: str
    id: str | None = None

    @classmethod
    def requester(cls) -> Who:
        return cls("requester")

    @classmethod
    def system(cls) -> Who:
        return cls("system")

    @classmethod
    def user(cls, user_id: str) -> Who:
        return cls("user", user_id)


def _log_event(
    session: AsyncSession,
    request: PrivacyRequest,
    who: Who,
    action: str,
    *,
    to_status: RequestStatus | None = None,
    reason: str | None = None,
    now: dt.datetime | None = None,
) -> None:
    from_status = request.status
    if to_status is not None:
        request.status = to_status.value
    session.add(
        PrivacyRequestEvent(
            request_id=request.id,
            at=now or utcnow(),
            actor_type=who.type,
            actor_id=who.id,
            action=action,
            from_status=from_status if to_status is not None else None,
            to_status=to_status.value if to_status is not None else None,
            reason=reason,
        )
    )


def _throttle_key(settings: Settings, scope: str, value: str) -> str:
    return keyed_hash(derive_key(settings.signing_key(), "privacy-throttle"), f"{scope}:{value}")


async def _throttle(
    session: AsyncSession, settings: Settings, keys: Sequence[tuple[str, int, dt.timedelta]]
) -> None:
    """Refuse a submission over any limit; otherwise count it. The limits apply alike to every
    identifier, held or not, so a 429 says nothing about who is in the database."""
    now = utcnow()
    for key_hash, limit, window in keys:
        count, oldest = (
            await session.execute(
                select(func.count(), func.min(PrivacyThrottleHit.at)).where(
                    PrivacyThrottleHit.key_hash == key_hash, PrivacyThrottleHit.at > now - window
                )
            )
        ).one()
        if count >= limit and oldest is not None:
            wait = int((oldest + window - now).total_seconds()) + 1
            raise TooManyRequests(
                "Too many privacy requests from here or for this identifier; try again later.",
                retry_after=wait,
            )
    for key_hash, _, _ in keys:
        session.add(PrivacyThrottleHit(key_hash=key_hash, at=now))


# Submission ----------------------------------------------------------------------------------


def _code_digest(settings: Settings, request_id: str, code: str) -> str:
    return keyed_hash(derive_key(settings.signing_key(), "privacy-code"), f"{request_id}:{code}")


def _new_code() -> str:
    return f"{secrets.randbelow(10**6):06d}"


def _date(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%B %-d, %Y")


def _code_message(settings: Settings, request: PrivacyRequest, code: str) -> tuple[str, str]:
    subject = "Your privacy request: confirmation code"
    body = (
        f"We received a request to {TYPE_LABELS[request.type]} on "
        f"{_date(request.received_at)} (reference {request.id}).\n\n"
        f"If you made it, confirm it with this code: {code}\n"
        f"The code is valid for {settings.privacy_code_minutes} minutes.\n\n"
        f"We will answer by {_date(request.due_at)}. Using your privacy rights costs nothing "
        "and changes nothing else about how we treat you.\n\n"
        "If you did not make this request, ignore this message: nothing happens without the "
        "code.\n"
    )
    return subject, body


async def submit_request(
    session: AsyncSession,
    settings: Settings,
    kit: LeadsKit,
    data: PrivacyRequestIn,
    *,
    client_ip: str,
    now: dt.datetime | None = None,
) -> tuple[PrivacyRequest, str]:
    """Record a request and send its one-time code; returns the request and its token (shown
    once). Raises :class:`ValidationFailed` naming each bad field, or :class:`TooManyRequests`."""
    problems = data.problems()
    if problems:
        raise ValidationFailed(
            "; ".join(f"{e.field}: {e.message}" for e in problems[:5]), errors=problems
        )
    consumer = consumer_data.consumer_from(kit, email=data.email, phone=data.phone)
    limits = [
        (
            _throttle_key(settings, "ip", client_ip),
            settings.privacy_requests_per_ip_per_hour,
            dt.timedelta(hours=1),
        )
    ]
    for digest in (consumer.email_digest, consumer.phone_digest):
        if digest is not None:
            limits.append(
                (
                    _throttle_key(settings, "identifier", digest),
                    settings.privacy_requests_per_identifier_per_day,
                    dt.timedelta(days=1),
                )
            )
    await _throttle(session, settings, limits)

    now = now or utcnow()
    keyring = settings.keyring()
    token = REQUEST_TOKEN_PREFIX + random_token(32)
    code = _new_code()
    channel = Channel.EMAIL if data.email else Channel.PHONE
    request = PrivacyRequest(
        id=new_id("prq"),
        type=data.type,
        status=RequestStatus.IDENTITY_UNVERIFIED.value,
        received_at=now,
        confirm_by=add_business_days(now, CONFIRM_BUSINESS_DAYS),
        due_at=now + dt.timedelta(days=ANSWER_DAYS),
        purge_after=add_months(now, settings.privacy_request_retention_months),
        token_hash=token_digest(token),
        email_digest=consumer.email_digest,
        phone_digest=consumer.phone_digest,
        contact_hint=mask_email(data.email) if data.email else mask_phone(data.phone or ""),
        channel=channel.value,
        code_expires_at=now + dt.timedelta(minutes=settings.privacy_code_minutes),
        attempts_left=settings.privacy_code_attempts,
        on_behalf=data.on_behalf,
        proof_status=(
            ProofStatus.NOT_NEEDED.value
            if data.on_behalf == OnBehalf.SELF.value
            else ProofStatus.AWAITING_REVIEW.value
        ),
    )
    wrapped = keyring.wrap(new_data_key(), request.id)
    request.key_version, request.wrapped_key = wrapped.version, wrapped.wrapped
    request.code_digest = _code_digest(settings, request.id, code)
    if data.email:
        request.email_sealed = _seal(keyring, request, "email", data.email)
    if data.phone:
        request.phone_sealed = _seal(keyring, request, "phone", data.phone)
    if data.details:
        request.details_sealed = _seal(keyring, request, "details", data.details)
    points = data.verification_data()
    if points and data.type == RequestType.ACCESS.value:
        # Only an access request uses them (P4: given for verification, used only for it).
        request.verification_data_sealed = _seal(keyring, request, "verification_data", points)
    if data.on_behalf != OnBehalf.SELF.value:
        request.agent_name_sealed = _seal(keyring, request, "agent_name", data.agent_name)
        if data.proof_text:
            request.proof_text_sealed = _seal(keyring, request, "proof_text", data.proof_text)
        if data.proof_document is not None:
            document = data.proof_document
            request.proof_document_sealed = _seal(
                keyring,
                request,
                "proof_document",
                {
                    "filename": document.filename,
                    "content_type": document.content_type,
                    "data_base64": document.data_base64,
                },
            )
    session.add(request)
    _log_event(
        session,
        request,
        Who.requester(),
        "submitted",
        reason=f"{data.type} request, on behalf: {data.on_behalf}, code by {channel.value}",
        now=now,
    )
    await session.flush()

    subject, body = _code_message(settings, request, code)
    if data.email:
        await queue_mail(
            session,
            settings,
            to=data.email,
            subject=subject,
            text_body=body,
            template="privacy.request_code",
        )
    else:
        assert data.phone is not None
        await queue_text_message(
            session,
            settings,
            to=data.phone,
            body=f"Leadmarket privacy request {request.id}: your code is {code} "
            f"(valid {settings.privacy_code_minutes} min). Not you? Ignore this.",
            template="privacy.request_code",
        )
    request.confirmed_at = now
    _log_event(
        session,
        request,
        Who.system(),
        "receipt_confirmed",
        reason=f"confirmation and code sent by {channel.value}",
        now=now,
    )
    log.info("privacy request submitted", extra={"request_id": request.id, "type": data.type})
    return request, token


# Reading by token ----------------------------------------------------------------------------


async def request_by_token(session: AsyncSession, request_id: str, token: str) -> PrivacyRequest:
    """The request if ``token`` is its token; otherwise the same 404 as for an unknown id."""
    request = await session.get(PrivacyRequest, request_id)
    if request is None or not hmac.compare_digest(
        request.token_hash.encode(), token_digest(token).encode()
    ):
        raise PrivacyRequestNotFound()
    return request


async def _locked(session: AsyncSession, request_id: str) -> PrivacyRequest:
    request = await session.scalar(
        select(PrivacyRequest)
        .where(PrivacyRequest.id == request_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if request is None:
        raise PrivacyRequestNotFound()
    return request


def read_report(settings: Settings, request: PrivacyRequest) -> dict[str, Any] | None:
    report: dict[str, Any] | None = _open(settings.keyring(), request, "report")
    return report


async def answer_of(
    session: AsyncSession, settings: Settings, request: PrivacyRequest
) -> dict[str, Any] | None:
    """What the requester is told was done: the report (opened, and the opening recorded),
    or the outcome of a delete/correct/opt-out."""
    if request.report_sealed is not None:
        report = read_report(settings, request)
        await record(
            session,
            actor=Actor("requester", request.id),
            action="privacy.report_read",
            subject_type="privacy_request",
            subject_id=request.id,
            reason="the verified requester reads their answer",
        )
        return report
    return request.outcome


# Verification --------------------------------------------------------------------------------


def _wipe_verification(request: PrivacyRequest) -> None:
    request.code_digest = None
    request.code_expires_at = None
    request.verification_data_sealed = None


def _expire(session: AsyncSession, request: PrivacyRequest, why: str, now: dt.datetime) -> None:
    _wipe_verification(request)
    request.closed_at = now
    _log_event(
        session,
        request,
        Who.system(),
        "expired",
        to_status=RequestStatus.EXPIRED,
        reason=why,
        now=now,
    )


async def verify_request(
    session: AsyncSession,
    settings: Settings,
    request_id: str,
    code: str,
    *,
    now: dt.datetime | None = None,
) -> PrivacyRequest:
    """Check the one-time code. A wrong or expired code raises, having recorded the attempt
    (or the expiry) in the session: the caller commits before answering, so the count holds.
    The row is locked, so two guesses at once cannot both use the last attempt."""
    now = now or utcnow()
    request = await _locked(session, request_id)
    if request.status == RequestStatus.EXPIRED.value:
        raise VerificationExpired("This request expired; submit a new one.")
    if request.status != RequestStatus.IDENTITY_UNVERIFIED.value:
        raise AlreadyVerified("This request is already verified.")
    if request.code_expires_at is None or request.code_expires_at <= now:
        _expire(session, request, "the code expired before it was entered", now)
        raise VerificationExpired("The code has expired; submit the request again.")
    expected = request.code_digest or ""
    if not hmac.compare_digest(
        _code_digest(settings, request.id, code).encode(), expected.encode()
    ):
        request.attempts_left = max(0, request.attempts_left - 1)
        if request.attempts_left == 0:
            _log_event(
                session, request, Who.requester(), "code_wrong", reason="no attempts left", now=now
            )
            _expire(session, request, "too many wrong codes", now)
            raise VerificationExpired(
                "Too many wrong codes: this request expired; submit a new one."
            )
        _log_event(
            session,
            request,
            Who.requester(),
            "code_wrong",
            reason=f"{request.attempts_left} attempts left",
            now=now,
        )
        raise VerificationCodeWrong(
            f"The code is wrong; {request.attempts_left} attempts left.",
            errors=[FieldError("code", f"Wrong code; {request.attempts_left} attempts left.")],
            extra={"attempts_left": request.attempts_left},
        )
    request.code_digest = None
    request.code_expires_at = None
    request.verified_at = now
    _log_event(
        session,
        request,
        Who.requester(),
        "verified",
        to_status=RequestStatus.PENDING,
        reason=f"the code sent by {request.channel} was entered",
        now=now,
    )
    await _start_fulfilment_if_ready(session, request, now)
    return request


async def _start_fulfilment_if_ready(
    session: AsyncSession, request: PrivacyRequest, now: dt.datetime
) -> None:
    if request.status != RequestStatus.PENDING.value:
        return
    if request.proof_status == ProofStatus.AWAITING_REVIEW.value:
        _log_event(
            session,
            request,
            Who.system(),
            "awaiting_proof_review",
            reason="a privacy officer must accept the agent's or parent's proof first",
            now=now,
        )
        return
    if request.proof_status == ProofStatus.REJECTED.value:
        return
    await enqueue(
        session, FULFIL_JOB, {"request_id": request.id}, dedupe_key=f"privacy-fulfil:{request.id}"
    )


# Fulfilment ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Every email and phone digest known to be one consumer's: those the request gives, and
    those of the leads still held for it (a lead names both an email and a phone). So a
    consumer who asks once by email and once by phone is still one consumer for the
    twice-a-year limit (P5). Leads already destroyed (L4) link nothing any more."""

    email_digests: frozenset[str]
    phone_digests: frozenset[str]

    def matches(self) -> Any:
        return or_(
            PrivacyRequest.email_digest.in_(sorted(self.email_digests)),
            PrivacyRequest.phone_digest.in_(sorted(self.phone_digests)),
        )

    def lock_names(self) -> list[str]:
        return [f"privacy\0{d}" for d in self.email_digests | self.phone_digests]


async def consumer_identity(session: AsyncSession, request: PrivacyRequest) -> Identity:
    emails = {request.email_digest} - {None}
    phones = {request.phone_digest} - {None}
    consumer = consumer_data.Consumer(request.email_digest, request.phone_digest)
    lead_ids = await consumer_data.find_consumer_leads(session, consumer)
    if lead_ids:
        rows = await session.execute(
            select(LeadBlindIndex.kind, LeadBlindIndex.digest).where(
                LeadBlindIndex.lead_id.in_(lead_ids),
                LeadBlindIndex.kind.in_((IndexKind.EMAIL.value, IndexKind.PHONE.value)),
            )
        )
        for kind, digest in rows:
            (emails if kind == IndexKind.EMAIL.value else phones).add(digest)
    return Identity(
        frozenset(d for d in emails if d is not None),
        frozenset(d for d in phones if d is not None),
    )


async def _lock_consumer(session: AsyncSession, identity: Identity) -> None:
    """Serialise the fulfilment of one consumer's requests on PostgreSQL, so two running at
    once cannot both pass the twice-a-year count (SQLite's write lock already does). The keys
    are taken in one global order, so two requests sharing some of them cannot deadlock."""
    await take_advisory_locks(session, identity.lock_names())


async def answered_know_access_requests(
    session: AsyncSession, request: PrivacyRequest, identity: Identity
) -> int:
    """Other know/access requests of the same consumer (by any of their identifiers) received
    in the 12 months before this one and answered, or verified and waiting to be (P5). Only
    earlier requests count: the third request is the one refused, not the first one because
    it waited for an agent's proof while two later ones were answered."""
    count = await session.scalar(
        select(func.count())
        .select_from(PrivacyRequest)
        .where(
            identity.matches(),
            PrivacyRequest.id != request.id,
            PrivacyRequest.type.in_((RequestType.KNOW.value, RequestType.ACCESS.value)),
            PrivacyRequest.status.in_((*_ANSWERED, RequestStatus.PENDING.value)),
            PrivacyRequest.received_at > request.received_at - LOOKBACK,
            PrivacyRequest.received_at < request.received_at,
        )
    )
    return int(count or 0)


async def _notify(
    session: AsyncSession,
    settings: Settings,
    request: PrivacyRequest,
    *,
    subject: str,
    body: str,
    template: str,
    why: str,
) -> None:
    """Write to the requester where the code went. Opening the sealed address is recorded."""
    keyring = settings.keyring()
    field = "email" if request.channel == Channel.EMAIL.value else "phone"
    address = _open(keyring, request, field)
    if address is None:
        return
    await record(
        session,
        actor=Actor.system(),
        action="pii.read",
        subject_type="privacy_request",
        subject_id=request.id,
        fields=[field],
        reason=why[:200],
    )
    # The notification center words it and picks the channel the requester gave.
    await notify_privacy_requester(
        session,
        settings,
        request_id=request.id,
        email=str(address) if field == "email" else None,
        phone=str(address) if field == "phone" else None,
        headline=subject,
        message=body,
        kind=template,
    )


async def _close(
    session: AsyncSession,
    settings: Settings,
    request: PrivacyRequest,
    status: RequestStatus,
    *,
    now: dt.datetime,
    who: Who,
    reason: str,
    denial: DenialReason | None = None,
    note: str | None = None,
) -> None:
    """Record the answer and tell the requester it is ready (no personal data in the message)."""
    request.denial_reason = denial.value if denial is not None else None
    if note is not None:
        request.decision_note = note
    request.closed_at = now
    request.details_sealed = None  # a correction's new values are applied or refused: not kept
    _wipe_verification(request)
    action = "denied" if status is RequestStatus.DENIED else "answered"
    _log_event(session, request, who, action, to_status=status, reason=reason, now=now)
    await _notify(
        session,
        settings,
        request,
        subject="Your privacy request has been answered",
        body=(
            f"Your request {request.id} has been answered ({status.value.replace('_', ' ')}).\n"
            "Open it with the token you were given when you made it to read the answer"
            + (" and download your report" if request.report_sealed is not None else "")
            + ".\n"
        ),
        template="privacy.request_answered",
        why="tell the requester their answer is ready",
    )


async def fulfil_request(
    session: AsyncSession, settings: Settings, request_id: str, *, now: dt.datetime | None = None
) -> None:
    """Answer a verified request (the ``privacy.fulfil_request`` job). Idempotent: a request
    no longer pending is left alone, and everything below happens in the job's transaction,
    so a failed attempt leaves nothing half done."""
    now = now or utcnow()
    request = await _locked(session, request_id)
    if request.status != RequestStatus.PENDING.value:
        return
    if request.proof_status not in (ProofStatus.NOT_NEEDED.value, ProofStatus.ACCEPTED.value):
        return
    identity = await consumer_identity(session, request)
    await _lock_consumer(session, identity)
    _log_event(
        session,
        request,
        Who.system(),
        "started",
        to_status=RequestStatus.IN_PROGRESS,
        reason="identity verified; answering",
        now=now,
    )
    consumer = consumer_data.Consumer(request.email_digest, request.phone_digest)
    kind = RequestType(request.type)
    since = request.received_at - LOOKBACK

    if kind in (RequestType.KNOW, RequestType.ACCESS):
        earlier = await answered_know_access_requests(session, request, identity)
        if earlier >= MAX_KNOW_ACCESS_PER_YEAR:
            await _close(
                session,
                settings,
                request,
                RequestStatus.DENIED,
                now=now,
                who=Who.system(),
                reason=f"{earlier} know/access requests already answered in 12 months",
                denial=DenialReason.TOO_MANY_REQUESTS,
                note=(
                    "You may ask to know or access your personal information twice in 12 "
                    f"months; we answered {earlier} such requests in the 12 months before this "
                    "one. No fee is charged for this or any other request."
                ),
            )
            return

    lead_ids = await consumer_data.find_consumer_leads(
        session, consumer, since=since if kind in (RequestType.KNOW, RequestType.ACCESS) else None
    )
    if not lead_ids and kind is not RequestType.OPT_OUT:
        await _close(
            session,
            settings,
            request,
            RequestStatus.DENIED,
            now=now,
            who=Who.system(),
            reason="no personal data found for the verified identifier",
            denial=DenialReason.NO_MATCH,
            note="We hold no personal information about the email address or phone number "
            "you verified.",
        )
        return

    if kind in (RequestType.KNOW, RequestType.ACCESS):
        await _answer_report(session, settings, request, consumer, lead_ids, since, now)
    elif kind is RequestType.DELETE:
        await _answer_delete(session, settings, request, consumer, now)
    elif kind is RequestType.CORRECT:
        await _answer_correct(session, settings, request, consumer, now)
    else:
        outcome = await consumer_data.opt_out_consumer(
            session, settings, consumer, request_id=request.id, now=now
        )
        request.outcome = {
            "opted_out": True,
            "leads_withdrawn_from_sale": len(outcome.withdrawn_lead_ids),
        }
        await _close(
            session,
            settings,
            request,
            RequestStatus.FULFILLED,
            now=now,
            who=Who.system(),
            reason=f"opted out; {len(outcome.withdrawn_lead_ids)} leads withdrawn from sale",
        )


async def record_fulfilment_failure(session: AsyncSession, request_id: str) -> None:
    """The fulfilment job gave up (its last attempt failed): say so in the request's event log,
    where the privacy officer sees it; the request stays pending and keeps its deadline."""
    request = await session.get(PrivacyRequest, request_id)
    if request is None or request.status != RequestStatus.PENDING.value:
        return
    _log_event(
        session,
        request,
        Who.system(),
        "fulfilment_failed",
        reason="the answer could not be produced; see the dead job in the job queue",
    )
    log.error("privacy request fulfilment failed for good", extra={"request_id": request_id})


async def _answer_report(
    session: AsyncSession,
    settings: Settings,
    request: PrivacyRequest,
    consumer: consumer_data.Consumer,
    lead_ids: list[str],
    since: dt.datetime,
    now: dt.datetime,
) -> None:
    include_pieces = False
    denial: DenialReason | None = None
    note: str | None = None
    if request.type == RequestType.ACCESS.value:
        points: dict[str, str] = _open(settings.keyring(), request, "verification_data") or {}
        matched = (
            await consumer_data.count_matching_data_points(
                session, settings, lead_ids, data_points=points, request_id=request.id
            )
            if points
            else 0
        )
        request.verification_data_sealed = None  # used for verification only (P4), now gone
        _log_event(
            session,
            request,
            Who.system(),
            "data_points_checked",
            reason=f"{matched} of {len(points)} data points matched "
            f"({ACCESS_MIN_DATA_POINTS} needed for specific pieces)",
            now=now,
        )
        include_pieces = matched >= ACCESS_MIN_DATA_POINTS
        if not include_pieces:
            denial = DenialReason.INSUFFICIENT_VERIFICATION
            note = (
                "Specific pieces of personal information are disclosed only when at least "
                f"{ACCESS_MIN_DATA_POINTS} of your name, postal code and birth date match what we "
                "hold. They did not, so this answer lists the categories only. You may submit a "
                "new request with those details."
            )
    report = await consumer_data.build_report(
        session,
        settings,
        consumer,
        since=since,
        include_pieces=include_pieces,
        request_id=request.id,
    )
    report = {
        "request_id": request.id,
        "type": request.type,
        "covers": {"from": since.isoformat(), "to": request.received_at.isoformat()},
        **report,
    }
    request.report_sealed = _seal(settings.keyring(), request, "report", report)
    request.report_available_until = now + dt.timedelta(days=settings.privacy_report_days)
    request.outcome = {"specific_pieces": include_pieces}
    status = (
        RequestStatus.FULFILLED
        if include_pieces or request.type == "know"
        else (RequestStatus.PARTIALLY_FULFILLED)
    )
    await _close(
        session,
        settings,
        request,
        status,
        now=now,
        who=Who.system(),
        reason="report ready" + ("" if denial is None else ", categories only"),
        denial=denial,
        note=note,
    )


async def _answer_delete(
    session: AsyncSession,
    settings: Settings,
    request: PrivacyRequest,
    consumer: consumer_data.Consumer,
    now: dt.datetime,
) -> None:
    outcome = await consumer_data.erase_consumer(
        session, settings, consumer, request_id=request.id, now=now
    )
    kept = [
        {"record": k.record, "count": k.count, "legal_reason": k.legal_reason} for k in outcome.kept
    ]
    request.outcome = {
        "leads_erased": len(outcome.erased_lead_ids),
        "recipients_notified": len(outcome.notified_buyer_ids),
        "kept": kept,
    }
    if not kept:
        status, denial = RequestStatus.FULFILLED, None
    elif outcome.erased_lead_ids:
        status, denial = RequestStatus.PARTIALLY_FULFILLED, DenialReason.EXCEPTION_APPLIES
    else:
        status, denial = RequestStatus.DENIED, DenialReason.EXCEPTION_APPLIES
    await _close(
        session,
        settings,
        request,
        status,
        now=now,
        who=Who.system(),
        reason=f"{len(outcome.erased_lead_ids)} leads erased, {len(kept)} kinds of record kept",
        denial=denial,
        note=(
            "Some records are kept because the law requires or allows it; each is listed with "
            "its reason."
            if kept
            else None
        ),
    )


async def _answer_correct(
    session: AsyncSession,
    settings: Settings,
    request: PrivacyRequest,
    consumer: consumer_data.Consumer,
    now: dt.datetime,
) -> None:
    corrections: Mapping[str, str] = _open(settings.keyring(), request, "details") or {}
    try:
        async with session.begin_nested():
            outcome = await consumer_data.correct_consumer(
                session, settings, consumer, corrections, request_id=request.id
            )
    except ValidationFailed as exc:
        # Only the field names: the refused values are personal data.
        fields = sorted({e.field for e in exc.errors} or set(corrections))
        await _close(
            session,
            settings,
            request,
            RequestStatus.DENIED,
            now=now,
            who=Who.system(),
            reason="correction refused: " + ", ".join(fields),
            denial=DenialReason.INVALID_REQUEST,
            note="We cannot make this correction; check these fields and submit a new "
            "request: " + ", ".join(fields) + ".",
        )
        return
    request.outcome = {
        "leads_corrected": len(outcome.corrected_lead_ids),
        "fields": list(outcome.fields),
        "recipients_notified": len(outcome.notified_buyer_ids),
    }
    await _close(
        session,
        settings,
        request,
        RequestStatus.FULFILLED,
        now=now,
        who=Who.system(),
        reason=f"{len(outcome.corrected_lead_ids)} leads corrected",
    )


# The privacy officer -------------------------------------------------------------------------


async def extend_request(
    session: AsyncSession,
    settings: Settings,
    request_id: str,
    *,
    officer_id: str,
    reason: str,
    now: dt.datetime | None = None,
) -> PrivacyRequest:
    """Extend once, to 90 days after receipt, with a written reason emailed to the consumer,
    within the first 45 days (P5; CCPA 1798.130(a)(2): the consumer is told of the extension
    within the first period). An overdue request cannot be made not overdue after the fact."""
    now = now or utcnow()
    request = await _locked(session, request_id)
    if request.status not in OPEN_STATUSES:
        raise RequestClosed("This request is already answered or expired.")
    if request.extended_until is not None:
        raise ExtensionRefused("This request was already extended; it can be extended once.")
    if now > request.due_at:
        raise ExtensionRefused(
            f"The answer was due on {_date(request.due_at)}: an extension must be sent to the "
            "consumer within the first 45 days. Answer the request now."
        )
    request.extended_until = request.received_at + dt.timedelta(days=EXTENDED_ANSWER_DAYS)
    request.extension_reason = reason.strip()
    _log_event(
        session, request, Who.user(officer_id), "extended", reason=request.extension_reason, now=now
    )
    await _notify(
        session,
        settings,
        request,
        subject="Your privacy request: we need more time",
        body=(
            f"We need more time to answer your request {request.id}. We will answer by "
            f"{_date(request.extended_until)}.\n\nWhy: {request.extension_reason}\n"
        ),
        template="privacy.request_extended",
        why="tell the requester why their request is extended",
    )
    return request


async def deny_request(
    session: AsyncSession,
    settings: Settings,
    request_id: str,
    *,
    officer_id: str,
    reason: DenialReason,
    note: str,
    now: dt.datetime | None = None,
) -> PrivacyRequest:
    now = now or utcnow()
    request = await _locked(session, request_id)
    if request.status not in OPEN_STATUSES:
        raise RequestClosed("This request is already answered or expired.")
    await _close(
        session,
        settings,
        request,
        RequestStatus.DENIED,
        now=now,
        who=Who.user(officer_id),
        reason=note.strip(),
        denial=reason,
        note=note.strip(),
    )
    return request


async def review_proof(
    session: AsyncSession,
    settings: Settings,
    request_id: str,
    *,
    officer_id: str,
    accept: bool,
    note: str | None,
    now: dt.datetime | None = None,
) -> PrivacyRequest:
    """Accept or reject an agent's or parent's proof (P4). Accepting a verified request starts
    its fulfilment; rejecting denies it."""
    now = now or utcnow()
    request = await _locked(session, request_id)
    if (
        request.status not in OPEN_STATUSES
        or request.proof_status != ProofStatus.AWAITING_REVIEW.value
    ):
        raise ProofReviewRefused("This request has no proof awaiting review.")
    request.proof_reviewed_by = officer_id
    request.proof_reviewed_at = now
    if accept:
        request.proof_status = ProofStatus.ACCEPTED.value
        _log_event(session, request, Who.user(officer_id), "proof_accepted", reason=note, now=now)
        await _start_fulfilment_if_ready(session, request, now)
        return request
    request.proof_status = ProofStatus.REJECTED.value
    _log_event(session, request, Who.user(officer_id), "proof_rejected", reason=note, now=now)
    await _close(
        session,
        settings,
        request,
        RequestStatus.DENIED,
        now=now,
        who=Who.user(officer_id),
        reason=note or "the proof of authority was not accepted",
        denial=DenialReason.AGENT_NOT_AUTHORIZED,
        note=note or "The proof that you may act for this person was not sufficient.",
    )
    return request


@dataclass(frozen=True)
class Proof:
    agent_name: str | None
    text: str | None
    filename: str | None
    content_type: str | None
    document: bytes | None


async def read_proof(
    session: AsyncSession, settings: Settings, request_id: str, *, officer_id: str
) -> Proof:
    """The agent's name and proof, for the officer who must decide on them; the read is
    recorded in the audit log (A4)."""
    request = await session.get(PrivacyRequest, request_id)
    if request is None or request.on_behalf == OnBehalf.SELF.value:
        raise PrivacyRequestNotFound("This request has no agent's proof.")
    keyring = settings.keyring()
    document: dict[str, str] | None = _open(keyring, request, "proof_document")
    await record(
        session,
        actor=Actor("user", officer_id),
        action="pii.read",
        subject_type="privacy_request",
        subject_id=request.id,
        fields=["agent_name", "proof_text", "proof_document"],
        reason="review of an agent's or parent's proof of authority",
    )
    return Proof(
        agent_name=_open(keyring, request, "agent_name"),
        text=_open(keyring, request, "proof_text"),
        filename=document["filename"] if document else None,
        content_type=document["content_type"] if document else None,
        document=base64.b64decode(document["data_base64"]) if document else None,
    )


def queue_query(
    *, status: str | None, type_: str | None, now: dt.datetime, limit: int
) -> Select[PrivacyRequest]:
    """Open requests by due date (so the overdue come first), then answered ones, newest
    first. ``status``: a status, ``open`` (the default view) or ``all``."""
    due = func.coalesce(PrivacyRequest.extended_until, PrivacyRequest.due_at)
    query = select(PrivacyRequest)
    if status == "open":
        query = query.where(PrivacyRequest.status.in_([s.value for s in OPEN_STATUSES]))
    elif status and status != "all":
        query = query.where(PrivacyRequest.status == status)
    if type_:
        query = query.where(PrivacyRequest.type == type_)
    closed_last = PrivacyRequest.status.in_([s.value for s in FINAL_STATUSES])
    return query.order_by(closed_last, due, PrivacyRequest.received_at.desc()).limit(limit)


async def request_events(session: AsyncSession, request_id: str) -> list[PrivacyRequestEvent]:
    rows = await session.scalars(
        select(PrivacyRequestEvent)
        .where(PrivacyRequestEvent.request_id == request_id)
        .order_by(PrivacyRequestEvent.id)
    )
    return list(rows)


# Metrics (a yearly report, CCPA style) ---------------------------------------------------------


async def yearly_metrics(session: AsyncSession, year: int) -> list[dict[str, Any]]:
    """Per request type, of the requests received in ``year``: how many were received,
    complied with in whole or in part, denied (by reason), and the median and mean days from
    receipt to answer. Built from the request records themselves."""
    start = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC)
    rows = (
        await session.execute(
            select(
                PrivacyRequest.type,
                PrivacyRequest.status,
                PrivacyRequest.denial_reason,
                PrivacyRequest.received_at,
                PrivacyRequest.closed_at,
            ).where(PrivacyRequest.received_at >= start, PrivacyRequest.received_at < end)
        )
    ).all()
    result = []
    for kind in RequestType:
        mine = [r for r in rows if r.type == kind.value]
        answered = [
            r
            for r in mine
            if r.status
            in (
                RequestStatus.FULFILLED.value,
                RequestStatus.PARTIALLY_FULFILLED.value,
                RequestStatus.DENIED.value,
            )
            and r.closed_at is not None
        ]
        days = [(r.closed_at - r.received_at).total_seconds() / 86400 for r in answered]
        denied: dict[str, int] = {}
        for r in mine:
            if r.status == RequestStatus.DENIED.value:
                denied[r.denial_reason or "other"] = denied.get(r.denial_reason or "other", 0) + 1
        result.append(
            {
                "type": kind.value,
                "received": len(mine),
                "complied_in_whole": sum(r.status == RequestStatus.FULFILLED.value for r in mine),
                "complied_in_part": sum(
                    r.status == RequestStatus.PARTIALLY_FULFILLED.value for r in mine
                ),
                "denied": sum(denied.values()),
                "denied_by_reason": denied,
                "expired_unverified": sum(r.status == RequestStatus.EXPIRED.value for r in mine),
                "open": sum(r.status in {s.value for s in OPEN_STATUSES} for r in mine),
                "median_days_to_respond": round(statistics.median(days), 2) if days else None,
                "mean_days_to_respond": round(statistics.fmean(days), 2) if days else None,
            }
        )
    return result


# The periodic sweep --------------------------------------------------------------------------


@dataclass
class SweepResult:
    expired: int = 0
    reports_deleted: int = 0
    purged: int = 0
    throttle_hits_deleted: int = 0


async def sweep_requests(
    session: AsyncSession, settings: Settings, *, now: dt.datetime | None = None, batch: int = 500
) -> SweepResult:
    """Expire requests whose code ran out unused, delete reports past their download period,
    and delete requests (with their event log) older than the retention period. Rows are
    claimed with ``FOR UPDATE SKIP LOCKED``, so several workers can share the sweep."""
    now = now or utcnow()
    result = SweepResult()
    abandoned = (
        await session.scalars(
            select(PrivacyRequest)
            .where(
                PrivacyRequest.status == RequestStatus.IDENTITY_UNVERIFIED.value,
                PrivacyRequest.code_expires_at <= now,
            )
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
    ).all()
    for request in abandoned:
        _expire(session, request, "abandoned: the code expired unused", now)
        result.expired += 1
    stale_reports = (
        await session.scalars(
            select(PrivacyRequest)
            .where(
                PrivacyRequest.report_sealed.is_not(None),
                PrivacyRequest.report_available_until <= now,
            )
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
    ).all()
    for request in stale_reports:
        request.report_sealed = None
        request.outcome = {
            **(request.outcome or {}),
            "report_deleted_after_days": settings.privacy_report_days,
        }
        _log_event(
            session,
            request,
            Who.system(),
            "report_deleted",
            reason=f"download period of {settings.privacy_report_days} days over",
            now=now,
        )
        result.reports_deleted += 1
    old_ids = list(
        await session.scalars(
            select(PrivacyRequest.id)
            .where(PrivacyRequest.purge_after <= now)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
    )
    if old_ids:
        await session.execute(
            delete(PrivacyRequestEvent).where(PrivacyRequestEvent.request_id.in_(old_ids))
        )
        await session.execute(delete(PrivacyRequest).where(PrivacyRequest.id.in_(old_ids)))
        result.purged = len(old_ids)
    throttle = await session.execute(
        delete(PrivacyThrottleHit).where(PrivacyThrottleHit.at < now - dt.timedelta(days=1))
    )
    result.throttle_hits_deleted = int(getattr(throttle, "rowcount", 0) or 0)
    if result.expired or result.reports_deleted or result.purged:
        log.info("privacy requests swept", extra=vars(result))
    return result


# Master key rotation -----------------------------------------------------------------------------


async def rewrap_request_keys(
    session: AsyncSession, keyring: Keyring, *, batch_size: int = 500
) -> int:
    """Re-wrap every request's data key under the current master key (``leadmarket keys
    rotate``), as ``leads.vault.rewrap_all`` does for leads: requests are kept 24 months, far
    longer than a master key may live. A request locked right now is skipped and keeps its
    version in use."""
    done = 0
    while True:
        found = (
            await session.scalars(
                select(PrivacyRequest)
                .where(PrivacyRequest.key_version != keyring.current)
                .limit(batch_size)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not found:
            return done
        for request in found:
            wrapped = keyring.rewrap(
                WrappedKey(request.key_version, request.wrapped_key), request.id
            )
            request.key_version, request.wrapped_key = wrapped.version, wrapped.wrapped
        await session.flush()
        done += len(found)


async def request_key_versions_in_use(session: AsyncSession) -> set[int]:
    return set(await session.scalars(select(PrivacyRequest.key_version).distinct()))
