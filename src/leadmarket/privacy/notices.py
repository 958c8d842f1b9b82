"""Versions of the privacy notice (P11, P12).

A version is published by an admin with its effective date and a summary of what changed; it
is never edited afterwards. Publishing it announces it twice:

* **by email** to every active member, as a transactional legal notice (it is not marketing, so
  it reaches members who opted out of marketing, and carries the unsubscribe link like every
  message). The ``privacy.announce_notice`` job mails :attr:`Settings.notice_announce_batch`
  members per run, in id order, and enqueues its own continuation in the same transaction: a
  crash redoes at most the batch that did not commit, and nobody is mailed twice;
* **on the site**: a banner in every page's frame from publication until
  :attr:`Settings.notice_banner_days` after the effective date (:class:`NoticeBanner`).

The data region the notice states is configuration (:attr:`Settings.data_region`), not code."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.audit.service import Actor, record
from leadmarket.config import Settings
from leadmarket.kit.db import Database, after_commit, utcnow
from leadmarket.kit.errors import Conflict, FieldError, NotFound, ValidationFailed
from leadmarket.kit.ids import new_id
from leadmarket.kit.jobs import enqueue
from leadmarket.models import MailTopic, PrivacyNotice, User, UserStatus
from leadmarket.notifications.service import queue_mail

ANNOUNCE_JOB = "privacy.announce_notice"
ANNOUNCE_TEMPLATE = "privacy/notice_changed"
# A new version must give members this long between publication and effect... at least "now":
# it may not be backdated (an announcement of the past is no announcement).
_BACKDATING_TOLERANCE = dt.timedelta(minutes=5)


class NoticeVersionTaken(Conflict):
    slug = "notice-version-taken"
    title = "This notice version exists"
    explanation = "Published versions are never changed; publish the change as a new version."


# Schemas ------------------------------------------------------------------------------------

Version = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=20, pattern=r"^[0-9A-Za-z.\-]+$"
    ),
]


class NoticeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version = Field(description="e.g. 1.1 or 2026-12")
    effective_at: AwareDatetime = Field(description="When it takes effect; not in the past.")
    summary: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=10, max_length=2000)
    ]
    body: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=50, max_length=100_000)
    ]


class NoticeSummaryOut(BaseModel):
    version: str
    effective_at: dt.datetime
    published_at: dt.datetime
    summary: str
    in_effect: bool = Field(description="The version in effect now.")
    upcoming: bool = Field(description="Published, not yet in effect.")


class NoticeOut(NoticeSummaryOut):
    body: str
    data_region: str = Field(description="Where personal data is hosted (P11).")
    announced_count: int = Field(description="Members told by email so far.")
    announced_at: dt.datetime | None = Field(description="When the emailing finished.")


class NoticeListOut(BaseModel):
    data_region: str
    current: NoticeSummaryOut | None
    versions: list[NoticeSummaryOut] = Field(description="Newest effective date first.")


# Reading ------------------------------------------------------------------------------------


async def all_versions(session: AsyncSession) -> list[PrivacyNotice]:
    return list(
        await session.scalars(
            select(PrivacyNotice).order_by(
                PrivacyNotice.effective_at.desc(), PrivacyNotice.published_at.desc()
            )
        )
    )


def _current_of(versions: list[PrivacyNotice], now: dt.datetime) -> PrivacyNotice | None:
    return next((v for v in versions if v.effective_at <= now), None)


def summary_out(notice: PrivacyNotice, current: PrivacyNotice | None, now: dt.datetime) -> Any:
    return NoticeSummaryOut(
        version=notice.version,
        effective_at=notice.effective_at,
        published_at=notice.published_at,
        summary=notice.summary,
        in_effect=current is not None and notice.id == current.id,
        upcoming=notice.effective_at > now,
    )


def notice_out(
    settings: Settings, notice: PrivacyNotice, current: PrivacyNotice | None, now: dt.datetime
) -> NoticeOut:
    return NoticeOut(
        **summary_out(notice, current, now).model_dump(),
        body=notice.body,
        data_region=settings.data_region,
        announced_count=notice.announced_count,
        announced_at=notice.announced_at,
    )


@dataclass(frozen=True)
class NoticePage:
    """What the public notice page shows: the version in effect (or the one asked for), the
    published versions not yet in effect, and the past ones."""

    shown: PrivacyNotice | None
    current: PrivacyNotice | None
    upcoming: list[PrivacyNotice]
    past: list[PrivacyNotice]


async def notice_page(
    session: AsyncSession, *, version: str | None = None, now: dt.datetime | None = None
) -> NoticePage:
    now = now or utcnow()
    versions = await all_versions(session)
    current = _current_of(versions, now)
    if version is None:
        shown = current
    else:
        shown = next((v for v in versions if v.version == version), None)
        if shown is None:
            raise NotFound("There is no privacy notice with this version.")
    upcoming = [v for v in versions if v.effective_at > now]
    past = [v for v in versions if v.effective_at <= now and v is not current]
    return NoticePage(shown=shown, current=current, upcoming=upcoming, past=past)


# Publishing ---------------------------------------------------------------------------------


async def publish_notice(
    session: AsyncSession, settings: Settings, data: NoticeIn, *, admin: User
) -> PrivacyNotice:
    """Publish a new version and start its announcement (email job; the banner follows from
    the row). Raises ValidationFailed for a backdated effective date, NoticeVersionTaken for
    a version that exists; then nothing is written."""
    now = utcnow()
    effective_at = data.effective_at.astimezone(dt.UTC)
    if effective_at < now - _BACKDATING_TOLERANCE:
        message = "The effective date cannot be in the past: members must be told first."
        raise ValidationFailed(message, errors=[FieldError("effective_at", message)])
    taken = await session.scalar(
        select(PrivacyNotice.id).where(PrivacyNotice.version == data.version)
    )
    if taken is not None:
        raise NoticeVersionTaken(
            f"Version {data.version} is already published.",
            errors=[FieldError("version", "This version is already published.")],
        )
    notice = PrivacyNotice(
        id=new_id("pn"),
        version=data.version,
        effective_at=effective_at,
        summary=data.summary,
        body=data.body,
        published_at=now,
        published_by=admin.id,
        announced_count=0,
    )
    session.add(notice)
    await session.flush()
    await enqueue(
        session,
        ANNOUNCE_JOB,
        {"notice_id": notice.id, "after": ""},
        dedupe_key=f"{ANNOUNCE_JOB}:{notice.id}:",
    )
    await record(
        session,
        actor=Actor("user", admin.id),
        action="privacy.notice_published",
        subject_type="privacy_notice",
        subject_id=notice.id,
        details={"version": notice.version, "effective_at": effective_at.isoformat()},
    )
    return notice


def announcement_text(settings: Settings, notice: PrivacyNotice, username: str) -> str:
    base = settings.base_url.rstrip("/")
    return (
        f"Hello {username},\n\n"
        f"We published version {notice.version} of the Leadmarket privacy notice. It takes "
        f"effect on {notice.effective_at.strftime('%Y-%m-%d %H:%M UTC')}.\n\n"
        f"What changes:\n{notice.summary}\n\n"
        f"Read the full notice, and the earlier versions, at {base}/privacy/notice\n\n"
        "This is a legal notice about how we handle your personal data, so it is sent to "
        "every member, also to those who opted out of marketing email.\n"
    )


async def announce_batch(
    session: AsyncSession, settings: Settings, notice_id: str, after: str
) -> int:
    """Mail the next batch of active members (ids after ``after``) and enqueue the rest."""
    notice = await session.get(PrivacyNotice, notice_id, with_for_update=True)
    if notice is None:
        return 0
    members = list(
        await session.execute(
            select(User.id, User.email, User.username)
            .where(User.status == UserStatus.ACTIVE.value, User.id > after)
            .order_by(User.id)
            .limit(settings.notice_announce_batch)
        )
    )
    for user_id, email, username in members:
        await queue_mail(
            session,
            settings,
            to=email,
            subject=f"Our privacy notice changes on {notice.effective_at.strftime('%Y-%m-%d')}",
            text_body=announcement_text(settings, notice, username),
            template=ANNOUNCE_TEMPLATE,
            topic=MailTopic.LEGAL_NOTICE,
            user_id=user_id,
        )
    notice.announced_count += len(members)
    if len(members) == settings.notice_announce_batch:
        last = str(members[-1][0])
        await enqueue(
            session,
            ANNOUNCE_JOB,
            {"notice_id": notice.id, "after": last},
            dedupe_key=f"{ANNOUNCE_JOB}:{notice.id}:{last}",
        )
    else:
        notice.announced_at = utcnow()
    await session.flush()
    return len(members)


# The banner -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BannerNotice:
    version: str
    effective_at: dt.datetime
    summary: str


async def banner_notice(
    session: AsyncSession, settings: Settings, now: dt.datetime
) -> BannerNotice | None:
    """The newest published version, while it is announced: until ``notice_banner_days``
    after its effective date."""
    newest = await session.scalar(
        select(PrivacyNotice).order_by(PrivacyNotice.published_at.desc()).limit(1)
    )
    if newest is None:
        return None
    if now > newest.effective_at + dt.timedelta(days=settings.notice_banner_days):
        return None
    return BannerNotice(newest.version, newest.effective_at, newest.summary)


class NoticeBanner:
    """The banner every page shows, read from the database at most every ``ttl`` seconds per
    process (a page should not cost a query for it); publishing in this process refreshes it
    at once, other processes within ``ttl``."""

    def __init__(self, settings: Settings, ttl_seconds: float = 30.0) -> None:
        self.settings = settings
        self.ttl_seconds = ttl_seconds
        self._value: BannerNotice | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._expires = 0.0

    async def current(self, db: Database) -> BannerNotice | None:
        if time.monotonic() < self._expires:
            return self._value
        async with self._lock:
            if time.monotonic() < self._expires:
                return self._value
            async with db.transaction() as session:
                self._value = await banner_notice(session, self.settings, utcnow())
            self._expires = time.monotonic() + self.ttl_seconds
            return self._value


def refresh_banner_after_commit(session: AsyncSession, banner: NoticeBanner) -> None:
    """Show the new version's banner in this process as soon as it is committed."""

    async def refresh() -> None:
        banner.invalidate()

    after_commit(session, ("notice-banner", id(banner)), refresh)
