"""The whole post-sale journey in a real browser (issue 6, "Done means"; M2–M5).

A buyer deposits and buys a lead, writes to the seller from the order (M4), who reads and
answers; the buyer asks to return the lead with a reason, the seller denies it with a note, the
buyer disputes, and an admin decides the dispute for the buyer on the after-sale page: the
buyer's wallet shows the refund (M2, M5). Both rate each other, the seller replies, and the
seller's public profile shows the rating (M3). A second order is kept: once its return window
has passed, settlement pays the seller, who asks for a payout and sees it on the payouts page.
The ledger balances at the end. No JavaScript is needed; no browser reports a complaint."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.service import AccountsKit, create_staff
from leadmarket.kit.db import Database, make_engine, utcnow
from leadmarket.ledger.verify import verify_ledger
from leadmarket.models import Order, Role
from leadmarket.orders.service import settle_due_orders
from tests.browser.conftest import (
    PASSWORD,
    LiveSite,
    off_loop,
    register_member,
    sign_in_at_account,
)
from tests.fixtures.leads import lead_body

pytestmark = pytest.mark.browser

T = TypeVar("T")


def on_site_database(site: LiveSite, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """``work`` in one committed transaction on the live site's own database (off the
    Playwright thread's event loop)."""

    async def run() -> T:
        db = Database(make_engine(site.settings.database_url))
        try:
            async with db.transaction() as session:
                return await work(session)
        finally:
            await db.dispose()

    return off_loop(asyncio.run, run())


