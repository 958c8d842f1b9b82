"""Delivering a bought lead to the buyer's webhook (issue 4 §6): Standard Webhooks signatures a
real receiver on loopback verifies, retries with backoff through the job queue until it
succeeds, a delivery log the buyer reads and replays, never the contact in the job queue or the
log, and a clear permanent failure once the lead's personal data is destroyed."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.errors import ValidationFailed
from leadmarket.kit.jobs import Worker
from leadmarket.leads.vault import destroy_personal_data
from leadmarket.models import Job, Lead, User, WebhookAttempt
from leadmarket.tasks import build_registry, build_services
from leadmarket.webhooks import signing
from leadmarket.webhooks.service import check_url
from tests.fixtures.accounts import signed_in
from tests.fixtures.ledger import fund, make_member
from tests.fixtures.orders import buyer_endpoint, make_lead


def worker(db: Database, settings: Settings, at: dt.datetime | None = None) -> Worker[object]:
    clock = (lambda: at) if at is not None else utcnow
    return Worker(db, build_registry(), build_services(settings), settings, clock=clock)  # type: ignore[arg-type]


async def bought(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, url: str
) -> tuple[dict[str, str], str, str, dict[str, object]]:
    """A buyer with a webhook endpoint at ``url`` who bought a lead: headers, secret, the
    consumer's email, the order."""
    account, headers = await signed_in(client, "buyer")
    user = await session.get(User, account["id"])
    assert user is not None
    await fund(session, user, 10_000)
    hook = await client.put("/api/v1/me/webhook", json={"url": url}, headers=headers)
    assert hook.status_code == 200, hook.text
    secret = hook.json()["secret"]
    assert secret.startswith("whsec_")
    shown = await client.get("/api/v1/me/webhook", headers=headers)
    assert shown.json()["secret"] is None and shown.json()["url"] == url
    seller = await make_member(session, "seller")
    lead, email = await make_lead(session, settings, seller)
    order = await client.post(f"/api/v1/leads/{lead.id}/purchase", headers=headers)
    assert order.status_code == 201, order.text
    return headers, secret, email, order.json()


