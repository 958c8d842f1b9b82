"""A return in real browsers (issue 6, M2): the buyer asks to return a lead on their order page
with a reason, a note and a file; the seller is mailed, approves on their sale page; the
buyer's wallet shows the refund and the order its history. No JavaScript is needed; neither
browser reports a complaint."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

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


def _bought_order(site: LiveSite) -> tuple[str, str, dict[str, Any], str]:
    """A new seller's fixed-price lead, bought through the API by a new buyer with funds.
    Returns (seller, buyer, the lead's body, the order id)."""
    seller = register_member(site, "seller", "quotehound", "Quote Hound LLC")
    body = lead_body(sale={"mode": "fixed", "price_cents": 2500, "exclusive": True})
    posted = httpx.post(
        site.url("/api/v1/leads"), json=body, headers=_token(site, seller), timeout=10
    )
    assert posted.status_code == 201, posted.text
    buyer = register_member(site, "buyer", "leadhunter", "Lead Hunter Inc")
    headers = _token(site, buyer)
    deposit = httpx.post(
        site.url("/api/v1/wallet/deposits"),
        json={"amount_cents": 10_000},
        headers=headers,
        timeout=10,
    )
    assert deposit.status_code == 201, deposit.text
    bought = httpx.post(
        site.url(f"/api/v1/leads/{posted.json()['id']}/purchase"), headers=headers, timeout=10
    )
    assert bought.status_code == 201, bought.text
    return seller, buyer, body, str(bought.json()["id"])


def test_a_buyer_returns_a_lead_and_the_seller_approves(
    page: Page, browser: Browser, live_site: LiveSite, complaints: list[str]
) -> None:
    seller, buyer, body, order_id = _bought_order(live_site)

    # The buyer asks for the return on the order page.
    sign_in_at_account(page, live_site, buyer)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Orders").click()
    page.locator(f'a[href="/orders/{order_id}"]').first.click()
    expect(page.get_by_test_id("order-status")).to_have_text("held")
    page.get_by_label("Why return it").select_option("disconnected_or_wrong_number")
    page.get_by_label("Note").fill("Three calls: the number is disconnected.")
    page.get_by_label("A file").set_input_files(
        files=[{"name": "calls.txt", "mimeType": "text/plain", "buffer": b"3 calls, no tone"}]
    )
    page.get_by_role("button", name="Request a return").click()
    expect(page.get_by_role("status")).to_contain_text("Your return is filed")
    expect(page.get_by_test_id("return-status")).to_have_text("requested")
    expect(page.get_by_role("link", name="calls.txt")).to_be_visible()

    # The seller is told by mail, with a link to their sale page, and approves there.
    mail = live_site.wait_for_mail(
        f"seller.{seller.rsplit('_', 1)[1]}@example.com", "Return requested"
    )
    text = mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert f"/seller/sales/{order_id}" in text
    assert body["contact"]["email"] not in text and "disconnected." not in text
    seller_context = browser.new_context(viewport={"width": 1100, "height": 900}, locale="en-US")
    try:
        seller_page = seller_context.new_page()
        seller_page.set_default_timeout(10_000)
        sign_in_at_account(seller_page, live_site, seller)
        seller_page.goto(live_site.url("/seller/sales"))
        seller_page.locator(f'a[href="/seller/sales/{order_id}"]').click()
        expect(seller_page.get_by_test_id("return")).to_contain_text(
            "Three calls: the number is disconnected."
        )
        expect(seller_page.get_by_text(body["contact"]["email"])).to_have_count(0)
        seller_page.get_by_role("button", name="Approve and refund").click()
        expect(seller_page.get_by_role("status")).to_contain_text("You approved the return")
        expect(seller_page.get_by_test_id("return-status")).to_have_text("approved")
    finally:
        seller_context.close()

    # The buyer's wallet shows the refund; the order its history.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Wallet").click()
    expect(page.get_by_test_id("balance-USD")).to_have_text("$100.00")
    expect(page.get_by_test_id("held-USD")).to_have_text("$0.00")
    expect(page.get_by_role("cell", name="Hold released")).to_have_count(2)  # held → wallet
    page.goto(live_site.url(f"/orders/{order_id}"))
    expect(page.get_by_test_id("return-status")).to_have_text("approved")
    expect(page.get_by_test_id("history")).to_contain_text(re.compile("return approved"))
    expect(page.get_by_test_id("contact")).to_have_count(0)
    assert complaints == []


def test_a_refused_return_keeps_what_the_buyer_typed_and_says_which_field(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    _, buyer, _, order_id = _bought_order(live_site)
    sign_in_at_account(page, live_site, buyer)
    page.goto(live_site.url(f"/orders/{order_id}"))
    page.get_by_label("Why return it").select_option("other")
    page.get_by_label("Evidence").fill("Called three times on Monday, no answer.")
    page.get_by_role("button", name="Request a return").click()

    # "Other" needs a note: said beside the note, by its label, the evidence kept.
    expect(page.locator("#return-note-error")).to_contain_text("Required when the reason")
    expect(page.get_by_label("Note")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("alert")).to_contain_text("Note: Required")
    expect(page.get_by_role("alert")).not_to_contain_text("note:")
    expect(page.get_by_label("Evidence")).to_have_value("Called three times on Monday, no answer.")
    expect(page.get_by_label("Why return it")).to_have_value("other")

    page.get_by_label("Note").fill("The consumer says they never asked.")
    page.get_by_role("button", name="Request a return").click()
    expect(page.get_by_role("status")).to_contain_text("Your return is filed")
    assert complaints == []
