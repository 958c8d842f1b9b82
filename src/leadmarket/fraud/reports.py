"""Fraud complaints by members (promise M6): about a lead, a member or a message, each a signal
on the admin's queue.

Who may complain about what, so a complaint is never a way to learn something:

* **a lead**: a member who can see it (buyers while it is on sale, its seller — not about their
  own lead —, staff) or who bought it; anyone else gets 404, as for the lead itself;
* **a member**: by their public username, buyers and sellers only, not oneself;
* **a message**: its recipient only (the sender and anyone else get 404);
* **feedback**: through the resolver the feedback feature registers with
  :func:`register_report_subject` (:mod:`leadmarket.feedback.service`): any feedback still
  shown, not one's own; the report also lands in the admins' feedback queue, where the
  feedback can be hidden. Until a resolver is registered, 422.

Each subject type takes its own reasons (:data:`REASONS_FOR`: a lead, a member or a message
is fake, a scam, spam, …; feedback is abusive, publishes personal data, is false, …); another
is a 422 on ``reason``.

A member files each complaint once per case (409 until the case is decided; feedback once for
good), at most ``fraud_reports_per_day`` complaints and spam reports a day (429). The
reporter's own words are kept as the signal's ``note``. :func:`file_report` is the one way a
report is filed, whichever API route or page it comes from; it writes all of it or nothing."""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.repository import user_by_username
from leadmarket.config import Settings
from leadmarket.fraud.signals import Recorded, SignalKind, SignalSource, add_signal
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import (
    Conflict,
    FieldError,
    NotFound,
    TooManyRequests,
    ValidationFailed,
)
from leadmarket.leads.service import may_see
from leadmarket.models import FraudSignal, Lead, MemberMessage, Order, Role, User

NOTE_MAX_CHARS = 2000


class ReportReason(enum.StrEnum):
    FAKE_OR_FRAUDULENT_IDENTITY = "fake_or_fraudulent_identity"
    CONSUMER_NEVER_ASKED = "consumer_never_asked"
    SPAM = "spam"
    SCAM = "scam"  # payment fraud, a sale that was never meant to be honoured
    HARASSMENT = "harassment"
    OTHER = "other"
    # About feedback (the feedback queue's reasons, FeedbackReportReason).
    ABUSIVE = "abusive"  # insults, threats, hate
    PERSONAL_DATA = "personal_data"  # names, contact details or other private facts
    FALSE = "false"  # about another order, or plainly untrue


REASON_LABELS = {
    ReportReason.FAKE_OR_FRAUDULENT_IDENTITY: "Fake or fraudulent identity",
    ReportReason.CONSUMER_NEVER_ASKED: "The consumer never asked for this",
    ReportReason.SPAM: "Spam",
    ReportReason.SCAM: "Scam or payment fraud",
    ReportReason.HARASSMENT: "Harassment",
    ReportReason.OTHER: "Something else",
    ReportReason.ABUSIVE: "Abusive (insults, threats, hate)",
    ReportReason.PERSONAL_DATA: "Names, contact details or private facts",
    ReportReason.FALSE: "False, or about another order",
}


class SubjectType(enum.StrEnum):
    LEAD = "lead"
    MEMBER = "member"
    MESSAGE = "message"
    FEEDBACK = "feedback"


_ABOUT_CONDUCT = (
    ReportReason.FAKE_OR_FRAUDULENT_IDENTITY,
    ReportReason.CONSUMER_NEVER_ASKED,
    ReportReason.SPAM,
    ReportReason.SCAM,
    ReportReason.HARASSMENT,
    ReportReason.OTHER,
)
REASONS_FOR: dict[SubjectType, tuple[ReportReason, ...]] = {
    SubjectType.LEAD: _ABOUT_CONDUCT,
    SubjectType.MEMBER: _ABOUT_CONDUCT,
    SubjectType.MESSAGE: _ABOUT_CONDUCT,
    SubjectType.FEEDBACK: (
        ReportReason.ABUSIVE,
        ReportReason.PERSONAL_DATA,
        ReportReason.FALSE,
        ReportReason.SPAM,
        ReportReason.OTHER,
    ),
}


