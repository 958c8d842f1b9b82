"""The matching engine (issue 4, item 3): which active campaigns want a lead, highest bid first,
without scanning every campaign, and never selling on a stale one.

**The index.** :func:`build_index` compiles every active campaign once (filters into sets,
ranges and a 168-bit weekly schedule mask) and files it under its vertical, then under whether
it buys exclusive leads only, then under its most selective location filter: each of its postal
prefixes if it has any, else each of its regions, else "anywhere". A lead preview looks up only
the campaigns filed under its own vertical, postal prefix and region, plus the vertical's
"anywhere" campaigns, and applies every remaining filter (age band, quality, attributes,
schedule in the campaign's time zone) to those. ``bench/matching`` measures it against a linear
scan of the same campaigns.

**Freshness across processes.** Every campaign change bumps the ``matching_version`` row in the
same transaction (``service.bump_matching_version``), writing a new random stamp. Each process
keeps one :class:`MatchingIndex`; before use it reads the stamp (one primary-key query) and
rebuilds when the stamp differs from the one its snapshot was built at. The stamp is read
*before* the campaigns, so a snapshot is never labelled newer than its contents; a random stamp,
unlike a bare counter, cannot be repeated by a bump that was later rolled back.
``LEADMARKET_MATCHING_RECHECK_MS`` (default 0: check on every use) lets a busy process check at
most that often instead; a campaign created or resumed then starts bidding up to that much
later. Rebuilds are whole (10,000 campaigns take tens of milliseconds); campaign changes are
rare next to leads.

**The guarantee.** The index is only a shortlist. :func:`eligible_campaigns` returns candidates;
the sale step must then call :func:`claim_campaign` for the candidate it sells to, in the sale's
transaction. That locks and re-reads the campaign row, re-applies every filter and the schedule
to the row as it is now, and claims budget and caps with conditional statements in the database
(``service.claim_budget``, ``service.claim_cap``). A paused, edited, exhausted or deleted
campaign therefore never buys, however stale an index is: the worst a stale index can do is
offer a candidate that the claim refuses (then try the next) or miss a campaign for a moment."""

from __future__ import annotations

import datetime as dt
import time
import weakref
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.campaigns import service
from leadmarket.campaigns.schemas import AGE_CEILING, DAYS
from leadmarket.kit.db import utcnow
from leadmarket.leads.service import AGE_BANDS
from leadmarket.models import Campaign, Lead

HOURS_PER_WEEK = 7 * 24


@dataclass(frozen=True, slots=True)
class LeadPreview:
    """What matching may know of a lead: what a buyer sees before buying (L6), plus whether it is
    sold exclusively. A ping (no lead row yet) builds one from its body."""

    vertical: str
    region: str
    postal_prefix: str
    age_band: str
    quality_score: int
    exclusive: bool
    attributes: Mapping[str, Any] = field(default_factory=dict)
    country: str = "US"

    @classmethod
    def of_lead(cls, lead: Lead) -> LeadPreview:
        return cls(
            vertical=lead.vertical,
            region=lead.region,
            postal_prefix=lead.postal_prefix,
            age_band=lead.age_band,
            quality_score=lead.quality_score,
            exclusive=lead.exclusive,
            attributes=dict(lead.preview_attributes),
            country=lead.country,
        )


def _band_bounds() -> dict[str, tuple[int, int]]:
    bounds: dict[str, tuple[int, int]] = {}
    for _upper, label in AGE_BANDS:
        low, _, high = label.partition("-")
        bounds[label] = (int(low), int(high))
    oldest = f"{AGE_BANDS[-1][0]}+"
    bounds[oldest] = (AGE_BANDS[-1][0], AGE_CEILING)
    return bounds


AGE_BAND_BOUNDS = _band_bounds()


def schedule_mask(schedule: Mapping[str, Any] | None) -> int | None:
    """Bit ``weekday * 24 + hour`` set for every hour the schedule buys; None: always."""
    if not schedule:
        return None
    mask = 0
    start = int(schedule.get("start_hour", 0))
    end = int(schedule.get("end_hour", 24))
    for day in schedule.get("days", ()):
        if day in DAYS:
            base = DAYS.index(day) * 24
            for hour in range(start, end):
                mask |= 1 << (base + hour)
    return mask


@cache
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


class HourOfWeek:
    """The hour of the week (Monday 00h = 0) of one moment in each zone asked, each zone
    converted once per lead however many campaigns use it."""

    __slots__ = ("_hours", "_now")

    def __init__(self, now: dt.datetime) -> None:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        self._now = now
        self._hours: dict[str, int] = {}

    def __call__(self, zone: str) -> int:
        hour = self._hours.get(zone)
        if hour is None:
            local = self._now.astimezone(_zone(zone))
            hour = local.weekday() * 24 + local.hour
            self._hours[zone] = hour
        return hour


