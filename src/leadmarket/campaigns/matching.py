"""The matching engine (issue 4, item 3): which active campaigns want a lead, highest bid first,
without scanning every campaign, and never selling on a stale one.

**The index.** :func:`build_index` compiles every active campaign once and files it under its
vertical. Within a vertical the campaigns are numbered in bid order (highest first) and the
index is inverted: for each value of each lead field (postal prefix, region, age band, quality
score, every enum or boolean attribute value, every numeric attribute value through two
bisections, every hour of the week in each campaign time zone) it keeps the bitmap (a Python
integer) of the campaigns that admit that value. Matching a preview is a few dictionary look-ups
and one AND per field, whatever the number of campaigns; the bits left set are the eligible
campaigns, already in bid order. ``bench/matching`` measures it against a linear scan of the
same campaigns (:func:`linear_scan`, which applies :meth:`CompiledCampaign.matches` to each).

**Freshness across processes.** Every campaign change bumps the ``matching_version`` row in the
same transaction (``service.bump_matching_version``), writing a new random stamp. Each process
keeps one :class:`MatchingIndex`; before use it reads the stamp (one primary-key query) and
rebuilds when the stamp differs from the one its snapshot was built at. The stamp is read
*before* the campaigns, so a snapshot is never labelled newer than its contents; a random stamp,
unlike a bare counter, cannot be repeated by a bump that was later rolled back.
``LEADMARKET_MATCHING_RECHECK_MS`` (default 0: check on every use) lets a busy process check at
most that often instead; a campaign created or resumed then starts bidding up to that much
later. Rebuilds are whole (10,000 campaigns take 0.5-0.9 s here, see bench/matching); campaign
changes are rare next to leads, and the build runs in a thread so the event loop is not held.

**The guarantee.** The index is only a shortlist. :func:`eligible_campaigns` returns candidates;
the sale step must then call :func:`claim_campaign` for the candidate it sells to, in the sale's
transaction. That locks and re-reads the campaign row, re-applies every filter and the schedule
to the row as it is now, and claims budget and caps with conditional statements in the database
(``service.claim_budget``, ``service.claim_cap``). A paused, edited, exhausted or deleted
campaign therefore never buys, however stale an index is: the worst a stale index can do is
offer a candidate that the claim refuses (then try the next) or miss a campaign for a moment."""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import time
import weakref
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.campaigns import service
from leadmarket.campaigns.schemas import AGE_BAND_BOUNDS, AGE_CEILING, DAYS
from leadmarket.kit import gcpolicy
from leadmarket.kit.db import Database, utcnow
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


# Every zone's offset from UTC is a whole number of quarter hours, so the local hour is the
# same throughout a UTC quarter hour: computed once per zone and quarter.
_QUARTER_SECONDS = 900


@lru_cache(maxsize=8192)
def _local_hour_of_week(zone: str, quarter: int) -> int:
    local = dt.datetime.fromtimestamp(quarter * _QUARTER_SECONDS, _zone(zone))
    return local.weekday() * 24 + local.hour


class HourOfWeek:
    """The hour of the week (Monday 00h = 0) of one moment in each zone asked."""

    __slots__ = ("quarter",)

    def __init__(self, now: dt.datetime) -> None:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        # The UTC quarter hour: the same one means the same hour in every zone.
        self.quarter = int(now.timestamp()) // _QUARTER_SECONDS

    def __call__(self, zone: str) -> int:
        return _local_hour_of_week(zone, self.quarter)


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
        "ping_url",
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
        # The buyer's own bidding endpoint for pings (rows made without the column have none).
        self.ping_url: str | None = getattr(row, "ping_url", None)
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


def _bits(mask: int) -> list[int]:
    """The positions of the set bits of ``mask``, lowest first (found by ``str.find`` over its
    binary digits: in C, where shifting a big integer per bit would copy it each time)."""
    digits = format(mask, "b")[::-1]
    positions: list[int] = []
    position = digits.find("1")
    while position >= 0:
        positions.append(position)
        position = digits.find("1", position + 1)
    return positions


