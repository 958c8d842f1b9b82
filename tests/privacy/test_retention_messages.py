"""The 48-hour rule reaches member messages (L4, M4): a consumer's name, street, email or phone
typed into the thread of an order of the lead is replaced by a neutral marker when the sweep
destroys the lead's data, in the same transaction, and never before the deadline; another
lead's thread keeps its text; a sweep that fails leaves both the vault and the messages as they
were, and the next sweep does both. The log and the audit log carry counts and ids, not values."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.ids import new_id
from leadmarket.leads.intake import LeadsKit
from leadmarket.leads.vault import IndexKind, open_for_destruction
from leadmarket.messages.digest import body_digest
from leadmarket.messages.redaction import CONTACT_FIELDS, REDACTED, redact_contact_values
from leadmarket.models import AuditEvent, Lead, LeadBlindIndex, LeadVault, MemberMessage
from leadmarket.privacy import consumer_data, retention
from leadmarket.privacy.retention import purge_expired_lead_data
from tests.fixtures.trades import Trade, trade


async def contact_of(session: AsyncSession, settings: Settings, lead_id: str) -> dict[str, Any]:
    """What the consumer gave, so the test writes it into the thread as a member would."""
    opened = await open_for_destruction(
        session, settings.keyring(), [lead_id], fields=CONTACT_FIELDS, reason="test: the values"
    )
    return opened[lead_id]


async def say(client: httpx.AsyncClient, t: Trade, text: str, *, by: str = "seller") -> str:
    headers = t.seller.headers if by == "seller" else t.buyer.headers
    sent = await client.post(
        f"/api/v1/orders/{t.order_id}/messages", json={"body": text}, headers=headers
    )
    assert sent.status_code == 201, sent.text
    return str(sent.json()["id"])


async def legacy_message(session: AsyncSession, t: Trade, text: str) -> str:
    """A message stored before sending refused emails and phones (or in a spelling the check
    missed): written straight to the table."""
    message = MemberMessage(
        id=new_id("mm"),
        order_id=t.order_id,
        sender_id=t.seller.user.id,
        recipient_id=t.buyer.user.id,
        body=text,
        body_digest=body_digest(text),
    )
    session.add(message)
    await session.commit()
    return message.id


async def bodies(session: AsyncSession, *ids: str) -> list[str]:
    await session.commit()  # a fresh snapshot: the sweep wrote in its own transaction
    rows = dict((await session.execute(select(MemberMessage.id, MemberMessage.body))).all())
    return [rows[i] for i in ids]


async def deadline_of(session: AsyncSession, lead_id: str) -> Any:
    await session.commit()
    deadline = await session.scalar(select(Lead.pii_expires_at).where(Lead.id == lead_id))
    assert deadline is not None
    return deadline


async def test_name_and_street_in_the_thread_go_with_the_lead(
    db: Database,
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = await trade(client, session, settings)
    other = await trade(client, session, settings)
    consumer = await contact_of(session, settings, t.lead.id)
    neighbour = await contact_of(session, settings, other.lead.id)
    first, last, street = consumer["first_name"], consumer["last_name"], consumer["street"]
    full = f"{first} {last}"

    # Sending accepts names and streets (only emails and phones are refused at the door).
    named = await say(client, t, f"{full} lives at {street}, call after 5.")
    parts = await say(client, t, f"Is {first.upper()} at home? {last}'s door is green.", by="buyer")
    plain = await say(client, t, "Thanks, the consumer picked up.")
    legacy = await legacy_message(
        session,
        t,
        f"Mail {consumer['email'].upper()} or phone (559) 234-5678, 559.234.5678, "
        f"{consumer['phone']}.",
    )
    kept = await say(client, other, f"{neighbour['first_name']} {neighbour['last_name']} at ")
    # The other lead's data is still held: its deadline is a day later.
    await session.execute(
        update(Lead)
        .where(Lead.id == other.lead.id)
        .values(pii_expires_at=await deadline_of(session, t.lead.id) + dt.timedelta(days=1))
    )
    await session.commit()
    before = await bodies(session, named, parts, plain, legacy, kept)

    deadline = await deadline_of(session, t.lead.id)
    early = await purge_expired_lead_data(db, settings, now=deadline - dt.timedelta(microseconds=1))
    assert early.count == 0
    assert await bodies(session, named, parts, plain, legacy, kept) == before
    assert early.messages_redacted == 0

    caplog.set_level(logging.INFO)
    done = await purge_expired_lead_data(db, settings, now=deadline)
    assert [d.lead_id for d in done.destroyed] == [t.lead.id]

    after = await bodies(session, named, parts, plain, legacy, kept)
    assert after[0] == f"{REDACTED} lives at {REDACTED}, call after 5."
    assert after[1] == f"Is {REDACTED} at home? {REDACTED}'s door is green."
    assert after[2] == "Thanks, the consumer picked up."
    assert after[3] == f"Mail {REDACTED} or phone {REDACTED}, {REDACTED}, {REDACTED}."
    assert after[4] == before[4]  # another lead's thread, whose data is still held
    assert done.messages_redacted == 3
    for body in after[:4]:
        for value in (first, last, street, consumer["email"], "234-5678", "2345678"):
            assert value.casefold() not in body.casefold()
    # The paste digest follows the redacted text, so it cannot confirm a guess at the old one.
    await session.commit()
    digest = await session.scalar(
        select(MemberMessage.body_digest).where(MemberMessage.id == named)
    )
    assert digest == body_digest(after[0])

    # The parties see the redacted thread.
    thread = await client.get(f"/api/v1/orders/{t.order_id}/messages", headers=t.buyer.headers)
    assert thread.status_code == 200
    assert last not in thread.text and street not in thread.text

    # Logged with counts and ids; the vault read is audited with the lead's id, never a value.
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "member messages redacted" in logged
    for value in (last, street, consumer["email"]):
        assert value not in logged
    reads = list(
        await session.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "pii.read", AuditEvent.reason.like("retention:%")
            )
        )
    )
    assert [r.details for r in reads] == [{"lead_ids": [t.lead.id]}]
    assert last not in str(reads[0].details)


async def test_a_failed_sweep_redacts_nothing_and_the_next_does_it_all(
    db: Database,
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = await trade(client, session, settings)
    consumer = await contact_of(session, settings, t.lead.id)
    text = f"{consumer['first_name']} {consumer['last_name']}, {consumer['street']}"
    message = await say(client, t, text)
    deadline = await deadline_of(session, t.lead.id)

    async def broken_shred(session: AsyncSession, lead_ids: list[str]) -> int:
        raise RuntimeError("the database went away mid-batch")

    with monkeypatch.context() as patched:
        patched.setattr(retention, "shred_personal_data", broken_shred)
        with pytest.raises(RuntimeError):
            await purge_expired_lead_data(db, settings, now=deadline)
    # All or nothing: the message keeps its text while the vault exists, and vice versa.
    assert await bodies(session, message) == [text]
    assert await session.get(LeadVault, t.lead.id) is not None
    assert await session.scalar(select(Lead.pii_destroyed_at).where(Lead.id == t.lead.id)) is None

    again = await purge_expired_lead_data(db, settings, now=deadline)
    assert await bodies(session, message) == [f"{REDACTED}, {REDACTED}"]
    assert again.count == 1 and again.messages_redacted == 1
    assert (
        await session.scalar(select(LeadVault.lead_id).where(LeadVault.lead_id == t.lead.id))
        is None
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("HADDAD, Ava; 5001 elm street.", f"{REDACTED}; {REDACTED}"),  # "St." eats its dot
        ("Ava-Haddad at 5001  Elm St.", f"{REDACTED} at {REDACTED}"),
        ("Avalon Haddadi and Eva live on 5001 Elm Road.", None),  # other words, other street
        ("Avaa Hadad", None),  # misspelt: cannot be found
        ("mail ava.h@example.com, text +1 559-234-5678", f"mail {REDACTED}, text {REDACTED}"),
    ],
)
def test_what_the_redaction_finds_and_what_it_cannot(text: str, expected: str | None) -> None:
    values = {
        "first_name": "Ava",
        "last_name": "Haddad",
        "street": "5001 Elm St",
        "email": "ava.h@example.com",
        "phone": "+15592345678",
    }
    assert redact_contact_values(text, values) == (text if expected is None else expected)


async def test_a_deletion_request_redacts_the_thread_as_the_sweep_does(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    """P3 with L4/M4: erasing a consumer at their request (not waiting for the 48 hours) takes
    the copies of their name and street typed into their leads' threads with the vault."""
    t = await trade(client, session, settings)
    other = await trade(client, session, settings)
    consumer = await contact_of(session, settings, t.lead.id)
    neighbour = await contact_of(session, settings, other.lead.id)
    named = await say(client, t, f"{consumer['first_name']} lives at {consumer['street']}, call.")
    kept_text = f"{neighbour['first_name']} lives at {neighbour['street']}, call."
    kept = await say(client, other, kept_text)

    consumer_of_t = consumer_data.consumer_from(
        LeadsKit(settings), email=t.consumer_email, phone=None
    )
    # How a rights request finds the consumer's leads: the keyed digest of their email, as
    # intake writes it (the trade fixture makes its lead without one).
    session.add(
        LeadBlindIndex(
            lead_id=t.lead.id,
            kind=IndexKind.EMAIL.value,
            digest=consumer_of_t.email_digest,
            vertical=t.lead.vertical,
        )
    )
    await session.flush()
    outcome = await consumer_data.erase_consumer(
        session, settings, consumer_of_t, request_id="prq_test", now=utcnow()
    )
    assert outcome.erased_lead_ids == [t.lead.id]
    assert await bodies(session, named, kept) == [
        f"{REDACTED} lives at {REDACTED}, call.",
        kept_text,
    ]
    assert await session.get(LeadVault, t.lead.id) is None
