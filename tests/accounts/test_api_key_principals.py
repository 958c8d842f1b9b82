"""API keys' cached principals (``auth.ApiKeyPrincipals``), used by the routes that check the key
again where they write (lead intake, pings): a key is looked up once per expiry however many
requests use it meanwhile (single flight), a revoked key is refused once the cache's few seconds
have passed, and a look-up that fails fails its waiters only, never the requests after it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, select

from leadmarket.accounts.auth import ApiKeyPrincipals, Principal
from leadmarket.kit.db import Database
from leadmarket.kit.errors import Unauthenticated
from leadmarket.models import User
from tests.fixtures.accounts import bearer, signed_in

pytestmark = pytest.mark.committed

# Enough requests at once to show one look-up, within PostgreSQL's pool (10 + 10 overflow).
IN_FLIGHT = 16
# An intake body the route refuses (422) only after the guard accepted the key: a 422 means
# "authenticated", a 401 "refused", and nothing is written either way.
NOT_A_LEAD: dict[str, Any] = {}


@pytest.fixture
def key_lookups(committed_db: Database) -> Iterator[list[str]]:
    """The statements that look an API key up by its hash, as the database received them (not
    counting the one that asks why a refused key's account stopped)."""
    seen: list[str] = []

    def on_execute(*args: Any) -> None:
        statement = str(args[2]).lower()
        if statement.startswith("select api_keys.") and "key_hash =" in statement:
            seen.append(statement)

    target = committed_db.engine.sync_engine
    event.listen(target, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(target, "before_cursor_execute", on_execute)


async def new_api_key(client: httpx.AsyncClient) -> tuple[dict[str, str], dict[str, str], str]:
    """A seller's (password session headers, API key headers, key id)."""
    _, auth = await signed_in(client, "seller")
    created = await client.post("/api/v1/api-keys", json={"name": "crm"}, headers=auth)
    assert created.status_code == 201, created.text
    return auth, bearer(created.json()["key"]), created.json()["id"]


async def post_at_once(
    client: httpx.AsyncClient, headers: dict[str, str], n: int = IN_FLIGHT
) -> list[int]:
    answers = await asyncio.gather(
        *(client.post("/api/v1/leads", json=NOT_A_LEAD, headers=headers) for _ in range(n))
    )
    return [a.status_code for a in answers]


# Through HTTP --------------------------------------------------------------------------------


async def test_requests_at_once_with_no_cached_principal_look_the_key_up_once(
    committed_client: httpx.AsyncClient, committed_app: FastAPI, key_lookups: list[str]
) -> None:
    _, key, _ = await new_api_key(committed_client)
    key_lookups.clear()
    assert await post_at_once(committed_client, key) == [422] * IN_FLIGHT
    assert len(key_lookups) == 1
    # Expired: the next wave looks it up once again.
    committed_app.state.api_key_principals = ApiKeyPrincipals(ttl_seconds=0.2)
    assert await post_at_once(committed_client, key) == [422] * IN_FLIGHT
    await asyncio.sleep(0.3)
    assert await post_at_once(committed_client, key) == [422] * IN_FLIGHT
    assert len(key_lookups) == 3


async def test_a_revoked_key_is_refused_once_the_cache_time_has_passed(
    committed_client: httpx.AsyncClient, committed_app: FastAPI, key_lookups: list[str]
) -> None:
    committed_app.state.api_key_principals = ApiKeyPrincipals(ttl_seconds=0.3)
    auth, key, key_id = await new_api_key(committed_client)
    assert await post_at_once(committed_client, key, 4) == [422] * 4
    revoked = await committed_client.delete(f"/api/v1/api-keys/{key_id}", headers=auth)
    assert revoked.status_code == 204
    await asyncio.sleep(0.35)
    key_lookups.clear()
    assert await post_at_once(committed_client, key) == [401] * IN_FLIGHT
    # A refusal is not kept: every wave asks the database again (and is refused again).
    assert await post_at_once(committed_client, key) == [401] * IN_FLIGHT
    assert len(key_lookups) == 2


async def test_a_suspended_sellers_key_is_refused_with_the_reason_by_every_waiter(
    committed_client: httpx.AsyncClient, committed_db: Database
) -> None:
    _, key, _ = await new_api_key(committed_client)
    async with committed_db.transaction() as session:
        seller = await session.get(User, (await _only_seller(committed_db)))
        assert seller is not None
        seller.status = "suspended"
    answers = await asyncio.gather(
        *(committed_client.post("/api/v1/leads", json=NOT_A_LEAD, headers=key) for _ in range(4))
    )
    assert {a.status_code for a in answers} == {403}
    assert {a.json()["type"].rsplit("/", 1)[-1] for a in answers} == {"account-not-active"}


async def _only_seller(db: Database) -> str:
    async with db.transaction() as session:
        seller = await session.scalar(select(User.id).where(User.role == "seller"))
    assert seller is not None
    return seller


# The cache itself ----------------------------------------------------------------------------


def a_principal(name: str = "usr_a") -> Principal:
    return Principal(user=User(id=name, username=name, status="active"))


class LookUps:
    """A look-up that counts its calls, and answers when told to (or at once)."""

    def __init__(self, *answers: Principal | BaseException) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self) -> Principal:
        self.calls += 1
        answer = self.answers[min(self.calls, len(self.answers)) - 1]
        await self.release.wait()
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def at_once(
    cache: ApiKeyPrincipals, look_up: LookUps, n: int
) -> list[Principal | BaseException]:
    """What ``n`` requests for key "k" get when they all arrive while its look-up runs."""
    look_up.release.clear()
    waiters = [asyncio.create_task(cache.principal("k", look_up)) for _ in range(n)]
    await asyncio.sleep(0.01)
    look_up.release.set()
    return await asyncio.gather(*waiters, return_exceptions=True)


async def test_waiters_share_one_look_up_and_its_principal_is_kept() -> None:
    cache = ApiKeyPrincipals(ttl_seconds=60)
    principal = a_principal()
    look_up = LookUps(principal)
    assert await at_once(cache, look_up, 10) == [principal] * 10
    assert await cache.principal("k", look_up) is principal
    assert look_up.calls == 1


async def test_a_failed_look_up_reaches_every_waiter_and_the_next_request_tries_again() -> None:
    cache = ApiKeyPrincipals(ttl_seconds=60)
    principal = a_principal()
    look_up = LookUps(ConnectionError("database went away"), principal)
    outcomes = await at_once(cache, look_up, 10)
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    assert look_up.calls == 1
    assert cache.get("k") is None
    assert await cache.principal("k", look_up) is principal
    assert look_up.calls == 2


async def test_a_refusal_is_shared_with_the_waiters_but_not_kept() -> None:
    cache = ApiKeyPrincipals(ttl_seconds=60)
    look_up = LookUps(Unauthenticated("revoked"))
    outcomes = await at_once(cache, look_up, 5)
    assert all(isinstance(o, Unauthenticated) for o in outcomes)
    with pytest.raises(Unauthenticated):
        await cache.principal("k", look_up)
    assert look_up.calls == 2


async def test_the_request_that_began_a_look_up_going_away_does_not_cancel_it() -> None:
    cache = ApiKeyPrincipals(ttl_seconds=60)
    principal = a_principal()
    look_up = LookUps(principal)
    look_up.release.clear()
    first = asyncio.create_task(cache.principal("k", look_up))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(cache.principal("k", look_up))
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0.01)
    look_up.release.set()
    assert await second is principal
    assert first.cancelled()
    assert look_up.calls == 1


async def test_a_principal_is_kept_from_when_its_look_up_began_not_when_it_ended() -> None:
    """So that a key revoked just after a slow look-up read it is still refused within the
    cache time of the revocation."""
    cache = ApiKeyPrincipals(ttl_seconds=0.3)
    look_up = LookUps(a_principal())
    look_up.release.clear()
    waiter = asyncio.create_task(cache.principal("k", look_up))
    await asyncio.sleep(0.2)
    look_up.release.set()
    await waiter
    await asyncio.sleep(0.15)  # 0.35 s after the look-up began, 0.15 s after it ended
    assert cache.get("k") is None


async def test_a_request_does_not_join_a_look_up_older_than_the_cache_time() -> None:
    """A look-up stuck for longer than the cache time may have read the key before it was
    revoked: a request arriving now looks it up again, and is refused."""
    cache = ApiKeyPrincipals(ttl_seconds=0.2)
    stuck = LookUps(a_principal("usr_before"))
    stuck.release.clear()
    early = asyncio.create_task(cache.principal("k", stuck))
    await asyncio.sleep(0.25)
    with pytest.raises(Unauthenticated):
        await cache.principal("k", LookUps(Unauthenticated("revoked")))
    stuck.release.set()
    assert (await early).user.id == "usr_before"
