"""The whole rights-request journey, end to end, with no stand-ins (issue 5 §2; P1–P6, P9).

Everything is the real thing: leads come in through the lead API (``POST /api/v1/leads``) in
several verticals, buyers buy them through the purchase route (so the disclosure records of P2
exist), the consumer submits and follows the request over HTTP, reads the one-time code from the
``.eml`` file (or the text-message file) the job worker wrote, and the job worker answers the
request through the real ``privacy.consumer_data``. Buyers' webhook endpoints are real HTTP
servers on loopback whose messages are checked against the buyer's real signing secret."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import json
import re
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database
from leadmarket.models import (
    Auction,
    AuditEvent,
    Consent,
    Lead,
    LeadBlindIndex,
    LeadVault,
    PrivacyRequest,
)
from leadmarket.orders.service import disclosed_categories
from leadmarket.verticals.registry import get_vertical
from leadmarket.webhooks import signing
from tests.fixtures.accounts import signed_in
from tests.fixtures.leads import fresh_phone, lead_body
from tests.fixtures.orders import buyer_endpoint
from tests.fixtures.privacy_requests import bearer
from tests.privacy.test_consumer_data import (
    Person,
    buy,
    count,
    make_buyer,
    person,
    post_lead,
    worker,
)

CODE_SUBJECT = "Your privacy request: confirmation code"
MAIL_CODE = re.compile(r"confirm it with this code: (\d{6})")
TEXT_CODE = re.compile(r"your code is (\d{6})")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The buyers' endpoints are servers on loopback over plain http.
    return settings.model_copy(update={"webhook_allow_private_networks": True})


@pytest.fixture
async def seller(client: httpx.AsyncClient) -> dict[str, str]:
    _, headers = await signed_in(client, "seller")
    return headers


# The consumer's side: files the worker wrote, and the API ----------------------------------------


def written_mail(settings: Settings) -> list[EmailMessage]:
    paths = sorted(settings.mail_path.glob("*.eml")) if settings.mail_path.exists() else []
    messages = []
    for path in paths:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        messages.append(message)
    return messages


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def mail_to(settings: Settings, address: str, subject: str) -> list[EmailMessage]:
    return [
        m
        for m in written_mail(settings)
        if str(m["To"]) == address and subject in str(m["Subject"])
    ]


def code_mail(settings: Settings, address: str, request_id: str) -> EmailMessage:
    """The code message of this request, as the file mail backend wrote it."""
    [message] = [m for m in mail_to(settings, address, CODE_SUBJECT) if request_id in text_of(m)]
    return message


def texted_code(settings: Settings, phone: str, request_id: str) -> str:
    """The code of this request from the text message the file SMS backend wrote."""
    paths = sorted(settings.sms_path.glob("*.txt")) if settings.sms_path.exists() else []
    texts = [p.read_text() for p in paths]
    [text] = [t for t in texts if f"To: {phone}\n" in t and request_id in t]
    found = TEXT_CODE.search(text)
    assert found is not None, text
    return found.group(1)


async def run_worker(db: Database, settings: Settings) -> int:
    """Run the job worker until nothing is due (mail, text messages, fulfilment, webhooks)."""
    ran = 0
    for _ in range(10):
        done = await worker(db, settings).run_once()
        if done == 0:
            return ran
        ran += done
    raise AssertionError("the job worker never ran dry")


async def submit(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/privacy/requests", json=body)
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


async def verify(
    client: httpx.AsyncClient, db: Database, settings: Settings, created: dict[str, Any], **to: str
) -> None:
    """Read the code where it was sent (``email=`` or ``phone=``) and enter it."""
    await run_worker(db, settings)  # the code goes out
    if "email" in to:
        found = MAIL_CODE.search(text_of(code_mail(settings, to["email"], created["id"])))
        assert found is not None
        code = found.group(1)
    else:
        code = texted_code(settings, to["phone"], created["id"])
    verified = await client.post(
        f"/api/v1/privacy/requests/{created['id']}/verify", json={"code": code}
    )
    assert verified.status_code == 200, verified.text
    assert verified.json() == {"status": "pending"}


async def status_of(client: httpx.AsyncClient, created: dict[str, Any]) -> dict[str, Any]:
    response = await client.get(
        f"/api/v1/privacy/requests/{created['id']}", headers=bearer(created["token"])
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def ask(
    client: httpx.AsyncClient, db: Database, settings: Settings, **body: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Submit, read the code, verify, let the worker answer; returns (created, status)."""
    created = await submit(client, **body)
    to = {"email": body["email"]} if body.get("email") else {"phone": body["phone"]}
    await verify(client, db, settings, created, **to)
    await run_worker(db, settings)  # fulfilment, then the mail and webhooks it queued
    return created, await status_of(client, created)


