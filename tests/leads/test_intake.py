"""Posting leads through the API: validation (L1), no data about children (L2), consent
evidence (L3), immutability (L5), previews without contact data (L6), encryption (S1),
duplicates and idempotency."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace
from typing import Any, cast

import httpx
import phonenumbers
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import utcnow
from leadmarket.kit.idempotency import purge_expired_records
from leadmarket.leads import quality
from leadmarket.leads.intake import LeadsKit, created_answer, prepare_lead
from leadmarket.leads.previews import preview_of, quality_of
from leadmarket.leads.schemas import (
    ConsumerPhone,
    LeadCreatedOut,
    LeadIn,
    normalize_consumer_phone,
)
from leadmarket.models import (
    Consent,
    ConsentText,
    IdempotencyRecord,
    Lead,
    LeadBlindIndex,
    LeadVault,
)
from tests.fixtures.accounts import bearer, login, register, signed_in
from tests.fixtures.leads import DELETE, lead_body, minor_birth_date

INTAKE_TABLES = (Lead, LeadVault, LeadBlindIndex, Consent, ConsentText, IdempotencyRecord)


async def row_counts(session: AsyncSession) -> dict[str, int]:
    return {
        t.__tablename__: int(await session.scalar(select(func.count()).select_from(t)) or 0)
        for t in INTAKE_TABLES
    }


def secrets_of(body: dict[str, Any]) -> list[str]:
    contact = body["contact"]
    return [
        contact["email"],
        contact["phone"],
        contact["last_name"],
        contact["address"]["street"],
        contact["birth_date"],
    ]


@pytest.fixture
async def seller(client: httpx.AsyncClient) -> dict[str, str]:
    _, auth = await signed_in(client, "seller")
    return auth


@pytest.fixture
async def buyer(client: httpx.AsyncClient) -> dict[str, str]:
    _, auth = await signed_in(client, "buyer")
    return auth


async def post(
    client: httpx.AsyncClient, auth: dict[str, str], body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post("/api/v1/leads", json=body, headers={**auth, **headers})


# Posting -----------------------------------------------------------------------------------


async def test_post_lead_returns_preview_quality_and_certificate(
    client: httpx.AsyncClient, seller: dict[str, str]
) -> None:
    body = lead_body()
    response = await post(client, seller, body)
    assert response.status_code == 201, response.text
    out = response.json()
    assert out["id"].startswith("lead_") and out["status"] == "open"
    assert out["consent_certificate"].startswith("cert_")
    assert 0 <= out["quality"]["score"] <= 100
    preview = out["preview"]
    assert (preview["region"], preview["city"], preview["postal_prefix"]) == ("CA", "Fresno", "936")
    assert preview["age_band"] == "45-54"
    for secret in secrets_of(body):
        assert secret not in response.text


async def test_every_vertical_accepts_a_lead(
    client: httpx.AsyncClient, seller: dict[str, str]
) -> None:
    verticals = (await client.get("/api/v1/verticals")).json()
    assert len(verticals) >= 7
    for vertical in verticals:
        response = await post(client, seller, lead_body(vertical["slug"]))
        assert response.status_code == 201, (vertical["slug"], response.text)


async def test_only_sellers_post_and_remembered_sessions_need_reauth(
    client: httpx.AsyncClient, buyer: dict[str, str]
) -> None:
    assert (await post(client, buyer, lead_body())).status_code == 403
    account = await register(client, "seller")
    remembered = bearer(await login(client, account["username"], remember=True))
    refused = await post(client, remembered, lead_body())
    assert refused.status_code == 403 and refused.json()["type"].endswith("/reauth-required")
    key = (
        await client.post(
            "/api/v1/api-keys",
            json={"name": "crm"},
            headers=bearer(await login(client, account["username"])),
        )
    ).json()["key"]
    assert (await post(client, bearer(key), lead_body())).status_code == 201


# Children (L2) -----------------------------------------------------------------------------


@pytest.mark.parametrize("years", [0, 5, 13])
async def test_a_minor_is_refused_and_nothing_is_stored(
    client: httpx.AsyncClient,
    session: AsyncSession,
    seller: dict[str, str],
    years: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = await row_counts(session)
    body = lead_body(contact__birth_date=minor_birth_date(years))
    response = await post(client, seller, body, **{"Idempotency-Key": "minor-1"})
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"].endswith("/minor")
    assert [e["field"] for e in problem["errors"]] == ["contact.birth_date"]
    assert await row_counts(session) == before
    logged = "\n".join(r.getMessage() + str(vars(r)) for r in caplog.records)
    for secret in secrets_of(body):
        assert secret not in logged
        assert secret not in response.text


async def test_fourteen_today_is_accepted(
    client: httpx.AsyncClient, seller: dict[str, str]
) -> None:
    response = await post(client, seller, lead_body(contact__birth_date=minor_birth_date(14)))
    assert response.status_code == 201
    assert response.json()["preview"]["age_band"] == "14-17"


# Bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"vertical": "space-tourism"}, "vertical"),
        ({"contact__email": "ana@"}, "contact.email"),
        ({"contact__phone": "+1 555 000 0000"}, "contact.phone"),
        ({"contact__phone": "+44 20 7946 0958"}, "contact.phone"),
        ({"contact__first_name": ""}, "contact.first_name"),
        ({"contact__birth_date": "2150-01-01"}, "contact.birth_date"),
        ({"contact__birth_date": "not a date"}, "contact.birth_date"),
        ({"contact__address__region": "ZZ"}, "contact.address.region"),
        ({"contact__address__postal_code": "ABCDE"}, "contact.address.postal_code"),
        ({"contact__address__region": "NY"}, "contact.address.postal_code"),
        ({"contact__address__country": "FR"}, "contact.address.country"),
        ({"attributes": {"no_such_field": 1}}, "attributes.no_such_field"),
        ({"consent__page_url": "javascript:alert(1)"}, "consent.page_url"),
        ({"consent__ip": "999.1.1.1"}, "consent.ip"),
        ({"consent__ip": 12345}, "consent.ip"),
        ({"consent__given_at": "2099-01-01T00:00:00Z"}, "consent.given_at"),
        ({"consent__given_at": "2026-11-21T10:00:00"}, "consent.given_at"),
        ({"consent__disclosure_text": DELETE}, "consent.disclosure_text"),
        ({"sale__mode": "raffle"}, "sale.mode"),
        ({"sale__max_buyers": 9}, "sale.max_buyers"),
        ({"sale__reserve_cents": -1}, "sale.reserve_cents"),
        ({"sale": {"mode": "fixed"}}, "sale"),
        ({"contact": DELETE}, "contact"),
    ],
)
async def test_each_invalid_field_is_named_and_nothing_is_stored(
    client: httpx.AsyncClient,
    session: AsyncSession,
    seller: dict[str, str],
    overrides: dict[str, Any],
    field: str,
) -> None:
    before = await row_counts(session)
    response = await post(client, seller, lead_body(**overrides))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    fields = [e["field"] for e in response.json()["errors"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields
    # Field names are the API's, never pydantic's internals (union branches, validators).
    assert not any("[" in f or "function-" in f for f in fields), fields
    assert len(fields) == len(set(fields)), fields
    assert await row_counts(session) == before


async def test_attribute_types_are_checked(
    client: httpx.AsyncClient, seller: dict[str, str]
) -> None:
    body = lead_body()
    name = next(iter(body["attributes"]))
    body["attributes"][name] = {"nested": True}
    response = await post(client, seller, body)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == f"attributes.{name}"


# Duplicates and idempotency ----------------------------------------------------------------


async def test_duplicate_consumer_in_same_vertical_is_409_naming_the_earlier_lead(
    client: httpx.AsyncClient, seller: dict[str, str]
) -> None:
    first_body = lead_body()
    first = (await post(client, seller, first_body)).json()
    same_email = lead_body()
    same_email["contact"]["email"] = first_body["contact"]["email"].upper()
    response = await post(client, seller, same_email)
    assert response.status_code == 409
    assert response.json()["duplicate_of"] == first["id"]
    same_phone = lead_body()
    same_phone["contact"]["phone"] = first_body["contact"]["phone"]
    assert (await post(client, seller, same_phone)).status_code == 409
    other_vertical = lead_body("life-insurance")
    other_vertical["contact"] = first_body["contact"]
    assert (await post(client, seller, other_vertical)).status_code == 201


async def test_idempotency_key_replays_the_first_answer(
    client: httpx.AsyncClient, session: AsyncSession, seller: dict[str, str]
) -> None:
    body = lead_body()
    first = await post(client, seller, body, **{"Idempotency-Key": "order-77"})
    again = await post(client, seller, body, **{"Idempotency-Key": "order-77"})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert (
        await session.scalar(
            select(func.count()).select_from(Lead).where(Lead.id == first.json()["id"])
        )
        == 1
    )
    other = await post(client, seller, lead_body(), **{"Idempotency-Key": "order-77"})
    assert other.status_code == 409
    assert other.json()["type"].endswith("/idempotency-key-reused")


# Immutability and visibility ---------------------------------------------------------------


async def test_a_posted_lead_cannot_be_changed_or_removed(
    client: httpx.AsyncClient, seller: dict[str, str], buyer: dict[str, str]
) -> None:
    lead_id = (await post(client, seller, lead_body())).json()["id"]
    for method in ("PATCH", "DELETE"):
        response = await client.request(method, f"/api/v1/leads/{lead_id}", headers=seller)
        assert response.status_code == 409
        assert response.json()["type"].endswith("/lead-immutable")
    _, other_seller = await signed_in(client, "seller")
    assert (
        await client.delete(f"/api/v1/leads/{lead_id}", headers=other_seller)
    ).status_code == 404
    assert (await client.get(f"/api/v1/leads/{lead_id}", headers=buyer)).status_code == 200


async def test_buyers_see_previews_only_and_sellers_their_own(
    client: httpx.AsyncClient, seller: dict[str, str], buyer: dict[str, str]
) -> None:
    body = lead_body()
    lead_id = (await post(client, seller, body)).json()["id"]
    one = await client.get(f"/api/v1/leads/{lead_id}", headers=buyer)
    assert one.status_code == 200
    out = one.json()
    assert out["sale"]["reserve_cents"] is None  # the reserve is the seller's secret
    assert out["seller"]["username"] and "contact" not in out
    listed = await client.get(
        "/api/v1/leads", params={"vertical": "auto-insurance", "region": "ca"}, headers=buyer
    )
    assert lead_id in [item["id"] for item in listed.json()["items"]]
    for text in (one.text, listed.text):
        for secret in secrets_of(body):
            assert secret not in text
    _, other_seller = await signed_in(client, "seller")
    assert (await client.get(f"/api/v1/leads/{lead_id}", headers=other_seller)).status_code == 404
    own = await client.get("/api/v1/leads", headers=seller)
    assert [i["id"] for i in own.json()["items"]] == [lead_id]
    assert own.json()["items"][0]["sale"]["reserve_cents"] == 1500


async def test_listing_pages_with_a_cursor(
    client: httpx.AsyncClient, seller: dict[str, str]
) -> None:
    ids = [(await post(client, seller, lead_body())).json()["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/v1/leads", params=params, headers=seller)).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)


# Consent (L3) ------------------------------------------------------------------------------


async def test_consent_certificate_verifies_without_personal_data(
    client: httpx.AsyncClient, seller: dict[str, str]
) -> None:
    body = lead_body()
    certificate = (await post(client, seller, body)).json()["consent_certificate"]
    anonymous = await client.get(f"/api/v1/consents/{certificate}")
    assert anonymous.status_code == 200
    out = anonymous.json()
    assert out["status"] == "valid"
    assert out["disclosure_text"] == body["consent"]["disclosure_text"]
    assert len(out["disclosure_sha256"]) == 64
    # The landing page's query string (which here carries the email) is not kept.
    assert out["page_url"] == "https://quotes.example.com/auto"
    for secret in [*secrets_of(body), "203.0.113.7", "Firefox"]:
        assert secret not in anonymous.text
    assert (await client.get("/api/v1/consents/cert_nope")).status_code == 404


async def test_same_disclosure_text_is_stored_once(
    client: httpx.AsyncClient, session: AsyncSession, seller: dict[str, str]
) -> None:
    before = await session.scalar(select(func.count()).select_from(ConsentText))
    for _ in range(3):
        await post(client, seller, lead_body())
    assert await session.scalar(select(func.count()).select_from(ConsentText)) == (before or 0) + 1


async def test_withdrawn_consent_takes_the_lead_off_the_market(
    client: httpx.AsyncClient, seller: dict[str, str], buyer: dict[str, str]
) -> None:
    body = lead_body()
    created = (await post(client, seller, body)).json()
    path = f"/api/v1/consents/{created['consent_certificate']}/withdrawal"
    wrong = await client.post(path, json={"email": "someone.else@example.com"})
    assert wrong.status_code == 404
    assert (await client.post(path, json={})).status_code == 422
    done = await client.post(path, json={"phone": body["contact"]["phone"]})
    assert done.status_code == 200
    assert done.json()["status"] == "withdrawn" and done.json()["withdrawn_at"]
    assert (await client.get(f"/api/v1/leads/{created['id']}", headers=buyer)).status_code == 404
    mine = (await client.get(f"/api/v1/leads/{created['id']}", headers=seller)).json()
    assert mine["status"] == "withdrawn"


# Quality -----------------------------------------------------------------------------------


async def test_quality_signals_lower_the_score_with_reasons(
    client: httpx.AsyncClient, seller: dict[str, str]
) -> None:
    clean = (await post(client, seller, lead_body())).json()["quality"]
    suspicious_body = lead_body()
    suspicious_body["contact"]["email"] = "ana.silva.7781@mailinator.com"
    suspicious_body["contact"]["phone"] = "+12125550143"  # a New York number in California
    suspicious = (await post(client, seller, suspicious_body)).json()["quality"]
    codes = {r["code"] for r in suspicious["reasons"]}
    assert {"disposable_email", "area_code_mismatch"} <= codes
    assert suspicious["score"] < clean["score"]
    summary = (await client.get("/api/v1/me/lead-quality", headers=seller)).json()
    assert summary["leads"] == 2 and summary["by_reason"]["disposable_email"] == 1


@pytest.mark.parametrize(
    ("raw", "country", "code"),
    [
        ("+1 800 364 0199", "US", "non_personal_phone"),  # toll-free
        ("(900) 364-0199", "US", "non_personal_phone"),  # premium rate
        ("+1 500 364 0199", "US", None),  # personal number: no signal of its own
        ("212 364 0143", "US", "area_code_mismatch"),  # New York, the lead is in California
        ("416-364-0199", "CA", "area_code_mismatch"),  # Toronto
    ],
)
def test_the_phone_is_read_once_with_the_same_quality_signals(
    raw: str, country: str, code: str | None
) -> None:
    """Validation keeps the line type and area code it found on the number; the signals built
    from them are the ones phonenumbers gives when the number is parsed again."""
    phone = normalize_consumer_phone(raw, country)
    assert isinstance(phone, ConsumerPhone)
    assert phone.line_type == phonenumbers.number_type(phonenumbers.parse(phone))
    kept = quality.contact_signals(email="ana@example.com", phone_e164=phone, region="CA")
    parsed = quality.contact_signals(email="ana@example.com", phone_e164=str(phone), region="CA")
    assert kept == parsed
    assert code is None or code in {s.code for s in kept}


async def test_many_leads_from_one_address_are_flagged(
    client: httpx.AsyncClient, seller: dict[str, str]
) -> None:
    scores = []
    for _ in range(7):
        body = lead_body()
        body["consent"]["ip"] = "198.51.100.99"
        scores.append((await post(client, seller, body)).json()["quality"])
    assert "ip_velocity" not in {r["code"] for r in scores[0]["reasons"]}
    assert "ip_velocity" in {r["code"] for r in scores[-1]["reasons"]}


# Verticals ---------------------------------------------------------------------------------


async def test_verticals_serve_schema_and_categories(client: httpx.AsyncClient) -> None:
    verticals = (await client.get("/api/v1/verticals")).json()
    slugs = {v["slug"] for v in verticals}
    assert {
        "auto-insurance", "life-insurance", "home-insurance", "health-insurance",
        "mortgage", "personal-loan", "home-services",
    } <= slugs  # fmt: skip
    for vertical in verticals:
        assert vertical["schema"]["type"] == "object"
        assert "identifiers" in vertical["pi_categories"]
    assert (await client.get("/api/v1/verticals/no-such")).status_code == 404


async def test_idempotency_answers_are_forgotten_after_a_day(
    client: httpx.AsyncClient, session: AsyncSession, seller: dict[str, str]
) -> None:
    await post(client, seller, lead_body(), **{"Idempotency-Key": "old"})
    await post(client, seller, lead_body(), **{"Idempotency-Key": "new"})
    old = await session.scalar(select(IdempotencyRecord).where(IdempotencyRecord.key == "old"))
    assert old is not None
    old.created_at = utcnow() - dt.timedelta(hours=25)
    await session.flush()
    assert await purge_expired_records(session, now=utcnow()) == 1
    keys = set(await session.scalars(select(IdempotencyRecord.key)))
    assert "old" not in keys and "new" in keys


async def test_a_cursor_the_service_never_gave_is_422(
    client: httpx.AsyncClient, buyer: dict[str, str]
) -> None:
    response = await client.get("/api/v1/leads", params={"cursor": "%%%"}, headers=buyer)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "cursor"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"vertical": "pet-insurance"}, "vertical"),
        ({"region": "ZZ"}, "region"),
        ({"region": "Texas"}, "region"),
    ],
)
async def test_a_browse_filter_that_can_match_nothing_names_its_field(
    client: httpx.AsyncClient, buyer: dict[str, str], params: dict[str, str], field: str
) -> None:
    """A misspelt filter is the caller's mistake, not an empty market."""
    response = await client.get("/api/v1/leads", params=params, headers=buyer)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in response.json()["errors"]] == [field]


