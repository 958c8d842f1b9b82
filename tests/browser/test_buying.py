"""Buying a lead in a real browser (issue 4 §8): from the navigation to the market, the Buy
button, the confirm step, then the order page with the consumer's contact (L6). No JavaScript
is needed; the browser reports no complaint."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PASSWORD, LiveSite, register_member, sign_in_at_account
from tests.fixtures.leads import lead_body

pytestmark = pytest.mark.browser


def _token(site: LiveSite, username: str) -> dict[str, str]:
    response = httpx.post(
        site.url("/api/v1/auth/login"),
        json={"login": username, "password": PASSWORD, "remember": False},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def _posted_lead_and_funded_buyer(site: LiveSite, body: dict[str, Any]) -> tuple[str, str]:
    """A new seller posts the lead; a new buyer deposits $100. Returns (lead id, buyer)."""
    seller = register_member(site, "seller", "quotehound", "Quote Hound LLC")
    posted = httpx.post(
        site.url("/api/v1/leads"), json=body, headers=_token(site, seller), timeout=10
    )
    assert posted.status_code == 201, posted.text
    buyer = register_member(site, "buyer", "leadhunter", "Lead Hunter Inc")
    deposit = httpx.post(
        site.url("/api/v1/wallet/deposits"),
        json={"amount_cents": 10_000},
        headers=_token(site, buyer),
        timeout=10,
    )
    assert deposit.status_code == 201, deposit.text
    return str(posted.json()["id"]), buyer


def test_a_buyer_buys_a_lead_and_sees_its_contact(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    body = lead_body(sale={"mode": "fixed", "price_cents": 2500, "exclusive": True})
    _, buyer = _posted_lead_and_funded_buyer(live_site, body)

    sign_in_at_account(page, live_site, buyer)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Market").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Market")
    expect(page.get_by_text(body["contact"]["email"])).to_have_count(0)
    page.get_by_role("link", name=re.compile(r"^Buy the .* for \$25\.00$")).first.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Buy a lead")
    page.get_by_role("button", name="Confirm: buy for $25.00").click()

    expect(page.get_by_role("status")).to_contain_text("You bought this lead")
    expect(page.get_by_test_id("contact")).to_contain_text(body["contact"]["email"])
    expect(page.get_by_test_id("order-status")).to_have_text("held")
    page.get_by_role("link", name="Your orders").click()
    expect(page.get_by_role("row")).to_have_count(2)
    assert complaints == []


def test_a_buyer_of_a_shared_lead_reads_its_order_in_words_and_is_not_offered_it_again(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    body = lead_body(
        sale={"mode": "fixed", "price_cents": 2500, "exclusive": False, "max_buyers": 2}
    )
    lead_id, buyer = _posted_lead_and_funded_buyer(live_site, body)

    sign_in_at_account(page, live_site, buyer)
    page.goto(live_site.url(f"/market/leads/{lead_id}"))
    page.get_by_role("button", name="Confirm: buy for $25.00").click()
    expect(page.get_by_role("status")).to_contain_text("You bought this lead")
    # The kind of service by its name; a shared lead's clock starts when its sale closes,
    # which is said rather than left blank.
    expect(page.get_by_role("heading", name="Auto insurance lead, $25.00")).to_be_visible()
    destroyed = page.locator(".stat", has_text="Contact destroyed at").locator("dd")
    expect(destroyed).to_have_text("48 hours after the lead's sale closes")
    order_url = page.url.split("?")[0]

    page.get_by_role("link", name="Your orders").click()
    expect(page.get_by_role("cell", name="Auto insurance · Fresno, CA")).to_be_visible()

    # The lead is still on the market for its second place; this buyer is sent to the order.
    page.goto(live_site.url(f"/market/leads/{lead_id}"))
    expect(page.get_by_test_id("owned")).to_contain_text("You bought this lead already")
    expect(page.get_by_role("button", name="Confirm: buy for $25.00")).to_have_count(0)
    page.get_by_role("link", name="see your order").click()
    expect(page).to_have_url(order_url)
    assert complaints == []


def test_the_market_filters_by_a_state_chosen_from_a_list(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    body = lead_body(sale={"mode": "fixed", "price_cents": 2500, "exclusive": True})
    lead_id, buyer = _posted_lead_and_funded_buyer(live_site, body)  # a lead in Fresno, CA
    sign_in_at_account(page, live_site, buyer)
    page.goto(live_site.url("/market"))
    page.get_by_label("State or province").select_option(label="California")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"region=CA"))
    expect(page.locator(f'a[href="/market/leads/{lead_id}"]')).to_be_visible()
    expect(page.get_by_label("State or province")).to_have_value("CA")

    # A name where a code belongs (a link typed by hand) is said, not an empty market.
    page.goto(live_site.url("/market?region=Texas"))
    expect(page.locator("#region-error")).to_contain_text("Choose a state or province")
    expect(page.get_by_role("heading", level=1)).to_have_text("Market")
    assert complaints == []
