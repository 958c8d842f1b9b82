"""A consumer's request in a real browser: the auto-insurance form filled in from the keyboard,
a wrong phone number refused beside its field, fixed, the consent given, the certificate shown;
then the seller signs in and finds the lead, without the consumer's contact details (L6). And
the same form embedded in another site's page, where it must work without cookies."""

from __future__ import annotations

import datetime as dt
import http.server
import re
import secrets
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, FrameLocator, Page, expect

from tests.browser.conftest import LiveSite, register_member, sign_in_at_account

pytestmark = pytest.mark.browser

# Screenshots to look at by hand (not compared, not committed).
SCREENSHOT_DIR = Path(tempfile.gettempdir())


def register_seller(site: LiveSite) -> str:
    return register_member(site, "seller", "quotehound", "Quote Hound LLC")


def fresh_consumer() -> dict[str, str]:
    tag = secrets.token_hex(3)
    exchange = 200 + secrets.randbelow(600)
    if exchange in (211, 311, 411, 511, 555, 611, 711):
        exchange += 1
    return {
        "first": "Maria",
        "last": f"Okafor{tag}",
        "email": f"maria.{tag}@example.com",
        "phone": f"(559) {exchange}-{secrets.randbelow(10_000):04d}",
        "street": f"{100 + secrets.randbelow(9000)} Olive Ave",
    }


def type_into(scope: Page | FrameLocator, label: str, text: str) -> None:
    """Type as a person would, into the control that has focus, after checking it is the one
    with this label: the fields are reached with Tab, in reading order."""
    field = scope.get_by_label(label, exact=True)
    expect(field).to_be_focused()
    field.press_sequentially(text)


def fill_in_the_form(
    page: Page,
    scope: Page | FrameLocator,
    who: dict[str, str],
    phone: str,
    birth_date: dt.date = dt.date(1984, 9, 17),
) -> None:
    """The contact block from the keyboard alone (Tab from one field to the next); the
    vertical's questions by label. ``scope`` is the page, or the frame showing the form."""
    tab = page.keyboard
    scope.get_by_label("First name", exact=True).focus()
    type_into(scope, "First name", who["first"])
    tab.press("Tab")
    type_into(scope, "Last name", who["last"])
    tab.press("Tab")
    type_into(scope, "Email address", who["email"])
    tab.press("Tab")
    type_into(scope, "Phone number", phone)
    tab.press("Tab")
    birth = scope.get_by_label("Date of birth", exact=True)
    expect(birth).to_be_focused()
    # Chromium's date control takes the month, day and year as typed digits, one part after
    # the other, and one Tab per part before moving on.
    tab.type(birth_date.strftime("%m%d%Y"))
    street = scope.get_by_label("Street address", exact=True)
    for _ in range(3):
        tab.press("Tab")
        if street.evaluate("el => el === document.activeElement"):
            break
    expect(birth).to_have_value(birth_date.isoformat())
    type_into(scope, "Street address", who["street"])
    tab.press("Tab")
    type_into(scope, "City", "Fresno")
    tab.press("Tab")
    region = scope.get_by_label("State or province", exact=True)
    expect(region).to_be_focused()
    region.select_option("CA")
    tab.press("Tab")
    type_into(scope, "ZIP or postal code", "93650")
    scope.get_by_label("Vehicle model year", exact=True).fill("2019")
    scope.get_by_label("Vehicle make").select_option(label="Toyota")
    scope.get_by_label("Vehicle model (optional)").fill("Camry")
    scope.get_by_label("Current insurer").select_option(label="GEICO")
    scope.get_by_label("Coverage wanted").select_option("full")
    scope.get_by_label("Driving record, last 3 years").select_option("clean")


def agree_and_send(page: Page | FrameLocator) -> None:
    agree = page.get_by_label("I agree", exact=True)
    expect(agree).not_to_be_checked()
    agree.focus()
    agree.press("Space")
    expect(agree).to_be_checked()
    page.get_by_role("button", name="Send my request").click()


def sign_in(page: Page, site: LiveSite, login: str) -> None:
    sign_in_at_account(page, site, login)


