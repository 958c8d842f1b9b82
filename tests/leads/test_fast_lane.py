"""``POST /api/v1/leads`` in the fast lane (``kit.fastlane``): each refusal is the one the
FastAPI route sends (compared answer for answer with the app whose lane is taken out), nothing
is stored on any of them, an under-14 consumer is still ``…/minor`` whatever else is wrong, and
an accepted lead answers exactly as the route would (an ``Idempotency-Key`` replayed through the
route returns the lane's own answer, byte for byte)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.fixtures.accounts import REFUSED_CALLERS, refused_caller, signed_in
from tests.fixtures.leads import DELETE, lead_body, minor_birth_date
from tests.leads.test_intake import row_counts, secrets_of

LONG_KEY = "k" * 201


def _json(**changes: Any) -> bytes:
    return json.dumps(lead_body(**changes)).encode()


# (name, body bytes, content type, extra headers): each refused before anything is written.
BAD_REQUESTS: list[tuple[str, bytes, str | None, dict[str, str]]] = [
    ("malformed JSON", b'{"vertical": "auto-insurance",', "application/json", {}),
    ("not UTF-8", b'{"vertical": "\xff"}', "application/json", {}),
    ("empty body", b"", "application/json", {}),
    ("no content type", _json(), None, {}),
    ("form content type", _json(), "application/x-www-form-urlencoded", {}),
    ("a JSON array", b"[1, 2]", "application/json", {}),
    ("invalid email", _json(contact__email="ana@"), "application/json", {}),
    ("impossible phone", _json(contact__phone="+1 555 0100"), "application/json", {}),
    ("no contact", _json(contact=DELETE), "application/json", {}),
    ("ZIP of another state", _json(contact__address__postal_code="10001"), "application/json", {}),
    ("unknown vertical", _json(vertical="space-tourism"), "application/json", {}),
    ("a minor", _json(contact__birth_date=minor_birth_date(13)), "application/json", {}),
    ("a key too long", _json(), "application/json", {"Idempotency-Key": LONG_KEY}),
    (
        "a key too long and a bad email",
        _json(contact__email="ana@"),
        "application/json",
        {"Idempotency-Key": LONG_KEY},
    ),
    (
        "a key too long and a minor",
        _json(contact__birth_date=minor_birth_date(5)),
        "application/json",
        {"Idempotency-Key": LONG_KEY},
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type", "extra"),
    [(b, c, x) for _, b, c, x in BAD_REQUESTS],
    ids=[n for n, *_ in BAD_REQUESTS],
)
async def test_each_refusal_is_the_routes_own(
    client: httpx.AsyncClient,
    route_client: httpx.AsyncClient,
    session: AsyncSession,
    body: bytes,
    content_type: str | None,
    extra: dict[str, str],
) -> None:
    _, seller = await signed_in(client, "seller")
    before = await row_counts(session)
    headers = {**seller, **extra, **({"content-type": content_type} if content_type else {})}
    lane = await client.post("/api/v1/leads", content=body, headers=headers)
    route = await route_client.post("/api/v1/leads", content=body, headers=headers)
    assert lane.status_code in (400, 404, 422), lane.text
    assert (lane.status_code, lane.json()) == (route.status_code, route.json())
    assert lane.headers["content-type"] == route.headers["content-type"]
    assert lane.headers["content-type"] == "application/problem+json"
    assert await row_counts(session) == before


async def test_a_minor_is_named_as_such_even_beside_a_bad_header(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    """The header's error and the body's are judged together, as FastAPI does: the minor's
    problem wins, and nothing of the child is echoed."""
    _, seller = await signed_in(client, "seller")
    body = lead_body(contact__birth_date=minor_birth_date(9))
    response = await client.post(
        "/api/v1/leads", json=body, headers={**seller, "Idempotency-Key": LONG_KEY}
    )
    assert response.status_code == 422
    assert response.json()["type"].endswith("/minor")
    for secret in secrets_of(body):
        assert secret not in response.text


@pytest.mark.parametrize("credentials", REFUSED_CALLERS)
async def test_each_refused_caller_is_refused_as_by_the_route(
    client: httpx.AsyncClient,
    route_client: httpx.AsyncClient,
    session: AsyncSession,
    credentials: str,
) -> None:
    headers = await refused_caller(client, credentials)
    before = await row_counts(session)
    lane = await client.post("/api/v1/leads", json=lead_body(), headers=headers)
    route = await route_client.post("/api/v1/leads", json=lead_body(), headers=headers)
    assert lane.status_code in (401, 403)
    assert (lane.status_code, lane.json()) == (route.status_code, route.json())
    assert lane.headers.get("www-authenticate") == route.headers.get("www-authenticate")
    assert await row_counts(session) == before


async def test_an_accepted_lead_answers_as_the_route_would(
    client: httpx.AsyncClient, route_client: httpx.AsyncClient
) -> None:
    _, seller = await signed_in(client, "seller")
    body = lead_body()
    headers = {**seller, "Idempotency-Key": "lane-then-route"}
    lane = await client.post("/api/v1/leads", json=body, headers=headers)
    assert lane.status_code == 201, lane.text
    assert lane.headers["content-type"] == "application/json"
    replay = await route_client.post("/api/v1/leads", json=body, headers=headers)
    assert replay.status_code == 201
    assert replay.content == lane.content
    assert lane.json()["id"].startswith("lead_")
