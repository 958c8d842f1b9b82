"""The wallet API (docs/api.md "Buying", M5): balance, deposits through the sandbox processor
with Idempotency-Key, refusals that change nothing, and the member's ledger lines."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.models import AuditEvent, Deposit, LedgerEntry, LedgerTransaction
from leadmarket.payments.processor import ChargeRequest
from tests.fixtures.accounts import bearer, signed_in
from tests.fixtures.ledger import RecordingProcessor

WALLET = "/api/v1/wallet"
DEPOSITS = "/api/v1/wallet/deposits"
ENTRIES = "/api/v1/wallet/entries"


async def counts(session: AsyncSession) -> list[int]:
    return [
        int(await session.scalar(select(func.count()).select_from(model)) or 0)
        for model in (LedgerTransaction, LedgerEntry, Deposit, AuditEvent)
    ]


async def wallet(client: httpx.AsyncClient, auth: dict[str, str]) -> dict[str, Any]:
    response = await client.get(WALLET, headers=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_new_buyers_wallet_is_empty(client: httpx.AsyncClient) -> None:
    _, auth = await signed_in(client)
    assert await wallet(client, auth) == {"balance_cents": 0, "held_cents": 0, "currency": "USD"}
    cad = await client.get(WALLET, params={"currency": "CAD"}, headers=auth)
    assert cad.json() == {"balance_cents": 0, "held_cents": 0, "currency": "CAD"}
    assert (await client.get(WALLET, params={"currency": "EUR"}, headers=auth)).status_code == 422


async def test_deposit_fills_the_wallet_and_is_listed_and_audited(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, auth = await signed_in(client)
    response = await client.post(DEPOSITS, json={"amount_cents": 2500}, headers=auth)
    assert response.status_code == 201, response.text
    deposit = response.json()
    assert deposit["amount_cents"] == 2500
    assert deposit["currency"] == "USD"
    assert deposit["status"] == "settled"
    assert deposit["processor"] == "sandbox"
    assert deposit["balance_cents"] == 2500
    assert await wallet(client, auth) == {
        "balance_cents": 2500,
        "held_cents": 0,
        "currency": "USD",
    }
    entries = (await client.get(ENTRIES, headers=auth)).json()
    assert entries["next_cursor"] is None
    [line] = entries["items"]
    assert line["account"] == "buyer_wallet"
    assert line["kind"] == "deposit"
    assert line["reference"] == deposit["id"]
    assert (line["amount_cents"], line["balance_after_cents"]) == (2500, 2500)
    event = await session.scalar(
        select(AuditEvent).where(
            AuditEvent.action == "wallet.deposit", AuditEvent.subject_id == deposit["id"]
        )
    )
    assert event is not None
    assert event.actor_id == account["id"]


async def test_entries_are_paginated_newest_first(client: httpx.AsyncClient) -> None:
    _, auth = await signed_in(client)
    for cents in (100, 200, 300):
        response = await client.post(DEPOSITS, json={"amount_cents": cents}, headers=auth)
        assert response.status_code == 201
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get(ENTRIES, params=params, headers=auth)).json()
        seen += [item["amount_cents"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [300, 200, 100]
    bad = await client.get(ENTRIES, params={"cursor": "%%%"}, headers=auth)
    assert bad.status_code == 422


async def test_same_idempotency_key_same_body_answers_the_first_deposit_once(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, auth = await signed_in(client)
    headers = {**auth, "Idempotency-Key": "top-up-1"}
    first = await client.post(DEPOSITS, json={"amount_cents": 1000}, headers=headers)
    again = await client.post(DEPOSITS, json={"amount_cents": 1000}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert (await wallet(client, auth))["balance_cents"] == 1000
    before = await counts(session)
    other = await client.post(DEPOSITS, json={"amount_cents": 5000}, headers=headers)
    assert other.status_code == 409
    assert other.json()["type"] == "/problems/idempotency-key-reused"
    assert await counts(session) == before
    assert (await wallet(client, auth))["balance_cents"] == 1000


async def test_a_declined_payment_is_402_and_changes_nothing(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, auth = await signed_in(client)
    before = await counts(session)
    response = await client.post(
        DEPOSITS,
        json={"amount_cents": 1000, "payment_method": "sandbox_decline"},
        headers={**auth, "Idempotency-Key": "declined-1"},
    )
    assert response.status_code == 402
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"] == "/problems/payment-declined"
    assert problem["decline_code"] == "card_declined"
    assert await counts(session) == before
    assert (await wallet(client, auth))["balance_cents"] == 0
    # The refused answer is not remembered: the same key may be used once the card works.
    retry = await client.post(
        DEPOSITS,
        json={"amount_cents": 1000},
        headers={**auth, "Idempotency-Key": "declined-1"},
    )
    assert retry.status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount_cents": 0}, "amount_cents"),
        ({"amount_cents": -500}, "amount_cents"),
        ({"amount_cents": 10_000_001}, "amount_cents"),
        ({"amount_cents": 10**30}, "amount_cents"),
        ({"amount_cents": "1000"}, "amount_cents"),
        ({"amount_cents": 10.5}, "amount_cents"),
        ({"amount_cents": True}, "amount_cents"),
        ({}, "amount_cents"),
        ({"amount_cents": 100, "currency": "EUR"}, "currency"),
        ({"amount_cents": 100, "payment_method": ""}, "payment_method"),
        ({"amount_cents": 100, "payment_method": "x" * 101}, "payment_method"),
        ({"amount_cents": 100, "payment_method": "pm card"}, "payment_method"),
        ({"amount_cents": 100, "surprise": 1}, "surprise"),
    ],
)
async def test_bad_deposits_name_the_field_and_change_nothing(
    client: httpx.AsyncClient, session: AsyncSession, body: dict[str, Any], field: str
) -> None:
    _, auth = await signed_in(client)
    before = await counts(session)
    response = await client.post(DEPOSITS, json=body, headers=auth)
    assert response.status_code == 422, response.text
    assert field in [error["field"] for error in response.json()["errors"]]
    assert await counts(session) == before


async def test_who_may_deposit(client: httpx.AsyncClient) -> None:
    body = {"amount_cents": 100}
    assert (await client.post(DEPOSITS, json=body)).status_code == 401
    assert (await client.get(WALLET)).status_code == 401
    _, seller = await signed_in(client, "seller")
    assert (await client.post(DEPOSITS, json=body, headers=seller)).status_code == 403
    assert (await client.get(WALLET, headers=seller)).status_code == 403
    assert (await client.get(ENTRIES, headers=seller)).status_code == 200
    # A remembered session may look at the wallet, but charging a card needs the password (A2).
    _, remembered = await signed_in(client, remember=True)
    assert (await client.get(WALLET, headers=remembered)).status_code == 200
    refused = await client.post(DEPOSITS, json=body, headers=remembered)
    assert refused.status_code == 403
    assert refused.json()["type"] == "/problems/reauth-required"
    # An integration's API key may spend the wallet, never fill it.
    _, auth = await signed_in(client)
    key = await client.post("/api/v1/api-keys", json={"name": "bidder"}, headers=auth)
    assert key.status_code == 201, key.text
    api_key = bearer(key.json()["key"])
    assert (await client.get(WALLET, headers=api_key)).status_code == 200
    assert (await client.post(DEPOSITS, json=body, headers=api_key)).status_code == 403


async def test_a_processor_adapter_is_asked_once_per_key_and_its_charge_recorded(
    client: httpx.AsyncClient, session: AsyncSession, processor: RecordingProcessor
) -> None:
    account, auth = await signed_in(client)
    headers = {**auth, "Idempotency-Key": "adapter-1"}
    body = {"amount_cents": 4200, "currency": "CAD", "payment_method": "pm_card_visa"}
    first = await client.post(DEPOSITS, json=body, headers=headers)
    assert first.status_code == 201, first.text
    assert first.json()["processor"] == "recording"
    again = await client.post(DEPOSITS, json=body, headers=headers)
    assert again.json() == first.json()
    # Asked once, with what an adapter needs: the key scoped to the member, so that two
    # members' keys never meet at the processor.
    assert processor.asked == [
        ChargeRequest(
            amount_cents=4200,
            currency="CAD",
            member_id=account["id"],
            idempotency_key=f"{account['id']}:adapter-1",
            payment_method="pm_card_visa",
        )
    ]
    stored = await session.scalar(select(Deposit).where(Deposit.id == first.json()["id"]))
    assert stored is not None and stored.processor == "recording"
    assert stored.processor_reference.startswith("ch_")


async def test_a_processor_that_does_not_answer_is_a_502_to_retry_and_changes_nothing(
    client: httpx.AsyncClient, session: AsyncSession, processor: RecordingProcessor
) -> None:
    _, auth = await signed_in(client)
    headers = {**auth, "Idempotency-Key": "unanswered-1"}
    processor.failures_left = 1
    before = await counts(session)
    failed = await client.post(DEPOSITS, json={"amount_cents": 1500}, headers=headers)
    assert failed.status_code == 502, failed.text
    assert failed.headers["content-type"].startswith("application/problem+json")
    assert failed.json()["type"] == "/problems/payment-processor-failed"
    assert int(failed.headers["retry-after"]) > 0
    assert await counts(session) == before
    # Not remembered as the key's answer: the retry with the same key is charged, and the
    # processor sees the same key both times (it charges a key at most once).
    retry = await client.post(DEPOSITS, json={"amount_cents": 1500}, headers=headers)
    assert retry.status_code == 201, retry.text
    assert (await wallet(client, auth))["balance_cents"] == 1500
    assert len({asked.idempotency_key for asked in processor.asked}) == 1
    assert len(processor.asked) == 2
