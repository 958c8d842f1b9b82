"""Member messages in a real browser (M4): the buyer writes from the order page, the seller is
emailed (with the unsubscribe link), finds the thread from their sales and replies, and the
buyer sees the reply. Each sees the other's username only. No JavaScript is needed; the
browser reports no complaint."""

from __future__ import annotations

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


def test_buyer_and_seller_talk_about_an_order(
    page: Page, browser: Browser, live_site: LiveSite, complaints: list[str]
) -> None:
    seller = register_member(live_site, "seller", "quotehound", "Quote Hound LLC")
    body = lead_body(sale={"mode": "fixed", "price_cents": 2500, "exclusive": True})
    posted = httpx.post(
        live_site.url("/api/v1/leads"), json=body, headers=_token(live_site, seller), timeout=10
    )
    assert posted.status_code == 201, posted.text
    buyer = register_member(live_site, "buyer", "leadhunter", "Lead Hunter Inc")
    buyer_api = _token(live_site, buyer)
    deposit = httpx.post(
        live_site.url("/api/v1/wallet/deposits"),
        json={"amount_cents": 10_000},
        headers=buyer_api,
        timeout=10,
    )
    assert deposit.status_code == 201, deposit.text
    bought = httpx.post(
        live_site.url(f"/api/v1/leads/{posted.json()['id']}/purchase"),
        headers=buyer_api,
        timeout=10,
    )
    assert bought.status_code == 201, bought.text
    order_id = bought.json()["id"]

    # The buyer writes from the order page.
    sign_in_at_account(page, live_site, buyer)
    page.goto(live_site.url(f"/orders/{order_id}"))
    page.get_by_test_id("messages-link").click()
    expect(page.get_by_test_id("counterpart")).to_have_text(seller)
    page.get_by_label("Message").fill("Hello! Did the consumer ask for a call back?")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_contain_text("Your message was sent")
    expect(page.get_by_test_id("message-body")).to_have_text(
        "Hello! Did the consumer ask for a call back?"
    )

    mail = live_site.wait_for_mail(
        f"seller.{seller.rsplit('_', 1)[1]}@example.com", "sent you a message"
    )
    assert buyer in str(mail["Subject"])
    assert str(mail["List-Unsubscribe"]).startswith("<http://127.0.0.1:")

    # The seller finds the thread from their sales and answers.
    seller_context = browser.new_context(viewport={"width": 1100, "height": 900}, locale="en-US")
    try:
        seller_page = seller_context.new_page()
        seller_page.set_default_timeout(10_000)
        sign_in_at_account(seller_page, live_site, seller)
        seller_page.goto(live_site.url("/seller/sales"))
        seller_page.get_by_role("link", name="Messages").first.click()
        expect(seller_page.get_by_test_id("counterpart")).to_have_text(buyer)
        expect(seller_page.get_by_test_id("message-body")).to_have_text(
            "Hello! Did the consumer ask for a call back?"
        )
        expect(seller_page.get_by_test_id("message-sender")).to_have_text(buyer)
        # Only the username: nothing of the buyer's account shows.
        expect(seller_page.get_by_text("Lead Hunter Inc")).to_have_count(0)
        seller_page.get_by_label("Message").fill("Yes, after 5 pm on weekdays.")
        seller_page.get_by_role("button", name="Send").click()
        expect(seller_page.get_by_role("status")).to_contain_text("Your message was sent")
        expect(seller_page.get_by_test_id("message")).to_have_count(2)
    finally:
        seller_context.close()

    page.reload()
    bodies = page.get_by_test_id("message-body")
    expect(bodies).to_have_count(2)
    expect(bodies.nth(1)).to_have_text("Yes, after 5 pm on weekdays.")
    expect(page.get_by_test_id("message-sender").nth(1)).to_have_text(seller)
    assert complaints == []
