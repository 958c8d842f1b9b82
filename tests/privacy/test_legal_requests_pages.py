"""The admin pages of law-enforcement requests (P10) over a real HTTP stack: entering one with its
document uploaded, the entering admin unable to verify it, a second admin verifying it, the
production generated and offered for download, a rejection that needs its reason, and the pages
closed to everyone but admins."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.models import Disclosure, LegalRequest, User
from tests.fixtures.accounts import register
from tests.fixtures.leads import lead_body
from tests.ledger.test_wallet_page import field, sign_in

LIST = "/admin/legal-requests"


def browser(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.20", 50000))
    return httpx.AsyncClient(transport=transport, base_url="https://testserver")


async def web_staff(client: httpx.AsyncClient, session: AsyncSession, role: str) -> str:
    account = await register(client, "buyer")
    user = await session.get(User, account["id"])
    assert user is not None
    user.role = role
    await session.commit()
    await sign_in(client, account["username"])
    return str(account["id"])


@pytest.fixture
async def admins(
    app: FastAPI, session: AsyncSession
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with browser(app) as first, browser(app) as second:
        await web_staff(first, session, "admin")
        await web_staff(second, session, "admin")
        yield first, second


async def a_lead(client: httpx.AsyncClient) -> str:
    account = await register(client, "seller")
    login = await client.post(
        "/api/v1/auth/login", json={"login": account["username"], "password": account["password"]}
    )
    headers = {"Authorization": f"Bearer {login.json()['token']}"}
    response = await client.post("/api/v1/leads", json=lead_body(), headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def enter_form(admin: httpx.AsyncClient, lead_id: str, **overrides: str) -> httpx.Response:
    page = await admin.get(f"{LIST}/new")
    assert page.status_code == 200, page.text
    data: dict[str, str | list[str]] = {
        "csrf_token": field(page.text, "csrf_token"),
        "agency": "Fresno Police Department",
        "officer_name": "Sgt. Lee Park",
        "officer_email": "l.park@police.example.gov",
        "officer_phone": "",
        "document_kind": "search_warrant",
        "document_reference": "SW-88-2026",
        "document_text": "",
        "subject_kind": "lead",
        "subject": lead_id,
        "fields": ["name", "telephone"],
    }
    data.update(overrides)
    files = {"document": ("warrant.pdf", b"%PDF-1.4 search warrant SW-88-2026", "application/pdf")}
    return await admin.post(LIST, data=data, files=files)


async def test_two_admins_take_a_request_from_entry_to_production(
    client: httpx.AsyncClient,
    session: AsyncSession,
    admins: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    first, second = admins
    lead_id = await a_lead(client)
    entered = await enter_form(first, lead_id)
    assert entered.status_code == 303, entered.text
    detail_path = entered.headers["location"].split("?")[0]
    request_id = detail_path.rsplit("/", 1)[1]
    stored = await session.get(LegalRequest, request_id)
    assert stored is not None
    assert (stored.document_filename, stored.document_content_type) == (
        "warrant.pdf",
        "application/pdf",
    )

    own = await first.get(detail_path)
    assert "another admin must check the document" in own.text
    assert f"{detail_path}/verify" not in own.text
    refused = await first.post(
        f"{detail_path}/verify", data={"csrf_token": field(own.text, "csrf_token")}
    )
    assert refused.status_code == 403
    assert "another admin must verify it" in refused.text

    page = await second.get(detail_path)
    assert f'action="{detail_path}/verify"' in page.text
    verified = await second.post(
        f"{detail_path}/verify", data={"csrf_token": field(page.text, "csrf_token")}
    )
    assert verified.status_code == 303
    page = await second.get(verified.headers["location"])
    assert "The request is verified" in page.text
    produced = await second.post(
        f"{detail_path}/production", data={"csrf_token": field(page.text, "csrf_token")}
    )
    assert produced.status_code == 303
    page = await second.get(produced.headers["location"])
    assert "recorded as a disclosure" in page.text
    assert f"/api/v1/admin/legal-requests/{request_id}/production" in page.text
    # The download link works with the admin's browser session.
    download = await second.get(f"/api/v1/admin/legal-requests/{request_id}/production")
    assert download.status_code == 200
    assert set(download.json()["data"]) == {"name", "telephone"}
    disclosure = await session.scalar(
        select(Disclosure).where(Disclosure.legal_request_id == request_id)
    )
    assert disclosure is not None and disclosure.legal_basis == "search_warrant"

    listing = await first.get(LIST)
    assert listing.status_code == 200 and detail_path in listing.text
    assert re.search(r"Produced", listing.text)


async def test_the_form_shows_each_error_beside_its_field_and_writes_nothing(
    client: httpx.AsyncClient,
    session: AsyncSession,
    admins: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    first, _ = admins
    lead_id = await a_lead(client)
    response = await enter_form(
        first, lead_id, officer_email="nope", fields=[], document_text="also text"
    )
    assert response.status_code == 422
    assert 'id="officer_email"' in response.text and 'aria-invalid="true"' in response.text
    assert "There is a problem" in response.text
    assert "Fresno Police Department" in response.text  # what was typed is kept
    assert (await session.scalars(select(LegalRequest))).all() == []


async def test_rejecting_needs_a_reason(
    client: httpx.AsyncClient,
    session: AsyncSession,
    admins: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    first, second = admins
    lead_id = await a_lead(client)
    detail_path = (await enter_form(first, lead_id)).headers["location"].split("?")[0]
    page = await second.get(detail_path)
    token = field(page.text, "csrf_token")
    blank = await second.post(f"{detail_path}/reject", data={"csrf_token": token, "reason": ""})
    assert blank.status_code == 422 and "At least 5 characters" in blank.text
    done = await second.post(
        f"{detail_path}/reject", data={"csrf_token": token, "reason": "Warrant has expired."}
    )
    assert done.status_code == 303
    page = await second.get(detail_path)
    assert "Warrant has expired." in page.text and "Rejected" in page.text
    assert f"{detail_path}/production" not in page.text


@pytest.mark.parametrize("role", ["support", "privacy_officer"])
async def test_the_pages_are_for_admins_only(
    app: FastAPI, session: AsyncSession, role: str
) -> None:
    async with browser(app) as staff:
        await web_staff(staff, session, role)
        for path in (LIST, f"{LIST}/new"):
            response = await staff.get(path)
            assert response.status_code == 403
            assert "Only admins handle law-enforcement requests." in response.text
