"""Law-enforcement requests through the API (P10, P2, A4): entered by one admin, verified only by
another, produced only once verified and only with the P10 fields asked for, recorded as a
disclosure and in the audit log; a destroyed lead yields only what remains; rejection with a
reason; bad input answered field by field with nothing written."""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer

from leadmarket.config import Settings
from leadmarket.kit.db import utcnow
from leadmarket.kit.keyring import WrappedKey, open_sealed
from leadmarket.leads.vault import destroy_personal_data
from leadmarket.models import AuditEvent, Disclosure, Lead, LegalRequest
from leadmarket.privacy.legal.schemas import LegalField
from leadmarket.privacy.legal.service import legal_key_versions_in_use, rewrap_legal_keys
from tests.fixtures.accounts import signed_in
from tests.fixtures.leads import lead_body
from tests.fixtures.staff import staff_member

API = "/api/v1/admin/legal-requests"
P10_FIELDS = {f.value for f in LegalField}


@dataclass
class Desk:
    """Two admins, the second pair of eyes P10 asks for."""

    first: dict[str, str]
    second: dict[str, str]
    first_id: str
    second_id: str


@pytest.fixture
async def desk(client: httpx.AsyncClient, session: AsyncSession) -> Desk:
    first, first_auth = await staff_member(client, session, "admin")
    second, second_auth = await staff_member(client, session, "admin")
    return Desk(first_auth, second_auth, first["id"], second["id"])