class CompiledCampaign:
    """A campaign's matching rules in the form fastest to apply. Compared with ``order_key``:
    highest bid first, then the oldest campaign (ids are time-ordered)."""

    __slots__ = (
        "age_high",
        "age_low",
        "bid_cents",
        "bool_filters",
        "buyer_id",
        "currency",
        "enum_filters",
        "exclusive_only",
        "id",
        "min_quality",
        "order_key",
        "postal_prefixes",
        "range_filters",
        "regions",
        "schedule",
        "timezone",
        "vertical",
    )

    def __init__(self, row: Any) -> None:
        filters: Mapping[str, Any] = row.filters or {}
        self.id: str = row.id
        self.buyer_id: str = row.buyer_id
        self.vertical: str = row.vertical
        self.bid_cents: int = int(row.bid_cents)
        self.currency: str = row.currency
        self.timezone: str = row.timezone
        self.exclusive_only: bool = bool(row.exclusive_only)
        self.schedule: int | None = schedule_mask(row.schedule)
        self.regions: frozenset[str] | None = frozenset(filters.get("regions") or ()) or None
        self.postal_prefixes: frozenset[str] | None = (
            frozenset(filters.get("postal_prefixes") or ()) or None
        )
        self.age_low: int | None = filters.get("age_min")
        self.age_high: int | None = filters.get("age_max")
        self.min_quality: int = int(filters.get("min_quality") or 0)
        enums: list[tuple[str, frozenset[str]]] = []
        ranges: list[tuple[str, float | None, float | None]] = []
        bools: list[tuple[str, bool]] = []
        for name, rule in (filters.get("attributes") or {}).items():
            if isinstance(rule, bool):
                bools.append((name, rule))
            elif isinstance(rule, list):
                enums.append((name, frozenset(rule)))
            elif isinstance(rule, dict):
                ranges.append((name, rule.get("min"), rule.get("max")))
        self.enum_filters = tuple(enums)
        self.range_filters = tuple(ranges)
        self.bool_filters = tuple(bools)
        self.order_key = (-self.bid_cents, self.id)

    def matches(self, preview: LeadPreview, hour_of_week: Callable[[str], int]) -> bool:
        """Every filter, the exclusivity rule and the schedule (the vertical is the caller's:
        the index files campaigns by it; :func:`linear_scan` checks it)."""
        if self.exclusive_only and not preview.exclusive:
            return False
        if preview.quality_score < self.min_quality:
            return False
        if self.regions is not None and preview.region not in self.regions:
            return False
        if self.postal_prefixes is not None and preview.postal_prefix not in self.postal_prefixes:
            return False
        if self.age_low is not None or self.age_high is not None:
            band = AGE_BAND_BOUNDS.get(preview.age_band)
            if band is None:
                return False
            if self.age_low is not None and band[0] < self.age_low:
                return False
            if self.age_high is not None and band[1] > self.age_high:
                return False
        attributes = preview.attributes
        for name, allowed in self.enum_filters:
            value = attributes.get(name)
            if not isinstance(value, str) or value not in allowed:
                return False
        for name, low, high in self.range_filters:
            value = attributes.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            if (low is not None and value < low) or (high is not None and value > high):
                return False
        for name, wanted in self.bool_filters:
            if attributes.get(name) is not wanted:
                return False
        if self.schedule is not None:
            return bool((self.schedule >> hour_of_week(self.timezone)) & 1)
        return True


@dataclass
class _Buckets:
    by_postal_prefix: dict[str, list[CompiledCampaign]] = field(default_factory=dict)
    by_region: dict[str, list[CompiledCampaign]] = field(default_factory=dict)
    anywhere: list[CompiledCampaign] = field(default_factory=list)

    def add(self, campaign: CompiledCampaign) -> None:
        if campaign.postal_prefixes is not None:
            for prefix in campaign.postal_prefixes:
                self.by_postal_prefix.setdefault(prefix, []).append(campaign)
        elif campaign.regions is not None:
            for region in campaign.regions:
                self.by_region.setdefault(region, []).append(campaign)
        else:
            self.anywhere.append(campaign)

    def candidates(self, preview: LeadPreview) -> Iterable[list[CompiledCampaign]]:
        # A campaign is filed once per prefix or region it names, so it can appear in at most
        # one of these lists for a given lead: no duplicates to remove.
        yield self.by_postal_prefix.get(preview.postal_prefix, [])
        yield self.by_region.get(preview.region, [])
        yield self.anywhere


@dataclass
class CampaignIndex:
    """An immutable snapshot of the active campaigns, as of ``stamp``."""

    stamp: str | None
    size: int = 0
    # (vertical, exclusive_only) -> buckets
    _buckets: dict[tuple[str, bool], _Buckets] = field(default_factory=dict)

    def match(self, preview: LeadPreview, now: dt.datetime) -> list[CompiledCampaign]:
        """The campaigns that want this lead now, highest bid first."""
        hour_of_week = HourOfWeek(now)
        found: list[CompiledCampaign] = []
        kinds = (False, True) if preview.exclusive else (False,)
        for exclusive_only in kinds:
            buckets = self._buckets.get((preview.vertical, exclusive_only))
            if buckets is None:
                continue
            for candidates in buckets.candidates(preview):
                for campaign in candidates:
                    if campaign.matches(preview, hour_of_week):
                        found.append(campaign)
        found.sort(key=_order)
        return found


