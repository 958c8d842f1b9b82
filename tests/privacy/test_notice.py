"""P11, P12: the privacy notice is versioned with an effective date; the public page shows the
version in effect, its date, the data region (a setting) and the past versions; an admin
publishes a new version (API and page), which every active member is told about by email (a
batched job; a legal notice, so also to members who opted out of marketing) and on every page
(a banner until some days after the effective date). Version 1.0 is seeded by the migration."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.service import AccountsKit, create_staff
from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.jobs import Worker
from leadmarket.kit.migrate import upgrade_to_head
from leadmarket.models import (
    Job,
    MailSuppression,
    OutboundMail,
    PrivacyNotice,
    Role,
    User,
    UserStatus,
)
from leadmarket.notifications.service import suppression_hash
from leadmarket.privacy.notices import ANNOUNCE_JOB, banner_notice
from leadmarket.tasks import build_registry, build_services
from tests.fixtures.accounts import PASSWORD, bearer, login, register, signed_in
from tests.privacy.helpers import csrf_of

ADMIN_URL = "/api/v1/admin/privacy/notices"


def notice_body(version: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": version,
        "effective_at": (utcnow() + dt.timedelta(days=30)).isoformat(),
        "summary": "We now keep consent certificates for five years.",
        "body": "Who we are. Leadmarket is a lead exchange.\n\nWhat we collect. " * 3,
    }
    body.update(changes)
    return body


async def admin_headers(client: httpx.AsyncClient, session: AsyncSession) -> dict[str, str]:
    settings: Settings = client._transport.app.state.settings  # type: ignore[attr-defined]
    tag = utcnow().strftime("%H%M%S%f")
    admin = await create_staff(
        session,
        AccountsKit(settings),
        email=f"admin.{tag}@example.com",
        username=f"admin_{tag}",
        name="Ada Admin",
        password=PASSWORD,
        role=Role.ADMIN,
    )
    await session.flush()
    return bearer(await login(client, admin.username))


async def run_jobs(db: Database, settings: Settings) -> int:
    return await Worker(db, build_registry(), build_services(settings), settings).run_once()


def test_the_migration_seeds_version_one(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    upgrade_to_head(url)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT version, effective_at, summary, body FROM privacy_notices")
        ).all()
    engine.dispose()
    [(version, effective_at, summary, body)] = rows
    assert version == "1.0" and str(effective_at).startswith("2026-01-01")
    assert summary
    for essential in ("48 hours", "Global Privacy Control", "unsubscribe", "children under 14"):
        assert essential in body


async def test_publishing_announces_the_version_to_every_active_member_in_batches(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, db: Database
) -> None:
    small = settings.model_copy(update={"notice_announce_batch": 2})
    members = [await signed_in(client) for _ in range(4)]
    # One unsubscribed from marketing: a legal notice still reaches them (P7).
    unsubscribed = members[0][0]
    session.add(
        MailSuppression(
            address_hash=suppression_hash(settings, unsubscribed["email"]),
            category="marketing",
            created_at=utcnow(),
        )
    )
    suspended = await session.get(User, members[1][0]["id"])
    assert suspended is not None
    suspended.status = UserStatus.SUSPENDED.value
    headers = await admin_headers(client, session)

    published = await client.post(ADMIN_URL, json=notice_body("2.0"), headers=headers)
    assert published.status_code == 201, published.text
    out = published.json()
    assert out["version"] == "2.0" and out["upcoming"] is True and out["in_effect"] is False
    assert out["data_region"] == settings.data_region

    while await run_jobs(db, small):
        pass
    active = await session.scalar(
        select(func.count()).select_from(User).where(User.status == UserStatus.ACTIVE.value)
    )
    mails = list(
        await session.scalars(
            select(OutboundMail).where(OutboundMail.template == "privacy/notice_changed")
        )
    )
    assert len(mails) == active
    assert {m.to_address for m in mails} == set(
        await session.scalars(select(User.email).where(User.status == UserStatus.ACTIVE.value))
    )
    assert suspended.email not in {m.to_address for m in mails}
    assert all(m.status == "sent" and m.topic == "legal_notice" for m in mails)
    assert unsubscribed["email"] in {m.to_address for m in mails}
    [one] = [m for m in mails if m.to_address == unsubscribed["email"]]
    assert "2.0" in one.text_body and "/privacy/notice" in one.text_body
    notice = await session.scalar(
        select(PrivacyNotice)
        .where(PrivacyNotice.version == "2.0")
        .execution_options(populate_existing=True)
    )
    assert notice is not None and notice.announced_count == active
    assert notice.announced_at is not None
    batches = await session.scalar(
        select(func.count()).select_from(Job).where(Job.kind == ANNOUNCE_JOB)
    )
    assert batches == active // 2 + 1


async def test_only_admins_publish_and_bad_versions_are_refused(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, member = await signed_in(client)
    assert (await client.post(ADMIN_URL, json=notice_body("3.0"))).status_code == 401
    assert (
        await client.post(ADMIN_URL, json=notice_body("3.0"), headers=member)
    ).status_code == 403
    headers = await admin_headers(client, session)
    for body, field in (
        (
            notice_body("3.0", effective_at=(utcnow() - dt.timedelta(days=1)).isoformat()),
            "effective_at",
        ),
        (notice_body("3.0", effective_at="2027-01-01T00:00:00"), "effective_at"),
        (notice_body("3 0"), "version"),
        (notice_body("3.0", summary="short"), "summary"),
        ({**notice_body("3.0"), "extra": 1}, "extra"),
    ):
        answer = await client.post(ADMIN_URL, json=body, headers=headers)
        assert answer.status_code == 422, body
        assert field in [e["field"] for e in answer.json()["errors"]], answer.text
    assert (
        await client.post(ADMIN_URL, json=notice_body("3.0"), headers=headers)
    ).status_code == 201
    again = await client.post(ADMIN_URL, json=notice_body("3.0"), headers=headers)
    assert again.status_code == 409
    assert again.json()["type"] == "/problems/notice-version-taken"
    versions = await session.scalar(
        select(func.count()).select_from(PrivacyNotice).where(PrivacyNotice.version == "3.0")
    )
    assert versions == 1


async def test_the_public_notice_shows_the_version_in_effect_region_and_history(
    settings: Settings, db: Database, session: AsyncSession
) -> None:
    from leadmarket.app import create_app

    quebec = settings.model_copy(update={"data_region": "Canada (Quebec), Montreal"})
    app = create_app(quebec, database=db)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.10", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        now = utcnow()
        session.add_all(
            [
                PrivacyNotice(
                    version="t-old",
                    effective_at=now - dt.timedelta(days=60),
                    summary="The old one.",
                    body="Old text.",
                    published_at=now,
                ),
                PrivacyNotice(
                    version="t-now",
                    effective_at=now - dt.timedelta(days=1),
                    summary="Consent certificates kept longer.",
                    body="Current text.\n\nSecond paragraph.",
                    published_at=now,
                ),
                PrivacyNotice(
                    version="t-next",
                    effective_at=now + dt.timedelta(days=10),
                    summary="A coming change.",
                    body="Next text.",
                    published_at=now,
                ),
            ]
        )
        await session.flush()
        page = await client.get("/privacy/notice")
        assert page.status_code == 200
        assert 'data-testid="notice-version">t-now' in page.text
        assert (now - dt.timedelta(days=1)).strftime("%Y-%m-%d") in page.text
        assert "Canada (Quebec), Montreal" in page.text
        assert "Second paragraph." in page.text
        assert 'href="/privacy/notice/t-old"' in page.text
        assert 'href="/privacy/notice/t-next"' in page.text and "A coming change." in page.text
        old = await client.get("/privacy/notice/t-old")
        assert old.status_code == 200 and "Old text." in old.text and "replaced" in old.text
        assert (await client.get("/privacy/notice/nope")).status_code == 404

        api = await client.get("/api/v1/privacy/notice")
        assert api.status_code == 200
        assert (api.json()["version"], api.json()["data_region"]) == (
            "t-now",
            "Canada (Quebec), Montreal",
        )
        listed = await client.get("/api/v1/privacy/notices")
        versions = [v["version"] for v in listed.json()["versions"]]
        assert versions.index("t-next") < versions.index("t-now") < versions.index("t-old")
        assert listed.json()["current"]["version"] == "t-now"
        one = await client.get("/api/v1/privacy/notices/t-next")
        assert one.json()["upcoming"] is True


async def test_a_new_version_shows_a_banner_on_every_page_until_days_after_it_takes_effect(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    headers = await admin_headers(client, session)
    published = await client.post(ADMIN_URL, json=notice_body("4.0"), headers=headers)
    assert published.status_code == 201
    for path in ("/", "/signin", "/privacy/notice", "/no-such-page"):
        page = await client.get(path, headers={"Accept": "text/html"})
        assert 'data-testid="notice-banner"' in page.text, path
        assert "version 4.0 takes effect" in page.text, path
    effective = dt.datetime.fromisoformat(published.json()["effective_at"])
    days = dt.timedelta(days=settings.notice_banner_days)
    shown = await banner_notice(session, settings, effective + days - dt.timedelta(minutes=1))
    assert shown is not None and shown.version == "4.0"
    assert (
        await banner_notice(session, settings, effective + days + dt.timedelta(minutes=1)) is None
    )
    # The JSON API never carries the banner.
    api = await client.get("/api/v1/privacy/notices")
    assert "notice-banner" not in api.text


async def test_the_admin_page_publishes_with_errors_beside_their_fields(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    headers = await admin_headers(client, session)
    admin_name = (await client.get("/api/v1/me", headers=headers)).json()["username"]
    signin = await client.get("/signin")
    signed = await client.post(
        "/signin",
        data={"csrf_token": csrf_of(signin.text), "login": admin_name, "password": PASSWORD},
    )
    assert signed.status_code == 303
    page = await client.get("/admin/privacy/notices")
    assert page.status_code == 200 and '<label class="label" for="version">' in page.text
    csrf = csrf_of(page.text)
    bad = await client.post(
        "/admin/privacy/notices",
        data={
            "csrf_token": csrf,
            "version": "5.0",
            "effective_at": "yesterday",
            "summary": "Short",
            "body": "",
        },
    )
    assert bad.status_code == 422
    for field in ("effective_at", "summary", "body"):
        assert f'id="{field}-error"' in bad.text, field
    assert 'value="5.0"' in bad.text, "what was typed is kept"
    good = await client.post(
        "/admin/privacy/notices",
        data={
            "csrf_token": csrf,
            "version": "5.0",
            "effective_at": (utcnow() + dt.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M"),
            "summary": "Five is a new version.",
            "body": notice_body("5.0")["body"],
        },
    )
    assert good.status_code == 303, good.text
    assert good.headers["location"] == "/admin/privacy/notices?done=published"
    assert "5.0" in (await client.get(good.headers["location"])).text

    member = await register(client)
    other = httpx.AsyncClient(transport=client._transport, base_url="https://testserver")
    async with other:
        signin = await other.get("/signin")
        await other.post(
            "/signin",
            data={
                "csrf_token": csrf_of(signin.text),
                "login": member["username"],
                "password": PASSWORD,
            },
        )
        assert (await other.get("/admin/privacy/notices")).status_code == 403
