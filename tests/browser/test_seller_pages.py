"""A seller's pages in a real browser, as a seller meets them: posting a lead by hand as a
fixed-price sale (the form starts with an auction's defaults filled in), and finding the CSV
upload from the selling navigation."""

from __future__ import annotations

import datetime as dt

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import LiveSite, register_member, sign_in_at_account
from tests.fixtures.leads import fresh_phone

pytestmark = pytest.mark.browser


def _fill_consumer_and_consent(page: Page) -> None:
    agreed = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    typed = {
        "First name": "Bea",
        "Last name": "Lopez",
        "Email address": f"bea.{fresh_phone()[-7:]}@example.com",
        "Phone number": fresh_phone(),
        "Date of birth": "1975-03-03",
        "Street address": "2 Oak Ave",
        "City": "Fresno",
        "ZIP or postal code": "93650",
        "Vehicle model year": "2019",
        "Address of that page": "https://quotes.example.com/auto",
        "Consumer's IP address": "203.0.113.9",
        "Consumer's browser (user agent)": "Mozilla/5.0 (X11; Linux x86_64)",
        "When the consumer agreed (UTC)": agreed.strftime("%Y-%m-%dT%H:%M"),
    }
    chosen = {
        "State or province": "CA",
        "Vehicle make": "honda",
        "Current insurer": "none",
        "Coverage wanted": "full",
        "Driving record, last 3 years": "clean",
    }
    for label, text in typed.items():
        page.get_by_label(label).fill(text)
    for label, value in chosen.items():
        page.get_by_label(label).select_option(value)


def test_a_seller_posts_a_fixed_price_lead_from_the_prefilled_form(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    seller = register_member(live_site, "seller", "fixer", "Fixed Price Leads")
    sign_in_at_account(page, live_site, seller)
    page.goto(live_site.url("/seller/leads/new"))
    page.get_by_label("Kind of service").select_option("auto-insurance")
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_text("An auto insurance lead, typed in by you.")).to_be_visible()
    # The auction fields start with the seller's defaults; a fixed-price seller leaves them.
    expect(page.get_by_label("Reserve price (optional)")).to_have_value("10.00")
    _fill_consumer_and_consent(page)
    page.get_by_label("Fixed price", exact=True).check()
    page.get_by_label("Fixed price (optional)").fill("25.00")
    page.get_by_role("button", name="Post the lead").click()

    expect(page.get_by_role("status")).to_contain_text("Your lead was posted")
    expect(page.get_by_text("Fixed price $25.00, exclusive")).to_be_visible()
    assert complaints == []


def test_the_upload_page_is_in_the_selling_navigation(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    seller = register_member(live_site, "seller", "uploader", "Upload Leads")
    sign_in_at_account(page, live_site, seller)
    page.goto(live_site.url("/seller/leads"))
    selling = page.get_by_role("navigation", name="Selling")
    selling.get_by_role("link", name="Upload leads").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Upload leads")
    expect(selling.get_by_role("link", name="Upload leads")).to_have_attribute(
        "aria-current", "page"
    )
    page.get_by_role("link", name="Post a lead").click()
    page.get_by_role("link", name="Upload a CSV file").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Upload leads")
    assert complaints == []


def test_the_upload_form_refuses_dollars_in_cents_and_speaks_the_forms_words(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    seller = register_member(live_site, "seller", "csvseller", "CSV Leads")
    sign_in_at_account(page, live_site, seller)
    page.goto(live_site.url("/seller/uploads"))
    page.get_by_label("Kind of service").select_option("auto-insurance")
    page.get_by_label("CSV file").set_input_files(
        files=[{"name": "leads.csv", "mimeType": "text/csv", "buffer": b"first_name\nAna\n"}]
    )
    page.get_by_label("Reserve price, in cents").fill("15.00")
    page.get_by_role("button", name="Upload").click()
    # $15.00 typed where cents are asked would have been a reserve of 15 cents.
    expect(page.locator("#reserve_cents-error")).to_contain_text("1500 is $15.00")
    expect(page.get_by_label("Reserve price, in cents")).to_have_value("15.00")

    page.get_by_label("Reserve price, in cents").fill("")
    page.get_by_label("Sale", exact=True).select_option("fixed")
    page.get_by_label("CSV file").set_input_files(
        files=[{"name": "leads.csv", "mimeType": "text/csv", "buffer": b"first_name\nAna\n"}]
    )
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#price_cents-error")).to_have_text(
        "Error: A fixed-price sale needs the fixed price."
    )
    assert complaints == []