async def test_fixed_price_without_a_price_says_so(
    client: httpx.AsyncClient, seller: dict[str, str]
) -> None:
    response = await post(client, seller, lead_body(sale={"mode": "fixed"}))
    assert response.status_code == 422
    assert "price_cents" in response.json()["errors"][0]["message"]


def test_the_worker_forgets_idempotency_answers_every_hour() -> None:
    from leadmarket.kit.idempotency import PURGE_JOB_KIND
    from leadmarket.tasks import build_registry

    kinds = {k.kind: k.every for k in build_registry().periodic_kinds}
    assert kinds[PURGE_JOB_KIND] == dt.timedelta(hours=1)


@pytest.mark.parametrize("gpc", [False, True])
def test_the_created_answer_is_the_models_dump(settings: Settings, gpc: bool) -> None:
    """``created_answer`` builds the 201 body as plain data: it must be what the response
    models (``LeadCreatedOut`` with ``preview_of``/``quality_of``) dump, to the last field."""
    kit = LeadsKit(settings)
    body = lead_body()
    body["consent"]["global_privacy_control"] = gpc
    prepared = prepare_lead(
        kit, seller_id="usr_x", seller_username="x", data=LeadIn.model_validate(body), source="api"
    )
    signals = [quality.Signal("landline", "The phone is a landline.", -5)]
    prepared.lead["quality_score"] = quality.score(signals)
    prepared.lead["quality_reasons"] = [s.as_dict() for s in signals]
    prepared.lead["preview_attributes"] = {"a": 1.5, "b": True, "c": "x", "d": None, "e": [1]}
    row = cast(Lead, SimpleNamespace(**prepared.lead))
    expected = LeadCreatedOut(
        id=prepared.id,
        status=row.status,
        preview=preview_of(row),
        quality=quality_of(row),
        consent_certificate=prepared.consent["certificate"],
    ).model_dump(mode="json")
    answer = created_answer(prepared)
    assert answer == expected
    assert list(answer) == list(expected)
    assert list(answer["preview"]) == list(expected["preview"])
    assert json.dumps(answer) == json.dumps(expected)


