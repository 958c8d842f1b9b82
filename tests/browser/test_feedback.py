"""Feedback in a real browser (M3): the buyer rates the seller from the order page, the seller
finds it from their sales and replies from their public profile, and a visitor sees the
average, the stars and the reply by username. No JavaScript is needed; the browser reports no
complaint."""

from __future__ import annotations

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


def test_buyer_rates_seller_replies_and_the_profile_shows_both(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    seller = register_member(live_site, "seller", "quotehound", "Quote Hound LLC")
    body = lead_body(sale={"mode": "fixed", "price_cents": 2500, "exclusive": True})
    posted = httpx.post(
        live_site.url("/api/v1/leads"), json=body, headers=_token(live_site, seller), timeout=10
    )
    assert posted.status_code == 201, posted.text
    buyer = register_member(live_site, "buyer", "leadhunter", "Lead Hunter Inc")
    buyer_auth = _token(live_site, buyer)
    deposit = httpx.post(
        live_site.url("/api/v1/wallet/deposits"),
        json={"amount_cents": 10_000},
        headers=buyer_auth,
        timeout=10,
    )
    assert deposit.status_code == 201, deposit.text
    bought = httpx.post(
        live_site.url(f"/api/v1/leads/{posted.json()['id']}/purchase"),
        headers=buyer_auth,
        timeout=10,
    )
    assert bought.status_code == 201, bought.text
    order_id = bought.json()["id"]

    # The buyer rates the seller from the order page.
    sign_in_at_account(page, live_site, buyer)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Orders").click()
    page.locator(f'a[href="/orders/{order_id}"]').first.click()
    panel = page.get_by_test_id("order-feedback")
    expect(panel).to_contain_text("How was the seller?")
    panel.get_by_role("radio", name="4 stars", exact=True).check()
    panel.get_by_label("Comment").fill("Real person, answered the first call.")
    panel.get_by_role("button", name="Leave feedback").click()
    expect(page.get_by_role("status")).to_contain_text("your feedback is published")
    expect(page.get_by_test_id("order-feedback")).to_contain_text(
        "Real person, answered the first call."
    )
    page.get_by_role("button", name="Sign out").click()

    # The seller finds it from their sales and replies from their profile.
    sign_in_at_account(page, live_site, seller)
    page.goto(live_site.url("/seller/sales"))
    page.get_by_role("link", name="Feedback").first.click()
    expect(page.get_by_test_id("order-feedback")).to_contain_text("Real person")
    page.get_by_role("link", name=buyer).first.click()  # the author's profile link
    expect(page.get_by_role("heading", level=1)).to_have_text(buyer)
    page.goto(live_site.url(f"/members/{seller}"))
    page.get_by_label("Your public reply").fill("Thank you, glad it worked out.")
    page.get_by_role("button", name="Reply").click()
    expect(page.get_by_role("status")).to_contain_text("Your reply is published")
    page.get_by_role("button", name="Sign out").click()

    # Anyone sees the average, the stars and the reply, by username only.
    page.goto(live_site.url(f"/members/{seller}"))
    expect(page.get_by_test_id("rating-average")).to_have_text("4.00 out of 5 (1 rating)")
    expect(page.get_by_test_id("stars-4")).to_have_text("1")
    expect(page.get_by_text("Thank you, glad it worked out.")).to_be_visible()
    expect(page.get_by_text(buyer)).to_be_visible()
    expect(page.get_by_text("Lead Hunter Inc")).to_have_count(0)
    expect(page.get_by_text(body["contact"]["email"])).to_have_count(0)
    expect(page.get_by_role("button", name="Reply")).to_have_count(0)
    assert complaints == []