async def reads_for(session: AsyncSession, request_id: str) -> list[AuditEvent]:
    """The audited openings of lead vaults done for this request."""
    rows = await session.scalars(
        select(AuditEvent).where(
            AuditEvent.action == "pii.read",
            AuditEvent.subject_type == "lead",
            AuditEvent.reason.contains(request_id),
        )
    )
    return list(rows)


def personal_values(who: Person, *leads: dict[str, Any]) -> list[str]:
    values = [who.email, who.phone, who.last_name]
    for lead in leads:
        values.append(lead["body"]["contact"]["address"]["street"])
    return values


def categories(*verticals: str) -> list[str]:
    found: set[str] = set()
    for slug in verticals:
        vertical = get_vertical(slug)
        assert vertical is not None
        found |= set(vertical.pi_categories)
    return sorted(found)


# 1. Right to know (P1, P2) ----------------------------------------------------------------------


async def test_know_lists_categories_sources_purposes_recipients_and_what_was_sold(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    seller: dict[str, str],
) -> None:
    ana, bea = person("ana"), person("bea")
    auto = await post_lead(client, seller, ana, "auto-insurance")
    home = await post_lead(client, seller, ana, "home-insurance")
    mortgage = await post_lead(client, seller, ana, "mortgage")  # never sold
    beas = await post_lead(client, seller, bea, "personal-loan")
    first = await make_buyer(client, session, None)
    second = await make_buyer(client, session, None)
    await buy(client, first, auto["id"])
    await buy(client, second, home["id"])
    await buy(client, first, beas["id"])  # another consumer's sale is not in Ana's answer

    created, status = await ask(
        client, db, settings, type="know", email=ana.email, details="What do you hold?"
    )

    assert status["status"] == "fulfilled" and status["denial_reason"] is None
    report = status["report"]
    assert report["request_id"] == created["id"] and report["leads_found"] == 3
    assert report["categories_collected"] == categories(
        "auto-insurance", "home-insurance", "mortgage"
    )
    assert "professional_information" in report["categories_collected"]  # from the mortgage
    [source] = report["sources"]
    assert "through the lead API" in source
    purposes = " ".join(report["purposes"])
    for name in ("auto insurance", "home insurance", "mortgage"):
        assert name in purposes.lower()
    assert report["recipient_categories"] == ["buyer"]
    # P2: what was sold, per recipient category, is exactly what the two sales disclosed: not
    # the unsold mortgage's professional information, not the consent evidence.
    assert report["categories_sold"] == {
        "buyer": sorted(
            set(disclosed_categories("auto-insurance"))
            | set(disclosed_categories("home-insurance"))
        )
    }
    assert "professional_information" not in report["categories_sold"]["buyer"]
    assert "internet_activity" not in report["categories_sold"]["buyer"]
    assert report["categories_disclosed_for_business_purpose"] == {}
    assert "buyer" in report["labels"]
    # Categories only: no piece, no decryption.
    assert "pieces" not in report
    everything = json.dumps(status)
    for value in personal_values(ana, auto, home, mortgage):
        assert value not in everything
    assert await reads_for(session, created["id"]) == []
    downloaded = await client.get(
        f"/api/v1/privacy/requests/{created['id']}/report.json", headers=bearer(created["token"])
    )
    assert downloaded.status_code == 200
    assert json.loads(downloaded.text)["categories_sold"] == report["categories_sold"]

    [answered] = mail_to(settings, ana.email, "has been answered")
    assert created["id"] in text_of(answered)
    assert "identifiers" not in text_of(answered) and ana.last_name not in text_of(answered)


