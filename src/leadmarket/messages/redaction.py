"""Copies of a consumer's contact details in member messages go with the lead's data (L4, M4).

Sending refuses a message with the consumer's email address or phone number, but a name and a
street are free text: "Ava Haddad lives at 5001 Elm St" is accepted. When the retention sweep
destroys a lead's personal data it calls :func:`redact_lead_messages` first, in the same
transaction, while the vault can still be opened: every message of the threads of the lead's
orders has each of the lead's contact values replaced by :data:`REDACTED`. Destruction and
redaction commit together or not at all.

What is found, case-insensitively: the email address; the phone number in any spelling the
``phonenumbers`` matcher recognises as that number (``+1 559 …``, ``(559) …``, ``559-…``,
``559.…``, bare digits); the street with any spacing or punctuation between its words and
the usual suffix spelled out or abbreviated (``St``/``Street``, ``Ave``/``Avenue`` …); the
full name, then the first and the last name each as a whole word. What cannot be found: a
misspelling or a nickname ("Avaa", "Hadad", "Bob" for "Robert"), a name written without its
accents when it has them (or the reverse), a street described rather than written ("the
house on Elm, number 5001"), a name of a single character, a phone number split in ways the
matcher does not recognise. A name that is also a word ("Will", "Rose") is redacted wherever
it stands as a word in the lead's threads: over-redaction is the safe side."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import phonenumbers
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.kit.keyring import Keyring
from leadmarket.leads.vault import lead_id_among, open_for_destruction
from leadmarket.messages.digest import body_digest
from leadmarket.models import MemberMessage, Order

log = logging.getLogger("leadmarket.messages.redaction")

REDACTED = "[destroyed]"
CONTACT_FIELDS = ("first_name", "last_name", "street", "email", "phone")
_REASON = "retention: redact the consumer's contact details in member messages"

# Street suffixes and their usual abbreviations: a member may type either.
_STREET_WORDS = (
    ("street", "st"),
    ("avenue", "ave", "av"),
    ("road", "rd"),
    ("drive", "dr"),
    ("boulevard", "blvd"),
    ("lane", "ln"),
    ("court", "ct"),
    ("place", "pl"),
    ("terrace", "ter"),
    ("highway", "hwy"),
    ("parkway", "pkwy"),
    ("circle", "cir"),
    ("north", "n"),
    ("south", "s"),
    ("east", "e"),
    ("west", "w"),
    ("apartment", "apt"),
    ("suite", "ste"),
)
_SPELLINGS = {word: group for group in _STREET_WORDS for word in group}
_WORD = re.compile(r"\w+")


def _whole(pattern: str) -> str:
    return rf"(?<!\w){pattern}(?!\w)"


def _name_pattern(name: str) -> str | None:
    words = _WORD.findall(name)
    if not words or sum(len(w) for w in words) < 2:
        return None
    # "Mary-Ann", "Mary Ann", "Mary  Ann": the words in order, any separator between them.
    return _whole(r"\W{0,3}".join(re.escape(w) for w in words))


def _street_pattern(street: str) -> str | None:
    words = _WORD.findall(street)
    if len(words) < 2:
        return None
    parts = []
    for word in words:
        spellings = _SPELLINGS.get(word.casefold(), (word,))
        parts.append("(?:" + "|".join(re.escape(s) for s in spellings) + r")\.?")
    return _whole(r"[\s,.#-]{1,4}".join(parts))


def _text_patterns(values: Mapping[str, Any]) -> list[re.Pattern[str]]:
    """The patterns of one lead, longest first: a full name goes as one marker before its
    parts, and the email before the name it may contain."""
    first, last = str(values.get("first_name") or ""), str(values.get("last_name") or "")
    candidates = [
        _whole(re.escape(str(values["email"]))) if values.get("email") else None,
        _street_pattern(str(values.get("street") or "")),
        _name_pattern(f"{first} {last}") if first and last else None,
        _name_pattern(f"{last} {first}") if first and last else None,
        _name_pattern(last),
        _name_pattern(first),
    ]
    return [re.compile(p, re.IGNORECASE) for p in candidates if p]


def _redact_phone(text: str, phone: str) -> str:
    try:
        wanted = phonenumbers.parse(phone, "US")
    except phonenumbers.NumberParseException:
        return text
    target = phonenumbers.format_number(wanted, phonenumbers.PhoneNumberFormat.E164)
    spans = [
        (m.start, m.end)
        for m in phonenumbers.PhoneNumberMatcher(
            text, "US", leniency=phonenumbers.Leniency.POSSIBLE
        )
        if phonenumbers.format_number(m.number, phonenumbers.PhoneNumberFormat.E164) == target
    ]
    for start, end in reversed(spans):
        text = text[:start] + REDACTED + text[end:]
    return text


def redact_contact_values(text: str, values: Mapping[str, Any]) -> str:
    """``text`` with every occurrence of the lead's contact ``values`` replaced by
    :data:`REDACTED` (see the module docstring for what is and is not found)."""
    if values.get("phone"):
        text = _redact_phone(text, str(values["phone"]))
    for pattern in _text_patterns(values):
        text = pattern.sub(REDACTED, text)
    return text


async def redact_lead_messages(
    session: AsyncSession, keyring: Keyring, lead_ids: Sequence[str]
) -> int:
    """Redact the contact values of ``lead_ids`` in the messages of their orders' threads, in
    the caller's transaction, before the caller destroys the vaults. Returns how many messages
    changed; only leads whose threads hold messages are decrypted."""
    if not lead_ids:
        return 0
    rows = (
        await session.execute(
            select(MemberMessage.id, MemberMessage.body, Order.lead_id)
            .join(Order, Order.id == MemberMessage.order_id)
            .where(lead_id_among(session, Order.lead_id, list(lead_ids)))
            .order_by(MemberMessage.id)
        )
    ).all()
    if not rows:
        return 0
    contacts = await open_for_destruction(
        session,
        keyring,
        sorted({str(lead_id) for _, _, lead_id in rows}),
        fields=CONTACT_FIELDS,
        reason=_REASON,
    )
    changes = []
    for message_id, body, lead_id in rows:
        values = contacts.get(str(lead_id))
        if not values:
            continue
        redacted = redact_contact_values(body, values)
        if redacted != body:
            # The digest follows the text: it must not confirm a guess at the old one.
            changes.append(
                {"id": message_id, "body": redacted, "body_digest": body_digest(redacted)}
            )
    if changes:
        await session.execute(
            update(MemberMessage).execution_options(synchronize_session=False), changes
        )
    # Counts only: a log line never carries a message or a contact value.
    log.info(
        "member messages redacted",
        extra={"leads": len(contacts), "messages_seen": len(rows), "redacted": len(changes)},
    )
    return len(changes)