async def posted_lead(client: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
    _, seller = await signed_in(client, "seller")
    body = lead_body()
    response = await client.post("/api/v1/leads", json=body, headers=seller)
    assert response.status_code == 201, response.text
    return str(response.json()["id"]), body


def request_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "agency": "Fresno County Sheriff's Office",
        "officer_name": "Det. Maria Alvarez",
        "officer_email": "m.alvarez@sheriff.example.gov",
        "officer_phone": "+15595550100",
        "document_kind": "subpoena",
        "document_reference": "SUB-2026-00417",
        "document_text": "SUBPOENA DUCES TECUM. You are commanded to produce records of ...",
        "fields": ["name", "email", "ip_address"],
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


async def enter(
    client: httpx.AsyncClient, auth: dict[str, str], **overrides: Any
) -> dict[str, Any]:
    response = await client.post(API, json=request_body(**overrides), headers=auth)
    assert response.status_code == 201, response.text
    entered: dict[str, Any] = response.json()
    return entered


async def audit_actions(session: AsyncSession, subject_id: str) -> list[str]:
    rows = await session.scalars(
        select(AuditEvent.action)
        .where(AuditEvent.subject_id == subject_id)
        .order_by(AuditEvent.seq)
    )
    return list(rows)


async def disclosures_of(session: AsyncSession, request_id: str) -> list[Disclosure]:
    rows = await session.scalars(
        select(Disclosure).where(Disclosure.legal_request_id == request_id)
    )
    return list(rows)


async def test_one_admin_cannot_verify_their_own_entry(
    client: httpx.AsyncClient, session: AsyncSession, desk: Desk
) -> None:
    lead_id, _ = await posted_lead(client)
    entered = await enter(client, desk.first, subject_lead_id=lead_id)
    assert entered["status"] == "entered" and entered["entered_by"] == desk.first_id

    own = await client.post(f"{API}/{entered['id']}/verify", headers=desk.first)
    assert own.status_code == 403
    assert own.json()["type"] == "/problems/second-admin-required"
    assert (await client.get(f"{API}/{entered['id']}", headers=desk.first)).json()[
        "status"
    ] == "entered"

    other = await client.post(f"{API}/{entered['id']}/verify", headers=desk.second)
    assert other.status_code == 200, other.text
    assert other.json()["status"] == "verified" and other.json()["verified_by"] == desk.second_id
    again = await client.post(f"{API}/{entered['id']}/verify", headers=desk.second)
    assert again.status_code == 409 and again.json()["status"] == "verified"
    assert await audit_actions(session, entered["id"]) == ["legal.entered", "legal.verified"]


async def test_the_database_refuses_a_self_verification_too(
    client: httpx.AsyncClient, session: AsyncSession, desk: Desk
) -> None:
    lead_id, _ = await posted_lead(client)
    entered = await enter(client, desk.first, subject_lead_id=lead_id)
    request = await session.get(LegalRequest, entered["id"])
    assert request is not None
    nested = await session.begin_nested()
    request.verified_by = desk.first_id
    with pytest.raises(IntegrityError):
        await session.flush()
    await nested.rollback()


async def test_nothing_is_produced_before_verification(
    client: httpx.AsyncClient, session: AsyncSession, desk: Desk
) -> None:
    lead_id, _ = await posted_lead(client)
    entered = await enter(client, desk.first, subject_lead_id=lead_id)
    for auth in (desk.first, desk.second):
        early = await client.post(f"{API}/{entered['id']}/production", headers=auth)
        assert early.status_code == 409, early.text
        assert early.json()["status"] == "entered"
    download = await client.get(f"{API}/{entered['id']}/production", headers=desk.second)
    assert download.status_code == 409
    assert await disclosures_of(session, entered["id"]) == []
    assert "legal.produced" not in await audit_actions(session, entered["id"])


async def test_the_production_holds_only_the_p10_fields_asked_for_and_is_recorded(
    client: httpx.AsyncClient, session: AsyncSession, desk: Desk
) -> None:
    lead_id, body = await posted_lead(client)
    contact = body["contact"]
    entered = await enter(client, desk.first, subject_lead_id=lead_id)
    assert (await client.post(f"{API}/{entered['id']}/verify", headers=desk.second)).is_success

    response = await client.post(f"{API}/{entered['id']}/production", headers=desk.first)
    assert response.status_code == 201, response.text
    production = response.json()
    assert set(production["data"]) == {"name", "email", "ip_address"} <= P10_FIELDS
    assert production["data"] == {
        "name": f"{contact['first_name']} {contact['last_name']}",
        "email": contact["email"],
        "ip_address": body["consent"]["ip"],
    }
    text = json.dumps(production)
    # What was not asked for is not there, even though the platform holds it.
    for held in (contact["phone"], contact["birth_date"], contact["address"]["street"], "93650"):
        assert held not in text
    assert production["subject"] == {"kind": "lead", "lead_id": lead_id}
    assert production["document_reference"] == "SUB-2026-00417"

    [disclosure] = await disclosures_of(session, entered["id"])
    assert disclosure.lead_id == lead_id and disclosure.subject_user_id is None
    assert disclosure.recipient_category == "law_enforcement" and disclosure.sold is False
    assert disclosure.recipient_name == "Fresno County Sheriff's Office"
    assert disclosure.recipient_id is None
    assert disclosure.purpose == "legal_request"
    assert (disclosure.legal_basis, disclosure.basis_reference) == ("subpoena", "SUB-2026-00417")
    assert disclosure.categories == ["identifiers", "internet_activity", "personal_records"]

    assert await audit_actions(session, entered["id"]) == [
        "legal.entered",
        "legal.verified",
        "legal.produced",
    ]
    vault_read = await session.scalar(
        select(AuditEvent).where(AuditEvent.subject_id == lead_id, AuditEvent.action == "pii.read")
    )
    assert vault_read is not None and vault_read.actor_id == desk.first_id
    assert entered["id"] in (vault_read.reason or "")
    assert set(vault_read.fields or []) == {"first_name", "last_name", "email", "consent_ip"}

    # Produced once; the download is the same record, and each download is audited.
    assert (
        await client.post(f"{API}/{entered['id']}/production", headers=desk.first)
    ).status_code == 409
    download = await client.get(f"{API}/{entered['id']}/production", headers=desk.second)
    assert download.status_code == 200
    assert download.headers["content-disposition"].startswith("attachment;")
    assert download.json() == production
    assert (await audit_actions(session, entered["id"]))[-1] == "legal.production_read"
    # Kept sealed: the stored row holds no value of the production in the clear.
    stored = await session.scalar(
        select(LegalRequest.production_sealed).where(LegalRequest.id == entered["id"])
    )
    assert stored is not None and contact["email"].encode() not in stored


async def test_a_member_subject_and_the_document_as_a_file(
    client: httpx.AsyncClient, session: AsyncSession, desk: Desk
) -> None:
    member, _ = await signed_in(client, "seller")
    pdf = b"%PDF-1.7 court order 2026-CR-0042 " + bytes(range(256))
    entered = await enter(
        client,
        desk.first,
        document_kind="court_order",
        document_reference="2026-CR-0042",
        document_text=None,
        document_base64=base64.b64encode(pdf).decode(),
        document_filename="order.pdf",
        document_content_type="application/pdf",
        subject_username=member["username"],
        fields=[
            "purchase_and_listing_history",
            "email",
            "user_id_history",
            "ip_address",
            "telephone",
            "fraud_complaints",
        ],
    )
    # Stored in P10's order, each once.
    assert entered["fields_requested"] == [
        "telephone",
        "email",
        "user_id_history",
        "ip_address",
        "fraud_complaints",
        "purchase_and_listing_history",
    ]
    assert entered["subject_username"] == member["username"]
    stored = await session.scalar(
        select(LegalRequest.document_sealed).where(LegalRequest.id == entered["id"])
    )
    assert stored is not None and b"court order" not in stored  # sealed
    document = await client.get(f"{API}/{entered['id']}/document", headers=desk.second)
    assert document.status_code == 200 and document.content == pdf
    assert document.headers["content-type"] == "application/pdf"
    assert "legal.document_read" in await audit_actions(session, entered["id"])

    assert (await client.post(f"{API}/{entered['id']}/verify", headers=desk.second)).is_success
    production = (
        await client.post(f"{API}/{entered['id']}/production", headers=desk.second)
    ).json()
    data = production["data"]
    assert set(data) == set(entered["fields_requested"])
    assert data["email"] == member["email"] and data["telephone"] == member["phone"]
    assert data["user_id_history"]["current_username"] == member["username"]
    assert data["user_id_history"]["account_id"] == member["id"]
    assert [row["ip"] for row in data["ip_address"]] == ["203.0.113.10"]
    assert data["fraud_complaints"] == []
    assert data["purchase_and_listing_history"] == {"purchases": [], "listings": []}
    assert any("fraud complaint" in note for note in production["notes"])
    # The member's name and address were not asked for.
    assert member["name"] not in json.dumps(production)

    [disclosure] = await disclosures_of(session, entered["id"])
    assert disclosure.subject_user_id == member["id"] and disclosure.lead_id is None
    assert disclosure.legal_basis == "court_order"


async def test_a_destroyed_lead_produces_only_what_remains(
    client: httpx.AsyncClient, session: AsyncSession, desk: Desk
) -> None:
    lead_id, body = await posted_lead(client)
    entered = await enter(
        client, desk.first, subject_lead_id=lead_id, fields=["name", "city", "postcode", "email"]
    )
    assert (await client.post(f"{API}/{entered['id']}/verify", headers=desk.second)).is_success
    lead = await session.get(Lead, lead_id)
    assert lead is not None
    await destroy_personal_data(session, lead, now=utcnow())
    await session.commit()

    response = await client.post(f"{API}/{entered['id']}/production", headers=desk.second)
    assert response.status_code == 201, response.text
    production = response.json()
    assert production["data"] == {"name": None, "city": "Fresno", "postcode": None, "email": None}
    [note] = [n for n in production["notes"] if "destroyed" in n]
    assert "name, postcode, email" in note and "Only what remains" in note
    assert body["contact"]["email"] not in response.text
    [disclosure] = await disclosures_of(session, entered["id"])
    assert disclosure.categories == ["personal_records"]  # the city, nothing else


async def test_a_lead_past_its_retention_deadline_counts_as_destroyed(
    client: httpx.AsyncClient, session: AsyncSession, desk: Desk
) -> None:
    """The sweep may run late; the promise (L4) does not: past the deadline nothing is opened."""
    lead_id, body = await posted_lead(client)
    entered = await enter(client, desk.first, subject_lead_id=lead_id, fields=["email", "state"])
    assert (await client.post(f"{API}/{entered['id']}/verify", headers=desk.second)).is_success
    lead = await session.get(Lead, lead_id)
    assert lead is not None
    lead.pii_expires_at = utcnow() - dt.timedelta(seconds=1)
    await session.commit()

    response = await client.post(f"{API}/{entered['id']}/production", headers=desk.second)
    assert response.status_code == 201, response.text
    assert response.json()["data"] == {"email": None, "state": "CA"}
    assert body["contact"]["email"] not in response.text
    assert any("destroyed" in note for note in response.json()["notes"])
    reads = await session.scalars(
        select(AuditEvent).where(AuditEvent.subject_id == lead_id, AuditEvent.action == "pii.read")
    )
    assert reads.all() == []  # the vault was not even opened


async def test_a_document_is_served_back_only_as_a_harmless_type(
    client: httpx.AsyncClient, desk: Desk
) -> None:
    lead_id, _ = await posted_lead(client)
    page = b"<script>alert(document.cookie)</script>"
    entered = await enter(
        client,
        desk.first,
        subject_lead_id=lead_id,
        document_text=None,
        document_base64=base64.b64encode(page).decode(),
        document_filename="order.html",
        document_content_type="text/html",
    )
    response = await client.get(f"{API}/{entered['id']}/document", headers=desk.second)
    assert response.status_code == 200 and response.content == page
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == 'attachment; filename="order.html"'
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_rejection_needs_a_reason_and_ends_the_request(
    client: httpx.AsyncClient, session: AsyncSession, desk: Desk
) -> None:
    lead_id, _ = await posted_lead(client)
    entered = await enter(client, desk.first, subject_lead_id=lead_id)
    path = f"{API}/{entered['id']}"
    blank = await client.post(f"{path}/reject", json={"reason": "   "}, headers=desk.second)
    assert blank.status_code == 422
    assert blank.json()["errors"][0]["field"] == "reason"
    rejected = await client.post(
        f"{path}/reject",
        json={"reason": "The subpoena names another person."},
        headers=desk.second,
    )
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["status"] == "rejected"
    assert rejected.json()["rejection_reason"] == "The subpoena names another person."
    for step in ("verify", "production"):
        refused = await client.post(f"{path}/{step}", headers=desk.second)
        assert refused.status_code == 409 and refused.json()["status"] == "rejected"
    assert await disclosures_of(session, entered["id"]) == []
    event = await session.scalar(
        select(AuditEvent).where(
            AuditEvent.subject_id == entered["id"], AuditEvent.action == "legal.rejected"
        )
    )
    assert event is not None and event.reason == "The subpoena names another person."


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"fields": ["name", "social_security_number"]}, "fields.1"),
        ({"fields": []}, "fields"),
        ({"document_kind": "hunch"}, "document_kind"),
        ({"officer_email": "not an email"}, "officer_email"),
        ({"document_text": None}, "document_text"),
        ({"document_base64": "aGVsbG8="}, "document_text"),  # text and a file: one only
        (
            {"document_text": None, "document_base64": "%%%", "document_filename": "x.pdf"},
            "document_base64",
        ),
        ({"document_text": None, "document_base64": "aGVsbG8="}, "document_filename"),
        ({"subject_username": "nobody_by_this_name"}, "subject_username"),
        ({"subject_lead_id": "lead_doesnotexist"}, "subject_lead_id"),
        ({"unexpected": "x"}, "unexpected"),
    ],
)
async def test_bad_input_is_named_and_nothing_is_written(
    client: httpx.AsyncClient,
    session: AsyncSession,
    desk: Desk,
    overrides: dict[str, Any],
    field: str,
) -> None:
    lead_id, _ = await posted_lead(client)
    body = request_body(**overrides)
    if "subject_username" not in body and "subject_lead_id" not in body:
        body["subject_lead_id"] = lead_id
    before = await session.scalar(select(func.count()).select_from(LegalRequest))
    response = await client.post(API, json=body, headers=desk.first)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in response.json()["errors"]]
    assert await session.scalar(select(func.count()).select_from(LegalRequest)) == before


