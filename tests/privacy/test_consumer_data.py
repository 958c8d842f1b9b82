"""One consumer's data across leads (issue 5 §2, promises P1–P3, P9): found through the blind
indexes by email or phone, reported with the two lists of P2 built from real sales, opened only
by the privacy engine and audited, erased with the buyers told by a signed webhook and an email,
corrected and re-indexed, and opted out of sale so that intake refuses their next lead.

Leads come in through the real intake (``POST /api/v1/leads``), sales through the real purchase
path, webhook messages go to a real HTTP server on loopback."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.errors import Forbidden, ValidationFailed
from leadmarket.kit.jobs import Worker
from leadmarket.leads.intake import LeadsKit
from leadmarket.leads.vault import Purpose, Reader, reveal_personal_data
from leadmarket.models import (
    AuditEvent,
    Consent,
    ConsumerOptOut,
    Disclosure,
    Lead,
    LeadBlindIndex,
    LeadVault,
    User,
    WebhookDelivery,
)
from leadmarket.orders.service import disclosed_categories
from leadmarket.privacy import consumer_data
from leadmarket.privacy.consumer_data import Consumer, consumer_from, find_consumer_leads
from leadmarket.tasks import build_registry, build_services
from leadmarket.webhooks import signing
from tests.fixtures.accounts import mails_to, signed_in
from tests.fixtures.leads import fresh_phone, lead_body
from tests.fixtures.ledger import fund
from tests.fixtures.orders import BuyerEndpoint, buyer_endpoint
from tests.leads.test_views import consumer_answers, submit

REQUEST_ID = "prq_test_0001"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The buyer's endpoint is a server on loopback over plain http.
    return settings.model_copy(update={"webhook_allow_private_networks": True})


@pytest.fixture
def kit(settings: Settings) -> LeadsKit:
    return LeadsKit(settings)


@dataclass
class Person:
    email: str
    phone: str
    last_name: str


def person(tag: str) -> Person:
    return Person(f"{tag}.{fresh_phone()[-7:]}@example.com", fresh_phone(), f"Moreira{tag}")


async def post_lead(
    client: httpx.AsyncClient, seller: dict[str, str], who: Person, vertical: str
) -> dict[str, Any]:
    body = lead_body(
        vertical,
        contact__email=who.email,
        contact__phone=who.phone,
        contact__last_name=who.last_name,
    )
    response = await client.post("/api/v1/leads", json=body, headers=seller)
    assert response.status_code == 201, response.text
    return {"id": response.json()["id"], "body": body}


@dataclass
class Buyer:
    user: User
    headers: dict[str, str]
    secret: str | None


async def make_buyer(
    client: httpx.AsyncClient, session: AsyncSession, endpoint: BuyerEndpoint | None
) -> Buyer:
    account, headers = await signed_in(client, "buyer")
    user = await session.get(User, account["id"])
    assert user is not None
    await fund(session, user, 100_000)
    secret = None
    if endpoint is not None:
        hook = await client.put("/api/v1/me/webhook", json={"url": endpoint.url}, headers=headers)
        assert hook.status_code == 200, hook.text
        secret = hook.json()["secret"]
    return Buyer(user, headers, secret)


async def buy(client: httpx.AsyncClient, buyer: Buyer, lead_id: str) -> str:
    order = await client.post(f"/api/v1/leads/{lead_id}/purchase", headers=buyer.headers)
    assert order.status_code == 201, order.text
    return str(order.json()["id"])


async def business_disclosure(session: AsyncSession, lead_id: str, **recipient: str) -> None:
    """A disclosure of identifiers not sold, as its producer records it."""
    session.add(Disclosure(lead_id=lead_id, categories=["identifiers"], sold=False, **recipient))
    await session.flush()


def year_ago() -> dt.datetime:
    return utcnow() - dt.timedelta(days=365)


def worker(db: Database, settings: Settings) -> Worker[object]:
    return Worker(db, build_registry(), build_services(settings), settings)  # type: ignore[arg-type]


async def count(session: AsyncSession, model: Any, *where: Any) -> int:
    return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


@pytest.fixture
async def seller(client: httpx.AsyncClient) -> dict[str, str]:
    _, headers = await signed_in(client, "seller")
    return headers


# Finding -------------------------------------------------------------------------------------


async def test_a_consumer_is_found_by_email_or_by_phone_and_no_one_else(
    client: httpx.AsyncClient, session: AsyncSession, kit: LeadsKit, seller: dict[str, str]
) -> None:
    ana, other = person("ana"), person("bea")
    first = await post_lead(client, seller, ana, "auto-insurance")
    second = await post_lead(client, seller, ana, "home-insurance")
    await post_lead(client, seller, other, "auto-insurance")
    both = {first["id"], second["id"]}

    by_email = await find_consumer_leads(session, consumer_from(kit, email=ana.email, phone=None))
    by_phone = await find_consumer_leads(session, consumer_from(kit, email=None, phone=ana.phone))
    assert set(by_email) == both and set(by_phone) == both
    # Newest first.
    created = {i: (await session.get(Lead, i)).created_at for i in both}  # type: ignore[union-attr]
    assert by_email == sorted(both, key=lambda i: (created[i], i), reverse=True)
    # Written as a person would type them: upper case, national phone format.
    national = f"({ana.phone[2:5]}) {ana.phone[5:8]}-{ana.phone[8:]}"
    typed = consumer_from(kit, email=ana.email.upper(), phone=national)
    assert set(await find_consumer_leads(session, typed)) == both
    # An identifier that cannot be normalised gives no digest, and nothing is found.
    assert consumer_from(kit, email="not an email", phone="12") == Consumer(None, None)
    assert await find_consumer_leads(session, Consumer(None, None)) == []
    stranger = consumer_from(kit, email="nobody@example.com", phone=None)
    assert await find_consumer_leads(session, stranger) == []
    later = utcnow() + dt.timedelta(seconds=5)
    assert await find_consumer_leads(session, typed, since=later) == []


# The report (P1, P2) -------------------------------------------------------------------------


async def test_the_report_lists_each_disclosure_with_recipient_categories_purpose_and_time(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    kit: LeadsKit,
    seller: dict[str, str],
) -> None:
    """P1, P2: the consumer sees not only the categories per kind of recipient but each
    disclosure: which buyer (by its public username), which categories, why and when. A
    law-enforcement recipient is counted but not named."""
    ana = person("ana")
    bought = await post_lead(client, seller, ana, "auto-insurance")
    buyer = await make_buyer(client, session, None)
    before = utcnow()
    await buy(client, buyer, bought["id"])
    await business_disclosure(
        session,
        bought["id"],
        recipient_name="County Sheriff",
        recipient_category="law_enforcement",
        purpose="legal_request",
    )
    consumer = consumer_from(kit, email=ana.email, phone=None)

    report = await consumer_data.build_report(
        session, settings, consumer, since=year_ago(), include_pieces=False, request_id=REQUEST_ID
    )

    sale, production = report["disclosures"]
    assert sale["recipient"] == buyer.user.username
    assert sale["recipient_category"] == "buyer" and sale["sold"] is True
    assert sale["purpose"] == "sale" and sale["lead_id"] == bought["id"]
    assert sale["categories"] == disclosed_categories("auto-insurance")
    assert dt.datetime.fromisoformat(sale["disclosed_at"]) >= before
    assert production["recipient"] is None
    assert production["recipient_category"] == "law_enforcement"
    assert production["sold"] is False
    assert "County Sheriff" not in json.dumps(report)
    rows = list(csv.reader(io.StringIO(consumer_data.report_as_csv(report))))
    assert ["disclosures", "0.recipient", buyer.user.username] in rows


async def test_the_report_lists_categories_sources_recipients_and_the_two_lists(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    kit: LeadsKit,
    seller: dict[str, str],
) -> None:
    ana = person("ana")
    bought = await post_lead(client, seller, ana, "auto-insurance")
    await post_lead(client, seller, ana, "life-insurance")
    buyer = await make_buyer(client, session, None)
    await buy(client, buyer, bought["id"])
    # A disclosure for a business purpose (a service provider's hand-off), as its producer
    # will record it.
    await business_disclosure(
        session,
        bought["id"],
        recipient_id=buyer.user.id,
        recipient_category="service_provider",
        purpose="verification",
    )
    consumer = consumer_from(kit, email=ana.email, phone=None)
    since = year_ago()

    report = await consumer_data.build_report(
        session, settings, consumer, since=since, include_pieces=False, request_id=REQUEST_ID
    )

    assert report["leads_found"] == 2
    assert {"identifiers", "personal_records", "internet_activity"} <= set(
        report["categories_collected"]
    )
    assert all(c in report["labels"] for c in report["categories_collected"])
    [source] = report["sources"]
    assert "through the lead API" in source and "member_" in source
    assert len(report["purposes"]) >= 3
    assert report["recipient_categories"] == ["buyer", "service_provider"]
    assert report["categories_sold"] == {"buyer": disclosed_categories("auto-insurance")}
    assert report["categories_disclosed_for_business_purpose"] == {
        "service_provider": ["identifiers"]
    }
    assert "pieces" not in report
    assert "48 hours" in report["note"] and "no longer be found" in report["note"]
    # No decryption for a report of categories.
    engine_reads = (AuditEvent.action == "pii.read", AuditEvent.actor_type == "system")
    assert await count(session, AuditEvent, *engine_reads) == 0
    # Nothing personal in it.
    assert ana.email not in json.dumps(report) and ana.last_name not in json.dumps(report)

    # Limited to the period asked for.
    recent = await consumer_data.build_report(
        session,
        settings,
        consumer,
        since=utcnow() + dt.timedelta(seconds=5),
        include_pieces=False,
        request_id=REQUEST_ID,
    )
    assert recent["leads_found"] == 0
    assert recent["categories_sold"] == {} and recent["categories_collected"] == []


async def test_access_gives_the_pieces_decrypted_audited_and_as_csv(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    kit: LeadsKit,
    seller: dict[str, str],
) -> None:
    ana = person("ana")
    leads = [
        await post_lead(client, seller, ana, "auto-insurance"),
        await post_lead(client, seller, ana, "mortgage"),
    ]
    consumer = consumer_from(kit, email=None, phone=ana.phone)

    report = await consumer_data.build_report(
        session,
        settings,
        consumer,
        since=utcnow() - dt.timedelta(days=365),
        include_pieces=True,
        request_id=REQUEST_ID,
    )

    pieces = {p["lead_id"]: p for p in report["pieces"]}
    assert set(pieces) == {lead["id"] for lead in leads}
    for lead in leads:
        contact = lead["body"]["contact"]
        fields = pieces[lead["id"]]["fields"]
        assert fields["email"] == ana.email and fields["phone"] == ana.phone
        assert fields["last_name"] == ana.last_name
        assert fields["street"] == contact["address"]["street"]
        assert fields["birth_date"] == contact["birth_date"]
        assert fields["city"] == "Fresno" and fields["consent_ip"] == "203.0.113.7"
        assert fields["attributes"] == lead["body"]["attributes"]
        assert pieces[lead["id"]]["consent_certificate"].startswith("cert_")
    reads = list(await session.scalars(select(AuditEvent).where(AuditEvent.action == "pii.read")))
    assert sorted(e.subject_id for e in reads) == sorted(lead["id"] for lead in leads)
    assert all(e.actor_type == "system" and REQUEST_ID in (e.reason or "") for e in reads)
    assert all("email" in (e.fields or []) for e in reads)

    rows = list(csv.DictReader(io.StringIO(consumer_data.report_as_csv(report))))
    assert rows and set(rows[0]) == {"section", "key", "value"}
    flat = {(r["section"], r["key"]): r["value"] for r in rows}
    for lead in leads:
        assert flat[("pieces", f"{lead['id']}.fields.email")] == ana.email
        assert flat[("pieces", f"{lead['id']}.fields.phone")] == ana.phone
        assert flat[("pieces", f"{lead['id']}.vertical")] in ("auto-insurance", "mortgage")
    collected = [r["value"] for r in rows if r["section"] == "categories_collected"]
    assert collected == report["categories_collected"]
    assert flat[("note", "")] == report["note"]


async def test_a_lead_past_its_deadline_counts_as_destroyed_but_an_erasure_still_takes_it(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    kit: LeadsKit,
    seller: dict[str, str],
) -> None:
    """L4: past ``pii_expires_at`` the data is gone for every reader even before the sweep, so
    an access report leaves that lead out (and does not fail on it); an erasure does not wait
    for the sweep and shreds it at once."""
    bo = person("bo")
    kept = await post_lead(client, seller, bo, "auto-insurance")
    expired = await post_lead(client, seller, bo, "mortgage")
    lead = await session.get(Lead, expired["id"])
    assert lead is not None
    lead.pii_expires_at = utcnow() - dt.timedelta(seconds=1)
    await session.flush()
    consumer = consumer_from(kit, email=bo.email, phone=None)

    assert await consumer_data.find_consumer_leads(session, consumer) == [kept["id"]]
    report = await consumer_data.build_report(
        session,
        settings,
        consumer,
        since=utcnow() - dt.timedelta(days=365),
        include_pieces=True,
        request_id=REQUEST_ID,
    )
    assert [p["lead_id"] for p in report["pieces"]] == [kept["id"]]

    outcome = await consumer_data.erase_consumer(
        session, settings, consumer, request_id=REQUEST_ID, now=utcnow()
    )
    assert sorted(outcome.erased_lead_ids) == sorted([kept["id"], expired["id"]])
    assert await session.get(LeadVault, expired["id"]) is None


async def test_only_the_privacy_engine_opens_data_for_a_rights_request(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, seller: dict[str, str]
) -> None:
    lead = await post_lead(client, seller, person("ana"), "auto-insurance")
    for role in ("admin", "privacy_officer", "buyer"):
        with pytest.raises(Forbidden):
            await reveal_personal_data(
                session,
                settings,
                lead["id"],
                reader=Reader("usr_x", role),
                purpose=Purpose.RIGHTS_REQUEST,
                reason=REQUEST_ID,
            )
    with pytest.raises(Forbidden):  # a request id is required
        await reveal_personal_data(
            session,
            settings,
            lead["id"],
            reader=Reader.privacy_engine(),
            purpose=Purpose.RIGHTS_REQUEST,
            reason=" ",
        )


async def test_matching_data_points_are_counted_across_leads(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    kit: LeadsKit,
    seller: dict[str, str],
) -> None:
    ana = person("ana")
    lead = await post_lead(client, seller, ana, "auto-insurance")
    ids = await find_consumer_leads(session, consumer_from(kit, email=ana.email, phone=None))
    right = {
        "name": f"  ana   {ana.last_name.upper()} ",
        "postal_code": "93650-1234",
        "birth_date": lead["body"]["contact"]["birth_date"],
        "phone": ana.phone[2:],
        "unknown": "x",
    }
    assert (
        await consumer_data.count_matching_data_points(
            session, settings, ids, data_points=right, request_id=REQUEST_ID
        )
        == 4
    )
    wrong = {"name": "Ana Other", "postal_code": "10001", "birth_date": "1990-01-01"}
    assert (
        await consumer_data.count_matching_data_points(
            session, settings, ids, data_points=wrong, request_id=REQUEST_ID
        )
        == 0
    )
    reads = await count(
        session, AuditEvent, AuditEvent.action == "pii.read", AuditEvent.subject_id == lead["id"]
    )
    assert reads == 2


# Erasure (P3) --------------------------------------------------------------------------------


async def test_erasure_shreds_this_consumer_only_and_tells_the_buyer(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    kit: LeadsKit,
    db: Database,
    seller: dict[str, str],
) -> None:
    ana, bea = person("ana"), person("bea")
    with buyer_endpoint() as endpoint:
        buyer = await make_buyer(client, session, endpoint)
        sold = await post_lead(client, seller, ana, "auto-insurance")
        still_open = await post_lead(client, seller, ana, "home-insurance")
        other = await post_lead(client, seller, bea, "auto-insurance")
        order_id = await buy(client, buyer, sold["id"])
        ana_ids = {sold["id"], still_open["id"]}

        outcome = await consumer_data.erase_consumer(
            session,
            settings,
            consumer_from(kit, email=ana.email, phone=ana.phone),
            request_id=REQUEST_ID,
            now=utcnow(),
        )

        assert set(outcome.erased_lead_ids) == ana_ids
        assert outcome.withdrawn_lead_ids == [still_open["id"]]
        assert outcome.notified_buyer_ids == [buyer.user.id]
        assert outcome.stopped_deliveries == 1  # the lead itself was not yet delivered
        for lead_id in ana_ids:
            assert await session.get(LeadVault, lead_id, populate_existing=True) is None
            assert await count(session, LeadBlindIndex, LeadBlindIndex.lead_id == lead_id) == 0
            lead = await session.get(Lead, lead_id, populate_existing=True)
            assert lead is not None and lead.pii_destroyed_at is not None
        assert (await session.get(Lead, still_open["id"])).status == "withdrawn"  # type: ignore[union-attr]
        consent = await session.scalar(select(Consent).where(Consent.lead_id == sold["id"]))
        assert consent is not None and consent.withdrawn_at is not None
        # The other consumer's lead is untouched.
        assert await session.get(LeadVault, other["id"]) is not None
        assert await count(session, LeadBlindIndex, LeadBlindIndex.lead_id == other["id"]) == 3
        by_email = consumer_from(kit, email=ana.email, phone=None)
        assert await find_consumer_leads(session, by_email) == []

        kept = {k.record.split(" ")[0]: k for k in outcome.kept}
        assert kept["orders"].count == 1 and "transaction" in kept["orders"].legal_reason
        assert kept["ledger"].count >= 1
        assert kept["consent"].count == 2 and "legal claims" in kept["consent"].legal_reason
        assert kept["audit"].count >= 2 and "Security" in kept["audit"].legal_reason
        erased_log = await count(
            session,
            AuditEvent,
            AuditEvent.action == "pii.erased",
            AuditEvent.reason.contains(REQUEST_ID),
        )
        assert erased_log == 2

        await worker(db, settings).run_once()

    [message] = endpoint.received
    assert buyer.secret is not None and signing.verify(buyer.secret, message.headers, message.body)
    assert not signing.verify(signing.generate_secret(), message.headers, message.body)
    payload = message.json()
    assert payload["type"] == "lead.erased"
    assert payload["data"]["order_id"] == order_id and payload["data"]["lead_id"] == sold["id"]
    for secret in (ana.email, ana.phone, ana.last_name):
        assert secret not in message.body.decode()
    deliveries = {
        d.event_type: d.status
        for d in await session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.order_id == order_id)
        )
    }
    assert deliveries == {"lead.delivered": "failed", "lead.erased": "succeeded"}
    [mail] = [m for m in await mails_to(session, buyer.user.email) if m.template == "lead.erased"]
    assert order_id in mail.text_body and sold["id"] in mail.text_body
    assert ana.email not in mail.text_body and ana.last_name not in mail.text_body
    assert mail.category == "transactional"


async def test_erasing_an_unknown_consumer_does_nothing(
    session: AsyncSession, settings: Settings, kit: LeadsKit
) -> None:
    outcome = await consumer_data.erase_consumer(
        session,
        settings,
        consumer_from(kit, email="nobody@example.com", phone=None),
        request_id=REQUEST_ID,
        now=utcnow(),
    )
    assert outcome.erased_lead_ids == [] and outcome.kept == []


# Correction (P3) -----------------------------------------------------------------------------


async def test_correction_reseals_reindexes_and_tells_the_buyer(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    kit: LeadsKit,
    db: Database,
    seller: dict[str, str],
) -> None:
    ana = person("ana")
    with buyer_endpoint() as endpoint:
        buyer = await make_buyer(client, session, endpoint)
        sold = await post_lead(client, seller, ana, "auto-insurance")
        other_lead = await post_lead(client, seller, ana, "home-insurance")
        order_id = await buy(client, buyer, sold["id"])
        await worker(db, settings).run_once()  # the lead itself is delivered
        before = await session.get(LeadVault, sold["id"])
        assert before is not None
        old_key = bytes(before.wrapped_key)
        new_phone = fresh_phone()

        outcome = await consumer_data.correct_consumer(
            session,
            settings,
            consumer_from(kit, email=ana.email, phone=None),
            {"phone": new_phone, "last_name": "Moreira-Lopes", "address.city": "Clovis"},
            request_id=REQUEST_ID,
        )

        assert set(outcome.corrected_lead_ids) == {sold["id"], other_lead["id"]}
        assert outcome.fields == ["address.city", "last_name", "phone"]
        assert outcome.notified_buyer_ids == [buyer.user.id]
        vault = await session.get(LeadVault, sold["id"], populate_existing=True)
        assert vault is not None and bytes(vault.wrapped_key) != old_key  # a new data key
        values = await reveal_personal_data(
            session,
            settings,
            sold["id"],
            reader=Reader.privacy_engine(),
            purpose=Purpose.RIGHTS_REQUEST,
            reason=REQUEST_ID,
        )
        assert values["phone"] == new_phone and values["last_name"] == "Moreira-Lopes"
        assert values["email"] == ana.email  # untouched fields survive the re-seal
        lead = await session.get(Lead, sold["id"], populate_existing=True)
        assert lead is not None and lead.city == "Clovis"
        by_new = consumer_from(kit, email=None, phone=new_phone)
        assert set(await find_consumer_leads(session, by_new)) == set(outcome.corrected_lead_ids)
        by_old = consumer_from(kit, email=None, phone=ana.phone)
        assert await find_consumer_leads(session, by_old) == []

        await worker(db, settings).run_once()

    corrected = [m for m in endpoint.received if m.json()["type"] == "lead.corrected"]
    [message] = corrected
    assert buyer.secret is not None and signing.verify(buyer.secret, message.headers, message.body)
    data = message.json()["data"]
    assert data["order_id"] == order_id and data["lead_id"] == sold["id"]
    assert data["fields"] == ["address.city", "last_name", "phone"]
    assert new_phone not in message.body.decode() and "Moreira-Lopes" not in message.body.decode()
    mails = await mails_to(session, buyer.user.email)
    [mail] = [m for m in mails if m.template == "lead.corrected"]
    assert order_id in mail.text_body and new_phone not in mail.text_body
    assert "Moreira-Lopes" not in mail.text_body


@pytest.mark.parametrize(
    ("corrections", "field"),
    [
        ({"phone": "+1 555 0100"}, "phone"),
        ({"email": "ana@@example"}, "email"),
        ({"ssn": "123-45-6789"}, "ssn"),
        ({"address.postal_code": "10001"}, "address.postal_code"),
        ({"address.region": "ZZ"}, "address.region"),
        ({"birth_date": "2020-01-01"}, "birth_date"),
        ({"name": "Cher"}, "name"),
        ({"attributes.no_such_answer": "x"}, "attributes.no_such_answer"),
    ],
)
async def test_an_invalid_correction_changes_nothing(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    kit: LeadsKit,
    seller: dict[str, str],
    corrections: dict[str, str],
    field: str,
) -> None:
    ana = person("ana")
    lead = await post_lead(client, seller, ana, "auto-insurance")
    vault = await session.get(LeadVault, lead["id"])
    assert vault is not None
    sealed_before = dict(vault.sealed_fields)
    digests_before = set(
        await session.scalars(
            select(LeadBlindIndex.digest).where(LeadBlindIndex.lead_id == lead["id"])
        )
    )

    with pytest.raises(ValidationFailed) as refused:
        # A valid correction alongside does not get through either.
        await consumer_data.correct_consumer(
            session,
            settings,
            consumer_from(kit, email=ana.email, phone=None),
            {"address.city": "Clovis", **corrections},
            request_id=REQUEST_ID,
        )

    assert field in [e.field for e in refused.value.errors]
    for value in corrections.values():
        assert all(value not in e.message for e in refused.value.errors)
    vault = await session.get(LeadVault, lead["id"], populate_existing=True)
    assert vault is not None and vault.sealed_fields == sealed_before
    after = set(
        await session.scalars(
            select(LeadBlindIndex.digest).where(LeadBlindIndex.lead_id == lead["id"])
        )
    )
    assert after == digests_before
    assert (await session.get(Lead, lead["id"], populate_existing=True)).city == "Fresno"  # type: ignore[union-attr]


# Opt-out of sale (P9) ------------------------------------------------------------------------


async def test_opt_out_withdraws_open_leads_and_intake_refuses_the_next(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    kit: LeadsKit,
    seller: dict[str, str],
) -> None:
    ana, bea = person("ana"), person("bea")
    open_lead = await post_lead(client, seller, ana, "auto-insurance")
    beas = await post_lead(client, seller, bea, "auto-insurance")

    outcome = await consumer_data.opt_out_consumer(
        session,
        settings,
        consumer_from(kit, email=ana.email, phone=ana.phone),
        request_id=REQUEST_ID,
        now=utcnow(),
    )

    assert outcome.withdrawn_lead_ids == [open_lead["id"]]
    assert (await session.get(Lead, open_lead["id"], populate_existing=True)).status == "withdrawn"  # type: ignore[union-attr]
    assert (await session.get(Lead, beas["id"])).status == "open"  # type: ignore[union-attr]
    registry = list(await session.scalars(select(ConsumerOptOut)))
    assert sorted(r.kind for r in registry) == ["email", "phone"]
    stored = json.dumps([[r.digest, r.kind, r.request_id] for r in registry])
    assert ana.email not in stored and ana.phone not in stored
    # Asking twice is harmless.
    await consumer_data.opt_out_consumer(
        session,
        settings,
        consumer_from(kit, email=ana.email, phone=None),
        request_id="prq_again",
        now=utcnow(),
    )
    assert await count(session, ConsumerOptOut) == 2

    tables = (Lead, LeadVault, LeadBlindIndex, Consent)
    before = {t: await count(session, t) for t in tables}
    # A new lead with the same phone and another email, in another vertical, with a fresh
    # consent: refused, and nothing of it stored.
    body = lead_body("life-insurance", contact__phone=ana.phone, contact__last_name="Zqx")
    refused = await client.post("/api/v1/leads", json=body, headers=seller)
    assert refused.status_code == 409, refused.text
    assert refused.json()["type"].endswith("/consumer-opted-out")
    assert ana.phone not in refused.text
    same_email = lead_body("mortgage", contact__email=ana.email)
    assert (await client.post("/api/v1/leads", json=same_email, headers=seller)).status_code == 409
    assert {t: await count(session, t) for t in tables} == before
    # Everyone else still gets in.
    accepted = await client.post("/api/v1/leads", json=lead_body("life-insurance"), headers=seller)
    assert accepted.status_code == 201, accepted.text


async def test_the_consumer_form_tells_an_opted_out_consumer_and_stores_nothing(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, kit: LeadsKit
) -> None:
    account, _ = await signed_in(client, "seller")
    answers = consumer_answers()
    await consumer_data.opt_out_consumer(
        session,
        settings,
        consumer_from(kit, email=answers["contact.email"], phone=None),
        request_id=REQUEST_ID,
        now=utcnow(),
    )
    tables = (Lead, LeadVault, LeadBlindIndex, Consent)
    before = {t: await count(session, t) for t in tables}

    page = await submit(client, account["username"], answers)

    assert page.status_code == 409
    assert "You asked us not to sell your information" in page.text
    assert answers["contact.email"] not in page.text
    assert {t: await count(session, t) for t in tables} == before


async def test_answers_are_corrected_in_the_vault_and_in_the_preview(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    kit: LeadsKit,
    seller: dict[str, str],
) -> None:
    ana = person("ana")
    auto = await post_lead(client, seller, ana, "auto-insurance")
    home = await post_lead(client, seller, ana, "home-insurance")
    consumer = consumer_from(kit, email=ana.email, phone=None)

    outcome = await consumer_data.correct_consumer(
        session,
        settings,
        consumer,
        # vehicle_year is shown in the preview, vehicle_model is sealed: both are of the
        # auto-insurance lead only.
        {"attributes.vehicle_year": "2016", "attributes.vehicle_model": " Corolla "},
        request_id=REQUEST_ID,
    )

    # The home-insurance lead has no such answers: it is left alone.
    assert outcome.corrected_lead_ids == [auto["id"]]
    lead = await session.get(Lead, auto["id"], populate_existing=True)
    assert lead is not None and lead.preview_attributes["vehicle_year"] == 2016
    values = await reveal_personal_data(
        session,
        settings,
        auto["id"],
        reader=Reader.privacy_engine(),
        purpose=Purpose.RIGHTS_REQUEST,
        reason=REQUEST_ID,
    )
    assert values["attributes"]["vehicle_model"] == "Corolla"
    assert "vehicle_year" not in values["attributes"]
    untouched = await session.get(Lead, home["id"], populate_existing=True)
    assert untouched is not None and "vehicle_year" not in untouched.preview_attributes

    with pytest.raises(ValidationFailed) as refused:
        await consumer_data.correct_consumer(
            session, settings, consumer, {"attributes.vehicle_year": "1850"}, request_id="x"
        )
    assert [e.field for e in refused.value.errors] == ["attributes.vehicle_year"]
