"""A buyer in a real browser: signs in, finds Campaigns in the navigation, creates a campaign
with filters of the vertical and its own bidding endpoint (mistakes first, each shown beside
its control, then the webhook secret pings are signed with), pauses and resumes it. The
browser reports no script error or failed resource."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import LiveSite, register_member, sign_in_at_account
from tests.fixtures.accounts import member

pytestmark = pytest.mark.browser


def test_a_buyer_creates_pauses_and_resumes_a_campaign(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    account = member("buyer")
    registered = httpx.post(live_site.url("/api/v1/auth/register"), json=account, timeout=30)
    assert registered.status_code == 201, registered.text

    page.goto(live_site.url("/signin"))
    page.get_by_label("Email address or username").fill(account["username"])
    page.get_by_label("Password", exact=True).fill(account["password"])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Campaigns").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your campaigns")

    page.get_by_role("link", name="Create one").click()
    page.get_by_label("Kind of service").select_option("auto-insurance")
    page.get_by_role("button", name="Continue").click()
    page.get_by_label("Campaign name").fill("Fresno Hondas")
    page.get_by_label("Bid per lead").fill("25.00")
    page.get_by_label("States and provinces").fill("CA, XX")
    page.get_by_label("Honda").check()
    page.get_by_label("Monday").check()
    page.get_by_label("Bid from your own server").fill("https://127.0.0.1/bids")
    page.get_by_role("button", name="Create the campaign").click()

    expect(page.get_by_role("heading", name="There is a problem")).to_be_visible()
    regions = page.get_by_label("States and provinces")
    expect(regions).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#filters-regions-error")).to_contain_text("two-letter code")
    expect(page.get_by_label("Honda")).to_be_checked()  # what was chosen is kept
    ping_url = page.get_by_label("Bid from your own server")
    expect(ping_url).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#ping_url-error")).to_contain_text("not on the public internet")

    regions.fill("CA, NV")
    ping_url.fill("https://bids.example.com/ping")
    page.get_by_role("button", name="Create the campaign").click()
    # Pings are signed with the buyer's webhook secret: none yet, so the address is refused.
    expect(page.locator("#ping_url-error")).to_contain_text("create your webhook endpoint first")
    login = {"login": account["username"], "password": account["password"]}
    token = httpx.post(live_site.url("/api/v1/auth/login"), json=login, timeout=30)
    hook = httpx.put(
        live_site.url("/api/v1/me/webhook"),
        json={"url": "https://buyer.example.com/hooks"},
        headers={"Authorization": f"Bearer {token.json()['token']}"},
        timeout=30,
    )
    assert hook.status_code == 200, hook.text
    page.get_by_role("button", name="Create the campaign").click()
    expect(page.get_by_role("status")).to_contain_text("The campaign was created.")
    row = page.get_by_role("row", name="Fresno Hondas")
    expect(row).to_contain_text("Running")
    expect(row).to_contain_text("$25.00")

    row.get_by_role("button", name="Pause Fresno Hondas").click()
    expect(page.get_by_role("status")).to_contain_text("paused")
    expect(page.get_by_role("row", name="Fresno Hondas")).to_contain_text("Paused")
    page.get_by_role("button", name="Resume Fresno Hondas").click()
    expect(page.get_by_role("row", name="Fresno Hondas")).to_contain_text("Running")
    assert complaints == []


def test_a_campaign_bid_is_refused_in_dollars_and_an_impossible_age_range_is_named(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    buyer = register_member(live_site, "buyer", "ager", "Age Range Leads")
    sign_in_at_account(page, live_site, buyer)
    page.goto(live_site.url("/buyer/campaigns/new?vertical=auto-insurance"))
    page.get_by_label("Campaign name").fill("Thirty-somethings")
    page.get_by_label("Currency").select_option("CAD")
    page.get_by_label("Youngest age").fill("30")
    page.get_by_label("Oldest age").fill("33")
    page.get_by_role("button", name="Create the campaign").click()

    # An empty bid is asked for, not "Input should be a valid integer".
    expect(page.locator("#bid-error")).to_contain_text("Enter the bid per lead")
    expect(page.locator("#filters-age_max-error")).to_contain_text("no lead could match")
    expect(page.get_by_label("Youngest age")).to_have_value("30")

    page.get_by_label("Bid per lead").fill("99999")
    page.get_by_label("Oldest age").fill("44")
    page.get_by_role("button", name="Create the campaign").click()
    # A dollar form names the limits in the campaign's money, not in cents.
    expect(page.locator("#bid-error")).to_have_text(
        "Error: Enter an amount from CA$0.01 to CA$10,000.00."
    )
    expect(page.locator("#filters-age_max-error")).to_have_count(0)

    page.get_by_label("Bid per lead").fill("25.00")
    page.get_by_role("button", name="Create the campaign").click()
    expect(page.get_by_role("status")).to_contain_text("created")
    expect(page.get_by_role("cell", name="CA$25.00")).to_be_visible()
    assert complaints == []
