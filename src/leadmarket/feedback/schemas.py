"""Shapes of the feedback API (M3). Public shapes name members by username only (A1): never a
name, an email, a phone or an address."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from leadmarket.models import FeedbackReportReason

COMMENT_MAX = 1000
REPLY_MAX = 1000
NOTE_MAX = 1000

# How the report reasons read on the pages.
REASON_LABELS = {
    FeedbackReportReason.ABUSIVE.value: "Abusive (insults, threats, hate)",
    FeedbackReportReason.PERSONAL_DATA.value: "Names, contact details or private facts",
    FeedbackReportReason.FALSE.value: "False, or about another order",
    FeedbackReportReason.SPAM.value: "Spam or advertising",
    FeedbackReportReason.OTHER.value: "Something else",
}

Rating = Annotated[StrictInt, Field(ge=1, le=5, description="1 (worst) to 5 (best).")]


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rating: Rating
    comment: str | None = Field(
        default=None,
        max_length=COMMENT_MAX,
        description="Public. No names, email addresses or phone numbers.",
    )


class FeedbackPatch(BaseModel):
    """Any of the two; only the author, only within ``feedback_edit_hours``."""

    model_config = ConfigDict(extra="forbid")
    rating: Rating | None = None
    comment: str | None = Field(default=None, max_length=COMMENT_MAX)


class ReplyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reply: str = Field(min_length=1, max_length=REPLY_MAX)


class ReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: FeedbackReportReason
    note: str | None = Field(default=None, max_length=NOTE_MAX)


class HideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=5, max_length=500, description="Recorded in the audit log.")


class DismissIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(default=None, max_length=500)


class ReplyOut(BaseModel):
    text: str
    at: dt.datetime


class PublicFeedback(BaseModel):
    """One feedback item as anyone may see it."""

    id: str
    rating: int
    comment: str | None
    author: str = Field(description="The author's username.")
    author_role: str = Field(description="buyer or seller: which side of the order wrote it.")
    created_at: dt.datetime
    edited_at: dt.datetime | None
    reply: ReplyOut | None


class FeedbackOut(PublicFeedback):
    """Feedback as its author or its subject sees it."""

    order_id: str
    subject: str = Field(description="The rated member's username.")
    editable_until: dt.datetime


class OrderFeedbackOut(BaseModel):
    """Both directions of an order's feedback, for its two parties."""

    order_id: str
    given: FeedbackOut | None = Field(description="What you said about the other party.")
    received: FeedbackOut | None = Field(description="What the other party said about you.")
    can_leave: bool
    open_until: dt.datetime = Field(description="Feedback can be left until then.")


class ReportOut(BaseModel):
    id: str
    feedback_id: str
    reason: str
    status: str
    created_at: dt.datetime


class AdminReportOut(BaseModel):
    id: str
    status: str
    reason: str
    note: str | None
    reporter: str
    created_at: dt.datetime
    resolved_at: dt.datetime | None
    resolution_note: str | None
    feedback: FeedbackOut
    hidden: bool
