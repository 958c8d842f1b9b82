"""The privacy side of the demo in a real browser: after ``leadmarket demo``, the demo admin's
retention monitor shows the lateness of the history's destructions (L4), the law-enforcement
list the subpoena waiting for a second admin (P10), and the privacy officer's queue puts the
overdue request first (P5) and opens it. No JavaScript is needed; the browser reports no
complaint."""

from __future__ import annotations

import asyncio

import pytest
from playwright.sync_api import Page, expect

from leadmarket.demo import DEMO_PASSWORD, load_demo_data
from tests.browser.conftest import LiveSite, off_loop, sign_in_at_account

pytestmark = pytest.mark.browser


def test_the_demo_admin_and_privacy_officer_see_the_privacy_pages(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    summary = off_loop(asyncio.run, load_demo_data(live_site.settings))
    assert "8 leads past the 48-hour rule" in summary

    # The retention monitor: eight destructions this week, four of them today, none overdue.
    sign_in_at_account(page, live_site, "admin", DEMO_PASSWORD)
    page.goto(live_site.url("/admin/retention"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Retention monitor")
    expect(page.get_by_test_id("overdue-count")).to_have_text("0")
    week = page.get_by_test_id("lateness-7d").get_by_role("cell")
    expect(week).to_have_text(["8", "2.6 s", "12.5 s", "12.5 s", "12.5 s"])
    day = page.get_by_test_id("lateness-24h").get_by_role("cell")
    expect(day).to_have_text(["4", "2.6 s", "12.5 s", "12.5 s", "12.5 s"])
    week_histogram = page.locator("table.histogram").nth(1)
    expect(week_histogram.get_by_role("row", name="< 1 s")).to_contain_text("2")
    expect(week_histogram.get_by_role("row", name="10–20 s")).to_contain_text("1")
    expect(page.get_by_role("alert")).to_have_count(0)  # nothing late

    # The subpoena is entered, not verified.
    page.goto(live_site.url("/admin/legal-requests"))
    row = page.get_by_role("row").filter(has_text="GJ-2026-0412")
    expect(row).to_contain_text("Maricopa County Sheriff's Office")
    expect(row).to_contain_text("quotehound")
    expect(row.locator(".badge--warn")).to_have_count(1)
    page.get_by_role("button", name="Sign out").click()

    # The officer's queue: the overdue deletion request first, then this week's.
    sign_in_at_account(page, live_site, "privacy_desk", DEMO_PASSWORD)
    page.goto(live_site.url("/privacy/queue"))
    rows = page.locator("#queue tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_have_class("overdue")
    expect(rows.nth(0)).to_contain_text("delete")
    expect(rows.nth(0)).to_contain_text("proof to review")
    expect(rows.nth(0)).to_contain_text("(agent)")
    expect(rows.nth(1)).not_to_have_class("overdue")
    expect(rows.nth(1)).to_contain_text("know")
    request_id = rows.nth(0).get_attribute("data-id")
    assert request_id is not None
    young_id = rows.nth(1).get_attribute("data-id")
    rows.nth(0).get_by_role("link").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(request_id)
    # P5: past its 45 days it can no longer be extended, only answered.
    expect(page.get_by_role("heading", name="Deny")).to_be_visible()
    expect(page.locator("form[action$='/extend']")).to_have_count(0)
    page.goto(live_site.url(f"/privacy/queue/{young_id}"))
    expect(page.locator("form[action$='/extend']")).to_have_count(1)
    # The answered request is among all requests.
    page.goto(live_site.url("/privacy/queue?status=fulfilled"))
    expect(page.locator("#queue tbody tr")).to_have_count(1)
    expect(page.locator("#queue tbody tr").first).to_contain_text("know")
    assert complaints == []
