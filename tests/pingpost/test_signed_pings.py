"""Pings to buyers' own endpoints are signed (M1, S1): Standard Webhooks headers with the
buyer's webhook secret, checked here by a real HTTP server on loopback that bids only when the
signature verifies. The secrets are cached per process: a rotation is honoured from the next
read of the matching stamp, at most ``LEADMARKET_MATCHING_RECHECK_MS`` later."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.campaigns.matching import MatchingIndex
from leadmarket.config import Settings
from leadmarket.kit.db import Database
from leadmarket.models import User
from leadmarket.pingpost import service
from leadmarket.pingpost.schemas import PingIn
from leadmarket.pingpost.service import EXTERNAL_ASKED
from leadmarket.webhooks import signing
from leadmarket.webhooks.service import delete_endpoint, save_endpoint
from tests.fixtures.accounts import signed_in
from tests.fixtures.campaigns import campaign
from tests.fixtures.ledger import fund, make_member
from tests.fixtures.pingpost import (
    BiddingEndpoint,
    bidding_buyer,
    bidding_endpoint,
    ping_body,
    pinged_buyer,
)

# What a buyer's endpoint is told, and nothing else (no contact, no postal code).
PING_FIELDS = {
    "ping_id",
    "campaign_id",
    "vertical",
    "country",
    "region",
    "postal_prefix",
    "age_band",
    "attributes",
    "exclusive",
    "currency",
}


async def _ping(client: httpx.AsyncClient, **changes: Any) -> dict[str, Any]:
    """A ping from a new seller (so the same lead is never a duplicate of an earlier one)."""
    _, seller = await signed_in(client, "seller")
    answer = await client.post("/api/v1/ping", json=ping_body(**changes), headers=seller)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_a_ping_is_signed_with_the_buyers_secret_and_only_the_preview_is_sent(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    with bidding_endpoint(2500) as endpoint:
        _, signed = await pinged_buyer(session, settings, endpoint, bid_cents=4000)
        await bidding_buyer(session, bid_cents=1000)
        before = time.time()
        answer = await _ping(client)
    assert answer["price_cents"] == 1001  # the endpoint verified the ping and bid
    (pinged,) = endpoint.pings
    assert pinged.verified
    assert pinged.headers["webhook-id"] == f"{answer['ping_id']}:{signed.id}"
    assert abs(int(pinged.headers["webhook-timestamp"]) - before) <= 5
    assert pinged.headers["webhook-signature"].startswith("v1,")
    # The signature covers the body: another body, or another secret, does not verify.
    assert endpoint.secret is not None
    assert not signing.verify(endpoint.secret, pinged.headers, pinged.raw.replace(b"CA", b"NY"))
    assert not signing.verify(signing.generate_secret(), pinged.headers, pinged.raw)
    assert set(pinged.body) == PING_FIELDS
    assert set(pinged.body["attributes"]) == set(ping_body()["attributes"])
    assert b"93650" not in pinged.raw  # the postal code stays with us; the prefix goes


async def test_an_endpoint_holding_another_secret_refuses_the_ping_and_does_not_bid(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    with bidding_endpoint(2500) as endpoint:
        await pinged_buyer(session, settings, endpoint, bid_cents=4000)
        endpoint.secret = signing.generate_secret()  # not the buyer's: as for a forged ping
        await bidding_buyer(session, bid_cents=1000)
        await bidding_buyer(session, bid_cents=900)
        answer = await _ping(client)
    (pinged,) = endpoint.pings
    assert not pinged.verified
    assert answer["price_cents"] == 901  # the endpoint did not bid: 1000 won at 900 + 1


async def test_a_buyer_without_a_webhook_secret_is_not_asked(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    with bidding_endpoint(2500) as endpoint:
        await bidding_buyer(session, bid_cents=4000, ping_url=endpoint.url)
        await bidding_buyer(session, bid_cents=1000)
        await bidding_buyer(session, bid_cents=900)
        answer = await _ping(client)
    assert endpoint.pings == []
    assert answer["price_cents"] == 901


async def test_endpoints_that_cannot_be_asked_leave_their_places_to_those_that_can(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    """Only EXTERNAL_ASKED endpoints are asked per ping; secretless ones (bidding above the
    others) must not take those places."""
    with bidding_endpoint(2500) as mute, bidding_endpoint(2500) as signed_endpoint:
        for _ in range(EXTERNAL_ASKED):
            await bidding_buyer(session, bid_cents=9000, ping_url=mute.url)
        await pinged_buyer(session, settings, signed_endpoint, bid_cents=3000)
        await bidding_buyer(session, bid_cents=1000)
        answer = await _ping(client)
    assert mute.pings == []
    assert len(signed_endpoint.pings) == 1
    assert answer["price_cents"] == 1001  # the signed endpoint bid 2500 over the 1000


async def test_after_a_rotation_pings_are_signed_with_the_new_secret(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    """Through the buyer's own API, with the default recheck (0): the next ping after the
    rotation is signed with the new secret; once the endpoint is deleted, none is asked."""
    account, headers = await signed_in(client, "buyer")
    owner = await session.get(User, account["id"])
    assert owner is not None
    await fund(session, owner, 100_000)
    hook = {"url": "https://hooks.example.com/leads"}
    with bidding_endpoint(2500) as endpoint:
        await campaign(session, owner, bid_cents=4000, ping_url=endpoint.url)
        await bidding_buyer(session, bid_cents=1000)
        await bidding_buyer(session, bid_cents=900)
        first = await client.put("/api/v1/me/webhook", json=hook, headers=headers)
        endpoint.secret = old = first.json()["secret"]
        assert (await _ping(client))["price_cents"] == 1001

        rotated = await client.put(
            "/api/v1/me/webhook", json={**hook, "rotate_secret": True}, headers=headers
        )
        endpoint.secret = new = rotated.json()["secret"]
        assert new != old
        assert (await _ping(client))["price_cents"] == 1001
        assert [p.verified for p in endpoint.pings] == [True, True]
        assert not signing.verify(old, endpoint.pings[1].headers, endpoint.pings[1].raw)

        gone = await client.delete("/api/v1/me/webhook", headers=headers)
        assert gone.status_code == 204
        assert (await _ping(client))["price_cents"] == 901
    assert len(endpoint.pings) == 2


@pytest.fixture
def quiet_settings(settings: Settings) -> Settings:
    """The same lead may be pinged again at once (no duplicate window)."""
    return settings.model_copy(update={"ping_duplicate_window_minutes": 0})


async def _kit_ping(kit: service.PingKit, seller: User) -> service.PingOut:
    return await service.ping(
        kit, seller=seller, api_key_id=None, data=PingIn.model_validate(ping_body())
    )


def _signed_with(endpoint: BiddingEndpoint, secret: str) -> bool:
    last = endpoint.pings[-1]
    return signing.verify(secret, last.headers, last.raw)


async def test_a_process_reads_a_secret_once_and_honours_a_rotation_within_the_recheck(
    db: Database, session: AsyncSession, quiet_settings: Settings
) -> None:
    """With ``LEADMARKET_MATCHING_RECHECK_MS`` 2000: a ping right after the rotation is still
    signed from the cache (the secret is not read per ping); one after the interval is
    signed with the new secret."""
    recheck_ms = 2000
    kit = service.PingKit(quiet_settings, db, MatchingIndex(recheck_ms=recheck_ms))
    seller = await make_member(session, "seller")
    try:
        with bidding_endpoint(2500) as endpoint:
            owner, _ = await pinged_buyer(session, quiet_settings, endpoint, bid_cents=4000)
            await bidding_buyer(session, bid_cents=1000)
            old = endpoint.secret
            assert old is not None
            assert (await _kit_ping(kit, seller)).price_cents == 1001  # the endpoint's 2500 won
            assert endpoint.pings[-1].verified

            rotated_at = time.monotonic()
            _, new = await save_endpoint(
                session,
                quiet_settings,
                owner.id,
                url="https://hooks.example.com/leads",
                new_secret=True,
            )
            assert new is not None
            await session.flush()
            assert (await _kit_ping(kit, seller)).price_cents == 1001
            assert time.monotonic() - rotated_at < recheck_ms / 1000  # else the test proves less
            assert endpoint.pings[-1].verified  # with the old secret, from this process's cache

            endpoint.secret = new
            await asyncio.sleep(recheck_ms / 1000 + 0.1)
            assert (await _kit_ping(kit, seller)).price_cents == 1001
            assert endpoint.pings[-1].verified
            assert not _signed_with(endpoint, old)

            await delete_endpoint(session, owner.id)
            await asyncio.sleep(recheck_ms / 1000 + 0.1)
            asked = len(endpoint.pings)
            assert (await _kit_ping(kit, seller)).price_cents == 1  # the lone 1000, at the floor
            assert len(endpoint.pings) == asked
    finally:
        await kit.aclose()