# 2. Access: the specific pieces, only with enough data points (P1, P4) ----------------------------


async def test_access_with_matching_data_points_gives_the_pieces_as_json_and_csv_audited(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    seller: dict[str, str],
) -> None:
    ana, bea = person("ana"), person("bea")
    auto = await post_lead(client, seller, ana, "auto-insurance")
    life = await post_lead(client, seller, ana, "life-insurance")
    beas = await post_lead(client, seller, bea, "auto-insurance")
    buyer = await make_buyer(client, session, None)
    await buy(client, buyer, life["id"])
    contact = auto["body"]["contact"]

    created, status = await ask(
        client,
        db,
        settings,
        type="access",
        email=ana.email,
        name=f"{contact['first_name']} {ana.last_name}",
        postal_code=contact["address"]["postal_code"],
        birth_date=contact["birth_date"],
    )

    assert status["status"] == "fulfilled", status
    token = bearer(created["token"])
    as_json = await client.get(
        f"/api/v1/privacy/requests/{created['id']}/report.json", headers=token
    )
    assert as_json.status_code == 200
    assert as_json.headers["content-type"].startswith("application/json")
    pieces = {p["lead_id"]: p for p in json.loads(as_json.text)["pieces"]}
    assert set(pieces) == {auto["id"], life["id"]}
    for lead in (auto, life):
        fields = pieces[lead["id"]]["fields"]
        sent = lead["body"]["contact"]
        assert fields["first_name"] == sent["first_name"] and fields["last_name"] == ana.last_name
        assert fields["phone"] == ana.phone and fields["email"] == ana.email
        assert fields["street"] == sent["address"]["street"]
        assert pieces[lead["id"]]["vertical"] == lead["body"]["vertical"]

    as_csv = await client.get(f"/api/v1/privacy/requests/{created['id']}/report.csv", headers=token)
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    flat = {(r["section"], r["key"]): r["value"] for r in rows}
    for lead in (auto, life):
        assert flat[("pieces", f"{lead['id']}.fields.phone")] == ana.phone
        assert flat[("pieces", f"{lead['id']}.fields.last_name")] == ana.last_name
        assert flat[("pieces", f"{lead['id']}.fields.first_name")] == contact["first_name"]
    sold = [(r["key"], r["value"]) for r in rows if r["section"] == "categories_sold"]
    assert sold == [("buyer", c) for c in disclosed_categories("life-insurance")]

    # Every vault opened for this request is in the audit log, by the privacy engine, with
    # the request id; the other consumer's lead was never opened.
    reads = await reads_for(session, created["id"])
    assert {e.subject_id for e in reads} == {auto["id"], life["id"]}
    assert all(e.actor_type == "system" for e in reads)
    assert beas["id"] not in {e.subject_id for e in reads}
    row = await session.get(PrivacyRequest, created["id"], populate_existing=True)
    assert row is not None and row.verification_data_sealed is None  # used, then gone (P4)


async def test_access_with_too_few_matching_data_points_gives_categories_only(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    seller: dict[str, str],
) -> None:
    ana = person("ana")
    lead = await post_lead(client, seller, ana, "auto-insurance")

    created, status = await ask(
        client,
        db,
        settings,
        type="access",
        email=ana.email,
        name=f"Ana {ana.last_name}",  # right
        postal_code="10001",  # wrong
        birth_date="1991-01-01",  # wrong
    )

    assert status["status"] == "partially_fulfilled"
    assert status["denial_reason"] == "insufficient_verification"
    assert "name, postal code and birth date" in status["decision_note"]
    report = status["report"]
    assert report["categories_collected"] == categories("auto-insurance")
    assert "pieces" not in report
    downloaded = await client.get(
        f"/api/v1/privacy/requests/{created['id']}/report.csv", headers=bearer(created["token"])
    )
    assert downloaded.status_code == 200
    assert not [r for r in csv.DictReader(io.StringIO(downloaded.text)) if r["section"] == "pieces"]
    for value in personal_values(ana, lead):
        assert value not in downloaded.text and value not in json.dumps(status)


