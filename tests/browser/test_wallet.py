"""A buyer's wallet in a real browser (M5): find it from the navigation, deposit, see the card
declined with the message beside the payment method, see the balance and the line in the list.
No JavaScript is needed; the browser reports no complaint."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import LiveSite, register_member, sign_in_at_account

pytestmark = pytest.mark.browser


def test_a_buyer_deposits_and_sees_a_declined_card_beside_its_field(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    username = register_member(live_site, "buyer", "leadhunter", "Lead Hunter Inc")
    sign_in_at_account(page, live_site, username)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Wallet").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Wallet")
    expect(page.get_by_test_id("balance-USD")).to_have_text("$0.00")

    # A declined card: the message stands beside the payment method, the amount is kept.
    page.get_by_label("Amount").fill("40.00")
    page.get_by_label("Payment method").select_option("sandbox_decline")
    page.get_by_role("button", name="Deposit").click()
    expect(page).to_have_title("Error: Wallet · Leadmarket")
    method = page.get_by_label("Payment method")
    expect(method).to_have_attribute("aria-invalid", "true")
    error = page.locator("#payment_method-error")
    expect(error).to_contain_text("declined")
    expect(page.get_by_label("Amount")).to_have_value("40.00")
    expect(page.get_by_test_id("balance-USD")).to_have_text("$0.00")

    # The working card.
    method.select_option("")
    page.get_by_role("button", name="Deposit").click()
    page.wait_for_url(live_site.url("/wallet?done=deposited"))
    expect(page.get_by_role("status")).to_contain_text("Your deposit was received")
    expect(page.get_by_test_id("balance-USD")).to_have_text("$40.00")
    row = page.get_by_role("row").filter(has_text="Deposit")
    expect(row).to_contain_text("+$40.00")
    assert complaints == []
