"""A member's first day in a real browser: sign up, confirm the address from the mail, sign in
with "Stay signed in", change the password through the step-up page (A2), sign out (A3), and
find the old password refused. Also: the forms work from the keyboard alone, and the browser
reports no CSP violation."""

from __future__ import annotations

import re
import secrets
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.conftest import LiveSite

pytestmark = pytest.mark.browser

PASSWORD = "violet-harbor-tangent-42"
NEW_PASSWORD = "copper-lantern-meadow-77"
# Screenshots to look at by hand (not compared, not committed).
SCREENSHOT_DIR = Path(tempfile.gettempdir())


def plain_text(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    content = body.get_content()
    assert isinstance(content, str)
    return content


def sign_up(page: Page, site: LiveSite, username: str, email: str) -> None:
    page.goto(site.url("/signup"))
    page.get_by_label("Sell leads").check()
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Full name").fill("Ana Silva")
    page.get_by_label("Phone number").fill("+14155550123")
    page.get_by_label("City").fill("Fresno")
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your email")


def sign_in_with_keyboard(page: Page, site: LiveSite, login: str, password: str) -> None:
    """Sign in without the mouse: type, Tab between fields, Space for the checkbox, Enter to
    send the form."""
    page.goto(site.url("/signin"))
    page.get_by_label("Email address or username").focus()
    page.keyboard.type(login)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password", exact=True)).to_be_focused()
    page.keyboard.type(password)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Stay signed in")).to_be_focused()
    page.keyboard.press("Space")
    expect(page.get_by_label("Stay signed in")).to_be_checked()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")


def sign_in(page: Page, site: LiveSite, login: str, password: str) -> None:
    page.goto(site.url("/signin"))
    page.get_by_label("Email address or username").fill(login)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()


def change_password_form(page: Page, current: str, new: str) -> None:
    section = page.get_by_role("region", name="Change your password")
    section.get_by_label("Current password").fill(current)
    section.get_by_label("New password").fill(new)
    section.get_by_role("button", name="Change password").click()


def test_sign_up_verify_sign_in_step_up_change_password_sign_out(
    page: Page, context: BrowserContext, live_site: LiveSite, complaints: list[str]
) -> None:
    tag = secrets.token_hex(3)
    username, address = f"ana_{tag}", f"ana.{tag}@example.com"

    sign_up(page, live_site, username, address)

    mail = live_site.wait_for_mail(address, "Confirm your email")
    link = re.search(r"http://127\.0\.0\.1:\d+/verify-email\?token=\S+", plain_text(mail))
    assert link, "the verification mail has no link to this site"
    page.goto(link.group(0))
    expect(page.get_by_role("heading", level=1)).to_have_text("Email address confirmed")

    sign_in_with_keyboard(page, live_site, username, PASSWORD)
    page.wait_for_url(live_site.url("/account"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Your account")
    expect(page.get_by_role("navigation", name="Main")).to_contain_text(username)
    expect(page.get_by_text("confirmed", exact=True)).to_be_visible()

    # The session cookie is Secure, yet Chromium keeps and sends it over http://127.0.0.1 (a
    # "potentially trustworthy" origin): the /account page above was served with it.
    (cookie,) = [c for c in context.cookies() if c["name"] == "lm_session"]
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert cookie["expires"] > time.time() + 29 * 86400  # remembered: outlives the browser

    # A remembered session may not change the password without typing it again (A2).
    change_password_form(page, PASSWORD, NEW_PASSWORD)
    page.wait_for_url(re.compile(r"/account/reauth\?next=%2Faccount$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Enter your password again")
    page.screenshot(path=SCREENSHOT_DIR / "leadmarket-reauth.png", full_page=True)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(live_site.url("/account"))

    change_password_form(page, PASSWORD, NEW_PASSWORD)
    page.wait_for_url(live_site.url("/account?done=password"))
    expect(page.get_by_role("status")).to_contain_text("Your password was changed")
    page.screenshot(path=SCREENSHOT_DIR / "leadmarket-account.png", full_page=True)

    page.get_by_role("navigation", name="Main").get_by_role("button", name="Sign out").click()
    page.wait_for_url(live_site.url("/?done=signed-out"))
    expect(page.get_by_role("status")).to_contain_text("You are signed out")
    assert not [c for c in context.cookies() if c["name"] == "lm_session"]
    page.goto(live_site.url("/account"))
    page.wait_for_url(re.compile(r"/signin\?next=%2Faccount$"))

    sign_in(page, live_site, username, PASSWORD)
    expect(page.get_by_role("alert")).to_contain_text("The email, username or password is wrong.")
    sign_in(page, live_site, username, NEW_PASSWORD)
    page.wait_for_url(live_site.url("/account"))

    assert complaints == []


def test_skip_link_and_error_messages_work_from_the_keyboard(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    page.goto(live_site.url("/signup"))
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to main content")
    expect(skip).to_be_focused()
    expect(skip).to_be_visible()
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"

    page.get_by_label("Email address").fill("not-an-email")
    page.get_by_label("Email address").press("Enter")
    expect(page).to_have_title(re.compile(r"^Error: "))
    summary = page.get_by_role("alert")
    expect(summary).to_contain_text("There is a problem")
    email_field = page.get_by_label("Email address")
    expect(email_field).to_have_attribute("aria-invalid", "true")
    expect(email_field).to_have_value("not-an-email")
    expect(email_field).to_have_accessible_description(re.compile("@-sign"))
    # The summary links to the field in error.
    summary.get_by_role("link", name=re.compile("@-sign")).click()
    expect(email_field).to_be_focused()
    page.screenshot(path=SCREENSHOT_DIR / "leadmarket-signup-errors.png", full_page=True)
    assert complaints == []
