"""Buyer campaigns (issue 4, item 2; promises M1, M5): the one place their rules live, for the
API, the pages and the sale step.

* **Writing.** A campaign is checked twice: its shape by :class:`CampaignIn`, then its filters
  against the vertical's definition (:func:`check_against_vertical`): an attribute the vertical
  lacks, an enum code it does not list, a range outside the field's or with min above max, a
  filter on an attribute that is not in a lead's preview — each a 422 naming
  ``filters.attributes.<name>``. Filters may use only preview attributes: matching runs on what
  a buyer may see before buying (L6), and never on protected characteristics.
* **Ownership.** A buyer sees and changes only their own campaigns; another's is a 404.
* **Freshness.** Every change bumps the ``matching_version`` row in the same transaction
  (:func:`bump_matching_version`), so each process's matching index rebuilds before its next
  use (see ``campaigns.matching``).
* **Caps and budget** are claimed by the sale step with single conditional statements in the
  database (:func:`claim_cap`, :func:`claim_budget`): no read in Python decides whether a lead
  may still be bought, so two processes can never oversell a cap or overspend a budget. Claims
  belong to the sale's transaction: a sale rolled back gives them back.

Services never commit; the request or the job does."""

from __future__ import annotations

import datetime as dt
import math
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from typing import Any, cast

from pydantic import ValidationError
from sqlalchemy import CursorResult, Table, and_, case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.campaigns.schemas import CampaignIn
from leadmarket.config import Settings
from leadmarket.kit.db import insert_ignoring_conflicts, insert_or_update, utcnow
from leadmarket.kit.errors import FieldError, NotFound, ValidationFailed, validation_errors
from leadmarket.kit.ids import new_id
from leadmarket.models import Campaign, CampaignCapCounter, MatchingVersion, User, WebhookEndpoint
from leadmarket.verticals.registry import FieldSpec, Vertical, get_vertical
from leadmarket.webhooks.service import url_problem

# What "no cap" compares against in the conditional UPDATE (the largest 32-bit integer).
_NO_CAP = 2_147_483_647
_VERSION_ROW = 1
# The tables, for the single conditional statements (Core, so the ORM adds no read).
_CAMPAIGNS = cast(Table, Campaign.__table__)
_COUNTERS = cast(Table, CampaignCapCounter.__table__)
_ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
# Fields a campaign keeps as given; filters are normalised first.
_PLAIN_FIELDS = (
    "name",
    "vertical",
    "bid_cents",
    "currency",
    "daily_cap",
    "monthly_cap",
    "timezone",
    "budget_cents",
    "exclusive_only",
    "active",
    "webhook_url",
    "ping_url",
)


# Checking ----------------------------------------------------------------------------------


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (not isinstance(value, float) or math.isfinite(value))
    )


def _check_range(spec: FieldSpec, value: object) -> tuple[dict[str, Any] | None, str | None]:
    if not isinstance(value, dict) or not value or set(value) - {"min", "max"}:
        return None, 'Give a range: {"min": …, "max": …} (either may be left out).'
    bounds: dict[str, Any] = {}
    for key in ("min", "max"):
        bound = value.get(key)
        if bound is None:
            continue
        if not _is_number(bound) or (spec.type == "integer" and not float(bound).is_integer()):
            return None, f"{key} must be a {'whole ' if spec.type == 'integer' else ''}number."
        if (spec.minimum is not None and bound < spec.minimum) or (
            spec.maximum is not None and bound > spec.maximum
        ):
            low = _number_text(spec.minimum) if spec.minimum is not None else "any"
            high = _number_text(spec.maximum) if spec.maximum is not None else "any"
            return None, f"{key} must be between {low} and {high}."
        bounds[key] = int(bound) if spec.type == "integer" else bound
    if not bounds:
        return None, "Give min, max or both."
    if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
        return None, "min is greater than max: no lead could match."
    return bounds, None