# 3. Twice in 12 months, and no fee (P5, P6) ------------------------------------------------------


async def test_a_third_know_or_access_request_in_12_months_is_denied_without_a_fee(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    seller: dict[str, str],
) -> None:
    ana = person("ana")
    await post_lead(client, seller, ana, "auto-insurance")
    _, know = await ask(client, db, settings, type="know", email=ana.email)
    # The second one by phone only: the limit is per consumer, not per identifier used.
    _, access = await ask(client, db, settings, type="access", phone=ana.phone)
    assert know["status"] == "fulfilled" and access["status"] == "partially_fulfilled"

    third, denied = await ask(client, db, settings, type="know", email=ana.email)

    assert denied["status"] == "denied" and denied["denial_reason"] == "too_many_requests"
    assert denied["report"] is None
    note = denied["decision_note"]
    assert "twice in 12 months" in note and "No fee is charged" in note
    assert not re.search(r"\$|USD|cost estimate|fee of", note)
    [answered] = [
        m for m in mail_to(settings, ana.email, "has been answered") if third["id"] in text_of(m)
    ]
    assert not re.search(r"\$|fee|invoice|charge", text_of(answered), re.IGNORECASE)
    # Using the right twice changes nothing else: a deletion is still answered (P6).
    _, deleted = await ask(client, db, settings, type="delete", email=ana.email)
    assert deleted["status"] in ("fulfilled", "partially_fulfilled")


# 4. Deletion (P3) -------------------------------------------------------------------------------


