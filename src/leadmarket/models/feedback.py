"""Feedback and ratings after an order (M3), and members' abuse reports about feedback.

One rating per side of an order: the buyer about the seller, the seller about the buyer
(``(order_id, author_id)`` is unique, so a second one is refused by the database as well as by
the service). The rated member may answer once, in public. An admin may hide feedback that a
report shows to be abusive; hidden feedback is kept (with who hid it and why, and the audit
log's entry) but counts nowhere and is shown nowhere."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from leadmarket.kit.db import Base, UTCDateTime, utcnow
from leadmarket.kit.ids import new_id


class FeedbackSide(enum.StrEnum):
    """Which party wrote it: the buyer (about the seller) or the seller (about the buyer)."""

    BUYER = "buyer"
    SELLER = "seller"


class FeedbackReportReason(enum.StrEnum):
    ABUSIVE = "abusive"  # insults, threats, hate
    PERSONAL_DATA = "personal_data"  # names, contact details or other private facts
    FALSE = "false"  # about another order, or plainly untrue
    SPAM = "spam"  # advertising, links, unrelated text
    OTHER = "other"


class FeedbackReportStatus(enum.StrEnum):
    OPEN = "open"
    UPHELD = "upheld"  # the feedback was hidden
    DISMISSED = "dismissed"  # an admin kept the feedback


class Feedback(Base):
    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("order_id", "author_id", name="uq_feedback_order_author"),
        CheckConstraint("rating BETWEEN 1 AND 5", name="rating_range"),
        # The public profile: a member's visible feedback, newest first.
        Index("ix_feedback_subject_id_created_at", "subject_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("fb"))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    author_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    subject_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    side: Mapped[str] = mapped_column(String(8))
    rating: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The author may change rating and comment until then (setting feedback_edit_hours).
    editable_until: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    reply: Mapped[str | None] = mapped_column(Text)
    replied_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    hidden_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    hidden_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    hidden_reason: Mapped[str | None] = mapped_column(String(500))


class FeedbackReport(Base):
    """A member's report that a feedback item is abusive; admins work through the open ones."""

    __tablename__ = "feedback_reports"
    __table_args__ = (
        UniqueConstraint("feedback_id", "reporter_id", name="uq_feedback_report_reporter"),
        Index("ix_feedback_reports_status_created_at", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("fbr"))
    feedback_id: Mapped[str] = mapped_column(ForeignKey("feedback.id"), index=True)
    reporter_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    reason: Mapped[str] = mapped_column(String(20))
    note: Mapped[str | None] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(10), default=FeedbackReportStatus.OPEN.value)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    resolution_note: Mapped[str | None] = mapped_column(String(500))