def _check_attribute(spec: FieldSpec, value: object) -> tuple[Any, str | None]:
    if not spec.preview:
        return None, (
            "Not shown in a lead's preview, so campaigns cannot filter on it (promise L6)."
        )
    if spec.type == "boolean":
        if not isinstance(value, bool):
            return None, "Must be true or false."
        return value, None
    if spec.enum is not None:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            return None, "Give a non-empty list of codes."
        unknown = [v for v in value if v not in spec.enum]
        if unknown:
            return None, f"Must be codes of: {', '.join(spec.enum)}."
        chosen = set(value)
        return [code for code in spec.enum if code in chosen], None
    if spec.type in ("integer", "number"):
        return _check_range(spec, value)
    return None, "Campaigns cannot filter on free text."


def check_attribute_filters(
    vertical: Vertical, raw: Mapping[str, Any]
) -> tuple[dict[str, Any], list[FieldError]]:
    """The attribute filters normalised (enum codes in the definition's order), and the errors,
    each named ``filters.attributes.<name>``."""
    cleaned: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name, value in raw.items():
        if not _ATTRIBUTE_NAME.match(name):
            errors.append(FieldError("filters.attributes", "Holds a name that is no attribute."))
            continue
        path = f"filters.attributes.{name}"
        spec = vertical.field(name)
        if spec is None:
            errors.append(FieldError(path, f"The {vertical.slug} vertical has no such attribute."))
            continue
        value_clean, message = _check_attribute(spec, value)
        if message is not None:
            errors.append(FieldError(path, message))
        else:
            cleaned[name] = value_clean
    return cleaned, errors


def check_against_vertical(data: CampaignIn) -> dict[str, Any]:
    """The campaign's filters as stored, or a 422 naming each wrong attribute filter."""
    vertical = get_vertical(data.vertical)
    if vertical is None:  # CampaignIn checked it; a definition removed since is still refused
        raise ValidationFailed(errors=[FieldError("vertical", "No such vertical.")])
    attributes, errors = check_attribute_filters(vertical, data.filters.attributes)
    if errors:
        raise ValidationFailed(
            "; ".join(f"{e.field}: {e.message}" for e in errors[:5]), errors=errors
        )
    filters = data.filters.model_dump(exclude_none=True)
    filters["attributes"] = attributes
    return filters


def check_campaign(payload: Mapping[str, Any]) -> tuple[CampaignIn, dict[str, Any]]:
    """Validate a whole campaign from plain data (the merged PATCH, a page's form): its shape
    and its filters against the vertical, every problem reported at once."""
    errors: list[FieldError] = []
    data: CampaignIn | None = None
    try:
        data = CampaignIn.model_validate(dict(payload))
    except ValidationError as exc:
        errors = validation_errors([dict(e) for e in exc.errors()])
    if data is not None:
        return data, check_against_vertical(data)
    vertical = get_vertical(str(payload.get("vertical", "")))
    filters = payload.get("filters")
    raw_attributes = filters.get("attributes") if isinstance(filters, dict) else None
    if vertical is not None and isinstance(raw_attributes, dict):
        known = {e.field for e in errors}
        for error in check_attribute_filters(vertical, raw_attributes)[1]:
            if error.field not in known:
                errors.append(error)
    raise ValidationFailed("; ".join(f"{e.field}: {e.message}" for e in errors[:5]), errors=errors)


def endpoint_url_errors(fields: Mapping[str, Any], settings: Settings) -> list[FieldError]:
    """The campaign's ``webhook_url`` and ``ping_url`` among ``fields`` (a body, a PATCH, a
    form's payload) against the same network rule as the buyer's webhook endpoint: https, not
    a private or loopback address, unless ``LEADMARKET_WEBHOOK_ALLOW_PRIVATE_NETWORKS``. One
    error per refused field. Checked where a request comes in, as ``PUT /me/webhook`` does;
    the service calls themselves take any address (tests, the demo)."""
    errors = []
    for name in ("webhook_url", "ping_url"):
        url = fields.get(name)
        if isinstance(url, str) and url.strip():
            message = url_problem(url.strip(), settings)
            if message is not None:
                errors.append(FieldError(name, message))
    return errors