async def test_delete_shreds_the_consumer_everywhere_and_tells_the_buyer_signed(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    seller: dict[str, str],
) -> None:
    ana, bea = person("ana"), person("bea")
    with buyer_endpoint() as endpoint:
        buyer = await make_buyer(client, session, endpoint)
        sold = await post_lead(client, seller, ana, "auto-insurance")
        unsold = await post_lead(client, seller, ana, "home-services")
        by_phone = await post_lead(
            client, seller, Person(f"other.{ana.email}", ana.phone, ana.last_name), "mortgage"
        )
        beas = await post_lead(client, seller, bea, "auto-insurance")
        order_id = await buy(client, buyer, sold["id"])
        await buy(client, buyer, beas["id"])
        # Another buyer bids on the lead still in auction: the bid holds funds.
        bidder = await make_buyer(client, session, None)
        placed = await client.post(
            f"/api/v1/leads/{unsold['id']}/bids",
            json={"amount_cents": 2000},
            headers=bidder.headers,
        )
        assert placed.status_code == 201, placed.text
        wallet = (await client.get("/api/v1/wallet", headers=bidder.headers)).json()
        assert wallet["balance_cents"] < 100_000
        await run_worker(db, settings)  # both leads are delivered to the buyer
        anas = {sold["id"], unsold["id"], by_phone["id"]}
        bea_indexes = await count(session, LeadBlindIndex, LeadBlindIndex.lead_id == beas["id"])

        created, status = await ask(
            client, db, settings, type="delete", email=ana.email, phone=ana.phone
        )

    # Gone for every lead of Ana's, found by her email or by her phone.
    for lead_id in anas:
        assert await session.get(LeadVault, lead_id, populate_existing=True) is None
        assert await count(session, LeadBlindIndex, LeadBlindIndex.lead_id == lead_id) == 0
        lead = await session.get(Lead, lead_id, populate_existing=True)
        assert lead is not None and lead.pii_destroyed_at is not None
    assert (await session.get(Lead, unsold["id"])).status == "withdrawn"  # type: ignore[union-attr]
    erasures = await session.scalars(
        select(AuditEvent.subject_id).where(
            AuditEvent.action == "pii.erased", AuditEvent.reason.contains(created["id"])
        )
    )
    assert set(erasures) == anas
    # Its auction closes without a sale at the next sweep, and the bidder's money is free.
    sweeper = worker(db, settings)
    await sweeper.schedule_periodic()
    await sweeper.run_once()
    wallet = (await client.get("/api/v1/wallet", headers=bidder.headers)).json()
    assert (wallet["balance_cents"], wallet["held_cents"]) == (100_000, 0)
    auction = await session.get(Auction, unsold["id"], populate_existing=True)
    assert auction is not None and auction.outcome == "withdrawn"
    assert auction.closed_at is not None
    # Bea's lead, bought by the same buyer, is untouched.
    assert await session.get(LeadVault, beas["id"]) is not None
    assert await count(session, LeadBlindIndex, LeadBlindIndex.lead_id == beas["id"]) == bea_indexes

    # The answer: what was erased, who was told, and each record kept with its legal reason.
    assert status["status"] == "partially_fulfilled"
    assert status["denial_reason"] == "exception_applies"
    answer = status["report"]
    assert answer["leads_erased"] == 3 and answer["recipients_notified"] == 1
    kept = {k["record"].split(" ")[0]: k for k in answer["kept"]}
    assert kept["orders"]["count"] == 1 and "transaction" in kept["orders"]["legal_reason"]
    assert kept["consent"]["count"] == 3
    assert all(k["legal_reason"] and k["count"] > 0 for k in answer["kept"])
    for value in personal_values(ana, sold, unsold):
        assert value not in json.dumps(status)

    # The buyer: a signed lead.erased message for the order, and an email.
    erased = [m for m in endpoint.received if m.json()["type"] == "lead.erased"]
    [message] = erased
    assert buyer.secret is not None and signing.verify(buyer.secret, message.headers, message.body)
    assert not signing.verify(signing.generate_secret(), message.headers, message.body)
    assert message.json()["data"]["order_id"] == order_id
    assert message.json()["data"]["lead_id"] == sold["id"]
    [told] = mail_to(settings, buyer.user.email, "delete")
    assert order_id in text_of(told) and sold["id"] in text_of(told)
    assert ana.email not in text_of(told) and ana.last_name not in text_of(told)
    order = await client.get(f"/api/v1/orders/{order_id}", headers=buyer.headers)
    assert order.status_code == 200
    assert order.json()["contact"] is None and order.json()["pii_destroyed_at"] is not None

    # Asked again, there is nothing left to find.
    _, again = await ask(client, db, settings, type="know", email=ana.email)
    assert again["status"] == "denied" and again["denial_reason"] == "no_match"


# 5. Correction (P3) -----------------------------------------------------------------------------


