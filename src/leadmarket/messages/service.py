"""Member messages (promise M4): a thread per order between its buyer and its seller, nobody
else. The one rule set behind the API and the pages.

* **Only the order's two parties.** The sender names an order, never a recipient: the
  recipient is the order's other party. Anyone else is told the order does not exist (404), and
  nothing is stored. One message, one recipient: there is no way to address a list.
* **What each party learns of the other** is the username, already on the order. No email,
  phone or address is added to the thread: the buyer has the consumer's contact from the
  order, which is the consumer's, not the seller's; the seller never gets the buyer's. What
  members choose to type is theirs.
* **No bulk use.** A sender may send ``messages_per_hour`` and ``messages_per_day`` messages
  (429 with Retry-After above). The same text pasted into more than
  ``message_same_text_max_threads`` threads a day is bulk messaging: refused (403) and recorded
  as a fraud signal. The counting happens under the sender's row lock (PostgreSQL; SQLite's
  write lock serialises the whole transaction), so concurrent sends cannot slip past a cap.
* **Notification by email**, through the notification center
  (:func:`~leadmarket.notifications.notify.notify_message_received`), respects the
  recipient's "member messages" preference (P8): the message is always stored and shown in
  the thread; the email (topic ``member_messages``, with the unsubscribe link every mail
  carries, P7) is asked for only for the first unread message of a thread, so a burst of
  messages is one email. The email names the sender's username and the order, not the text:
  the conversation stays where it can be reported as spam.
* **No consumer contact details in messages.** A message carrying the email address or phone
  number of the order's consumer is refused (422): the consumer's data must be destroyed 48
  hours after the sale (L4) and a copy in a thread would outlive it. It is found without
  decrypting anything, by the lead's blind indexes (as long as they exist).
* **Report as spam**: the recipient of a message may report it once; it becomes a fraud signal
  against the sender (:mod:`leadmarket.fraud.signals`)."""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata
from dataclasses import dataclass

import phonenumbers
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.repository import usernames
from leadmarket.config import Settings
from leadmarket.fraud.reports import AlreadyReported, check_report_quota, clean_note
from leadmarket.fraud.signals import SignalKind, SignalSource, add_signal
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import (
    Conflict,
    FieldError,
    Forbidden,
    NotFound,
    TooManyRequests,
    ValidationFailed,
)
from leadmarket.kit.ids import new_id
from leadmarket.leads.vault import BlindIndexer, IndexKind
from leadmarket.messages.digest import body_digest
from leadmarket.models import (
    FraudSignal,
    LeadBlindIndex,
    MemberMessage,
    Order,
    User,
    UserStatus,
)
from leadmarket.notifications.notify import notify_message_received
from leadmarket.orders.service import get_order

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
# Characters a message may contain besides printable text.
_ALLOWED_CONTROLS = frozenset("\n\t")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


class CounterpartInactive(Conflict):
    slug = "counterpart-inactive"
    title = "The other party's account is not active"
    explanation = (
        "The member on the other side of this order is suspended or closed; messages to them "
        "are not accepted. Returns and disputes still go through the order."
    )


class BulkMessagingRefused(Forbidden):
    slug = "bulk-messaging"
    title = "Bulk messaging is not allowed"
    explanation = (
        "Member messages are for the order they belong to (M4). The same text sent into many "
        "threads is bulk messaging; it was refused and recorded for review."
    )


@dataclass(frozen=True)
class MessageView:
    message: MemberMessage
    sender: str  # username
    recipient: str  # username
    mine: bool


def counterpart_id(order: Order, member: User) -> str:
    return order.seller_id if member.id == order.buyer_id else order.buyer_id


def clean_body(body: str, settings: Settings) -> str:
    """The text as stored: line ends normalised, outer blank space trimmed; 422 when empty,
    too long, or carrying control characters."""
    text = body.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        raise ValidationFailed(
            "The message is empty.", errors=[FieldError("body", "Write a message.")]
        )
    if len(text) > settings.message_max_chars:
        raise ValidationFailed(
            f"The message is longer than {settings.message_max_chars} characters.",
            errors=[
                FieldError(
                    "body",
                    f"At most {settings.message_max_chars} characters (this one has {len(text)}).",
                )
            ],
        )
    if any(unicodedata.category(c) == "Cc" and c not in _ALLOWED_CONTROLS for c in text):
        raise ValidationFailed(
            "The message contains control characters.",
            errors=[FieldError("body", "Only text, line breaks and tabs.")],
        )
    return text