class AlreadyReported(Conflict):
    slug = "already-reported"
    title = "You reported this already"
    explanation = "Each report is recorded once; an admin reviews it."


@dataclass(frozen=True)
class ResolvedSubject:
    """Who a complaint is about, and what it concerns."""

    subject_user_id: str
    lead_id: str | None = None
    message_id: str | None = None
    # The registering feature's own record of the report (a feedback report's id).
    reference: str | None = None


@dataclass(frozen=True)
class Filing:
    """A report as a registered resolver sees it: checked and cleaned."""

    subject_type: SubjectType
    subject_id: str
    reporter: User
    reason: ReportReason
    note: str | None


SubjectResolver = Callable[[AsyncSession, Filing], Awaitable[ResolvedSubject]]
_RESOLVERS: dict[SubjectType, SubjectResolver] = {}


def register_report_subject(subject_type: SubjectType, resolver: SubjectResolver) -> None:
    """Let another feature (feedback) take reports about its subjects: the resolver says who
    a report about ``filing.subject_id`` is about, and may keep its own record of it in the
    same transaction (it is rolled back with the rest if the report is refused later). It
    raises NotFound for a subject the reporter may not see, ValidationFailed or a Conflict."""
    if subject_type in (SubjectType.LEAD, SubjectType.MEMBER, SubjectType.MESSAGE):
        raise ValueError(f"reports about a {subject_type.value} are resolved here")
    _RESOLVERS[subject_type] = resolver


def clean_note(note: str | None) -> str | None:
    if note is None:
        return None
    text = note.replace("\r\n", "\n").strip()
    if len(text) > NOTE_MAX_CHARS:
        raise ValidationFailed(
            "The details are too long.",
            errors=[FieldError("details", f"At most {NOTE_MAX_CHARS} characters.")],
        )
    return text or None


async def check_report_quota(session: AsyncSession, settings: Settings, reporter_id: str) -> None:
    """429 once the member filed ``fraud_reports_per_day`` reports in the last 24 hours (counted
    under their row lock, like the message caps)."""
    await session.execute(
        select(User.id).where(User.id == reporter_id).with_for_update(key_share=True)
    )
    now = utcnow()
    day = dt.timedelta(days=1)
    row = (
        await session.execute(
            select(func.count(), func.min(FraudSignal.created_at)).where(
                FraudSignal.reporter_id == reporter_id,
                FraudSignal.created_at > now - day,
            )
        )
    ).one()
    count, oldest = int(row[0]), row[1]
    if count >= settings.fraud_reports_per_day:
        wait = (oldest + day - now).total_seconds() if oldest else day.total_seconds()
        raise TooManyRequests(
            f"You filed {count} reports in the last day, the most allowed.",
            retry_after=max(1, math.ceil(wait)),
        )


def _unreportable(message: str) -> ValidationFailed:
    return ValidationFailed(message, errors=[FieldError("subject_id", message)])


async def _lead_subject(session: AsyncSession, lead_id: str, reporter: User) -> ResolvedSubject:
    lead = await session.get(Lead, lead_id)
    bought = False
    if lead is not None and not may_see(lead, reporter):
        bought = (
            await session.scalar(
                select(Order.id).where(Order.lead_id == lead.id, Order.buyer_id == reporter.id)
            )
        ) is not None
    if lead is None or not (bought or may_see(lead, reporter)):
        raise NotFound("No such lead.")
    if lead.seller_id == reporter.id:
        raise _unreportable("This is your own lead.")
    return ResolvedSubject(lead.seller_id, lead_id=lead.id)


async def _member_subject(session: AsyncSession, username: str, reporter: User) -> ResolvedSubject:
    member = await user_by_username(session, username)
    if member is None or member.role not in (Role.BUYER.value, Role.SELLER.value):
        raise NotFound("No member has this username.")
    if member.id == reporter.id:
        raise _unreportable("You cannot report yourself.")
    return ResolvedSubject(member.id)


