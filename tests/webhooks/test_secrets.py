"""Buyers' webhook signing secrets are sealed under the master keyring (issue 4 §6): they survive
a change of ``LEADMARKET_SECRET_KEY``, follow ``leadmarket keys rotate``, and the secrets sealed
the pre-0017 way (under a key derived from the secret key) are converted, on first use and by
``keys rewrap``."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.crypto import derive_key
from leadmarket.kit.db import Database
from leadmarket.kit.keyring import seal
from leadmarket.models import WebhookDelivery, WebhookEndpoint
from leadmarket.webhooks import signing
from leadmarket.webhooks.service import endpoint_secret, rewrap_endpoint_secrets, save_endpoint
from tests.fixtures.cli import run_leadmarket
from tests.fixtures.ledger import make_member
from tests.fixtures.orders import buyer_endpoint
from tests.orders.test_delivery import bought, worker

OTHER_SECRET_KEY = "a-new-secret-key-after-the-old-one-leaked-0123"


def with_secret_key(settings: Settings, secret_key: str, **changes: object) -> Settings:
    """The same service (database, var dir, master key file) with another secret key."""
    return Settings(
        database_url=settings.database_url,
        var_dir=settings.var_dir,
        secret_key=secret_key,  # type: ignore[arg-type]
        base_url=settings.base_url,
        run_jobs_in_process=False,
        log_format="text",
        **changes,  # type: ignore[arg-type]
    )


async def legacy_endpoint(
    session: AsyncSession, settings: Settings, *, url: str = "https://hooks.example.com/"
) -> tuple[WebhookEndpoint, str]:
    """An endpoint as rows written before migration 0017 hold it: no key version, the secret
    sealed under a key derived from the secret key (the old code, spelled out)."""
    buyer = await make_member(session, "buyer")
    secret = signing.generate_secret()
    endpoint = WebhookEndpoint(owner_id=buyer.id, url=url, secret_prefix=secret[:10])
    endpoint.secret_sealed = b""
    session.add(endpoint)
    await session.flush()
    old_key = derive_key(settings.signing_key(), "webhook-endpoint-secret")
    endpoint.secret_sealed = seal(
        old_key, secret.encode(), f"webhook-endpoint|{endpoint.id}".encode()
    )
    assert endpoint.key_version is None
    await session.flush()
    return endpoint, secret


async def bought_with_endpoint(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, receiver_url: str
) -> tuple[dict[str, str], str, str, WebhookEndpoint]:
    """A buyer whose public https endpoint is saved through the API (the app under test refuses
    loopback) bought a lead; the delivery is then pointed at the loopback receiver. Returns the
    buyer's headers, the secret, the order id and the endpoint row."""
    url = "https://hooks.example.com/leads"
    headers, secret, _, order = await bought(client, session, settings, url)
    endpoint = await session.scalar(
        select(WebhookEndpoint).where(
            WebhookEndpoint.url == url, WebhookEndpoint.secret_prefix == secret[:10]
        )
    )
    assert endpoint is not None
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.order_id == str(order["id"]))
        .values(url=receiver_url)
    )
    return headers, secret, str(order["id"]), endpoint


async def test_a_legacy_secret_is_converted_on_first_use_and_then_outlives_the_secret_key(
    session: AsyncSession, settings: Settings
) -> None:
    endpoint, secret = await legacy_endpoint(session, settings)
    sealed_before = endpoint.secret_sealed

    assert endpoint_secret(settings, endpoint) == secret
    assert endpoint.key_version == settings.keyring().current
    assert endpoint.secret_sealed != sealed_before
    await session.flush()
    await session.refresh(endpoint)

    changed = with_secret_key(settings, OTHER_SECRET_KEY)
    assert endpoint_secret(changed, endpoint) == secret


async def test_deliveries_are_signed_with_the_same_secret_after_the_secret_key_changes(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    changed = with_secret_key(settings, OTHER_SECRET_KEY, webhook_allow_private_networks=True)
    assert changed.signing_key() != settings.signing_key()
    with buyer_endpoint() as receiver:
        _, secret, _, endpoint = await bought_with_endpoint(client, session, settings, receiver.url)
        assert endpoint.key_version == settings.keyring().current
        await worker(db, changed).run_once()
    [message] = receiver.received
    assert signing.verify(secret, message.headers, message.body)


async def test_a_legacy_secret_sealed_under_a_lost_key_ends_the_delivery_clearly(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    lenient = settings.model_copy(update={"webhook_allow_private_networks": True})
    with buyer_endpoint() as receiver:
        headers, _, order_id, endpoint = await bought_with_endpoint(
            client, session, settings, receiver.url
        )
        old_key = derive_key(OTHER_SECRET_KEY.encode(), "webhook-endpoint-secret")
        context = f"webhook-endpoint|{endpoint.id}".encode()
        endpoint.secret_sealed = seal(old_key, b"whsec_x", context)
        endpoint.key_version = None
        await session.flush()
        await worker(db, lenient).run_once()
    assert receiver.received == []
    log = await client.get(f"/api/v1/orders/{order_id}/deliveries", headers=headers)
    [delivery] = log.json()
    assert delivery["status"] == "failed"
    assert "secret key changed" in delivery["attempts"][0]["error"]


@pytest.mark.committed
async def test_keys_rotate_rewraps_endpoint_secrets_and_converts_legacy_ones(
    committed_db: Database, settings: Settings, database_url: str
) -> None:
    """``leadmarket keys rotate`` (the real command): the new-style secret and the legacy one
    both end under the new master key version, the old version is retired, a legacy secret
    that no longer opens is reported and left alone, and all of it survives a new secret key."""
    async with committed_db.transaction() as session:
        buyer = await make_member(session, "buyer")
        _, current_secret = await save_endpoint(
            session, settings, buyer.id, url="https://hooks.example.com/a", new_secret=True
        )
        legacy, legacy_secret = await legacy_endpoint(session, settings)
        lost, _ = await legacy_endpoint(session, with_secret_key(settings, OTHER_SECRET_KEY))
        ids = (legacy.id, lost.id)
    assert settings.keyring().versions == [1]

    result = await run_leadmarket(settings, database_url, "keys", "rotate")
    assert result.returncode == 0, result.stderr
    assert "1 webhook signing secrets do not open" in result.stderr
    # The lost one still needs nothing: it has no key version, so version 1 could retire.
    assert settings.reload_keyring().versions == [2]

    changed = with_secret_key(settings, OTHER_SECRET_KEY)
    async with committed_db.transaction() as session:
        endpoints = {e.id: e for e in await session.scalars(select(WebhookEndpoint))}
        legacy_row, lost_row = endpoints.pop(ids[0]), endpoints.pop(ids[1])
        [current_row] = endpoints.values()
        assert legacy_row.key_version == current_row.key_version == 2
        assert lost_row.key_version is None
        assert endpoint_secret(changed, current_row) == current_secret
        assert endpoint_secret(changed, legacy_row) == legacy_secret
        # Nothing is left to do: a second pass changes nothing and still reports the lost one.
        assert await rewrap_endpoint_secrets(session, settings) == (0, 1)
