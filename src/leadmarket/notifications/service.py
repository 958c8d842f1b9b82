"""Queueing, composing and sending mail, and the unsubscribe that every message offers (P7:
marketing stops on request, transactional mail continues).

Whether a message may go out is decided by its topic (:class:`MailTopic`), when it is queued
and again when it is sent (a preference changed or an unsubscribe in between is honoured):

* account and legal-notice mail (transactional): always;
* member-message mail: only while the member keeps both the email channel and the "member
  messages" topic on (P8);
* newsletters and promotions (marketing): only to a member who opted in to that topic and the
  email channel, and whose address is not on the unsubscribe list (P7: consent first). An
  address with no member behind it has given no consent, so gets no marketing.

A message not sent is kept as ``suppressed`` with the reason, never silently dropped.

An opt-out is stored as a keyed hash of the normalised address, so the list of people who asked
not to be written to does not itself keep their addresses. The unsubscribe link carries that
hash, signed, so it works without a login and without a lookup table."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.crypto import BadSignature, Signer, derive_key, keyed_hash
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import FieldError, NotFound, ValidationFailed
from leadmarket.kit.ids import new_id
from leadmarket.kit.jobs import enqueue
from leadmarket.models import User
from leadmarket.models.mail import (
    MailCategory,
    MailStatus,
    MailSuppression,
    MailTopic,
    OutboundMail,
)
from leadmarket.models.preferences import PREFERENCE_DEFAULTS, CommunicationPreference
from leadmarket.notifications.mail import MESSAGE_POLICY, MailBackend, OutgoingMessage
from leadmarket.privacy.disclosures import (
    DisclosureKind,
    DisclosurePurpose,
    LegalBasis,
    record_disclosure,
)

log = logging.getLogger("leadmarket.notifications")

SEND_MAIL_JOB = "mail.send"
UNSUBSCRIBE_PURPOSE = "unsubscribe"
SUPPRESSION_KEY_PURPOSE = "mail-suppression"
# Links in old mail must keep working for as long as anyone might click them.
UNSUBSCRIBE_LINK_TTL_SECONDS = 5 * 365 * 24 * 3600
# RFC 5322 caps a line at 998 characters; a longer body line goes out quoted-printable.
_MAX_PLAIN_LINE = 998


class InvalidUnsubscribeLink(NotFound):
    slug = "unsubscribe-link-invalid"
    title = "Unsubscribe link not valid"
    explanation = (
        "The unsubscribe link was altered, cut short or has expired. Use the link in a recent "
        "message, or change your email preferences in your account settings."
    )


def normalize_address(address: str) -> str:
    return address.strip().lower()


def suppression_hash(settings: Settings, address: str) -> str:
    key = derive_key(settings.signing_key(), SUPPRESSION_KEY_PURPOSE)
    return keyed_hash(key, normalize_address(address))


def unsubscribe_token(
    settings: Settings,
    address: str,
    user_id: str | None = None,
    category: MailCategory = MailCategory.MARKETING,
) -> str:
    """The signed link's token: the address's keyed hash, the category it stops (marketing,
    or for a member-message mail to a member, member-message mail; transactional mail cannot
    be unsubscribed from, P7) and, for mail to a member, their id, so that the member's stored
    preferences follow the click."""
    if category is MailCategory.TRANSACTIONAL or (
        category is MailCategory.MEMBER_MESSAGE and user_id is None
    ):
        raise ValueError(f"no unsubscribe link stops {category.value} mail to this address")
    claims: dict[str, str] = {
        "a": suppression_hash(settings, address),
        "c": category.value,
    }
    if user_id is not None:
        claims["u"] = user_id
    return Signer(settings.signing_key()).sign(
        UNSUBSCRIBE_PURPOSE, claims, ttl_seconds=UNSUBSCRIBE_LINK_TTL_SECONDS
    )


def unsubscribe_url(
    settings: Settings,
    address: str,
    user_id: str | None = None,
    category: MailCategory = MailCategory.MARKETING,
) -> str:
    token = unsubscribe_token(settings, address, user_id, category)
    return f"{settings.base_url.rstrip('/')}/unsubscribe/{token}"


def preferences_url(settings: Settings) -> str:
    return f"{settings.base_url.rstrip('/')}/account/preferences"


async def is_suppressed(
    session: AsyncSession, settings: Settings, address: str, category: MailCategory
) -> bool:
    found = await session.scalar(
        select(MailSuppression.id).where(
            MailSuppression.address_hash == suppression_hash(settings, address),
            MailSuppression.category == category.value,
        )
    )
    return found is not None


def _check_recipient(address: str) -> str:
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if (
        not at
        or not local
        or "." not in domain
        or len(address) > 320
        or any(c.isspace() or c in "<>," for c in address)
    ):
        raise ValidationFailed(
            "The recipient is not a single email address.",
            errors=[FieldError("to", "Must be one email address.")],
        )
    return address


_DEFAULT_TOPIC = {
    MailCategory.TRANSACTIONAL: MailTopic.ACCOUNT,
    MailCategory.MEMBER_MESSAGE: MailTopic.MEMBER_MESSAGES,
    MailCategory.MARKETING: MailTopic.PROMOTIONS,
}


def resolve_topic(
    category: MailCategory | str | None, topic: MailTopic | str | None
) -> tuple[MailCategory, MailTopic]:
    """The topic decides the category; a caller naming only a category gets its usual topic.
    A category that contradicts the topic is a programming error."""
    if topic is None:
        resolved = _DEFAULT_TOPIC[MailCategory(category or MailCategory.TRANSACTIONAL)]
    else:
        resolved = MailTopic(topic)
    if category is not None and MailCategory(category) is not resolved.category:
        raise ValueError(f"topic {resolved.value} is {resolved.category.value} mail")
    return resolved.category, resolved


async def _member_for(
    session: AsyncSession, address: str, user_id: str | None
) -> tuple[str | None, dict[str, bool]]:
    """The member the mail is for (by id, else by address) and their preferences."""
    if user_id is None:
        user_id = await session.scalar(
            select(User.id).where(func.lower(User.email) == normalize_address(address))
        )
    if user_id is None:
        return None, dict(PREFERENCE_DEFAULTS)
    row = await session.get(CommunicationPreference, user_id)
    if row is None:
        return user_id, dict(PREFERENCE_DEFAULTS)
    return user_id, {name: bool(getattr(row, name)) for name in PREFERENCE_DEFAULTS}


async def suppression_reason(
    session: AsyncSession,
    settings: Settings,
    *,
    address: str,
    topic: MailTopic,
    user_id: str | None,
) -> str | None:
    """Why a message on ``topic`` may not go to ``address`` now, or None if it may (the
    rules are in the module docstring)."""
    category = topic.category
    if category is MailCategory.TRANSACTIONAL:
        return None
    if category is MailCategory.MARKETING and await is_suppressed(
        session, settings, address, MailCategory.MARKETING
    ):
        return "unsubscribed"
    member, prefs = await _member_for(session, address, user_id)
    if category is MailCategory.MARKETING:
        if member is None or not (prefs["email"] and prefs[topic.value]):
            return "no-consent"
        return None
    if not (prefs["email"] and prefs["member_messages"]):
        return "preference"
    return None


async def queue_mail(
    session: AsyncSession,
    settings: Settings,
    *,
    to: str,
    subject: str,
    text_body: str,
    template: str,
    category: MailCategory | None = None,
    topic: MailTopic | None = None,
    user_id: str | None = None,
) -> OutboundMail:
    """Put a message in the outbox, in the caller's transaction, with its send job. A message
    its recipient does not want (see the module docstring) is kept as ``suppressed`` with the
    reason and never sent."""
    category, topic = resolve_topic(category, topic)
    to = _check_recipient(to)
    if "\r" in subject or "\n" in subject:
        raise ValidationFailed(
            "The subject must be one line.", errors=[FieldError("subject", "Must be one line.")]
        )
    mail = OutboundMail(
        id=new_id("mail"),
        user_id=user_id,
        to_address=to,
        subject=subject,
        text_body=text_body,
        category=category.value,
        topic=topic.value,
        template=template,
        status=MailStatus.QUEUED.value,
        attempts=0,
        created_at=utcnow(),
    )
    reason = await suppression_reason(session, settings, address=to, topic=topic, user_id=user_id)
    if reason is not None:
        mail.status = MailStatus.SUPPRESSED.value
        mail.suppressed_reason = reason
    session.add(mail)
    await session.flush()
    if mail.status == MailStatus.QUEUED.value:
        await enqueue(session, SEND_MAIL_JOB, {"mail_id": mail.id})
    log.info(
        "mail queued",
        extra={
            "mail_id": mail.id,
            "template": template,
            "category": category.value,
            "topic": topic.value,
            "status": mail.status,
        },
    )
    return mail


def message_id_for(settings: Settings, mail_id: str) -> str:
    """Stable per mail, so every retry of one message carries the same Message-ID."""
    sender = parseaddr(settings.mail_from)[1]
    domain = sender.rpartition("@")[2] or "leadmarket.invalid"
    return f"<{mail_id}@{domain}>"


def compose_message(settings: Settings, mail: OutboundMail) -> EmailMessage:
    """Every message, whatever its template or topic, ends with the unsubscribe link and
    carries the RFC 2369 / RFC 8058 headers (P7). The link in a member-message mail stops that
    kind of mail (P8: the member's "member messages" preference), since that is the mail the
    reader wants to stop; in any other mail it stops marketing."""
    if mail.category == MailCategory.MEMBER_MESSAGE.value and mail.user_id is not None:
        url = unsubscribe_url(settings, mail.to_address, mail.user_id, MailCategory.MEMBER_MESSAGE)
        stop = "To stop email about messages from other members, open this link"
    else:
        url = unsubscribe_url(settings, mail.to_address, mail.user_id)
        stop = "To stop marketing email from Leadmarket, open this link"
    body = (
        f"{mail.text_body.rstrip()}\n\n-- \n"
        f"{stop}: {url}\n"
        "Messages about your account and your transactions will still reach you.\n"
        f"Members choose which email they get at {preferences_url(settings)}\n"
    )
    message = EmailMessage(policy=MESSAGE_POLICY)
    message["From"] = settings.mail_from
    message["To"] = mail.to_address
    message["Subject"] = mail.subject
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = message_id_for(settings, mail.id)
    # RFC 2369 and RFC 8058: mail clients show an unsubscribe button that POSTs to the URL.
    message["List-Unsubscribe"] = f"<{url}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    plain = body.isascii() and max(len(line) for line in body.splitlines()) <= _MAX_PLAIN_LINE
    # Plain 7bit keeps the link readable in the raw file; anything else picks its own encoding.
    message.set_content(body, cte="7bit" if plain else None)
    return message


async def send_queued_mail(
    session: AsyncSession,
    settings: Settings,
    backend: MailBackend,
    mail_id: str,
    *,
    attempt: int,
) -> None:
    """Send one outbox message unless it was sent, suppressed or deleted in the meantime. The
    row lock keeps a second worker (after a lost lease) from sending it concurrently."""
    mail = await session.scalar(
        select(OutboundMail).where(OutboundMail.id == mail_id).with_for_update()
    )
    if mail is None:
        # Deleted with its account before it went out: there is no one left to write to.
        log.info("mail gone before sending", extra={"mail_id": mail_id})
        return
    if mail.status != MailStatus.QUEUED.value:
        return
    _, topic = resolve_topic(mail.category, mail.topic)
    reason = await suppression_reason(
        session, settings, address=mail.to_address, topic=topic, user_id=mail.user_id
    )
    if reason is not None:
        # Unsubscribed, or the preference changed, between queueing and sending.
        mail.status = MailStatus.SUPPRESSED.value
        mail.suppressed_reason = reason
        log.info(
            "mail suppressed",
            extra={"mail_id": mail.id, "template": mail.template, "reason": reason},
        )
        return
    message = compose_message(settings, mail)
    await backend.send(OutgoingMessage(mail.id, mail.created_at, message))
    provider = getattr(backend, "service_provider", None)
    if provider and mail.user_id is not None:
        # The relay received the member's address (P2: disclosed to a service provider).
        record_disclosure(
            session,
            DisclosureKind.SERVICE_PROVIDER,
            subject_user_id=mail.user_id,
            recipient_name=str(provider),
            categories=["identifiers"],
            purpose=DisclosurePurpose.EMAIL_DELIVERY,
            legal_basis=LegalBasis.SERVICE_PROVIDER_CONTRACT,
            basis_reference=None,
        )
    mail.status = MailStatus.SENT.value
    mail.sent_at = utcnow()
    mail.message_id = str(message["Message-ID"])
    mail.attempts = attempt
    log.info(
        "mail sent",
        extra={"mail_id": mail.id, "template": mail.template, "category": mail.category},
    )


async def mark_mail_failed(session: AsyncSession, mail_id: str, *, attempts: int) -> None:
    mail = await session.get(OutboundMail, mail_id, with_for_update=True)
    if mail is not None and mail.status == MailStatus.QUEUED.value:
        mail.status = MailStatus.FAILED.value
        mail.attempts = attempts
        log.error("mail failed for good", extra={"mail_id": mail.id, "template": mail.template})


@dataclass(frozen=True)
class UnsubscribeRequest:
    address_hash: str
    category: MailCategory
    user_id: str | None = None


@dataclass(frozen=True)
class UnsubscribeOutcome:
    category: str
    # The address was already unsubscribed: a replayed link changes nothing.
    already: bool


async def purge_old_mail(session: AsyncSession, settings: Settings, *, now: dt.datetime) -> int:
    """Delete mail that is done with (sent, failed or suppressed) after the retention period:
    the outbox keeps addresses and bodies with links in them, and keeps them no longer than
    needed to answer "did you send me that?"."""
    cutoff = now - dt.timedelta(days=settings.mail_retention_days)
    result = await session.execute(
        delete(OutboundMail).where(
            OutboundMail.status != MailStatus.QUEUED.value, OutboundMail.created_at < cutoff
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def read_unsubscribe_token(settings: Settings, token: str) -> UnsubscribeRequest:
    """Check a link without acting on it (the page behind the link shows a confirm button:
    link scanners fetch every URL in a message, and a GET must not unsubscribe)."""
    try:
        body = Signer(settings.signing_key()).unsign(UNSUBSCRIBE_PURPOSE, token)
    except BadSignature as exc:
        raise InvalidUnsubscribeLink() from exc
    address_hash, category = body.get("a"), body.get("c")
    if not isinstance(address_hash, str) or len(address_hash) != 64:
        raise InvalidUnsubscribeLink()
    if category not in (MailCategory.MARKETING.value, MailCategory.MEMBER_MESSAGE.value):
        raise InvalidUnsubscribeLink()
    user_id = body.get("u")
    if user_id is not None and not isinstance(user_id, str):
        raise InvalidUnsubscribeLink()
    if category == MailCategory.MEMBER_MESSAGE.value and user_id is None:
        raise InvalidUnsubscribeLink()
    return UnsubscribeRequest(address_hash, MailCategory(category), user_id)


async def _linked_member_preferences(
    session: AsyncSession, settings: Settings, request: UnsubscribeRequest
) -> CommunicationPreference | None:
    """The stored preferences of the member the link was made for, locked for the change
    (made with the defaults if they have none yet); None when the link names no member, or its
    address is no longer theirs (that address gets no member mail any more)."""
    if request.user_id is None:
        return None
    user = await session.get(User, request.user_id)
    if user is None or suppression_hash(settings, user.email) != request.address_hash:
        return None
    row = await session.get(CommunicationPreference, user.id, with_for_update=True)
    if row is None:
        row = CommunicationPreference(user_id=user.id, **PREFERENCE_DEFAULTS)
        session.add(row)
    return row


async def _stop_member_message_mail(
    session: AsyncSession, settings: Settings, request: UnsubscribeRequest
) -> bool:
    """Turn the member's "member messages" email off (P8); True if it already was off, or if
    the link's address is no longer the member's (that address gets no such mail any more)."""
    row = await _linked_member_preferences(session, settings, request)
    if row is None or not row.member_messages:
        return True
    row.member_messages = False
    row.updated_at = utcnow()
    await session.flush()
    return False


async def _withdraw_member_marketing_consent(
    session: AsyncSession, settings: Settings, request: UnsubscribeRequest
) -> None:
    """The member the link was made for stops newsletters and promotions in their stored
    preferences too, so their settings page says what the list does (only while the link's
    address is still their address)."""
    row = await _linked_member_preferences(session, settings, request)
    if row is None:
        return
    row.newsletters = False
    row.promotions = False
    row.updated_at = utcnow()
    await session.flush()


async def unsubscribe(session: AsyncSession, settings: Settings, token: str) -> UnsubscribeOutcome:
    """Record the opt-out named by an unsubscribe link, at once: the next marketing message to
    the address (or, for a member-message link, the next member-message mail to the member) is
    suppressed. A replayed link, or two clicks racing, records it once and reports
    ``already``."""
    request = read_unsubscribe_token(settings, token)
    if request.category is MailCategory.MEMBER_MESSAGE:
        already = await _stop_member_message_mail(session, settings, request)
        log.info("unsubscribed", extra={"category": request.category.value, "already": already})
        return UnsubscribeOutcome(request.category.value, already)
    exists = await session.scalar(
        select(MailSuppression.id).where(
            MailSuppression.address_hash == request.address_hash,
            MailSuppression.category == request.category.value,
        )
    )
    already = exists is not None
    if not already:
        try:
            # The savepoint confines a lost race (unique violation) and keeps the caller's
            # transaction usable.
            async with session.begin_nested():
                session.add(
                    MailSuppression(
                        address_hash=request.address_hash,
                        category=request.category.value,
                        created_at=utcnow(),
                    )
                )
        except IntegrityError:
            already = True
    if not already:
        await _withdraw_member_marketing_consent(session, settings, request)
    log.info("unsubscribed", extra={"category": request.category.value, "already": already})
    return UnsubscribeOutcome(request.category.value, already)


async def resubscribe(session: AsyncSession, settings: Settings, address: str) -> None:
    """Take ``address`` off the marketing unsubscribe list: only when its member opts in
    again through their preferences (a new, explicit consent)."""
    await session.execute(
        delete(MailSuppression).where(
            MailSuppression.address_hash == suppression_hash(settings, address),
            MailSuppression.category == MailCategory.MARKETING.value,
        )
    )