def test_a_consumer_sends_a_request_and_the_seller_finds_the_lead(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    seller = register_seller(live_site)
    who = fresh_consumer()
    page.goto(live_site.url(f"/forms/auto-insurance?seller={seller}"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Auto insurance")
    expect(page.locator("#consent-text")).to_contain_text(f"I agree that {seller} and the buyers")

    fill_in_the_form(page, page, who, "(559) 555-0")
    agree_and_send(page)

    expect(page).to_have_title(re.compile(r"^Error: "))
    summary = page.get_by_role("alert")
    expect(summary).to_contain_text("There is a problem")
    expect(summary.get_by_role("link", name=re.compile("^Phone number: "))).to_be_visible()
    phone = page.get_by_label("Phone number", exact=True)
    expect(phone).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#contact-phone-error")).to_be_visible()
    # What was typed is still there; only the phone needs typing again.
    expect(page.get_by_label("Last name", exact=True)).to_have_value(who["last"])
    expect(page.get_by_label("Vehicle make")).to_have_value("toyota")
    page.screenshot(path=SCREENSHOT_DIR / "leadmarket-form-errors.png", full_page=True)

    summary.get_by_role("link", name=re.compile("^Phone number: ")).click()
    expect(phone).to_be_focused()
    phone.fill(who["phone"])
    agree_and_send(page)

    expect(page.get_by_role("heading", level=1)).to_have_text("Thank you, we have your request")
    certificate = page.locator("dd code").inner_text()
    assert re.fullmatch(r"cert_[\w-]+", certificate)
    expect(page.get_by_text(seller).first).to_be_visible()
    page.screenshot(path=SCREENSHOT_DIR / "leadmarket-form-thanks.png", full_page=True)

    # The certificate opens in a tab of its own: the site outside /forms may not be framed.
    link = page.get_by_role("link", name=re.compile("See your consent certificate"))
    expect(link).to_have_attribute("target", "_blank")
    page.goto(live_site.url(f"/consents/{certificate}"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Consent certificate")
    expect(page.get_by_text("valid", exact=True)).to_be_visible()
    page.screenshot(path=SCREENSHOT_DIR / "leadmarket-consent.png", full_page=True)

    sign_in(page, live_site, seller)
    page.goto(live_site.url("/seller/leads"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Your leads")
    row = page.get_by_role("row").filter(has_text="Auto insurance")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("Fresno, CA")
    expect(row).to_contain_text("via form")
    expect(row).to_contain_text("Auction, 60 min, reserve $10.00, exclusive")
    expect(row).to_contain_text("2019")  # the model year is in the buyers' preview
    content = page.content()
    for secret in (who["last"], who["email"], who["street"], "Camry"):
        assert secret not in content
    page.screenshot(path=SCREENSHOT_DIR / "leadmarket-seller-leads.png", full_page=True)

    page.get_by_role("navigation", name="Selling").get_by_role("link", name="Hosted forms").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Hosted forms")
    expect(page.locator("pre.snippet").first).to_contain_text("<iframe src=")
    page.screenshot(path=SCREENSHOT_DIR / "leadmarket-seller-forms.png", full_page=True)

    page.get_by_role("navigation", name="Selling").get_by_role("link", name="Post a lead").click()
    page.get_by_label("Kind of service").select_option("mortgage")
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("group", name="Sale terms")).to_be_visible()
    page.screenshot(path=SCREENSHOT_DIR / "leadmarket-seller-new.png", full_page=True)

    assert complaints == []


def test_a_childs_request_is_refused_and_the_form_comes_back_empty(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    seller = register_seller(live_site)
    who = fresh_consumer()
    today = dt.date.today()
    twelve = today.replace(year=today.year - 12, day=min(today.day, 28))
    page.goto(live_site.url(f"/forms/auto-insurance?seller={seller}"))
    fill_in_the_form(page, page, who, who["phone"], birth_date=twelve)
    agree_and_send(page)
    expect(page).to_have_title(re.compile(r"^Request refused: "))
    expect(page.get_by_role("alert")).to_contain_text(
        "We cannot take requests for children under 14"
    )
    for label in ("First name", "Last name", "Email address", "Phone number", "Date of birth"):
        expect(page.get_by_label(label, exact=True)).to_have_value("")
    assert who["email"] not in page.content()
    page.screenshot(path=SCREENSHOT_DIR / "leadmarket-form-minor.png", full_page=True)
    assert complaints == []


class SellerSite:
    """The seller's own web site: a small real server on loopback, reached as ``localhost`` so
    that it is another site than the form's ``127.0.0.1`` (cookies of the form would be
    third-party there). Chromium lets a page on loopback frame another loopback address."""

    def __init__(self) -> None:
        self.snippet = ""
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (
                    "<!doctype html><html lang=en><title>Compare quotes</title>"
                    f"<h1>Compare auto insurance quotes</h1>{site.snippet}</html>"
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://localhost:{self.server.server_address[1]}"


@pytest.fixture
def seller_site() -> Iterator[SellerSite]:
    site = SellerSite()
    thread = threading.Thread(target=site.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        site.server.shutdown()
        site.server.server_close()
        thread.join(timeout=10)


def test_the_form_works_inside_another_sites_iframe_without_cookies(
    page: Page,
    context: BrowserContext,
    live_site: LiveSite,
    seller_site: SellerSite,
    complaints: list[str],
) -> None:
    seller = register_seller(live_site)
    who = fresh_consumer()
    form = live_site.url(f"/forms/auto-insurance?seller={seller}")
    # The snippet the seller copies from /seller/forms.
    seller_site.snippet = (
        f'<iframe src="{form}" title="Auto insurance request form" width="100%" height="900" '
        'loading="lazy" referrerpolicy="no-referrer-when-downgrade"></iframe>'
    )
    page.goto(f"{seller_site.base_url}/auto/compare?utm_source=mail&email=someone%40example.com")
    frame = page.frame_locator("iframe")
    expect(frame.get_by_role("heading", level=1)).to_have_text("Auto insurance")
    fill_in_the_form(page, frame, who, "(559) 555-0")
    agree_and_send(frame)
    # Each answer opens at the top of the frame the consumer is looking at: the errors first,
    expect(frame.get_by_role("alert")).to_contain_text("Phone number")
    expect(frame.get_by_role("alert")).to_be_in_viewport()
    frame.get_by_label("Phone number", exact=True).fill(who["phone"])
    agree_and_send(frame)
    # then the thanks.
    expect(frame.get_by_role("heading", level=1)).to_have_text("Thank you, we have your request")
    expect(frame.get_by_role("heading", level=1)).to_be_in_viewport()
    page.screenshot(path=SCREENSHOT_DIR / "leadmarket-form-embedded.png")
    # Nothing needed a cookie: the form's own token did the work of one.
    assert context.cookies() == []

    certificate = frame.locator("dd code").inner_text()
    evidence = httpx.get(live_site.url(f"/api/v1/consents/{certificate}"), timeout=10).json()
    # The page the consumer was on, without its query string.
    assert evidence["page_url"] == f"{seller_site.base_url}/auto/compare"
    assert complaints == []