async def _message_subject(
    session: AsyncSession, message_id: str, reporter: User
) -> ResolvedSubject:
    message = await session.get(MemberMessage, message_id)
    if message is None or message.recipient_id != reporter.id:
        raise NotFound("No such message.")
    order = await session.get(Order, message.order_id)
    return ResolvedSubject(
        message.sender_id, lead_id=order.lead_id if order else None, message_id=message.id
    )


async def resolve_subject(session: AsyncSession, filing: Filing) -> ResolvedSubject:
    subject_type, subject_id, reporter = filing.subject_type, filing.subject_id, filing.reporter
    if subject_type is SubjectType.LEAD:
        return await _lead_subject(session, subject_id, reporter)
    if subject_type is SubjectType.MEMBER:
        return await _member_subject(session, subject_id, reporter)
    if subject_type is SubjectType.MESSAGE:
        return await _message_subject(session, subject_id, reporter)
    resolver = _RESOLVERS.get(subject_type)
    if resolver is None:
        raise ValidationFailed(
            f"Reports about {subject_type.value} are not taken yet.",
            errors=[FieldError("subject_type", "Report a lead, a member or a message.")],
        )
    return await resolver(session, filing)


def check_reason(subject_type: SubjectType, reason: ReportReason) -> None:
    allowed = REASONS_FOR[subject_type]
    if reason not in allowed:
        message = f"About {subject_type.value}: one of {', '.join(r.value for r in allowed)}."
        raise ValidationFailed(
            f"'{reason.value}' is not a reason to report {subject_type.value}.",
            errors=[FieldError("reason", message)],
        )


def _key_of(subject_type: SubjectType, subject: ResolvedSubject, subject_id: str) -> str:
    """What makes two complaints the same one: the lead, the message or the member, however
    the reporter spelled it (a username in another case is the same member)."""
    if subject_type is SubjectType.LEAD and subject.lead_id:
        return subject.lead_id
    if subject_type is SubjectType.MESSAGE and subject.message_id:
        return subject.message_id
    if subject_type is SubjectType.MEMBER:
        return subject.subject_user_id
    return subject_id


async def file_report(
    session: AsyncSession,
    settings: Settings,
    *,
    reporter: User,
    subject_type: SubjectType,
    subject_id: str,
    reason: ReportReason,
    details: str | None,
) -> Recorded:
    """A member's fraud or abuse complaint: a :attr:`SignalKind.COMPLAINT` signal against the
    member it is about, in their open case (and, for a registered subject such as feedback,
    the feature's own record of it). Raises NotFound, ValidationFailed, TooManyRequests or a
    Conflict (:class:`AlreadyReported`); then nothing is written, even when the caller
    catches the error and commits (a page showing it): all of it is in one savepoint."""
    check_reason(subject_type, reason)
    filing = Filing(subject_type, subject_id, reporter, reason, clean_note(details))
    async with session.begin_nested():
        subject = await resolve_subject(session, filing)
        await check_report_quota(session, settings, reporter.id)
        key = _key_of(subject_type, subject, subject_id)
        extra: dict[str, str] = {"subject_type": subject_type.value, "subject_id": subject_id}
        if filing.note:
            extra["note"] = filing.note
        if subject.reference:
            extra["reference"] = subject.reference
        recorded = await add_signal(
            session,
            kind=SignalKind.COMPLAINT,
            subject_user_id=subject.subject_user_id,
            source=SignalSource.MEMBER,
            details=extra,
            lead_id=subject.lead_id,
            message_id=subject.message_id,
            reporter_id=reporter.id,
            reason=reason.value,
            dedupe_key=f"complaint:{reporter.id}:{subject_type.value}:{key}",
            # Once per case: after a decision, the same reporter may complain again.
            per_case=True,
        )
        if not recorded.created:
            raise AlreadyReported(f"You reported this {subject_type.value} already.")
    return recorded
