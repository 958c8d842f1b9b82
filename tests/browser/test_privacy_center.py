"""The privacy center in a real browser (P1, P4, P5): the GPC notice, a refused form with its
errors beside the fields, a know request made without an account, the code read from the mail
(a wrong one first), the answer appearing on the status page, and the JSON download.

The ``consumer_data`` functions are fakes here (``tests/fixtures/privacy_requests.py``), so the
page flow is tested apart from what the answer holds; ``tests/privacy/test_rights_end_to_end.py``
runs the real ones. The server, its job worker, the mail files and the browser are real."""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from leadmarket.config import Settings
from leadmarket.leads.intake import LeadsKit
from tests.browser.conftest import LiveSite
from tests.fixtures.privacy_requests import FakeConsumerData

pytestmark = pytest.mark.browser

# The live site's secret (tests/browser/conftest.py): the stand-ins digest with the same keys.
SITE_SECRET = "browser-test-secret-key-0123456789abcdef"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeConsumerData:
    kit = LeadsKit(Settings(secret_key=SITE_SECRET, var_dir=tmp_path))  # type: ignore[arg-type]
    stand_in = FakeConsumerData(kit)
    stand_in.install(monkeypatch)
    return stand_in


def test_a_consumer_makes_a_know_request_and_downloads_the_answer(
    page: Page, live_site: LiveSite, fake: FakeConsumerData, complaints: list[str]
) -> None:
    address = f"ana.{secrets.token_hex(3)}@example.com"
    fake.hold(email=address, leads=2)

    page.set_extra_http_headers({"Sec-GPC": "1"})
    page.goto(live_site.url("/privacy"))
    expect(page.locator("#gpc-notice")).to_contain_text("Opt-out request honored")
    page.set_extra_http_headers({})

    page.get_by_role("button", name="Send my request").click()
    expect(page.locator(".error-summary")).to_be_visible()
    expect(page.locator("#email-error")).to_contain_text("email address or your phone")
    expect(page.locator("#type-error")).to_be_visible()

    page.get_by_label("Know what we hold").check()
    page.get_by_label("Email address").fill(address)
    page.get_by_role("button", name="Send my request").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Enter your code")
    token = page.locator("#request-token").inner_text()
    assert token.startswith("prt_")

    message = live_site.wait_for_mail(address, "confirmation code")
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    found = re.search(r"code: (\d{6})", str(body.get_content()))
    assert found is not None
    code = found.group(1)

    page.get_by_label("Code").fill("000000" if code != "000000" else "111111")
    page.get_by_role("button", name="Confirm my request").click()
    expect(page.locator("#code-error")).to_contain_text("attempts left")
    page.get_by_label("Code").fill(code)
    page.get_by_role("button", name="Confirm my request").click()
    expect(page.locator("#request-status")).to_be_visible()

    # The in-process worker answers within a second or two: reload until it has.
    deadline = time.monotonic() + 15
    while page.locator("#request-status").get_attribute("data-status") != "fulfilled":
        assert time.monotonic() < deadline, "the request was not answered in time"
        time.sleep(0.3)
        page.reload()
    expect(page.locator("#answer")).to_contain_text("categories_collected")

    with page.expect_download() as download_info:
        page.locator("#download-json").click()
    download = download_info.value
    path = download.path()
    assert path is not None
    report = json.loads(Path(path).read_text())
    assert report["categories_collected"] == ["identifiers", "contact details"]
    assert report["covers"]["from"] < report["covers"]["to"]
    assert [c["include_pieces"] for c in fake.called("build_report")] == [False]
    live_site.wait_for_mail(address, "has been answered")
    assert complaints == []


def test_the_details_field_says_what_the_form_wants_not_what_the_api_wants(
    page: Page, live_site: LiveSite, complaints: list[str]
) -> None:
    """A refused correction or an over-long note gets a message in the form's own terms, next
    to the field: one `field: value` line per correction, a length limit; never the API's JSON
    example or "Input should be a valid dictionary"."""
    address = f"ana.{secrets.token_hex(3)}@example.com"
    page.goto(live_site.url("/privacy"))
    page.get_by_role("radio", name="Correct").check()
    page.get_by_label("Email address").fill(address)
    page.get_by_role("button", name="Send my request").click()
    expect(page.locator("#details-error")).to_contain_text("name: Ana Silva")
    expect(page.locator("#details-error")).not_to_contain_text("{")

    page.get_by_label("Know what we hold").check()
    # Past the textarea's maxlength, as a client that ignores it (or a pasted file) sends.
    page.locator("[name=details]").evaluate("(e) => e.removeAttribute('maxlength')")
    page.locator("[name=details]").fill("x" * 2001)
    page.get_by_role("button", name="Send my request").click()
    expect(page.locator("#details-error")).to_contain_text("at most 2000 characters")
    expect(page.locator("#details-error")).not_to_contain_text("dictionary")
    assert complaints == []