async def test_two_subjects_at_once_are_refused(client: httpx.AsyncClient, desk: Desk) -> None:
    lead_id, _ = await posted_lead(client)
    member, _ = await signed_in(client, "buyer")
    response = await client.post(
        API,
        json=request_body(subject_lead_id=lead_id, subject_username=member["username"]),
        headers=desk.first,
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "subject_username"


@pytest.mark.parametrize("role", ["support", "privacy_officer", "buyer", "seller"])
async def test_only_admins_handle_legal_requests(
    client: httpx.AsyncClient, session: AsyncSession, desk: Desk, role: str
) -> None:
    lead_id, _ = await posted_lead(client)
    entered = await enter(client, desk.first, subject_lead_id=lead_id)
    _, auth = await staff_member(client, session, role)
    assert (await client.get(API, headers=auth)).status_code == 403
    assert (await client.post(API, json=request_body(), headers=auth)).status_code == 403
    for step in ("verify", "production"):
        assert (await client.post(f"{API}/{entered['id']}/{step}", headers=auth)).status_code == 403
    assert (await client.get(f"{API}/{entered['id']}/document", headers=auth)).status_code == 403


async def test_key_rotation_rewraps_the_requests_keys_so_old_master_keys_can_retire(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, desk: Desk
) -> None:
    lead_id, _ = await posted_lead(client)
    entered = await enter(client, desk.first, subject_lead_id=lead_id)
    old = settings.keyring()
    rotated = old.with_new_version()
    assert await legal_key_versions_in_use(session) == {old.current}
    assert await rewrap_legal_keys(session, rotated) == 1
    assert await legal_key_versions_in_use(session) == {rotated.current}
    request = await session.scalar(
        select(LegalRequest)
        .where(LegalRequest.id == entered["id"])
        .options(undefer(LegalRequest.document_sealed))
        .execution_options(populate_existing=True)
    )
    assert request is not None
    only_new = rotated.without_versions({old.current})
    data_key = only_new.unwrap(WrappedKey(request.key_version, request.wrapped_key), request.id)
    document = open_sealed(
        data_key, request.document_sealed, f"legal|{request.id}|document".encode()
    )
    assert document.decode() == request_body()["document_text"]
