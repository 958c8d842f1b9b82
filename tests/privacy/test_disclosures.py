"""Disclosure records (P2, P9): every hand-off of personal data is recorded as it happens, with
its categories, recipient category, purpose and legal basis: a sale under the consumer's
consent (with its certificate), mail handed to the SMTP relay (a service provider), and nothing
for what stays on this machine. ``record_disclosure`` refuses a record that would mislead the
reports."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.models import Consent, Disclosure, User
from leadmarket.notifications.mail import FileMailBackend, SmtpMailBackend
from leadmarket.notifications.service import queue_mail, send_queued_mail
from leadmarket.privacy.disclosures import (
    DisclosureKind,
    DisclosurePurpose,
    LegalBasis,
    record_disclosure,
)
from tests.fixtures.accounts import signed_in
from tests.fixtures.leads import lead_body
from tests.fixtures.ledger import fund, make_member
from tests.notifications.test_mail import LoopbackSmtpServer


async def test_a_sale_is_recorded_as_sold_to_a_buyer_under_the_consumers_consent(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, seller = await signed_in(client, "seller")
    lead = await client.post("/api/v1/leads", json=lead_body(), headers=seller)
    assert lead.status_code == 201, lead.text
    lead_id = lead.json()["id"]
    buyer, buyer_auth = await signed_in(client, "buyer")
    user = await session.get(User, buyer["id"])
    assert user is not None
    await fund(session, user, 10_000)
    await session.commit()

    order = await client.post(f"/api/v1/leads/{lead_id}/purchase", headers=buyer_auth)
    assert order.status_code == 201, order.text

    [disclosure] = (
        await session.scalars(select(Disclosure).where(Disclosure.lead_id == lead_id))
    ).all()
    certificate = await session.scalar(
        select(Consent.certificate).where(Consent.lead_id == lead_id)
    )
    assert certificate
    assert disclosure.sold is True
    assert (disclosure.recipient_category, disclosure.recipient_id) == ("buyer", buyer["id"])
    assert disclosure.recipient_name is None and disclosure.subject_user_id is None
    assert disclosure.purpose == "sale" and disclosure.order_id == order.json()["id"]
    assert (disclosure.legal_basis, disclosure.basis_reference) == (
        "consumer_consent",
        certificate,
    )
    # What the buyer receives: contact and answers, not the consent evidence (L6).
    assert "identifiers" in disclosure.categories
    assert "internet_activity" not in disclosure.categories


async def test_record_disclosure_refuses_records_that_would_mislead_the_reports(
    session: AsyncSession,
) -> None:
    member = await make_member(session)
    common = {
        "categories": ["identifiers"],
        "subject_user_id": member.id,
        "recipient_name": "Somebody",
        "basis_reference": "ref",
    }
    cases = [
        # A sale rests on consent (P9), and goes to a member buyer.
        (DisclosureKind.SALE, LegalBasis.SERVICE_PROVIDER_CONTRACT, "cannot rest on"),
        (DisclosureKind.SALE, LegalBasis.CONSUMER_CONSENT, "member buyer"),
        # Law enforcement: a legal document and its request, nothing less (P10).
        (DisclosureKind.LAW_ENFORCEMENT, LegalBasis.CONSUMER_CONSENT, "cannot rest on"),
        (DisclosureKind.LAW_ENFORCEMENT, LegalBasis.SUBPOENA, "names its request"),
    ]
    for kind, basis, message in cases:
        purpose = (
            DisclosurePurpose.SALE
            if kind is DisclosureKind.SALE
            else (DisclosurePurpose.LEGAL_REQUEST)
        )
        with pytest.raises(ValueError, match=message):
            record_disclosure(session, kind, purpose=purpose, legal_basis=basis, **common)  # type: ignore[arg-type]
    provider = dict(
        kind=DisclosureKind.SERVICE_PROVIDER,
        purpose=DisclosurePurpose.EMAIL_DELIVERY,
        legal_basis=LegalBasis.SERVICE_PROVIDER_CONTRACT,
    )
    with pytest.raises(ValueError, match="one lead or one member"):
        record_disclosure(session, **provider, **{**common, "lead_id": "lead_x"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="recipient"):
        record_disclosure(session, **provider, **{**common, "recipient_name": None})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="categories"):
        record_disclosure(session, **provider, **{**common, "categories": ["shoe_size"]})  # type: ignore[arg-type]
    assert not session.new  # nothing half-written
    written = record_disclosure(session, **provider, **common)  # type: ignore[arg-type]
    assert (written.sold, written.recipient_category) == (False, "service_provider")


@pytest.fixture
async def relay() -> AsyncIterator[tuple[LoopbackSmtpServer, int]]:
    import asyncio

    server = LoopbackSmtpServer()
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    async with listening:
        yield server, port


async def test_mail_through_the_smtp_relay_is_a_disclosure_to_a_service_provider(
    session: AsyncSession, settings: Settings, relay: tuple[LoopbackSmtpServer, int]
) -> None:
    server, port = relay
    smtp_settings = settings.model_copy(
        update={
            "mail_backend": "smtp",
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_username": "relay-user",
            "smtp_password": SecretStr("relay-pass"),
        }
    )
    member = await make_member(session)
    mail = await queue_mail(
        session,
        smtp_settings,
        to=member.email,
        subject="Your order",
        text_body="Hello",
        template="test",
        user_id=member.id,
    )
    await send_queued_mail(
        session, smtp_settings, SmtpMailBackend(smtp_settings), mail.id, attempt=1
    )
    assert [m.recipients for m in server.received] == [[member.email]]

    [disclosure] = (
        await session.scalars(select(Disclosure).where(Disclosure.subject_user_id == member.id))
    ).all()
    assert disclosure.sold is False and disclosure.lead_id is None
    assert disclosure.recipient_category == "service_provider"
    assert disclosure.recipient_name == "SMTP relay 127.0.0.1"
    assert disclosure.purpose == "email_delivery"
    assert disclosure.legal_basis == "service_provider_contract"
    assert disclosure.categories == ["identifiers"]


async def test_mail_written_to_files_on_this_machine_discloses_nothing(
    session: AsyncSession, settings: Settings
) -> None:
    member = await make_member(session)
    mail = await queue_mail(
        session,
        settings,
        to=member.email,
        subject="Your order",
        text_body="Hello",
        template="test",
        user_id=member.id,
    )
    backend = FileMailBackend(settings.mail_path)
    await send_queued_mail(session, settings, backend, mail.id, attempt=1)
    assert list(settings.mail_path.glob("*.eml"))
    assert (
        await session.scalars(select(Disclosure).where(Disclosure.subject_user_id == member.id))
    ).all() == []