class _KeyedMasks:
    """For one lead field: per value, the campaigns that admit it; a value no campaign names
    (or no value at all) is admitted only by the campaigns without a filter on the field."""

    __slots__ = ("free", "masks")

    def __init__(self) -> None:
        self.free = 0
        self.masks: dict[Any, int] = {}

    def add(self, bit: int, values: Iterable[Any] | None) -> None:
        if values is None:
            self.free |= bit
        else:
            for value in values:
                self.masks[value] = self.masks.get(value, 0) | bit

    def finish(self) -> None:
        self.masks = {value: mask | self.free for value, mask in self.masks.items()}

    def admitting(self, value: Any) -> int:
        try:
            return self.masks.get(value, self.free)
        except TypeError:  # an unhashable value is no value any filter names
            return self.free


class _RangeMasks:
    """For one numeric attribute: the campaigns whose range holds a value, found with two
    bisections over the ranges' ends (cumulative masks of "starts at or below" and "ends
    below")."""

    __slots__ = ("_ended", "_his", "_los", "_started", "free", "ranges")

    def __init__(self) -> None:
        self.free = 0
        self.ranges: list[tuple[int, float | None, float | None]] = []
        self._los: list[float] = []
        self._started: list[int] = []
        self._his: list[float] = []
        self._ended: list[int] = []

    def finish(self) -> None:
        open_below = 0
        by_low: dict[float, int] = {}
        by_high: dict[float, int] = {}
        for bit, low, high in self.ranges:
            if low is None:
                open_below |= bit
            else:
                by_low[low] = by_low.get(low, 0) | bit
            if high is not None:
                by_high[high] = by_high.get(high, 0) | bit
        self._los = sorted(by_low)
        running = open_below
        for low in self._los:
            running |= by_low[low]
            self._started.append(running)
        self._started.insert(0, open_below)  # values below every low
        self._his = sorted(by_high)
        running = 0
        for high in self._his:
            running |= by_high[high]
            self._ended.append(running)
        self._ended.insert(0, 0)

    def admitting(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return self.free
        started = self._started[bisect.bisect_right(self._los, value)]
        ended = self._ended[bisect.bisect_left(self._his, value)]
        return self.free | (started & ~ended)


class _VerticalIndex:
    """The campaigns of one vertical as bitmaps: bit ``i`` is the ``i``-th campaign in bid order
    (highest first), so the matches come out of the final mask already ordered."""

    def __init__(self, campaigns: list[CompiledCampaign]) -> None:
        campaigns.sort(key=_order)
        self.campaigns = campaigns
        self.all = (1 << len(campaigns)) - 1
        # Whether any campaign bids through its own endpoint: when none does, a ping can stop
        # reading its matches at the first few bids.
        self.with_endpoint = any(c.ping_url is not None for c in campaigns)
        self.endpoint_buyers = frozenset(c.buyer_id for c in campaigns if c.ping_url is not None)
        self.shared_ok = 0  # campaigns that also buy shared leads
        self.currencies: dict[str, int] = {}  # currency -> the campaigns bidding in it
        self.postal = _KeyedMasks()
        self.region = _KeyedMasks()
        self.age = _KeyedMasks()
        self.quality: list[int] = [0] * 101  # by score: campaigns whose minimum it meets
        self.enums: dict[str, _KeyedMasks] = {}
        self.ranges: dict[str, _RangeMasks] = {}
        self.always = 0  # campaigns without a schedule
        # zone -> hour of the week -> campaigns of that zone buying then
        self.hours: dict[str, list[int]] = {}
        # (quarter hour, the campaigns buying then): every lead of a quarter hour shares it.
        self._scheduled: tuple[int, int] = (-1, 0)
        by_min_quality = [0] * 101
        for position, campaign in enumerate(campaigns):
            bit = 1 << position
            if not campaign.exclusive_only:
                self.shared_ok |= bit
            self.currencies[campaign.currency] = self.currencies.get(campaign.currency, 0) | bit
            self.postal.add(bit, campaign.postal_prefixes)
            self.region.add(bit, campaign.regions)
            self.age.add(bit, _admitted_bands(campaign))
            by_min_quality[max(0, min(100, campaign.min_quality))] |= bit
            for name, allowed in campaign.enum_filters:
                self.enums.setdefault(name, _KeyedMasks()).add(bit, allowed)
            for name, wanted in campaign.bool_filters:
                self.enums.setdefault(name, _KeyedMasks()).add(bit, (wanted,))
            for name, low, high in campaign.range_filters:
                self.ranges.setdefault(name, _RangeMasks()).ranges.append((bit, low, high))
            if campaign.schedule is None:
                self.always |= bit
            else:
                hours = self.hours.setdefault(campaign.timezone, [0] * HOURS_PER_WEEK)
                for hour in _bits(campaign.schedule):
                    hours[hour] |= bit
        running = 0
        for score in range(101):
            running |= by_min_quality[score]
            self.quality[score] = running
        for keyed in (self.postal, self.region, self.age):
            keyed.finish()
        # A campaign with no filter on an attribute admits every value of it.
        for name, keyed in self.enums.items():
            keyed.free |= self.all & ~self._filtering(name)
            keyed.finish()
        for name, ranged in self.ranges.items():
            ranged.free = self.all & ~self._filtering_range(name)
            ranged.finish()
        # What matching reads per enum or boolean attribute, unpacked once here.
        self._enum_lookups = tuple((name, k.masks, k.free) for name, k in self.enums.items())

    def _filtering(self, name: str) -> int:
        mask = 0
        for position, campaign in enumerate(self.campaigns):
            if any(n == name for n, _ in campaign.enum_filters) or any(
                n == name for n, _ in campaign.bool_filters
            ):
                mask |= 1 << position
        return mask

    def _filtering_range(self, name: str) -> int:
        mask = 0
        for position, campaign in enumerate(self.campaigns):
            if any(n == name for n, _, _ in campaign.range_filters):
                mask |= 1 << position
        return mask

    def match(self, preview: LeadPreview, hour_of_week: HourOfWeek) -> list[CompiledCampaign]:
        campaigns = self.campaigns
        return [campaigns[position] for position in _bits(self.mask(preview, hour_of_week))]

    def matching(self, mask: int) -> Iterator[CompiledCampaign]:
        """The campaigns of ``mask``, highest bid first, one at a time: a reader that wants
        only the first few pays for those (lowest set bit first), not for every match."""
        campaigns = self.campaigns
        while mask:
            low = mask & -mask
            yield campaigns[low.bit_length() - 1]
            mask ^= low

    def mask(self, preview: LeadPreview, hour_of_week: HourOfWeek, start: int = -1) -> int:
        """The campaigns (among ``start``, by default all) that want the lead, as a bitmap."""
        score = preview.quality_score
        mask = start & self.quality[max(0, min(100, score))] if isinstance(score, int) else 0
        if not preview.exclusive:
            mask &= self.shared_ok
        mask &= self.postal.admitting(preview.postal_prefix)
        mask &= self.region.admitting(preview.region)
        mask &= self.age.admitting(preview.age_band)
        attributes = preview.attributes
        for name, masks, free in self._enum_lookups:  # _KeyedMasks.admitting, inlined
            if not mask:
                return 0
            value = attributes.get(name)
            mask &= masks.get(value if isinstance(value, (str, bool)) else None, free)
        for name, ranged in self.ranges.items():
            if not mask:
                return 0
            mask &= ranged.admitting(attributes.get(name))
        if mask & ~self.always:
            mask &= self._scheduled_at(hour_of_week)
        return mask

    def _scheduled_at(self, hour_of_week: HourOfWeek) -> int:
        """The campaigns buying at that moment (those without a schedule included)."""
        quarter, scheduled = self._scheduled
        if quarter != hour_of_week.quarter:
            scheduled = self.always
            for zone, hours in self.hours.items():
                scheduled |= hours[hour_of_week(zone)]
            # One tuple, replaced whole: a reader sees an old pair or a new one, never a mix.
            self._scheduled = (hour_of_week.quarter, scheduled)
        return scheduled


def _admitted_bands(campaign: CompiledCampaign) -> list[str] | None:
    if campaign.age_low is None and campaign.age_high is None:
        return None
    low = campaign.age_low if campaign.age_low is not None else 0
    high = campaign.age_high if campaign.age_high is not None else AGE_CEILING
    return [
        band for band, (first, last) in AGE_BAND_BOUNDS.items() if first >= low and last <= high
    ]


@dataclass
class CampaignIndex:
    """An immutable snapshot of the active campaigns, as of ``stamp``."""

    stamp: str | None
    size: int = 0
    _verticals: dict[str, _VerticalIndex] = field(default_factory=dict)

    def match(self, preview: LeadPreview, now: dt.datetime) -> list[CompiledCampaign]:
        """The campaigns that want this lead now, highest bid first."""
        vertical = self._verticals.get(preview.vertical)
        if vertical is None:
            return []
        return vertical.match(preview, HourOfWeek(now))

    def matching(
        self, preview: LeadPreview, now: dt.datetime, currency: str
    ) -> Iterator[CompiledCampaign]:
        """The campaigns bidding in ``currency`` that want this lead now, highest bid first,
        lazily: what :meth:`match` gives, less the other currency's, for a reader that stops
        after the first few (a ping keeps ten of hundreds)."""
        vertical = self._verticals.get(preview.vertical)
        if vertical is None:
            return iter(())
        start = vertical.currencies.get(currency, 0)
        return vertical.matching(vertical.mask(preview, HourOfWeek(now), start) if start else 0)

    def has_endpoints(self, vertical: str) -> bool:
        """Whether a campaign of ``vertical`` bids through its own endpoint (``ping_url``)."""
        index = self._verticals.get(vertical)
        return index is not None and index.with_endpoint

    def endpoint_buyers(self, vertical: str) -> frozenset[str]:
        """The buyers with a campaign of ``vertical`` that bids through its own endpoint."""
        index = self._verticals.get(vertical)
        return index.endpoint_buyers if index is not None else frozenset()


def _order(campaign: CompiledCampaign) -> tuple[int, str]:
    return campaign.order_key


def build_index(rows: Iterable[Any], stamp: str | None = None) -> CampaignIndex:
    """The index of the campaigns in ``rows`` (anything with the attributes of
    ``service.MATCHING_COLUMNS``: rows of :func:`service.active_campaign_rows`, Campaign
    objects), all assumed active."""
    by_vertical: dict[str, list[CompiledCampaign]] = {}
    size = 0
    for row in rows:
        campaign = CompiledCampaign(row)
        by_vertical.setdefault(campaign.vertical, []).append(campaign)
        size += 1
    return CampaignIndex(
        stamp=stamp,
        size=size,
        _verticals={name: _VerticalIndex(found) for name, found in by_vertical.items()},
    )


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
    docstring). ``recheck_ms`` 0 reads the stamp on every use.

    Concurrent users that find the snapshot stale rebuild it once between them (the others
    wait for that rebuild), so a campaign change under load costs one build, not one per
    request in flight."""

    def __init__(self, *, recheck_ms: int = 0) -> None:
        self.recheck_seconds = recheck_ms / 1000
        self._snapshot: CampaignIndex | None = None
        self._checked_at = 0.0
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._checking = False
        self.rebuilds = 0

    def _fresh(self) -> CampaignIndex | None:
        """The snapshot, if ``recheck_ms`` lets it be used without reading the stamp."""
        snapshot = self._snapshot
        if snapshot is None or self.recheck_seconds <= 0:
            return None
        # While one request reads the stamp, the others keep using the snapshot: with
        # recheck_ms > 0 a few more milliseconds of age are within what the setting allows.
        if self._checking or time.monotonic() - self._checked_at < self.recheck_seconds:
            return snapshot
        return None

    def _rebuild_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        return self._lock[1]

    async def current(self, session: AsyncSession) -> CampaignIndex:
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        clock = time.monotonic()
        # The stamp first, then the campaigns: a commit in between makes the snapshot look
        # older than it is (one extra rebuild), never newer.
        self._checking = True
        try:
            stamp = await service.matching_stamp(session)
        finally:
            self._checking = False
        snapshot = self._snapshot
        if snapshot is not None and snapshot.stamp == stamp:
            self._checked_at = clock
            return snapshot
        async with self._rebuild_lock():
            snapshot = self._snapshot
            if snapshot is not None and snapshot.stamp == stamp:
                return snapshot  # rebuilt by another request while this one waited
            rows = await service.active_campaign_rows(session)
            # Compiling 10,000 campaigns takes most of a second on a busy small machine: in a
            # thread, so the event loop keeps serving other requests meanwhile.
            snapshot = await asyncio.to_thread(build_index, rows, stamp)
            self._snapshot = snapshot
            self._checked_at = clock
            self.rebuilds += 1
            gcpolicy.settle()  # the old index goes, the new one is frozen (served processes)
            return snapshot

    async def current_from(self, db: Database) -> CampaignIndex:
        """Like :meth:`current`, for a caller that holds no session: one is opened only when
        the stamp must be read."""
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        session = db.new_session()
        try:
            return await self.current(session)
        finally:
            await session.close()


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