def _order(campaign: CompiledCampaign) -> tuple[int, str]:
    return campaign.order_key


def build_index(rows: Iterable[Any], stamp: str | None = None) -> CampaignIndex:
    """The index of the campaigns in ``rows`` (anything with the attributes of
    ``service.MATCHING_COLUMNS``: rows of :func:`service.active_campaign_rows`, Campaign
    objects), all assumed active."""
    index = CampaignIndex(stamp=stamp)
    for row in rows:
        campaign = CompiledCampaign(row)
        key = (campaign.vertical, campaign.exclusive_only)
        index._buckets.setdefault(key, _Buckets()).add(campaign)
        index.size += 1
    return index


def linear_scan(
    campaigns: Sequence[CompiledCampaign], preview: LeadPreview, now: dt.datetime
) -> list[CompiledCampaign]:
    """The same answer as :meth:`CampaignIndex.match`, by looking at every campaign: the
    benchmark's baseline."""
    hour_of_week = HourOfWeek(now)
    found = [
        c for c in campaigns if c.vertical == preview.vertical and c.matches(preview, hour_of_week)
    ]
    found.sort(key=_order)
    return found


class MatchingIndex:
    """One process's index, kept fresh against the database's matching stamp (see the module
    docstring). ``recheck_ms`` 0 reads the stamp on every use."""

    def __init__(self, *, recheck_ms: int = 0) -> None:
        self.recheck_seconds = recheck_ms / 1000
        self._snapshot: CampaignIndex | None = None
        self._checked_at = 0.0
        self.rebuilds = 0

    async def current(self, session: AsyncSession) -> CampaignIndex:
        snapshot = self._snapshot
        clock = time.monotonic()
        if (
            snapshot is not None
            and self.recheck_seconds > 0
            and clock - self._checked_at < self.recheck_seconds
        ):
            return snapshot
        # The stamp first, then the campaigns: a commit in between makes the snapshot look
        # older than it is (one extra rebuild), never newer.
        stamp = await service.matching_stamp(session)
        self._checked_at = clock
        if snapshot is not None and snapshot.stamp == stamp:
            return snapshot
        snapshot = build_index(await service.active_campaign_rows(session), stamp)
        self._snapshot = snapshot
        self.rebuilds += 1
        return snapshot


# Per engine, for callers that hold no index of their own (the app keeps one in its state).
_PROCESS_INDEXES: weakref.WeakKeyDictionary[Engine, MatchingIndex] = weakref.WeakKeyDictionary()


def process_index(session: AsyncSession) -> MatchingIndex:
    """This process's index for the session's database."""
    bind = session.get_bind()
    engine: Engine = bind if isinstance(bind, Engine) else bind.engine
    index = _PROCESS_INDEXES.get(engine)
    if index is None:
        index = _PROCESS_INDEXES[engine] = MatchingIndex()
    return index


async def eligible_campaigns(
    session: AsyncSession,
    preview: LeadPreview,
    *,
    now: dt.datetime | None = None,
    index: MatchingIndex | None = None,
) -> list[CompiledCampaign]:
    """The campaigns that want ``preview`` now, highest bid first, from an index checked
    against the database's matching stamp just before.

    A shortlist, not a licence to sell: a campaign may be paused, edited or exhausted between
    this call and the sale (by this or another process). Sell only through
    :func:`claim_campaign`, in the sale's transaction, going down this list until a claim
    succeeds."""
    current = await (index or process_index(session)).current(session)
    return current.match(preview, now or utcnow())


async def claim_campaign(
    session: AsyncSession,
    campaign_id: str,
    preview: LeadPreview,
    *,
    price_cents: int,
    now: dt.datetime | None = None,
) -> Campaign | None:
    """Commit a campaign to buying ``preview`` at ``price_cents``, or None if it may not.

    Locks the campaign row (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite transactions hold
    the write lock from their start), re-reads it, and re-applies every rule to the row as it
    is now: live and active, same vertical, every filter, the schedule, and a price no higher
    than its bid. Then spends the budget and claims both caps with conditional statements
    (``service.claim_budget``, ``service.claim_cap``); if a cap is reached the spend is undone.
    All of it belongs to the caller's transaction, so a sale that fails later gives
    everything back."""
    now = now or utcnow()
    campaign = await session.scalar(
        select(Campaign)
        .where(Campaign.id == campaign_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if (
        campaign is None
        or campaign.deleted_at is not None
        or not campaign.active
        or campaign.vertical != preview.vertical
        or price_cents > campaign.bid_cents
        or not CompiledCampaign(campaign).matches(preview, HourOfWeek(now))
    ):
        return None
    if not await service.claim_budget(session, campaign, price_cents):
        return None
    if not await service.claim_cap(session, campaign, now):
        await service.release_budget(session, campaign.id, price_cents)
        return None
    return campaign