NO_SIGNING_SECRET = (
    "Pings are signed with your webhook secret, and you have none: create your webhook "
    "endpoint first (the Webhook page, /webhook, or PUT /api/v1/me/webhook), then set ping_url."
)


async def ping_url_errors(
    session: AsyncSession,
    buyer: User,
    fields: Mapping[str, Any],
    current: Campaign | None = None,
) -> list[FieldError]:
    """``ping_url`` among ``fields`` refused when the buyer has no webhook endpoint: each ping
    is signed with its secret, and an unsigned one is never sent, so such a campaign would
    silently never be asked. Only a new address is checked (``current``: the campaign being
    changed), so a buyer whose endpoint was removed can still pause or edit the campaign."""
    url = fields.get("ping_url")
    if not isinstance(url, str) or not url.strip():
        return []
    if current is not None and current.ping_url == url.strip():
        return []
    endpoint = await session.scalar(
        select(WebhookEndpoint.id).where(WebhookEndpoint.owner_id == buyer.id)
    )
    return [FieldError("ping_url", NO_SIGNING_SECRET)] if endpoint is None else []


async def check_campaign_endpoints(
    session: AsyncSession,
    settings: Settings,
    buyer: User,
    fields: Mapping[str, Any],
    current: Campaign | None = None,
) -> None:
    """:func:`endpoint_url_errors` and :func:`ping_url_errors` as one 422 naming each field."""
    errors = endpoint_url_errors(fields, settings)
    if not any(e.field == "ping_url" for e in errors):
        errors += await ping_url_errors(session, buyer, fields, current)
    if errors:
        raise ValidationFailed("; ".join(f"{e.field}: {e.message}" for e in errors), errors=errors)


# Reading -----------------------------------------------------------------------------------


async def get_campaign(session: AsyncSession, buyer: User, campaign_id: str) -> Campaign:
    """The buyer's own campaign; another buyer's, or a deleted one, does not exist."""
    campaign = await session.get(Campaign, campaign_id)
    if campaign is None or campaign.buyer_id != buyer.id or campaign.deleted_at is not None:
        raise NotFound("No such campaign.")
    return campaign


async def list_campaigns(
    session: AsyncSession, buyer: User, *, limit: int, before_id: str | None
) -> list[Campaign]:
    """Newest first, ``limit + 1`` rows so the caller knows whether there is a next page."""
    query = (
        select(Campaign)
        .where(Campaign.buyer_id == buyer.id, Campaign.deleted_at.is_(None))
        .order_by(Campaign.id.desc())
        .limit(limit + 1)
    )
    if before_id is not None:
        query = query.where(Campaign.id < before_id)
    return list(await session.scalars(query))


def period_keys(timezone: str, now: dt.datetime) -> tuple[str, str]:
    """The day ("2026-11-22") and month ("2026-11") that ``now`` falls in, in the zone."""
    local = now.astimezone(zoneinfo.ZoneInfo(timezone))
    return local.strftime("%Y-%m-%d"), local.strftime("%Y-%m")


async def delivered_counts(
    session: AsyncSession, campaigns: Sequence[Campaign], now: dt.datetime | None = None
) -> dict[str, tuple[int, int]]:
    """Leads delivered today and this month (each in its campaign's zone), by campaign id."""
    now = now or utcnow()
    if not campaigns:
        return {}
    wanted: dict[tuple[str, str, str], str] = {}
    for campaign in campaigns:
        day, month = period_keys(campaign.timezone, now)
        wanted[(campaign.id, "day", day)] = campaign.id
        wanted[(campaign.id, "month", month)] = campaign.id
    rows = await session.execute(
        select(
            CampaignCapCounter.campaign_id,
            CampaignCapCounter.period_kind,
            CampaignCapCounter.period_key,
            CampaignCapCounter.count,
        ).where(CampaignCapCounter.campaign_id.in_([c.id for c in campaigns]))
    )
    counts = {c.id: [0, 0] for c in campaigns}
    for campaign_id, kind, key, count in rows:
        if (campaign_id, kind, key) in wanted:
            counts[campaign_id][0 if kind == "day" else 1] = int(count)
    return {cid: (day, month) for cid, (day, month) in counts.items()}


