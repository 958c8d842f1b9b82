"""Privacy pages in a real browser: a member finds their communication preferences from the
account page, opts in to a newsletter and out of member messages, and sees both kept (P8); a
browser sending Global Privacy Control sees "Opt-out request honored" on every page, its
member's preferences show the stored opt-out, and the privacy notice shows the version in
effect and the data region (P11, P12). No JavaScript is needed; the browser reports no
complaint."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import LiveSite, register_member, sign_in_at_account

pytestmark = pytest.mark.browser


def test_the_preferences_page_round_trip(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    username = register_member(live_site, "buyer", "quietbuyer", "Quiet Buyer Co")
    sign_in_at_account(page, live_site, username)
    page.get_by_role("navigation", name="Account").get_by_role("link", name="Preferences").click()
    expect(page.get_by_role("heading", name="Communication preferences")).to_be_visible()
    newsletters = page.get_by_label("Newsletters")
    member_messages = page.get_by_label("Messages from other members")
    expect(newsletters).not_to_be_checked()  # marketing is off until the member opts in
    expect(member_messages).to_be_checked()
    expect(page.get_by_label("Email", exact=True)).to_be_checked()

    newsletters.check()
    member_messages.uncheck()
    page.get_by_role("button", name="Save preferences").click()
    page.wait_for_url(live_site.url("/account/preferences?done=saved"))
    expect(page.get_by_role("status")).to_contain_text("Your preferences were saved.")
    expect(page.get_by_label("Newsletters")).to_be_checked()
    expect(page.get_by_label("Messages from other members")).not_to_be_checked()
    page.reload()
    expect(page.get_by_label("Newsletters")).to_be_checked()
    expect(page.get_by_test_id("gpc-honored")).to_have_count(0)
    assert complaints == []


def test_a_gpc_browser_sees_its_opt_out_honored(browser: Browser, live_site: LiveSite) -> None:
    context = browser.new_context(extra_http_headers={"Sec-GPC": "1"}, locale="en-US")
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.goto(live_site.url("/"))
        expect(page.get_by_test_id("gpc-honored")).to_contain_text("Opt-out request honored")

        page.goto(live_site.url("/privacy/notice"))
        expect(page.get_by_test_id("gpc-notice")).to_contain_text("Opt-out request honored")
        expect(page.get_by_test_id("notice-version")).to_contain_text("1.0")
        expect(page.get_by_test_id("data-region")).to_have_text("Canada (Quebec)")

        username = register_member(live_site, "seller", "gpcseller", "GPC Seller Ltd")
        sign_in_at_account(page, live_site, username)
        expect(page.get_by_test_id("gpc-honored")).to_be_visible()
        page.goto(live_site.url("/account/preferences"))
        expect(page.get_by_test_id("gpc-preferences")).to_be_visible()
        expect(page.get_by_label("Do not sell or share my personal information")).to_be_checked()
        expect(page.get_by_label("Personalized advertising")).not_to_be_checked()
    finally:
        context.close()