def _contact_digests(settings: Settings, text: str) -> set[str]:
    """Blind-index digests of every email address and phone number written in ``text``."""
    indexer = BlindIndexer(settings.signing_key())
    digests = {indexer.digest(IndexKind.EMAIL, m.group(0)) for m in _EMAIL.finditer(text)}
    for match in phonenumbers.PhoneNumberMatcher(text, "US"):
        e164 = phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)
        digests.add(indexer.digest(IndexKind.PHONE, e164))
    return digests


async def _refuse_consumer_contact(
    session: AsyncSession, settings: Settings, order: Order, text: str
) -> None:
    digests = _contact_digests(settings, text)
    if not digests:
        return
    found = await session.scalar(
        select(LeadBlindIndex.id)
        .where(
            LeadBlindIndex.lead_id == order.lead_id,
            LeadBlindIndex.kind.in_([IndexKind.EMAIL.value, IndexKind.PHONE.value]),
            LeadBlindIndex.digest.in_(digests),
        )
        .limit(1)
    )
    if found is not None:
        raise ValidationFailed(
            "The message contains the consumer's contact details.",
            errors=[
                FieldError(
                    "body",
                    "Leave out the consumer's email address and phone number: they are "
                    "destroyed 48 hours after the sale, and a message would keep them. "
                    "Refer to the order instead.",
                )
            ],
        )


async def _check_rate(
    session: AsyncSession, settings: Settings, sender_id: str, now: dt.datetime
) -> None:
    """429 when the sender is at the hourly or the daily cap; Retry-After says when the oldest
    message in the window leaves it."""
    # The sender's row lock serialises their concurrent sends on PostgreSQL. FOR NO KEY
    # UPDATE: it does not wait for, nor block, rows being inserted that refer to the member.
    await session.execute(
        select(User.id).where(User.id == sender_id).with_for_update(key_share=True)
    )
    for window, cap, name in (
        (HOUR, settings.messages_per_hour, "hour"),
        (DAY, settings.messages_per_day, "day"),
    ):
        row = (
            await session.execute(
                select(func.count(), func.min(MemberMessage.created_at)).where(
                    MemberMessage.sender_id == sender_id,
                    MemberMessage.created_at > now - window,
                )
            )
        ).one()
        count, oldest = int(row[0]), row[1]
        if count >= cap:
            wait = (oldest + window - now).total_seconds() if oldest else window.total_seconds()
            raise TooManyRequests(
                f"You sent {count} messages in the last {name}, the most allowed; "
                "wait before sending more.",
                retry_after=max(1, math.ceil(wait)),
            )


async def _refuse_bulk(
    session: AsyncSession,
    settings: Settings,
    *,
    sender_id: str,
    order: Order,
    digest: str,
    now: dt.datetime,
) -> None:
    threads = await session.scalar(
        select(func.count(func.distinct(MemberMessage.order_id))).where(
            MemberMessage.sender_id == sender_id,
            MemberMessage.body_digest == digest,
            MemberMessage.order_id != order.id,
            MemberMessage.created_at > now - DAY,
        )
    )
    if int(threads or 0) < settings.message_same_text_max_threads:
        return
    await add_signal(
        session,
        kind=SignalKind.BULK_MESSAGING,
        subject_user_id=sender_id,
        source=SignalSource.MESSAGES,
        details={"order_id": order.id, "threads": int(threads or 0) + 1},
        lead_id=order.lead_id,
        # One signal a day per text, however often the sender retries it.
        dedupe_key=f"bulk:{sender_id}:{digest[:32]}:{now.strftime('%Y-%m-%d')}",
        now=now,
    )
    raise BulkMessagingRefused(
        f"The same text was already sent into {threads} other order threads today; "
        "member messages are for one order each."
    )


