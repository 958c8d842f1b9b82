"""An auction in a real browser (M1, issue 4 §8): a buyer watches the auction page while
another buyer bids through the API, and the price, the bid count and the standing change on
the page without a reload (server-sent events); then the watcher outbids through the form, and
a bid below the minimum is refused beside the field."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PASSWORD, LiveSite, register_member, sign_in_at_account
from tests.fixtures.leads import lead_body

pytestmark = pytest.mark.browser


def api_token(site: LiveSite, username: str) -> dict[str, str]:
    signed = httpx.post(
        site.url("/api/v1/auth/login"),
        json={"login": username, "password": PASSWORD, "remember": False},
        timeout=10,
    )
    assert signed.status_code == 200, signed.text
    return {"Authorization": f"Bearer {signed.json()['token']}"}


def call(site: LiveSite, method: str, path: str, auth: dict[str, str], **body: Any) -> Any:
    answer = httpx.request(method, site.url(path), json=body or None, headers=auth, timeout=10)
    assert answer.status_code < 300, answer.text
    return answer.json()


def test_the_auction_page_follows_bids_live_and_takes_a_bid(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    seller = api_token(live_site, register_member(live_site, "seller", "seller", "Quotes Co"))
    lead = call(
        live_site,
        "POST",
        "/api/v1/leads",
        seller,
        **lead_body(sale__reserve_cents=None, sale__buy_now_cents=None),
    )
    rival = api_token(live_site, register_member(live_site, "buyer", "rival", "Rival Leads"))
    call(live_site, "POST", "/api/v1/wallet/deposits", rival, amount_cents=50_000)
    watcher = register_member(live_site, "buyer", "watcher", "Watcher Leads")
    call(
        live_site,
        "POST",
        "/api/v1/wallet/deposits",
        api_token(live_site, watcher),
        amount_cents=50_000,
    )

    sign_in_at_account(page, live_site, watcher)
    page.goto(live_site.url(f"/auctions/{lead['id']}"))
    expect(page.get_by_test_id("price")).to_have_text("No bids yet")
    expect(page.get_by_test_id("bids")).to_have_text("0")
    page.wait_for_function("document.readyState === 'complete'")

    # Another buyer bids through the API: the open page follows without a reload.
    call(live_site, "POST", f"/api/v1/leads/{lead['id']}/bids", rival, amount_cents=2_000)
    expect(page.get_by_test_id("price")).to_have_text("$1.00", timeout=10_000)
    expect(page.get_by_test_id("bids")).to_have_text("1")
    expect(page.get_by_test_id("status")).to_have_text("Open for bids.")

    # Too low: refused beside the field, the amount kept.
    page.get_by_label("Your maximum bid").fill("1.20")
    page.get_by_role("button", name="Place bid").click()
    expect(page.locator("#amount-error")).to_contain_text("lowest bid accepted now")
    expect(page.get_by_label("Your maximum bid")).to_have_value("1.20")

    page.get_by_label("Your maximum bid").fill("30.00")
    page.get_by_role("button", name="Place bid").click()
    expect(page.get_by_role("status")).to_contain_text("Your bid leads")
    expect(page.get_by_test_id("price")).to_have_text("$20.50")
    expect(page.get_by_test_id("status")).to_have_text("You lead this auction.")
    expect(page.get_by_test_id("bids")).to_have_text("2")
    assert complaints == []


def test_a_shared_auction_page_follows_the_winning_places_live(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    seller = api_token(live_site, register_member(live_site, "seller", "seller", "Shared Co"))
    lead = call(
        live_site,
        "POST",
        "/api/v1/leads",
        seller,
        **lead_body(
            sale__reserve_cents=None,
            sale__buy_now_cents=None,
            sale__exclusive=False,
            sale__max_buyers=2,
        ),
    )
    top, other = (
        api_token(live_site, register_member(live_site, "buyer", name, f"{name} Leads"))
        for name in ("topbid", "other")
    )
    for rival in (top, other):
        call(live_site, "POST", "/api/v1/wallet/deposits", rival, amount_cents=50_000)
    watcher = register_member(live_site, "buyer", "sharer", "Sharer Leads")
    watcher_api = api_token(live_site, watcher)
    call(live_site, "POST", "/api/v1/wallet/deposits", watcher_api, amount_cents=50_000)
    call(live_site, "POST", f"/api/v1/leads/{lead['id']}/bids", top, amount_cents=5_000)

    sign_in_at_account(page, live_site, watcher)
    page.goto(live_site.url(f"/auctions/{lead['id']}"))
    expect(page.get_by_test_id("places")).to_have_text("2")
    expect(page.get_by_test_id("status")).to_have_text("Open for bids.")
    page.wait_for_function("document.readyState === 'complete'")

    # The watcher bids from elsewhere (the API), below the top bid yet within the two places
    # this shared lead sells: the open page follows.
    call(live_site, "POST", f"/api/v1/leads/{lead['id']}/bids", watcher_api, amount_cents=2_000)
    expect(page.get_by_test_id("bids")).to_have_text("2", timeout=10_000)
    expect(page.get_by_test_id("status")).to_have_text(
        "Your bid holds one of the 2 winning places."
    )

    # A higher maximum pushes the watcher out of the places.
    call(live_site, "POST", f"/api/v1/leads/{lead['id']}/bids", other, amount_cents=3_000)
    expect(page.get_by_test_id("bids")).to_have_text("3", timeout=10_000)
    expect(page.get_by_test_id("status")).to_have_text("Open for bids.")

    # Through the form, a new maximum above the other's wins a place back.
    page.get_by_label("Your maximum bid").fill("40.00")
    page.get_by_role("button", name="Place bid").click()
    expect(page.get_by_role("status")).to_contain_text("holds one of the winning places")
    expect(page.get_by_test_id("status")).to_have_text(
        "Your bid holds one of the 2 winning places."
    )
    assert complaints == []


def test_the_auction_page_speaks_in_the_leads_money_and_words(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    """A buyer reads the answers as the market words them, and a refused bid in the lead's
    own money (a dollar form, a CAD lead), never in cents; buying outright is one link away."""
    seller = api_token(live_site, register_member(live_site, "seller", "seller", "Maple Co"))
    lead = call(
        live_site,
        "POST",
        "/api/v1/leads",
        seller,
        **lead_body(
            sale__currency="CAD",
            sale__reserve_cents=None,
            attributes__coverage_wanted="full",
            attributes__driving_record="clean",
        ),
    )
    buyer = register_member(live_site, "buyer", "mapler", "Maple Buyer")
    call(
        live_site,
        "POST",
        "/api/v1/wallet/deposits",
        api_token(live_site, buyer),
        amount_cents=8_000,
        currency="CAD",
    )

    sign_in_at_account(page, live_site, buyer)
    page.goto(live_site.url(f"/auctions/{lead['id']}"))
    expect(
        page.get_by_role("definition").filter(has_text="Full coverage (liability")
    ).to_be_visible()
    expect(page.get_by_text("Clean: no tickets or accidents")).to_be_visible()

    page.get_by_label("Your maximum bid").fill("0.50")
    page.get_by_role("button", name="Place bid").click()
    expect(page.locator("#amount-error")).to_contain_text("The lowest bid accepted now is CA$1.00.")

    page.get_by_label("Your maximum bid").fill("5000")
    page.get_by_role("button", name="Place bid").click()
    expect(page.locator("#amount-error")).to_contain_text("CA$5,000.00")
    expect(page.locator("#amount-error")).to_contain_text("CA$80.00 is available")
    expect(page.locator("#amount-error")).not_to_contain_text("cents")

    page.get_by_role("link", name="Buy it now for CA$40.00").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Buy a lead")
    expect(page.get_by_role("button", name="Confirm: buy for CA$40.00")).to_be_visible()
    assert complaints == []
