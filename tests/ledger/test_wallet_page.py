"""The buyer's wallet page (M5) over a real HTTP stack: balance, deposit form with errors beside
the field, a declined card that changes nothing, the form's one-time key that stops a double
charge, CSRF, and the ledger lines."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.models import Deposit, LedgerTransaction
from tests.fixtures.accounts import PASSWORD, register
from tests.fixtures.ledger import RecordingProcessor


def field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no {name} field on the page"
    return match.group(1)


def field_block(html: str, element_id: str) -> str:
    """The <div class="field"> around the control #element_id."""
    blocks = re.findall(r'<div class="field[^"]*">.*?</div>', html, flags=re.S)
    for block in blocks:
        if f'id="{element_id}"' in block:
            return block
    raise AssertionError(f"no field #{element_id}")


async def sign_in(client: httpx.AsyncClient, login: str, *, remember: bool = False) -> None:
    page = await client.get("/signin")
    form = {"csrf_token": field(page.text, "csrf_token"), "login": login, "password": PASSWORD}
    if remember:
        form["remember"] = "yes"
    response = await client.post("/signin", data=form)
    assert response.status_code == 303, response.text


async def web_member(client: httpx.AsyncClient, role: str = "buyer", **kw: bool) -> str:
    account = await register(client, role)
    await sign_in(client, account["username"], **kw)
    return str(account["username"])


async def deposit_form(client: httpx.AsyncClient, **values: str) -> dict[str, str]:
    page = await client.get("/wallet")
    assert page.status_code == 200, page.text
    form = {
        "csrf_token": field(page.text, "csrf_token"),
        "deposit_key": field(page.text, "deposit_key"),
        "amount": "25.00",
        "currency": "USD",
        "payment_method": "",
    }
    form.update(values)
    return form


async def money_rows(session: AsyncSession) -> tuple[int, int]:
    return (
        int(await session.scalar(select(func.count()).select_from(LedgerTransaction)) or 0),
        int(await session.scalar(select(func.count()).select_from(Deposit)) or 0),
    )


async def test_wallet_page_shows_balance_form_and_is_in_the_navigation(
    client: httpx.AsyncClient,
) -> None:
    await web_member(client)
    page = await client.get("/wallet")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert '<a href="/wallet" aria-current="page">Wallet</a>' in page.text
    assert "$0.00" in page.text
    for control in ("amount", "currency", "payment_method"):
        assert f'<label class="label" for="{control}">' in page.text
    assert "No movements yet" in page.text
    home = await client.get("/account")
    assert '<a href="/wallet">Wallet</a>' in home.text


async def test_deposit_from_the_page_lands_in_the_wallet_once(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await web_member(client)
    form = await deposit_form(client, amount="1,250.50")
    response = await client.post("/wallet/deposits", data=form)
    assert response.status_code == 303
    assert response.headers["location"] == "/wallet?done=deposited"
    before = await money_rows(session)
    # The same form sent again (a double click, a reload): not charged twice.
    again = await client.post("/wallet/deposits", data=form)
    assert again.status_code == 303
    assert await money_rows(session) == before
    page = await client.get("/wallet?done=deposited")
    assert "Your deposit was received" in page.text
    assert 'data-testid="balance-USD">$1,250.50<' in page.text
    assert "+$1,250.50" in page.text
    assert "Deposit" in page.text


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("", "Enter the amount to deposit."),
        ("twelve", "Enter an amount in dollars, for example 12.50."),
        ("0", "Deposit at least 0.01."),
        ("12.345", "Enter an amount in dollars, for example 12.50."),
        ("100000.01", "Deposit at most $100,000.00 (10000000 cents) at a time."),
    ],
)
async def test_a_bad_amount_is_shown_beside_the_field_and_nothing_is_written(
    client: httpx.AsyncClient, session: AsyncSession, amount: str, message: str
) -> None:
    await web_member(client)
    before = await money_rows(session)
    response = await client.post("/wallet/deposits", data=await deposit_form(client, amount=amount))
    assert response.status_code == 422
    block = field_block(response.text, "amount")
    assert message in block
    assert 'aria-invalid="true"' in block
    assert '<a href="#amount">Amount: ' in response.text
    assert await money_rows(session) == before


async def test_a_declined_card_is_shown_beside_the_payment_method_and_changes_nothing(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await web_member(client)
    before = await money_rows(session)
    form = await deposit_form(client, payment_method="sandbox_decline")
    response = await client.post("/wallet/deposits", data=form)
    assert response.status_code == 402
    block = field_block(response.text, "payment_method")
    assert "declined" in block
    assert await money_rows(session) == before
    assert 'data-testid="balance-USD">$0.00<' in response.text
    # The amount typed is kept for the next try.
    assert 'value="25.00"' in field_block(response.text, "amount")


async def test_deposit_form_needs_the_session_token(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await web_member(client)
    before = await money_rows(session)
    form = await deposit_form(client, csrf_token="forged")
    response = await client.post("/wallet/deposits", data=form)
    assert response.status_code == 403
    assert await money_rows(session) == before


async def test_who_sees_the_wallet_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/wallet")
    assert response.status_code == 303
    assert urlsplit(response.headers["location"]).path == "/signin"
    await web_member(client, "seller")
    assert (await client.get("/wallet")).status_code == 403


async def test_a_remembered_session_enters_the_password_before_depositing(
    client: httpx.AsyncClient,
) -> None:
    await web_member(client, remember=True)
    response = await client.post("/wallet/deposits", data=await deposit_form(client))
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/account/reauth"
    assert parse_qs(location.query)["next"] == ["/wallet"]


async def test_a_processor_that_does_not_answer_is_shown_and_the_form_keeps_its_key(
    client: httpx.AsyncClient, session: AsyncSession, processor: RecordingProcessor
) -> None:
    await web_member(client)
    processor.failures_left = 1
    before = await money_rows(session)
    form = await deposit_form(client)
    response = await client.post("/wallet/deposits", data=form)
    assert response.status_code == 502
    assert "did not answer" in response.text
    assert await money_rows(session) == before
    # Sent again as shown, the deposit goes to the processor under the same key.
    assert field(response.text, "deposit_key") == form["deposit_key"]
    again = {**form, "csrf_token": field(response.text, "csrf_token")}
    assert (await client.post("/wallet/deposits", data=again)).status_code == 303
    assert len({asked.idempotency_key for asked in processor.asked}) == 1