async def test_correct_changes_what_the_buyer_sees_and_the_index_follows(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    seller: dict[str, str],
) -> None:
    ana = person("ana")
    new_phone = fresh_phone()
    with buyer_endpoint() as endpoint:
        buyer = await make_buyer(client, session, endpoint)
        sold = await post_lead(client, seller, ana, "auto-insurance")
        other = await post_lead(client, seller, ana, "life-insurance")
        order_id = await buy(client, buyer, sold["id"])
        await run_worker(db, settings)
        before = (await client.get(f"/api/v1/orders/{order_id}", headers=buyer.headers)).json()
        assert before["contact"]["phone"] == ana.phone

        created, status = await ask(
            client,
            db,
            settings,
            type="correct",
            email=ana.email,
            details={"phone": new_phone, "name": "Ana Moreira-Lopes"},
        )

    assert status["status"] == "fulfilled", status
    assert status["report"] == {
        "leads_corrected": 2,
        "fields": ["name", "phone"],
        "recipients_notified": 1,
    }
    order = (await client.get(f"/api/v1/orders/{order_id}", headers=buyer.headers)).json()
    assert order["contact"]["phone"] == new_phone
    assert order["contact"]["first_name"] == "Ana"
    assert order["contact"]["last_name"] == "Moreira-Lopes"
    assert order["contact"]["email"] == ana.email  # untouched
    # The buyer is told which fields changed, signed, and by email; never the values.
    [message] = [m for m in endpoint.received if m.json()["type"] == "lead.corrected"]
    assert buyer.secret is not None and signing.verify(buyer.secret, message.headers, message.body)
    assert message.json()["data"]["order_id"] == order_id
    assert message.json()["data"]["fields"] == ["name", "phone"]
    assert new_phone not in message.body.decode()
    [told] = mail_to(settings, buyer.user.email, "correct")
    assert order_id in text_of(told) and new_phone not in text_of(told)
    row = await session.get(PrivacyRequest, created["id"], populate_existing=True)
    assert row is not None and row.details_sealed is None  # the new values are not kept

    # The blind index follows the correction: the new number finds her (code by text
    # message), the old one no longer does.
    _, by_new = await ask(client, db, settings, type="know", phone=new_phone)
    assert by_new["status"] == "fulfilled" and by_new["report"]["leads_found"] == 2
    _, by_old = await ask(client, db, settings, type="delete", phone=ana.phone)
    assert by_old["status"] == "denied" and by_old["denial_reason"] == "no_match"
    assert await session.get(LeadVault, other["id"]) is not None


async def test_a_correction_named_as_the_privacy_center_says_is_made(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    seller: dict[str, str],
) -> None:
    """The privacy center tells a consumer to write ``street: 2 Oak Ave``: that correction is
    made (it was denied after the code, the service knowing only ``address.street``), and a
    field no correction can change is refused beside the field at once, before any code."""
    ana = person("ana")
    buyer = await make_buyer(client, session, None)
    sold = await post_lead(client, seller, ana, "auto-insurance")
    order_id = await buy(client, buyer, sold["id"])

    refused = await client.post(
        "/api/v1/privacy/requests",
        json={"type": "correct", "email": ana.email, "details": {"eye_colour": "green"}},
    )
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["errors"]
    assert error["field"] == "details" and "eye_colour" in error["message"]
    assert await session.scalar(select(func.count()).select_from(PrivacyRequest)) == 0

    _, status = await ask(
        client,
        db,
        settings,
        type="correct",
        email=ana.email,
        details={"Street": "2 Oak Ave"},
    )

    assert status["status"] == "fulfilled", status
    assert status["report"]["fields"] == ["address.street"]
    order = (await client.get(f"/api/v1/orders/{order_id}", headers=buyer.headers)).json()
    assert order["contact"]["address"]["street"] == "2 Oak Ave"


# 6. Opt-out of sale (P9) ------------------------------------------------------------------------


async def test_opt_out_withdraws_open_leads_and_intake_refuses_the_next_one(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    seller: dict[str, str],
) -> None:
    ana = person("ana")
    auto = await post_lead(client, seller, ana, "auto-insurance")
    home = await post_lead(client, seller, ana, "home-insurance")
    sold = await post_lead(client, seller, ana, "mortgage")
    buyer = await make_buyer(client, session, None)
    await buy(client, buyer, sold["id"])

    _, status = await ask(client, db, settings, type="opt_out", email=ana.email, phone=ana.phone)

    assert status["status"] == "fulfilled"
    assert status["report"] == {"opted_out": True, "leads_withdrawn_from_sale": 2}
    for lead in (auto, home):
        row = await session.get(Lead, lead["id"], populate_existing=True)
        assert row is not None and row.status == "withdrawn"
        refused = await client.post(f"/api/v1/leads/{lead['id']}/purchase", headers=buyer.headers)
        assert refused.status_code == 409, refused.text
    # What was already sold stays sold (the opt-out looks forward).
    assert (await session.get(Lead, sold["id"], populate_existing=True)).status == "sold"  # type: ignore[union-attr]

    tables = (Lead, LeadVault, LeadBlindIndex, Consent)
    before = {t: await count(session, t) for t in tables}
    for body in (
        lead_body("life-insurance", contact__email=ana.email),
        lead_body("personal-loan", contact__phone=ana.phone, contact__last_name="Zqxw"),
    ):
        posted = await client.post("/api/v1/leads", json=body, headers=seller)
        assert posted.status_code == 409, posted.text
        assert posted.json()["type"].endswith("/consumer-opted-out")
        assert ana.email not in posted.text and ana.phone not in posted.text
    assert {t: await count(session, t) for t in tables} == before
    accepted = await client.post("/api/v1/leads", json=lead_body("life-insurance"), headers=seller)
    assert accepted.status_code == 201, accepted.text


