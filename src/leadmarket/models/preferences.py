"""A member's communication preferences (P7, P8, P9) and the versions of the privacy notice
(P11, P12)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from leadmarket.kit.db import Base, UTCDateTime, utcnow
from leadmarket.kit.ids import new_id

# What a member who never changed anything has: email for what they asked for, nothing that
# needs consent (P7), no personalised advertising (privacy by default).
PREFERENCE_DEFAULTS: dict[str, bool] = {
    "email": True,
    "phone": False,
    "text": False,
    "post": False,
    "member_messages": True,
    "newsletters": False,
    "promotions": False,
    "personalized_ads": False,
    "do_not_sell": False,
}


class CommunicationPreference(Base):
    """One row per member who ever changed a preference (or whose browser sent Global Privacy
    Control); a member without a row has the defaults of
    :data:`leadmarket.privacy.preferences.DEFAULTS`: email on, the other channels off, member
    messages on, marketing (newsletters, promotions) and personalised advertising off until the
    member opts in (P7: marketing needs consent)."""

    __tablename__ = "communication_preferences"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    # Channels (P8).
    email: Mapped[bool] = mapped_column(Boolean, default=True)
    phone: Mapped[bool] = mapped_column(Boolean, default=False)
    text: Mapped[bool] = mapped_column(Boolean, default=False)
    post: Mapped[bool] = mapped_column(Boolean, default=False)
    # Topics (P8).
    member_messages: Mapped[bool] = mapped_column(Boolean, default=True)
    newsletters: Mapped[bool] = mapped_column(Boolean, default=False)
    promotions: Mapped[bool] = mapped_column(Boolean, default=False)
    personalized_ads: Mapped[bool] = mapped_column(Boolean, default=False)
    # Opt-out of sale and sharing (P9, CCPA), set by the member or by Global Privacy Control.
    do_not_sell: Mapped[bool] = mapped_column(Boolean, default=False)
    do_not_sell_source: Mapped[str | None] = mapped_column(String(10))  # "member" or "gpc"
    # When marketing consent was last given (newsletters or promotions turned on): evidence.
    marketing_consent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class PrivacyNotice(Base):
    """One published version of the privacy notice. Versions are never edited: a change is a
    new version with its own effective date (P12)."""

    __tablename__ = "privacy_notices"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pn"))
    version: Mapped[str] = mapped_column(String(20), unique=True)
    effective_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    summary: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    published_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # Members told by email so far (the announcement job counts as it goes).
    announced_count: Mapped[int] = mapped_column(default=0)
    announced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
