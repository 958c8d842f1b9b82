"""Outgoing mail (an outbox drained by a job) and the addresses that opted out of a category."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from leadmarket.kit.db import Base, UTCDateTime, utcnow
from leadmarket.kit.ids import new_id


class MailCategory(enum.StrEnum):
    # Account security, transaction mail and legal notices: always sent (P7: transactional
    # continues after a marketing opt-out).
    TRANSACTIONAL = "transactional"
    # Mail telling a member about a message from another member: per their preference (P8).
    MEMBER_MESSAGE = "member_message"
    # Promotions and newsletters: only with consent, stopped by unsubscribing.
    MARKETING = "marketing"


class MailTopic(enum.StrEnum):
    """What a message is about; decides whether it may be sent (P7, P8)."""

    ACCOUNT = "account"  # sign-up, password, email change, orders: transactional
    LEGAL_NOTICE = "legal_notice"  # a new privacy notice version (P12): transactional
    MEMBER_MESSAGES = "member_messages"
    NEWSLETTERS = "newsletters"
    PROMOTIONS = "promotions"

    @property
    def category(self) -> MailCategory:
        if self in (MailTopic.NEWSLETTERS, MailTopic.PROMOTIONS):
            return MailCategory.MARKETING
        if self is MailTopic.MEMBER_MESSAGES:
            return MailCategory.MEMBER_MESSAGE
        return MailCategory.TRANSACTIONAL


class MailStatus(enum.StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    SUPPRESSED = "suppressed"
    FAILED = "failed"


class OutboundMail(Base):
    __tablename__ = "outbound_mail"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mail"))
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    to_address: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(300))
    text_body: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(20), default=MailCategory.TRANSACTIONAL.value)
    topic: Mapped[str | None] = mapped_column(String(20))
    template: Mapped[str] = mapped_column(String(80))
    status: Mapped[str] = mapped_column(String(12), default=MailStatus.QUEUED.value)
    # Why a message was not sent: "unsubscribed", "no-consent", "preference".
    suppressed_reason: Mapped[str | None] = mapped_column(String(20))
    message_id: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class MailSuppression(Base):
    """An address that unsubscribed from a category. ``address_hash`` is a keyed hash of the
    normalised address, so opting out does not itself keep the address in the clear."""

    __tablename__ = "mail_suppressions"
    __table_args__ = (UniqueConstraint("address_hash", "category"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    address_hash: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