async def test_the_lead_arrives_signed_and_the_queue_never_holds_the_contact(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    with buyer_endpoint() as endpoint:
        headers, secret, email, order = await bought(client, session, settings, endpoint.url)
        jobs = list(await session.scalars(select(Job).where(Job.kind == "webhooks.deliver")))
        assert len(jobs) == 1
        assert email not in json.dumps(jobs[0].payload)

        await worker(db, settings).run_once()

    assert len(endpoint.received) == 1
    message = endpoint.received[0]
    assert signing.verify(secret, message.headers, message.body)
    assert not signing.verify(secret, message.headers, message.body + b" ")
    other_secret = signing.generate_secret()
    assert not signing.verify(other_secret, message.headers, message.body)
    payload = message.json()
    assert payload["type"] == "lead.delivered"
    assert payload["data"]["order"]["id"] == order["id"]
    assert payload["data"]["order"]["contact"]["email"] == email

    log = await client.get(f"/api/v1/orders/{order['id']}/deliveries", headers=headers)
    assert log.status_code == 200
    [delivery] = log.json()
    assert delivery["id"] == message.headers["webhook-id"]
    assert delivery["status"] == "succeeded"
    assert [a["status_code"] for a in delivery["attempts"]] == [200]
    assert email not in log.text


async def test_failed_attempts_are_retried_with_backoff_then_replayed(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    with buyer_endpoint(statuses=[500, 503]) as endpoint:
        headers, secret, _, order = await bought(client, session, settings, endpoint.url)
        await worker(db, settings).run_once()
        # The next attempt waits its backoff: nothing is due now.
        await worker(db, settings).run_once()
        assert len(endpoint.received) == 1
        later = utcnow() + dt.timedelta(hours=2)
        await worker(db, settings, later).run_once()
        await worker(db, settings, later + dt.timedelta(hours=2)).run_once()

        log = await client.get(f"/api/v1/orders/{order['id']}/deliveries", headers=headers)
        [delivery] = log.json()
        assert delivery["status"] == "succeeded"
        codes = [a["status_code"] for a in delivery["attempts"]]
        assert codes == [500, 503, 200]
        first = delivery["attempts"][0]
        assert first["error"] == "HTTP 500" and first["next_attempt_at"] is not None
        ids = {m.headers["webhook-id"] for m in endpoint.received}
        assert ids == {delivery["id"]}  # one message, the same id on every attempt

        replay = await client.post(
            f"/api/v1/orders/{order['id']}/deliveries/{delivery['id']}/replay", headers=headers
        )
        assert replay.status_code == 202, replay.text
        assert replay.json()["replay_of"] == delivery["id"]
        # Another buyer may neither read this log nor replay it: the order is not theirs.
        _, stranger = await signed_in(client, "buyer")
        path = f"/api/v1/orders/{order['id']}/deliveries"
        assert (await client.get(path, headers=stranger)).status_code == 404
        refused = await client.post(f"{path}/{delivery['id']}/replay", headers=stranger)
        assert refused.status_code == 404, refused.text
        await worker(db, settings).run_once()

    assert len(endpoint.received) == 4  # the replay, and nothing for the stranger
    assert endpoint.received[-1].headers["webhook-id"] == replay.json()["id"]
    assert all(signing.verify(secret, m.headers, m.body) for m in endpoint.received)
    log = (await client.get(f"/api/v1/orders/{order['id']}/deliveries", headers=headers)).json()
    assert [d["status"] for d in log] == ["succeeded", "succeeded"]


async def test_after_destruction_a_delivery_fails_for_good(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    with buyer_endpoint() as endpoint:
        headers, _, _, order = await bought(client, session, settings, endpoint.url)
        lead = await session.get(Lead, str(order["lead_id"]))
        assert lead is not None
        await destroy_personal_data(session, lead, now=utcnow())
        await session.flush()
        await worker(db, settings).run_once()
    assert endpoint.received == []
    [delivery] = (
        await client.get(f"/api/v1/orders/{order['id']}/deliveries", headers=headers)
    ).json()
    assert delivery["status"] == "failed"
    assert "destroyed" in delivery["attempts"][0]["error"]
    attempts = list(await session.scalars(select(WebhookAttempt)))
    assert len(attempts) == 1


def test_webhook_urls_must_be_public_https(settings: Settings) -> None:
    strict = settings.model_copy(update={"webhook_allow_private_networks": False})
    assert check_url("https://hooks.example.com/leads", strict)
    for url in (
        "http://hooks.example.com/leads",
        "https://127.0.0.1/x",
        "https://10.1.2.3/x",
        "https://169.254.169.254/latest",
        "https://localhost/x",
        "https://user:pw@hooks.example.com/",
        "ftp://hooks.example.com/",
        "not a url",
        "https://[::1/x",
    ):
        with pytest.raises(ValidationFailed):
            check_url(url, strict)


async def test_changing_the_webhook_needs_a_password_not_an_api_key(
    client: httpx.AsyncClient,
) -> None:
    _, headers = await signed_in(client, "buyer")
    key = await client.post("/api/v1/api-keys", json={"name": "crm"}, headers=headers)
    assert key.status_code == 201, key.text
    with_key = {"Authorization": f"Bearer {key.json()['key']}"}
    response = await client.put(
        "/api/v1/me/webhook", json={"url": "https://hooks.example.com/"}, headers=with_key
    )
    assert response.status_code == 403
    _, remembered = await signed_in(client, "buyer", remember=True)
    response = await client.put(
        "/api/v1/me/webhook", json={"url": "https://hooks.example.com/"}, headers=remembered
    )
    assert response.status_code == 403
    assert response.json()["type"] == "/problems/reauth-required"
