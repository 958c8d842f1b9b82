"""Helpers shared by the privacy tests: a member signed in through the pages."""

from __future__ import annotations

import re

import httpx

from tests.fixtures.accounts import PASSWORD, register


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


async def browser_member(
    client: httpx.AsyncClient, role: str = "buyer", *, remember: bool = False
) -> tuple[dict[str, str], str]:
    """A member registered through the API and signed in through the sign-in page (the client
    keeps the session cookie); returns the account and their web session's CSRF token."""
    account = await register(client, role)
    page = await client.get("/signin")
    form = {"csrf_token": csrf_of(page.text), "login": account["username"], "password": PASSWORD}
    if remember:
        form["remember"] = "yes"
    signed = await client.post("/signin", data=form)
    assert signed.status_code == 303, signed.text
    account_page = await client.get("/account")
    assert account_page.status_code == 200
    return account, csrf_of(account_page.text)