# Writing -----------------------------------------------------------------------------------


def _apply(campaign: Campaign, data: CampaignIn, filters: dict[str, Any]) -> None:
    for name in _PLAIN_FIELDS:
        setattr(campaign, name, getattr(data, name))
    campaign.filters = filters
    campaign.schedule = data.schedule.model_dump() if data.schedule is not None else None


async def create_campaign(session: AsyncSession, buyer: User, data: CampaignIn) -> Campaign:
    filters = check_against_vertical(data)
    now = utcnow()
    campaign = Campaign(
        id=new_id("cmp"), buyer_id=buyer.id, spent_cents=0, created_at=now, updated_at=now
    )
    _apply(campaign, data, filters)
    session.add(campaign)
    await session.flush()
    await bump_matching_version(session)
    return campaign


def stored_fields(campaign: Campaign) -> dict[str, Any]:
    """The campaign as the body that would create it (what a PATCH is merged into)."""
    body: dict[str, Any] = {name: getattr(campaign, name) for name in _PLAIN_FIELDS}
    body["filters"] = dict(campaign.filters)
    body["schedule"] = dict(campaign.schedule) if campaign.schedule is not None else None
    return body


async def update_campaign(
    session: AsyncSession, buyer: User, campaign_id: str, changes: Mapping[str, Any]
) -> Campaign:
    """Apply the fields given (a PATCH: ``filters`` and ``schedule`` replace the stored ones as
    a whole), checking the campaign that results as a whole."""
    campaign = await get_campaign(session, buyer, campaign_id)
    data, filters = check_campaign({**stored_fields(campaign), **changes})
    _apply(campaign, data, filters)
    campaign.updated_at = utcnow()
    await session.flush()
    await bump_matching_version(session)
    return campaign


async def set_active(
    session: AsyncSession, buyer: User, campaign_id: str, *, active: bool
) -> Campaign:
    """Pause or resume."""
    return await update_campaign(session, buyer, campaign_id, {"active": active})


async def delete_campaign(session: AsyncSession, buyer: User, campaign_id: str) -> None:
    """The campaign stops at once and disappears; its row stays for the orders that name it."""
    campaign = await get_campaign(session, buyer, campaign_id)
    now = utcnow()
    campaign.deleted_at = now
    campaign.active = False
    campaign.updated_at = now
    await session.flush()
    await bump_matching_version(session)


# The matching version --------------------------------------------------------------------


async def bump_matching_version(session: AsyncSession) -> None:
    """Mark every process's matching index stale, in the caller's transaction. One upsert:
    the row is created by the first change. On PostgreSQL the row stays locked until the
    transaction ends, so campaign changes commit one after another (they are rare, and this
    keeps each stamp the state of exactly one commit)."""
    table = MatchingVersion.__table__
    await session.execute(
        insert_or_update(
            session,
            table,
            index_elements=[table.c.id],
            set_={"version": table.c.version + 1, "stamp": new_id("mv")},
        ).values(id=_VERSION_ROW, version=1, stamp=new_id("mv"))
    )


async def matching_stamp(session: AsyncSession) -> str | None:
    """The stamp of the last campaign change; None before the first. One primary-key read."""
    stamp: str | None = await session.scalar(
        select(MatchingVersion.stamp).where(MatchingVersion.id == _VERSION_ROW)
    )
    return stamp


MATCHING_COLUMNS = (
    Campaign.id,
    Campaign.buyer_id,
    Campaign.vertical,
    Campaign.filters,
    Campaign.bid_cents,
    Campaign.currency,
    Campaign.timezone,
    Campaign.schedule,
    Campaign.exclusive_only,
    Campaign.ping_url,
)


