"""Member-to-member messages (promise M4): one thread per order, between its buyer and its
seller only. The recipient is not chosen by the sender: it is the order's other party, so a
message has exactly one recipient and can never go to a list.

``body_digest`` is a SHA-256 of the normalised text: the same text pasted into many threads is
found by one indexed lookup (see :mod:`leadmarket.messages.service`), without reading bodies."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from leadmarket.kit.db import Base, UTCDateTime, utcnow
from leadmarket.kit.ids import new_id


class MemberMessage(Base):
    __tablename__ = "member_messages"
    __table_args__ = (
        # The thread, in order.
        Index("ix_member_messages_order_id_id", "order_id", "id"),
        # The sender's rate limits (last hour, last day) and the paste-broadcast check.
        Index("ix_member_messages_sender_id_created_at", "sender_id", "created_at"),
        Index("ix_member_messages_sender_id_body_digest", "sender_id", "body_digest"),
        # Unread messages of a recipient (the notification rule).
        Index("ix_member_messages_recipient_id_read_at", "recipient_id", "read_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mm"))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"))
    sender_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    recipient_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    body: Mapped[str] = mapped_column(Text)
    body_digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the recipient first opened the thread after it arrived.
    read_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