def _token(site: LiveSite, username: str) -> dict[str, str]:
    response = httpx.post(
        site.url("/api/v1/auth/login"),
        json={"login": username, "password": PASSWORD, "remember": False},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


@contextmanager
def second_browser_page(browser: Browser) -> Iterator[Page]:
    """Another person at another computer: a browser context of their own."""
    context = browser.new_context(viewport={"width": 1100, "height": 900}, locale="en-US")
    try:
        other = context.new_page()
        other.set_default_timeout(10_000)
        yield other
    finally:
        context.close()


def _order_id_of(page: Page) -> str:
    found = re.search(r"/orders/(ord_[0-9A-Z]+)", page.url)
    assert found is not None, page.url
    return found.group(1)


def test_the_whole_after_sale_journey(
    page: Page, browser: Browser, live_site: LiveSite, complaints: list[str]
) -> None:
    seller = register_member(live_site, "seller", "quotehound", "Quote Hound LLC")
    for price in (2500, 3000):
        body = lead_body(sale={"mode": "fixed", "price_cents": price, "exclusive": True})
        posted = httpx.post(
            live_site.url("/api/v1/leads"), json=body, headers=_token(live_site, seller), timeout=10
        )
        assert posted.status_code == 201, posted.text
    buyer = register_member(live_site, "buyer", "leadhunter", "Lead Hunter Inc")
    admin = f"admin_{buyer.rsplit('_', 1)[1]}"

    async def make_admin(session: AsyncSession) -> None:
        await create_staff(
            session,
            AccountsKit(live_site.settings),
            email=f"{admin}@leadmarket.example.com",
            username=admin,
            name="Dana Reyes",
            password=PASSWORD,
            role=Role.ADMIN,
        )

    on_site_database(live_site, make_admin)

    # The buyer deposits and buys the $25 lead.
    sign_in_at_account(page, live_site, buyer)
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Wallet").click()
    page.get_by_label("Amount").fill("100.00")
    page.get_by_role("button", name="Deposit").click()
    expect(page.get_by_test_id("balance-USD")).to_have_text("$100.00")
    nav.get_by_role("link", name="Market").click()
    page.get_by_role("link", name=re.compile(r"^Buy the .* for \$25\.00$")).first.click()
    page.get_by_role("button", name="Confirm: buy for $25.00").click()
    expect(page.get_by_role("status")).to_contain_text("You bought this lead")
    first_order = _order_id_of(page)

    # A message to the seller from the order; the seller reads it and answers.
    page.get_by_test_id("messages-link").click()
    page.get_by_label("Message").fill("Hello, the phone number does not ring. Can you check?")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_contain_text("Your message was sent")
    with second_browser_page(browser) as seller_page:
        sign_in_at_account(seller_page, live_site, seller)
        seller_page.goto(live_site.url("/seller/sales"))
        seller_page.locator(f'a[href="/orders/{first_order}/messages"]').click()
        expect(seller_page.get_by_test_id("message-body")).to_have_text(
            "Hello, the phone number does not ring. Can you check?"
        )
        seller_page.get_by_label("Message").fill("It was verified at intake; try after 5 pm.")
        seller_page.get_by_role("button", name="Send").click()
        expect(seller_page.get_by_test_id("message")).to_have_count(2)
    page.reload()
    expect(page.get_by_test_id("message-body").nth(1)).to_have_text(
        "It was verified at intake; try after 5 pm."
    )

    # The buyer asks for a return with a reason; the seller denies it with a note.
    page.goto(live_site.url(f"/orders/{first_order}"))
    page.get_by_label("Why return it").select_option("disconnected_or_wrong_number")
    page.get_by_label("Note").fill("Five calls at different hours: the number is disconnected.")
    page.get_by_role("button", name="Request a return").click()
    expect(page.get_by_role("status")).to_contain_text("Your return is filed")
    expect(page.get_by_test_id("return-status")).to_have_text("requested")
    with second_browser_page(browser) as seller_page:
        sign_in_at_account(seller_page, live_site, seller)
        seller_page.goto(live_site.url("/seller/sales"))
        seller_page.locator(f'a[href="/seller/sales/{first_order}"]').click()
        expect(seller_page.get_by_test_id("return")).to_contain_text("Five calls")
        seller_page.get_by_label("Note to the buyer").fill("Our carrier check says it is live.")
        seller_page.get_by_role("button", name="Deny").click()
        expect(seller_page.get_by_role("status")).to_contain_text("You denied the return")
        expect(seller_page.get_by_test_id("return-status")).to_have_text("denied")

    # The buyer disputes the denial.
    page.reload()
    expect(page.get_by_test_id("return-status")).to_have_text("denied")
    expect(page.get_by_test_id("decision-note")).to_have_text("Our carrier check says it is live.")
    page.get_by_label("Why the denial is wrong").fill("The carrier lists it as disconnected.")
    page.get_by_role("button", name="Dispute").click()
    expect(page.get_by_role("status")).to_contain_text("Your dispute is with an admin")
    expect(page.get_by_test_id("return-status")).to_have_text("disputed")

    # An admin decides it for the buyer on the after-sale page.
    with second_browser_page(browser) as admin_page:
        sign_in_at_account(admin_page, live_site, admin)
        admin_page.goto(live_site.url("/admin/after-sale"))
        dispute = admin_page.locator("article").filter(
            has_text="The carrier lists it as disconnected."
        )
        dispute.get_by_label("Your reason").fill("The seller showed no call that connected.")
        dispute.get_by_role("button", name="For the buyer (refund)").click()
        expect(admin_page.get_by_role("status")).to_contain_text("Decision recorded")
        expect(
            admin_page.locator("article").filter(has_text="The carrier lists it as disconnected.")
        ).to_have_count(0)

    # The refund is in the buyer's wallet; the order says why.
    page.goto(live_site.url(f"/orders/{first_order}"))
    expect(page.get_by_test_id("return-status")).to_have_text("approved")
    expect(page.get_by_test_id("dispute-status")).to_contain_text("for the buyer")
    expect(page.get_by_test_id("refunded")).to_contain_text("$25.00")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Wallet").click()
    expect(page.get_by_test_id("balance-USD")).to_have_text("$100.00")
    expect(page.get_by_test_id("held-USD")).to_have_text("$0.00")

    # Feedback both ways; the seller replies; the profile shows the rating.
    page.goto(live_site.url(f"/orders/{first_order}"))
    panel = page.get_by_test_id("order-feedback")
    panel.get_by_role("radio", name="3 stars", exact=True).check()
    panel.get_by_label("Comment").fill("It took a dispute, but the refund came.")
    panel.get_by_role("button", name="Leave feedback").click()
    expect(page.get_by_role("status")).to_contain_text("your feedback is published")
    with second_browser_page(browser) as seller_page:
        sign_in_at_account(seller_page, live_site, seller)
        seller_page.goto(live_site.url("/seller/sales"))
        seller_page.locator(f'a[href="/orders/{first_order}/feedback"]').click()
        panel = seller_page.get_by_test_id("order-feedback")
        expect(panel).to_contain_text("It took a dispute, but the refund came.")
        panel.get_by_role("radio", name="4 stars", exact=True).check()
        panel.get_by_label("Comment").fill("Clear about what went wrong.")
        panel.get_by_role("button", name="Leave feedback").click()
        expect(seller_page.get_by_role("status")).to_contain_text("your feedback is published")
        seller_page.get_by_label("Your public reply").fill("Sorry for the trouble; fixed upstream.")
        seller_page.get_by_role("button", name="Reply").click()
        expect(seller_page.get_by_role("status")).to_contain_text("Your reply is published")
    page.goto(live_site.url(f"/members/{seller}"))
    expect(page.get_by_test_id("rating-average")).to_have_text("3.00 out of 5 (1 rating)")
    expect(page.get_by_text("Sorry for the trouble; fixed upstream.")).to_be_visible()
    page.goto(live_site.url(f"/members/{buyer}"))
    expect(page.get_by_test_id("rating-average")).to_have_text("4.00 out of 5 (1 rating)")

    # A second order is kept. Its return window passes; settlement pays the seller.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Market").click()
    page.get_by_role("link", name=re.compile(r"^Buy the .* for \$30\.00$")).first.click()
    page.get_by_role("button", name="Confirm: buy for $30.00").click()
    expect(page.get_by_role("status")).to_contain_text("You bought this lead")
    second_order = _order_id_of(page)

    async def window_passes_and_settlement_runs(session: AsyncSession) -> int:
        await session.execute(
            update(Order)
            .where(Order.id == second_order)
            .values(return_window_ends_at=utcnow() - dt.timedelta(seconds=1))
        )
        return await settle_due_orders(session, live_site.settings)

    assert on_site_database(live_site, window_passes_and_settlement_runs) == 1
    page.reload()
    expect(page.get_by_test_id("order-status")).to_have_text("settled")
    expect(page.get_by_test_id("return-form")).to_have_count(0)

    # The seller asks for the payout (price less the 10% fee) and sees it.
    with second_browser_page(browser) as seller_page:
        sign_in_at_account(seller_page, live_site, seller)
        seller_page.goto(live_site.url("/seller/payouts"))
        expect(seller_page.get_by_test_id("payable")).to_have_text("$27.00")
        seller_page.get_by_role("button", name="Pay out $27.00").click()
        expect(seller_page.get_by_role("status")).to_contain_text("Your payout is on its way")
        expect(seller_page.get_by_test_id("payable")).to_have_text("$0.00")
        rows = seller_page.get_by_test_id("payouts").locator("tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("$27.00")
        expect(rows.first).to_contain_text("on request")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Wallet").click()
    expect(page.get_by_test_id("balance-USD")).to_have_text("$70.00")
    expect(page.get_by_test_id("held-USD")).to_have_text("$0.00")

    report = on_site_database(live_site, verify_ledger)
    assert report.ok, report.problems
    assert complaints == []