async def active_campaign_rows(session: AsyncSession) -> Sequence[Any]:
    """What the matching index needs of every live campaign, as plain rows (not ORM objects:
    ten thousand of them would otherwise sit in the caller's session)."""
    result = await session.execute(
        select(*MATCHING_COLUMNS).where(Campaign.active.is_(True), Campaign.deleted_at.is_(None))
    )
    return result.all()


# Claims for the sale step ----------------------------------------------------------------


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


async def claim_cap(session: AsyncSession, campaign: Campaign, now: dt.datetime) -> bool:
    """Count one more lead against the campaign's daily and monthly caps (in its time zone);
    False, with nothing counted, when either cap is reached.

    Each period's counter row is created if missing (insert, ignoring a concurrent insert),
    then incremented by ``UPDATE … SET count = count + 1 WHERE … AND count < cap``, the cap read
    from the campaign row in the same statement. PostgreSQL re-checks that condition after
    waiting for a concurrent claim's row lock, and SQLite runs one writer at a time, so exactly
    ``cap`` claims succeed, whatever the number of processes. Uncapped periods are counted too
    (the pages show them). The claim is part of the caller's transaction."""
    table = _COUNTERS
    day, month = period_keys(campaign.timezone, now)
    claimed: list[tuple[str, str]] = []
    for kind, key, cap_column in (
        ("day", day, Campaign.daily_cap),
        ("month", month, Campaign.monthly_cap),
    ):
        await session.execute(
            insert_ignoring_conflicts(
                session,
                table,
                index_elements=[table.c.campaign_id, table.c.period_kind, table.c.period_key],
            ).values(campaign_id=campaign.id, period_kind=kind, period_key=key, count=0)
        )
        cap = (
            select(func.coalesce(cap_column, _NO_CAP))
            .where(Campaign.id == campaign.id)
            .scalar_subquery()
        )
        result = await session.execute(
            update(table)
            .where(
                table.c.campaign_id == campaign.id,
                table.c.period_kind == kind,
                table.c.period_key == key,
                table.c.count < cap,
            )
            .values(count=table.c.count + 1)
        )
        if _rowcount(result) != 1:
            for done_kind, done_key in claimed:
                await session.execute(
                    update(table)
                    .where(
                        table.c.campaign_id == campaign.id,
                        table.c.period_kind == done_kind,
                        table.c.period_key == done_key,
                    )
                    .values(count=table.c.count - 1)
                )
            return False
        claimed.append((kind, key))
    return True


async def claim_budget(session: AsyncSession, campaign: Campaign, amount_cents: int) -> bool:
    """Spend ``amount_cents`` of the campaign's budget; False, with nothing spent, when that
    would exceed it, or the campaign is paused or deleted. One conditional UPDATE of the
    campaign row (``spent_cents + amount <= budget_cents``), part of the caller's
    transaction."""
    if amount_cents < 0:
        raise ValueError("amount_cents must not be negative")
    table = _CAMPAIGNS
    result = await session.execute(
        update(table)
        .where(
            table.c.id == campaign.id,
            table.c.active.is_(True),
            table.c.deleted_at.is_(None),
            or_(
                table.c.budget_cents.is_(None),
                and_(table.c.spent_cents + amount_cents <= table.c.budget_cents),
            ),
        )
        .values(spent_cents=table.c.spent_cents + amount_cents)
    )
    return _rowcount(result) == 1


async def release_budget(session: AsyncSession, campaign_id: str, amount_cents: int) -> None:
    """Give back spend (a returned lead); never below zero."""
    table = _CAMPAIGNS
    await session.execute(
        update(table)
        .where(table.c.id == campaign_id)
        .values(
            spent_cents=case(
                (table.c.spent_cents < amount_cents, 0),
                else_=table.c.spent_cents - amount_cents,
            )
        )
    )