async def send_message(
    session: AsyncSession, settings: Settings, *, order_id: str, sender: User, body: str
) -> MessageView:
    """Store a message from ``sender`` to the other party of ``order_id`` and, when it is the
    first unread one of the thread, queue the recipient's notification. Raises NotFound (not a
    party: nothing is said about the order), ValidationFailed, :class:`CounterpartInactive`,
    TooManyRequests or :class:`BulkMessagingRefused` (the caller commits the fraud signal
    that refusal recorded, and nothing else was written)."""
    order = await get_order(session, order_id, sender)
    text = clean_body(body, settings)
    await _refuse_consumer_contact(session, settings, order, text)
    recipient = await session.get(User, counterpart_id(order, sender))
    if recipient is None or recipient.status != UserStatus.ACTIVE.value:
        raise CounterpartInactive("The other party's account is not active.")
    now = utcnow()
    await _check_rate(session, settings, sender.id, now)
    digest = body_digest(text)
    await _refuse_bulk(session, settings, sender_id=sender.id, order=order, digest=digest, now=now)
    waiting = await unread_count(session, recipient.id, order.id)
    message = MemberMessage(
        id=new_id("mm"),
        order_id=order.id,
        sender_id=sender.id,
        recipient_id=recipient.id,
        body=text,
        body_digest=digest,
        created_at=now,
    )
    session.add(message)
    await session.flush()
    if not waiting:
        # Only the first unread message of the thread is told: a burst is one email.
        await notify_message_received(
            session, settings, order=order, message_id=message.id, sender_id=sender.id
        )
    return MessageView(message, sender.username, recipient.username, mine=True)


async def thread(
    session: AsyncSession,
    viewer: User,
    order_id: str,
    *,
    after_id: str | None = None,
    limit: int = 200,
    mark_read: bool = True,
    latest: bool = False,
) -> tuple[Order, list[MessageView]]:
    """The order's messages, oldest first, for its two parties only: ``limit`` + 1 after
    ``after_id`` (pages of the API), or with ``latest`` the newest ``limit`` (the page).
    Reading marks the viewer's unread messages among them read."""
    order = await get_order(session, order_id, viewer)
    query = select(MemberMessage).where(MemberMessage.order_id == order.id)
    if latest:
        query = query.order_by(MemberMessage.id.desc()).limit(limit)
    else:
        query = query.order_by(MemberMessage.id).limit(limit + 1)
    if after_id is not None:
        query = query.where(MemberMessage.id > after_id)
    rows = list(await session.scalars(query))
    if latest:
        rows.reverse()
    names = await usernames(session, {order.buyer_id, order.seller_id})
    if mark_read and any(m.recipient_id == viewer.id and m.read_at is None for m in rows):
        now = utcnow()
        await session.execute(
            update(MemberMessage)
            .where(
                MemberMessage.order_id == order.id,
                MemberMessage.recipient_id == viewer.id,
                MemberMessage.read_at.is_(None),
                MemberMessage.id <= rows[min(limit, len(rows)) - 1].id,
            )
            .values(read_at=now)
            .execution_options(synchronize_session="fetch")
        )
    views = [
        MessageView(
            m,
            names.get(m.sender_id, ""),
            names.get(m.recipient_id, ""),
            mine=m.sender_id == viewer.id,
        )
        for m in rows
    ]
    return order, views


async def unread_count(session: AsyncSession, member_id: str, order_id: str) -> int:
    count = await session.scalar(
        select(func.count()).where(
            MemberMessage.order_id == order_id,
            MemberMessage.recipient_id == member_id,
            MemberMessage.read_at.is_(None),
        )
    )
    return int(count or 0)


async def report_spam(
    session: AsyncSession,
    settings: Settings,
    *,
    message_id: str,
    reporter: User,
    note: str | None = None,
) -> FraudSignal:
    """The recipient reports a message as spam: a fraud signal against its sender, once per
    message (409 the second time). Anyone but the recipient is told there is no such message."""
    message = await session.get(MemberMessage, message_id)
    if message is None or message.recipient_id != reporter.id:
        raise NotFound("No such message.")
    await check_report_quota(session, settings, reporter.id)
    order = await session.get(Order, message.order_id)
    assert order is not None
    details: dict[str, str] = {"order_id": message.order_id}
    cleaned = clean_note(note)
    if cleaned:
        details["note"] = cleaned
    recorded = await add_signal(
        session,
        kind=SignalKind.SPAM_REPORT,
        subject_user_id=message.sender_id,
        source=SignalSource.MESSAGES,
        details=details,
        lead_id=order.lead_id,
        message_id=message.id,
        reporter_id=reporter.id,
        reason="spam",
        dedupe_key=f"spam:{message.id}",
    )
    if not recorded.created:
        raise AlreadyReported("You reported this message already.")
    return recorded.signal