# 7. Probe resistance (P4; issue 5 "Bad input") --------------------------------------------------


def _masked(text: str, *secrets: str) -> str:
    for secret in secrets:
        text = text.replace(secret, "<masked>")
    text = re.sub(r"\b\d{6}\b", "<code>", text)
    return re.sub(r"/unsubscribe/\S+", "/unsubscribe/<token>", text)


def _nulls(status: dict[str, Any]) -> dict[str, bool]:
    return {key: value is None for key, value in status.items()}


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, str):
        return (re.sub(r"[A-Za-z0-9]", "x", value[:4]), len(value))
    return type(value).__name__


@pytest.mark.parametrize("kind", ["know", "access", "delete"])
async def test_an_unknown_consumer_cannot_be_told_apart_until_verified_then_gets_no_match(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    seller: dict[str, str],
    kind: str,
) -> None:
    ana = person("ana")
    stranger = person("zed")  # never posted anywhere
    await post_lead(client, seller, ana, "auto-insurance")
    extra = (
        {"name": f"Ana {ana.last_name}", "postal_code": "93650", "birth_date": "1980-04-02"}
        if kind == "access"
        else {}
    )

    responses = [
        await client.post("/api/v1/privacy/requests", json={"type": kind, "email": who, **extra})
        for who in (ana.email, stranger.email)
    ]
    known, unknown = (r.json() for r in responses)
    assert [r.status_code for r in responses] == [202, 202]
    assert responses[0].headers["content-type"] == responses[1].headers["content-type"]
    assert _shape(known) == _shape(unknown)
    assert known["status"] == unknown["status"] == "identity_unverified"

    await run_worker(db, settings)
    mails = [
        code_mail(settings, ana.email, known["id"]),
        code_mail(settings, stranger.email, unknown["id"]),
    ]
    assert mails[0]["Subject"] == mails[1]["Subject"]
    assert _masked(text_of(mails[0]), known["id"]) == _masked(text_of(mails[1]), unknown["id"])
    before = [await status_of(client, c) for c in (known, unknown)]
    assert [_nulls(b) for b in before] == [_nulls(before[0])] * 2
    assert before[0]["status"] == before[1]["status"] == "identity_unverified"

    await verify(client, db, settings, known, email=ana.email)
    await verify(client, db, settings, unknown, email=stranger.email)
    await run_worker(db, settings)

    answered = await status_of(client, unknown)
    assert answered["status"] == "denied" and answered["denial_reason"] == "no_match"
    assert answered["report"] is None and answered["report_available_until"] is None
    assert answered["decision_note"] == (
        "We hold no personal information about the email address or phone number you verified."
    )
    assert set(answered) == set(await status_of(client, known))
    assert await reads_for(session, unknown["id"]) == []
    # No report to download, and the same 404 as for a request that never had one.
    missing = await client.get(
        f"/api/v1/privacy/requests/{unknown['id']}/report.json", headers=bearer(unknown["token"])
    )
    assert missing.status_code == 404
    assert missing.json()["type"].endswith("/privacy-report-not-available")
    [told] = [
        m
        for m in mail_to(settings, stranger.email, "has been answered")
        if unknown["id"] in text_of(m)
    ]
    assert "denied" in text_of(told) and ana.email not in text_of(told)
    leads = await session.scalar(select(func.count()).select_from(Lead))
    assert leads == 1
