"""Browser tests: Debian's Chromium, driven by Playwright, against a real uvicorn server.

The server runs in a background thread on a free loopback port, with its own fresh database (a
SQLite file, or a scratch PostgreSQL database when LEADMARKET_TEST_DATABASE_URL names a server),
the job worker in-process and the file mail backend, so a test reads the mail a member would
get from the folder it is written to. No browser is ever downloaded: a missing Chromium fails
the tests, it does not skip them."""

from __future__ import annotations

import email
import email.policy
import os
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Response,
    sync_playwright,
)

from leadmarket.config import Settings
from leadmarket.kit.migrate import upgrade_to_head
from tests.conftest import (
    TEST_DATABASE_ENV,
    _create_postgres_database,
    _drop_postgres_database,
)
from tests.fixtures.server import free_port, live_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MAIL_WAIT_SECONDS = 15.0
PASSWORD = "violet-harbor-tangent-42"

T = TypeVar("T")


def off_loop(func: Callable[..., T], *args: object) -> T:
    """Run ``func`` in a thread of its own. Playwright's sync API keeps an event loop running in
    the test thread, where the asyncio.run() inside Alembic and the database helpers would fail."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(func, *args).result()


@dataclass(frozen=True)
class LiveSite:
    base_url: str
    mail_dir: Path
    settings: Settings  # the server's own, for a test that works on its database directly

    def url(self, path: str) -> str:
        return self.base_url + path

    def wait_for_mail(self, to: str, subject_contains: str) -> EmailMessage:
        """The first message to ``to`` whose subject contains the text, once the job worker has
        written it (polled, since the worker sends after the request that queued it)."""
        deadline = time.monotonic() + MAIL_WAIT_SECONDS
        while True:
            for path in sorted(self.mail_dir.glob("*.eml")):
                message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
                assert isinstance(message, EmailMessage)
                if to in str(message["To"]) and subject_contains in str(message["Subject"]):
                    return message
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no mail to {to} about {subject_contains!r} in {self.mail_dir} "
                    f"after {MAIL_WAIT_SECONDS:.0f} s"
                )
            time.sleep(0.2)


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's Chromium and never "
            "download one. Install it with `make chromium` (apt-get install chromium).",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def site_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of the site's own, migrated, never shared with the rolled-back tests: the
    live server commits for real."""
    configured = os.environ.get(TEST_DATABASE_ENV, "")
    if configured.startswith("postgresql"):
        url, name = off_loop(_create_postgres_database, configured)
        try:
            off_loop(upgrade_to_head, url)
            yield url
        finally:
            off_loop(_drop_postgres_database, configured, name)
        return
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('browser-db') / 'site.db'}"
    off_loop(upgrade_to_head, url)
    yield url


@pytest.fixture(scope="module")
def live_site(site_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSite]:
    var_dir = tmp_path_factory.mktemp("browser-var")
    mail_dir = var_dir / "mail"
    port = free_port()
    settings = Settings(
        database_url=site_database,
        var_dir=var_dir,
        secret_key="browser-test-secret-key-0123456789abcdef",
        base_url=f"http://127.0.0.1:{port}",
        argon2_time_cost=1,
        argon2_memory_kib=64,
        run_jobs_in_process=True,
        job_poll_seconds=0.2,
        mail_backend="file",
        mail_dir=mail_dir,
        log_format="text",
        log_level="WARNING",
    )
    with live_server(settings, port) as base_url:
        yield LiveSite(base_url=base_url, mail_dir=mail_dir, settings=settings)


@pytest.fixture(scope="module")
def browser(chromium_path: Path, live_site: LiveSite) -> Iterator[Browser]:
    """One Chromium per module, started after the site. Module-scoped on purpose: while the
    sync API is open it keeps an event loop running in this thread, which would break every
    async test and asyncio.run() that comes after it in the session."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(chromium_path), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1100, "height": 900}, locale="en-US")
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    return tab


@pytest.fixture
def complaints(page: Page) -> list[str]:
    """What the browser complained about while the test ran: a CSP violation or script error in
    the console, or a stylesheet, image or other sub-resource that failed to load. Pages that
    answer 401 or 422 on purpose are not complaints."""
    found: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # A failed load is reported by on_response below, with its resource type.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            found.append(message.text)

    def on_response(response: Response) -> None:
        if response.status >= 400 and response.request.resource_type != "document":
            found.append(f"{response.status} for {response.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: found.append(str(error)))
    page.on("response", on_response)
    return found


def register_member(site: LiveSite, role: str, username_stem: str, name: str) -> str:
    """A member registered through the API (the browser test is about what comes after);
    returns the username. The password is :data:`PASSWORD`."""
    tag = secrets.token_hex(3)
    username = f"{username_stem}_{tag}"
    response = httpx.post(
        site.url("/api/v1/auth/register"),
        json={
            "email": f"{role}.{tag}@example.com",
            "username": username,
            "password": PASSWORD,
            "role": role,
            "name": name,
        },
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return username


def sign_in_at_account(page: Page, site: LiveSite, login: str, password: str = PASSWORD) -> None:
    """Sign in through the page and wait for the account page."""
    page.goto(site.url("/signin"))
    page.get_by_label("Email address or username").fill(login)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(site.url("/account"))