@pytest.mark.parametrize(
    ("sale", "max_buyers"),
    [
        ({"exclusive": False}, 4),  # a shared lead goes to at most four buyers unless told
        ({"exclusive": False, "max_buyers": 2}, 2),
        ({"exclusive": True}, 1),
        ({}, 1),  # exclusive is the default
    ],
)
async def test_a_shared_lead_is_capped_at_four_buyers_by_default(
    client: httpx.AsyncClient,
    seller: dict[str, str],
    session: AsyncSession,
    sale: dict[str, Any],
    max_buyers: int,
) -> None:
    body = lead_body()
    del body["sale"]["max_buyers"]
    body["sale"].update(sale)
    response = await post(client, seller, body)
    assert response.status_code == 201, response.text
    lead = await session.get(Lead, response.json()["id"])
    assert lead is not None and lead.max_buyers == max_buyers


@pytest.mark.parametrize(
    "sale",
    [
        {"exclusive": True, "max_buyers": 2},  # an exclusive lead has one buyer
        {"exclusive": False, "max_buyers": 5},  # the cap is four
        {"exclusive": False, "max_buyers": 0},
    ],
)
async def test_an_impossible_buyer_count_is_422_and_nothing_is_stored(
    client: httpx.AsyncClient, seller: dict[str, str], session: AsyncSession, sale: dict[str, Any]
) -> None:
    before = await row_counts(session)
    body = lead_body()
    body["sale"].update(sale)
    response = await post(client, seller, body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await row_counts(session) == before
