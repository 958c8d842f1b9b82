"""Feedback and ratings (M3): the rules, in one place for the API and the pages.

* After an order, each party may rate the other **once** (1 to 5) with an optional comment:
  the buyer rates the seller, the seller rates the buyer, within ``feedback_window_days`` of the
  sale. Anyone else is told the order does not exist (404). A second one is a 409, refused by
  the database's unique constraint as well, so two racing requests cannot both land.
* The author may change rating and comment for ``feedback_edit_hours``; then it is final.
* The rated member may post **one** public reply (a conditional UPDATE, so twice is a 409).
* Everything is public by **username** (A1), never by name or contact data; a comment or reply
  that contains an email address or a phone number is refused (422), because it would publish
  someone's contact data, quite possibly a consumer's.
* Buyers and sellers may report a feedback item (once each), through the one report path of
  the platform, :func:`leadmarket.fraud.reports.file_report` (``POST /api/v1/reports`` with
  ``subject_type: "feedback"``, ``POST /api/v1/feedback/{id}/reports`` and the profile page's
  form all go through it): the report lands in the admins' feedback queue
  (:func:`report_feedback`, registered as the feedback subject's resolver) and, as a
  complaint signal, in the author's fraud case (M6). An admin may hide the feedback, which is
  recorded in the audit log with the reason and upholds the open reports, or dismiss a report.
  Hidden feedback is counted nowhere and shown nowhere.
* The rated member is told through the notification center (``feedback_received``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.repository import usernames
from leadmarket.audit.service import Actor, record
from leadmarket.config import Settings
from leadmarket.feedback.schemas import (
    AdminReportOut,
    FeedbackOut,
    OrderFeedbackOut,
    PublicFeedback,
    ReplyOut,
)
from leadmarket.fraud.reports import (
    AlreadyReported,
    Filing,
    ReportReason,
    ResolvedSubject,
    SubjectType,
    file_report,
    register_report_subject,
)
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import Conflict, FieldError, Forbidden, NotFound, ValidationFailed
from leadmarket.kit.ids import new_id
from leadmarket.kit.logs import mask_personal_data
from leadmarket.models import (
    Feedback,
    FeedbackReport,
    FeedbackReportReason,
    FeedbackReportStatus,
    FeedbackSide,
    Order,
    User,
)
from leadmarket.notifications.notify import notify_feedback_received

RECENT_ON_PROFILE = 20
REPORT_NOTE_MAX = 1000  # FeedbackReport.note


class FeedbackNotFound(NotFound):
    slug = "feedback-not-found"
    title = "No such feedback"
    explanation = "No visible feedback has this id (it may have been hidden by an admin)."


class FeedbackPeriodOver(Conflict):
    slug = "feedback-period-over"
    title = "Feedback period over"
    explanation = "Feedback can be left for a limited time after the sale; that time is over."


class FeedbackAlreadyLeft(Conflict):
    slug = "feedback-already-left"
    title = "Feedback already left"
    explanation = (
        "Each party of an order may leave one feedback about the other. Change yours with "
        "PATCH /api/v1/feedback/{id} while it can still be changed."
    )


class FeedbackEditClosed(Conflict):
    slug = "feedback-edit-closed"
    title = "Feedback can no longer be changed"
    explanation = "Feedback can be changed for a short time after it is left; now it is final."


class FeedbackAlreadyReplied(Conflict):
    slug = "feedback-already-replied"
    title = "Already replied"
    explanation = "The member a feedback is about may reply once."


class FeedbackAlreadyReported(AlreadyReported):
    slug = "feedback-already-reported"
    title = "Already reported"
    explanation = "You reported this feedback already; an admin will look at it."


class NotYourFeedback(Forbidden):
    slug = "not-your-feedback"
    title = "Not your feedback"
    explanation = "Only the author may change feedback, and only its subject may reply to it."


# Checks -----------------------------------------------------------------------------------


def public_text(value: str | None, field: str, *, required: bool = False) -> str | None:
    """A comment or reply as it will be published: trimmed, None if empty; refused (422) if it
    holds an email address or a phone number (it would publish someone's contact data)."""
    text = (value or "").strip()
    if not text:
        if required:
            raise ValidationFailed("Write something.", errors=[FieldError(field, "Required.")])
        return None
    if mask_personal_data(text) != text:
        message = (
            "This text is shown publicly: leave out email addresses and phone numbers (yours, "
            "the other member's or a consumer's)."
        )
        raise ValidationFailed(message, errors=[FieldError(field, message)])
    return text


def _party_order(order: Order | None, member: User) -> Order:
    if order is None or member.id not in (order.buyer_id, order.seller_id):
        raise NotFound("No such order.")
    return order


def open_until(settings: Settings, order: Order) -> dt.datetime:
    return order.purchased_at + dt.timedelta(days=settings.feedback_window_days)


async def _visible(session: AsyncSession, feedback_id: str, *, lock: bool = False) -> Feedback:
    feedback = await session.get(
        Feedback, feedback_id, with_for_update=lock, populate_existing=lock
    )
    if feedback is None or feedback.hidden_at is not None:
        raise FeedbackNotFound()
    return feedback


# Leaving, changing, replying --------------------------------------------------------------


async def leave_feedback(
    session: AsyncSession,
    settings: Settings,
    *,
    order_id: str,
    author: User,
    rating: int,
    comment: str | None,
) -> Feedback:
    """The author's one feedback about the other party of ``order_id`` (module rules)."""
    order = _party_order(await session.get(Order, order_id), author)
    now = utcnow()
    if now > open_until(settings, order):
        raise FeedbackPeriodOver(
            f"Feedback on this order could be left until "
            f"{open_until(settings, order).strftime('%Y-%m-%d %H:%M UTC')}."
        )
    if not 1 <= rating <= 5:
        raise ValidationFailed(
            "The rating is 1 to 5.", errors=[FieldError("rating", "Between 1 and 5.")]
        )
    text = public_text(comment, "comment")
    side = FeedbackSide.BUYER if author.id == order.buyer_id else FeedbackSide.SELLER
    subject_id = order.seller_id if side is FeedbackSide.BUYER else order.buyer_id
    already = await session.scalar(
        select(Feedback.id).where(Feedback.order_id == order.id, Feedback.author_id == author.id)
    )
    if already is not None:
        raise FeedbackAlreadyLeft(extra={"feedback_id": already})
    feedback = Feedback(
        id=new_id("fb"),
        order_id=order.id,
        author_id=author.id,
        subject_id=subject_id,
        side=side.value,
        rating=rating,
        comment=text,
        created_at=now,
        editable_until=now + dt.timedelta(hours=settings.feedback_edit_hours),
    )
    try:
        async with session.begin_nested():  # a racing twin loses here, cleanly
            session.add(feedback)
            await session.flush()
    except IntegrityError:
        raise FeedbackAlreadyLeft() from None
    await notify_feedback_received(
        session,
        settings,
        feedback_id=feedback.id,
        order_id=order.id,
        author_id=author.id,
        subject_id=subject_id,
        rating=rating,
    )
    return feedback


async def edit_feedback(
    session: AsyncSession,
    *,
    feedback_id: str,
    author: User,
    rating: int | None,
    comment: str | None,
    change_comment: bool,
) -> Feedback:
    """Change the author's rating and/or comment while it may still be changed."""
    feedback = await _visible(session, feedback_id, lock=True)
    if feedback.author_id != author.id:
        raise NotYourFeedback("Only its author can change feedback.")
    now = utcnow()
    if now > feedback.editable_until:
        raise FeedbackEditClosed(
            f"This feedback could be changed until "
            f"{feedback.editable_until.strftime('%Y-%m-%d %H:%M UTC')}."
        )
    if rating is None and not change_comment:
        raise ValidationFailed(
            "Nothing to change.", errors=[FieldError("rating", "Give a rating or a comment.")]
        )
    if rating is not None:
        if not 1 <= rating <= 5:
            raise ValidationFailed(
                "The rating is 1 to 5.", errors=[FieldError("rating", "Between 1 and 5.")]
            )
        feedback.rating = rating
    if change_comment:
        feedback.comment = public_text(comment, "comment")
    feedback.updated_at = now
    await session.flush()
    return feedback


async def reply_to_feedback(
    session: AsyncSession, *, feedback_id: str, member: User, reply: str
) -> Feedback:
    """The rated member's one public reply."""
    feedback = await _visible(session, feedback_id)
    if feedback.subject_id != member.id:
        raise NotYourFeedback("Only the member this feedback is about can reply to it.")
    text = public_text(reply, "reply", required=True)
    result = await session.execute(
        update(Feedback)
        .where(Feedback.id == feedback.id, Feedback.reply.is_(None), Feedback.hidden_at.is_(None))
        .values(reply=text, replied_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if int(getattr(result, "rowcount", 0) or 0) != 1:
        raise FeedbackAlreadyReplied()
    return await _visible(session, feedback.id, lock=True)


# Reports and moderation -------------------------------------------------------------------


async def report_feedback(
    session: AsyncSession,
    *,
    feedback_id: str,
    reporter: User,
    reason: FeedbackReportReason,
    note: str | None,
) -> FeedbackReport:
    """Keep a member's abuse report for the admins' feedback queue (once per member and
    feedback). Called by :func:`leadmarket.fraud.reports.file_report` through the resolver
    registered below, never directly: reports go through that one path."""
    feedback = await _visible(session, feedback_id)
    if feedback.author_id == reporter.id:
        message = "This is your own feedback: change it while you can instead."
        raise ValidationFailed(message, errors=[FieldError("subject_id", message)])
    text = (note or "").strip() or None
    if text is not None and len(text) > REPORT_NOTE_MAX:
        raise ValidationFailed(
            "The details are too long.",
            errors=[FieldError("details", f"At most {REPORT_NOTE_MAX} characters.")],
        )
    report = FeedbackReport(
        id=new_id("fbr"),
        feedback_id=feedback.id,
        reporter_id=reporter.id,
        reason=FeedbackReportReason(reason).value,
        note=text,
        status=FeedbackReportStatus.OPEN.value,
        created_at=utcnow(),
    )
    try:
        async with session.begin_nested():
            session.add(report)
            await session.flush()
    except IntegrityError:
        raise FeedbackAlreadyReported() from None
    return report


async def _resolve_report(session: AsyncSession, filing: Filing) -> ResolvedSubject:
    """The feedback subject of ``POST /api/v1/reports``: kept in the feedback queue, and a
    complaint about the feedback's author."""
    report = await report_feedback(
        session,
        feedback_id=filing.subject_id,
        reporter=filing.reporter,
        reason=FeedbackReportReason(filing.reason.value),
        note=filing.note,
    )
    feedback = await _visible(session, report.feedback_id)
    return ResolvedSubject(feedback.author_id, reference=report.id)


register_report_subject(SubjectType.FEEDBACK, _resolve_report)


async def file_feedback_report(
    session: AsyncSession,
    settings: Settings,
    *,
    feedback_id: str,
    reporter: User,
    reason: FeedbackReportReason,
    note: str | None,
) -> FeedbackReport:
    """``POST /api/v1/feedback/{id}/reports`` and the profile page's form: exactly what
    ``POST /api/v1/reports`` does with ``subject_type: "feedback"`` (the same function, the
    same checks, quota and answers), returning the feedback queue's record."""
    recorded = await file_report(
        session,
        settings,
        reporter=reporter,
        subject_type=SubjectType.FEEDBACK,
        subject_id=feedback_id,
        reason=ReportReason(reason.value),
        details=note,
    )
    report = await session.get(FeedbackReport, str(recorded.signal.details["reference"]))
    assert report is not None
    return report


async def hide_feedback(
    session: AsyncSession, *, feedback_id: str, admin: User, reason: str
) -> Feedback:
    """Hide feedback from every page and count (the row stays, as evidence), uphold its open
    reports, and record it in the audit log with the admin's reason."""
    stated = " ".join(reason.split())
    if len(stated) < 5:
        raise ValidationFailed(
            "Say why the feedback is hidden.",
            errors=[FieldError("reason", "At least 5 characters; it is recorded.")],
        )
    feedback = await session.get(
        Feedback, feedback_id, with_for_update=True, populate_existing=True
    )
    if feedback is None:
        raise FeedbackNotFound()
    if feedback.hidden_at is not None:
        raise Conflict("This feedback is hidden already.")
    now = utcnow()
    feedback.hidden_at = now
    feedback.hidden_by = admin.id
    feedback.hidden_reason = stated[:500]
    upheld = await session.execute(
        update(FeedbackReport)
        .where(
            FeedbackReport.feedback_id == feedback.id,
            FeedbackReport.status == FeedbackReportStatus.OPEN.value,
        )
        .values(
            status=FeedbackReportStatus.UPHELD.value,
            resolved_at=now,
            resolved_by=admin.id,
            resolution_note=stated[:500],
        )
        .execution_options(synchronize_session=False)
    )
    await session.flush()
    await record(
        session,
        actor=Actor("user", admin.id),
        action="feedback.hidden",
        subject_type="feedback",
        subject_id=feedback.id,
        reason=stated[:200],
        details={
            "order_id": feedback.order_id,
            "author_id": feedback.author_id,
            "subject_id": feedback.subject_id,
            "reports_upheld": int(getattr(upheld, "rowcount", 0) or 0),
        },
    )
    return feedback


async def dismiss_report(
    session: AsyncSession, *, report_id: str, admin: User, note: str | None
) -> FeedbackReport:
    """An admin keeps the feedback: the report is closed as dismissed (and audited)."""
    report = await session.get(
        FeedbackReport, report_id, with_for_update=True, populate_existing=True
    )
    if report is None:
        raise NotFound("No such report.")
    if report.status != FeedbackReportStatus.OPEN.value:
        raise Conflict(f"This report is {report.status} already.")
    report.status = FeedbackReportStatus.DISMISSED.value
    report.resolved_at = utcnow()
    report.resolved_by = admin.id
    report.resolution_note = (note or "").strip()[:500] or None
    await session.flush()
    await record(
        session,
        actor=Actor("user", admin.id),
        action="feedback.report_dismissed",
        subject_type="feedback",
        subject_id=report.feedback_id,
        reason=report.resolution_note,
        details={"report_id": report.id},
    )
    return report


# Reading ----------------------------------------------------------------------------------


def _public(feedback: Feedback, names: dict[str, str]) -> PublicFeedback:
    return PublicFeedback(
        id=feedback.id,
        rating=feedback.rating,
        comment=feedback.comment,
        author=names.get(feedback.author_id, ""),
        author_role=feedback.side,
        created_at=feedback.created_at,
        edited_at=feedback.updated_at,
        reply=ReplyOut(text=feedback.reply, at=feedback.replied_at)
        if feedback.reply is not None and feedback.replied_at is not None
        else None,
    )


def _full(feedback: Feedback, names: dict[str, str]) -> FeedbackOut:
    return FeedbackOut(
        **_public(feedback, names).model_dump(),
        order_id=feedback.order_id,
        subject=names.get(feedback.subject_id, ""),
        editable_until=feedback.editable_until,
    )


async def feedback_out(session: AsyncSession, feedback: Feedback) -> FeedbackOut:
    names = await usernames(session, {feedback.author_id, feedback.subject_id})
    return _full(feedback, names)


@dataclass(frozen=True)
class Ratings:
    average: float | None
    count: int
    per_star: dict[int, int]  # 5 → how many fives, … 1 → how many ones


async def ratings_of(session: AsyncSession, user_id: str) -> Ratings:
    """A member's visible ratings: the average (two decimals), the count, and the count per star."""
    rows = await session.execute(
        select(Feedback.rating, func.count())
        .where(Feedback.subject_id == user_id, Feedback.hidden_at.is_(None))
        .group_by(Feedback.rating)
    )
    per_star = dict.fromkeys(range(5, 0, -1), 0)
    for rating, count in rows:
        per_star[int(rating)] = int(count)
    total = sum(per_star.values())
    average = round(sum(s * c for s, c in per_star.items()) / total, 2) if total else None
    return Ratings(average, total, per_star)


async def public_feedback(
    session: AsyncSession, user_id: str, *, limit: int, before_id: str | None = None
) -> list[PublicFeedback]:
    """A member's visible feedback, newest first (``limit`` + 1 items, for paging)."""
    query = (
        select(Feedback)
        .where(Feedback.subject_id == user_id, Feedback.hidden_at.is_(None))
        .order_by(Feedback.id.desc())
        .limit(limit + 1)
    )
    if before_id is not None:
        query = query.where(Feedback.id < before_id)
    rows = list(await session.scalars(query))
    names = await usernames(session, {f.author_id for f in rows})
    return [_public(f, names) for f in rows]


async def order_feedback(
    session: AsyncSession, settings: Settings, order_id: str, viewer: User
) -> OrderFeedbackOut:
    """Both directions of an order's feedback, for one of its parties (else 404). Hidden
    feedback is left out."""
    order = _party_order(await session.get(Order, order_id), viewer)
    rows = list(
        await session.scalars(
            select(Feedback).where(Feedback.order_id == order.id, Feedback.hidden_at.is_(None))
        )
    )
    names = await usernames(session, {order.buyer_id, order.seller_id})
    given = next((f for f in rows if f.author_id == viewer.id), None)
    received = next((f for f in rows if f.subject_id == viewer.id), None)
    mine_exists = await session.scalar(
        select(Feedback.id).where(Feedback.order_id == order.id, Feedback.author_id == viewer.id)
    )
    until = open_until(settings, order)
    return OrderFeedbackOut(
        order_id=order.id,
        given=_full(given, names) if given else None,
        received=_full(received, names) if received else None,
        can_leave=mine_exists is None and utcnow() <= until,
        open_until=until,
    )


async def reports_queue(
    session: AsyncSession, *, status: str | None, limit: int, before_id: str | None = None
) -> list[AdminReportOut]:
    """Reports for the admins, newest first (``limit`` + 1), with the feedback each is about."""
    query = (
        select(FeedbackReport, Feedback)
        .join(Feedback, Feedback.id == FeedbackReport.feedback_id)
        .order_by(FeedbackReport.id.desc())
        .limit(limit + 1)
    )
    if status is not None:
        query = query.where(FeedbackReport.status == status)
    if before_id is not None:
        query = query.where(FeedbackReport.id < before_id)
    rows = [(row[0], row[1]) for row in await session.execute(query)]
    ids: set[str] = set()
    for report, feedback in rows:
        ids |= {report.reporter_id, feedback.author_id, feedback.subject_id}
    names = await usernames(session, ids)
    return [
        AdminReportOut(
            id=report.id,
            status=report.status,
            reason=report.reason,
            note=report.note,
            reporter=names.get(report.reporter_id, ""),
            created_at=report.created_at,
            resolved_at=report.resolved_at,
            resolution_note=report.resolution_note,
            feedback=_full(feedback, names),
            hidden=feedback.hidden_at is not None,
        )
        for report, feedback in rows
    ]
