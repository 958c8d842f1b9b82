"""``POST /api/v1/ping`` in the fast lane (``kit.fastlane``): every refusal is the one the
FastAPI route sends (compared answer for answer with an app whose lane is taken out), the
application's middleware still wraps it, a key revoked after it was cached writes nothing, and
the post still works after a fast-lane ping."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.models import Ping
from tests.fixtures.accounts import REFUSED_CALLERS, bearer, refused_caller, signed_in
from tests.fixtures.pingpost import bidding_buyer, ping_body, post_body


async def pings_stored(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(Ping)) or 0)


def _json(**changes: Any) -> bytes:
    return json.dumps(ping_body(**changes)).encode()


def _utf16(**changes: Any) -> bytes:
    return json.dumps(ping_body(**changes)).encode("utf-16")


# (name, body bytes, content type): requests each refused before anything is written.
BAD_REQUESTS: list[tuple[str, bytes, str | None]] = [
    ("malformed JSON", b'{"vertical": "auto-insurance",', "application/json"),
    ("not UTF-8", b'{"vertical": "\xff"}', "application/json"),
    ("empty body", b"", "application/json"),
    ("no content type", _json(), None),
    ("form content type", _json(), "application/x-www-form-urlencoded"),
    ("JSON with a charset", _json(vertical="space-tourism"), "application/json; charset=utf-8"),
    ("a JSON array", b"[1, 2]", "application/json"),
    ("null", b"null", "application/json"),
    ("vendor JSON type", _json(region="ZZ"), "application/vnd.lead+json"),
    ("a missing field", b'{"vertical": "auto-insurance", "region": "CA"}', "application/json"),
    ("contact data", _json(email="ana@example.com"), "application/json"),
    ("unknown vertical", _json(vertical="space-tourism"), "application/json"),
    ("bad region", _json(region="ZZ"), "application/json"),
    ("postal code of another state", _json(postal_code="10001"), "application/json"),
    ("bad country", _json(country="FR"), "application/json"),
    ("a price below a cent", _json(min_price_cents=0), "application/json"),
    # The lane skips the models' NUL check for bodies that cannot hold a NUL: these can.
    ("NUL in a field", _json(region="C\x00A"), "application/json"),
    ("NUL in an attribute", _json(attributes={"vehicle_make": "hon\x00da"}), "application/json"),
    ("NUL and a bad field", _json(vertical="a\x00b", country="FR"), "application/json"),
    ("UTF-16 with a NUL", _utf16(region="C\x00A"), "application/json"),
    ("UTF-16, bad region", _utf16(region="ZZ"), "application/json"),
]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b, c) for _, b, c in BAD_REQUESTS],
    ids=[n for n, _, _ in BAD_REQUESTS],
)
async def test_each_refusal_is_the_routes_own(
    client: httpx.AsyncClient,
    route_client: httpx.AsyncClient,
    session: AsyncSession,
    body: bytes,
    content_type: str | None,
) -> None:
    _, seller = await signed_in(client, "seller")
    headers = {**seller, **({"content-type": content_type} if content_type else {})}
    lane = await client.post("/api/v1/ping", content=body, headers=headers)
    route = await route_client.post("/api/v1/ping", content=body, headers=headers)
    assert lane.status_code in (400, 422), lane.text
    assert (lane.status_code, lane.json()) == (route.status_code, route.json())
    assert lane.headers["content-type"] == route.headers["content-type"]
    assert lane.headers["content-type"] == "application/problem+json"
    assert "ana@example.com" not in lane.text
    assert await pings_stored(session) == 0


@pytest.mark.parametrize("credentials", REFUSED_CALLERS)
async def test_each_refused_caller_is_refused_as_by_the_route(
    client: httpx.AsyncClient,
    route_client: httpx.AsyncClient,
    session: AsyncSession,
    credentials: str,
) -> None:
    headers = await refused_caller(client, credentials)
    lane = await client.post("/api/v1/ping", json=ping_body(), headers=headers)
    route = await route_client.post("/api/v1/ping", json=ping_body(), headers=headers)
    assert lane.status_code in (401, 403)
    assert (lane.status_code, lane.json()) == (route.status_code, route.json())
    assert lane.headers.get("www-authenticate") == route.headers.get("www-authenticate")
    assert await pings_stored(session) == 0


async def test_malformed_json_is_refused_before_the_caller_is_asked_for(
    client: httpx.AsyncClient, route_client: httpx.AsyncClient
) -> None:
    """FastAPI reads the body before it solves the guard; so does the lane."""
    headers = {"content-type": "application/json"}
    lane = await client.post("/api/v1/ping", content=b"{", headers=headers)
    route = await route_client.post("/api/v1/ping", content=b"{", headers=headers)
    assert lane.status_code == route.status_code == 422
    assert lane.json() == route.json()


async def test_a_ping_answered_in_the_lane_is_the_routes_answer(
    client: httpx.AsyncClient, route_client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await bidding_buyer(session, bid_cents=3000)
    await bidding_buyer(session, bid_cents=2000)
    _, seller = await signed_in(client, "seller")
    lane = await client.post("/api/v1/ping", json=ping_body(), headers=seller)
    route = await route_client.post(
        "/api/v1/ping", json=ping_body(postal_code="93651"), headers=seller
    )
    assert lane.status_code == route.status_code == 200
    assert lane.headers["content-type"] == route.headers["content-type"]
    assert set(lane.json()) == set(route.json())
    assert (lane.json()["price_cents"], route.json()["price_cents"]) == (2001, 2001)
    # The application's middleware wraps the lane: request id and security headers.
    assert lane.headers["x-request-id"].startswith("req_")
    assert lane.headers["x-content-type-options"] == "nosniff"
    assert lane.headers["x-frame-options"] == "DENY"
    # The same ping again, by either way, is the duplicate of the first.
    again = await route_client.post("/api/v1/ping", json=ping_body(), headers=seller)
    assert again.status_code == 409
    assert again.json()["duplicate_of"] == lane.json()["ping_id"]
    again = await client.post("/api/v1/ping", json=ping_body(postal_code="93651"), headers=seller)
    assert again.status_code == 409
    assert again.json()["duplicate_of"] == route.json()["ping_id"]
    assert again.json()["type"] == "/problems/duplicate-ping"


async def test_a_body_over_the_cap_is_refused_before_the_lane(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, seller = await signed_in(client, "seller")
    cap = app.state.settings.max_body_bytes
    body = ping_body(attributes={"padding": "x" * cap})
    answer = await client.post("/api/v1/ping", json=body, headers=seller)
    assert answer.status_code == 413
    assert answer.json()["type"] == "/problems/payload-too-large"
    assert await pings_stored(session) == 0


async def api_key(client: httpx.AsyncClient) -> tuple[dict[str, str], dict[str, str], str]:
    """A new seller's session headers, API key headers and the key's id."""
    _, auth = await signed_in(client, "seller")
    created = await client.post("/api/v1/api-keys", json={"name": "crm"}, headers=auth)
    return auth, bearer(created.json()["key"]), created.json()["id"]


async def test_a_key_revoked_after_it_was_cached_pings_nothing(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await bidding_buyer(session, bid_cents=2000)
    auth, key, key_id = await api_key(client)
    first = await client.post("/api/v1/ping", json=ping_body(), headers=key)
    assert first.status_code == 200  # the key's principal is now in the per-process cache
    revoked = await client.delete(f"/api/v1/api-keys/{key_id}", headers=auth)
    assert revoked.status_code == 204
    second = await client.post("/api/v1/ping", json=ping_body(postal_code="93651"), headers=key)
    assert second.status_code == 401
    assert second.json()["type"] == "/problems/unauthenticated"
    assert await pings_stored(session) == 1


async def test_a_lane_ping_can_be_posted_and_sells(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await bidding_buyer(session, bid_cents=2500)
    _, key, _ = await api_key(client)
    pinged = await client.post("/api/v1/ping", json=ping_body(), headers=key)
    assert pinged.status_code == 200 and pinged.json()["accepted"] is True
    posted = await client.post(
        "/api/v1/post", json=post_body(pinged.json()["ping_id"]), headers=key
    )
    assert posted.status_code == 201, posted.text
    assert posted.json()["sold"] is True and posted.json()["price_cents"] == 1


async def test_an_unexpected_failure_is_a_500_problem_that_names_nothing(
    app: FastAPI, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("secret detail ana@example.com")

    _, seller = await signed_in(client, "seller")
    app.state.pingpost.recorder.submit = broken
    answer = await client.post("/api/v1/ping", json=ping_body(), headers=seller)
    assert answer.status_code == 500
    assert answer.json()["type"] == "/problems/internal-error"
    assert answer.headers["x-request-id"].startswith("req_")
    assert "ana@example.com" not in answer.text
    assert "ana@example.com" not in caplog.text
    assert any(getattr(r, "error_type", None) == "RuntimeError" for r in caplog.records)
