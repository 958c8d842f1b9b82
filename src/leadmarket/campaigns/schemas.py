"""Request and response bodies of the campaign API (``/api/v1/campaigns``, docs/api.md "Buying").

The fixed fields are ``name, vertical, filters, bid_cents, daily_cap, monthly_cap, schedule,
webhook_url, active``; ``currency``, ``timezone``, ``budget_cents`` and ``exclusive_only`` extend
them. These models check the shape of a campaign; what depends on the vertical (which attributes
exist, their types, enum codes and ranges) is checked by ``service.check_against_vertical``,
which names ``filters.attributes.<name>`` in its errors."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from functools import cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, Field, ValidationInfo, field_validator

from leadmarket.kit.schemas import RequestModel
from leadmarket.leads.previews import AGE_BANDS
from leadmarket.leads.reference import CA_PROVINCES, US_STATES
from leadmarket.verticals.registry import get_vertical

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DEFAULT_TIMEZONE = "America/New_York"
# A lead's age is known only as a band (leads.service.AGE_BANDS); 14 is the youngest consumer
# a lead may be about (L2) and 120 the oldest birth date accepted.
AGE_FLOOR = 14
AGE_CEILING = 120
MAX_BID_CENTS = 1_000_000
MAX_CAP = 1_000_000
MAX_BUDGET_CENTS = 1_000_000_000
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_ZIP3 = re.compile(r"^\d{3}$", re.ASCII)
# The forward sortation area of a Canadian postal code (letter, digit, letter).
_FSA = re.compile(r"^[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z]$", re.ASCII)


@cache
def known_timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_timezone(value: str) -> str:
    """An IANA zone name zoneinfo knows (``America/Chicago``); not a path, not ``localtime``."""
    name = value.strip()
    if name not in known_timezones():
        raise ValueError("Not an IANA time zone name, for example America/Chicago.")
    zoneinfo.ZoneInfo(name)
    return name


def check_region(value: str) -> str:
    code = value.strip().upper()
    if code not in US_STATES and code not in CA_PROVINCES:
        raise ValueError("Not the two-letter code of a US state or Canadian province.")
    return code


def check_postal_prefix(value: str) -> str:
    prefix = value.strip().upper()
    if not (_ZIP3.match(prefix) or _FSA.match(prefix)):
        raise ValueError(
            "Use the first 3 characters of a ZIP code (936) or Canadian postal code (K1A)."
        )
    return prefix


def check_webhook_url(value: str) -> str:
    url = value.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number)
    except ValueError:
        raise ValueError("Not a valid web address.") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError("Use a full https:// (or http://) address.")
    if parts.username is not None or parts.password is not None:
        raise ValueError("Leave credentials out of the address; the delivery is signed.")
    if _CONTROL.search(url) or " " in url:
        raise ValueError("Not a valid web address.")
    return url


def check_name(value: str) -> str:
    name = " ".join(value.split())
    if not name or _CONTROL.search(name):
        raise ValueError("Give the campaign a name.")
    return name


Region = Annotated[str, Field(max_length=3), AfterValidator(check_region)]
PostalPrefix = Annotated[str, Field(max_length=3), AfterValidator(check_postal_prefix)]
Cents = Annotated[int, Field(ge=1, le=MAX_BID_CENTS)]
Cap = Annotated[int, Field(ge=1, le=MAX_CAP)]
Budget = Annotated[int, Field(ge=1, le=MAX_BUDGET_CENTS)]


def _band_bounds() -> dict[str, tuple[int, int]]:
    bounds: dict[str, tuple[int, int]] = {}
    for _upper, label in AGE_BANDS:
        low, _, high = label.partition("-")
        bounds[label] = (int(low), int(high))
    oldest = f"{AGE_BANDS[-1][0]}+"
    bounds[oldest] = (AGE_BANDS[-1][0], AGE_CEILING)
    return bounds


# Each age band a lead may have, with its first and last age.
AGE_BAND_BOUNDS = _band_bounds()


Age = Annotated[int, Field(ge=AGE_FLOOR, le=AGE_CEILING)]
Quality = Annotated[int, Field(ge=0, le=100)]
TimeZoneName = Annotated[str, Field(max_length=64), AfterValidator(check_timezone)]
WebhookUrl = Annotated[str, Field(max_length=2000), AfterValidator(check_webhook_url)]
CampaignName = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(check_name)]
AttributeName = Annotated[str, Field(min_length=1, max_length=64)]


def _unique_in_order(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


class ScheduleIn(RequestModel):
    """The hours a campaign buys, every week, in its time zone: ``days`` and the hours
    ``start_hour`` (inclusive) to ``end_hour`` (exclusive) of each of them."""

    days: Annotated[list[Day], Field(min_length=1, max_length=7)]
    start_hour: Annotated[int, Field(ge=0, le=23)] = 0
    end_hour: Annotated[int, Field(ge=1, le=24)] = 24

    @field_validator("days")
    @classmethod
    def _days_in_week_order(cls, value: list[str]) -> list[str]:
        chosen = set(value)
        return [day for day in DAYS if day in chosen]

    @field_validator("end_hour")
    @classmethod
    def _after_start(cls, value: int, info: ValidationInfo) -> int:
        start = info.data.get("start_hour")
        if isinstance(start, int) and value <= start:
            raise ValueError("Must be later than start_hour.")
        return value


class FiltersIn(RequestModel):
    """Which leads a campaign wants. Every filter left out admits every lead."""

    regions: Annotated[list[Region], Field(max_length=80)] = Field(
        default_factory=list, description="US state or Canadian province codes; empty: all."
    )
    postal_prefixes: Annotated[list[PostalPrefix], Field(max_length=2000)] = Field(
        default_factory=list,
        description="First 3 characters of the ZIP or postal code (936, K1A); empty: all.",
    )
    age_min: Age | None = Field(
        default=None,
        description="A lead matches when its whole age band (18-24, 25-34, …, 65+) lies "
        "between age_min and age_max.",
    )
    age_max: Age | None = Field(default=None, validate_default=True)
    min_quality: Quality | None = Field(default=None, description="Lowest quality score, 0-100.")
    attributes: Annotated[dict[AttributeName, Any], Field(max_length=50)] = Field(
        default_factory=dict,
        description="Per attribute of the vertical shown in a lead's preview: a list of enum "
        'codes (["honda", "toyota"]), a range ({"min": 2015, "max": 2024}) or true/false.',
    )

    @field_validator("regions", "postal_prefixes")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        return _unique_in_order(value)

    @field_validator("age_max")
    @classmethod
    def _not_below_min(cls, value: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("age_min")
        if value is not None and isinstance(low, int) and value < low:
            raise ValueError("Must not be below age_min.")
        if value is None and not isinstance(low, int):
            return value
        # A lead matches only when its whole band lies in the range: a range holding no band
        # (30 to 33, or from 66) would make a campaign that can never buy anything.
        first = low if isinstance(low, int) else AGE_FLOOR
        last = value if value is not None else AGE_CEILING
        if not any(first <= lo and hi <= last for lo, hi in AGE_BAND_BOUNDS.values()):
            bands = ", ".join(AGE_BAND_BOUNDS)
            raise ValueError(
                f"No whole age band lies in this range, so no lead could match. "
                f"The bands are {bands}."
            )
        return value


def check_vertical(value: str) -> str:
    if get_vertical(value) is None:
        raise ValueError("No such vertical; GET /api/v1/verticals lists them.")
    return value


VerticalSlug = Annotated[str, Field(max_length=40), AfterValidator(check_vertical)]


class CampaignIn(RequestModel):
    name: CampaignName
    vertical: VerticalSlug
    filters: FiltersIn = Field(default_factory=FiltersIn)
    bid_cents: Cents = Field(description="What the campaign pays for one lead.")
    currency: Literal["USD", "CAD"] = "USD"
    daily_cap: Cap | None = Field(default=None, description="Leads per day; none: no cap.")
    monthly_cap: Cap | None = Field(default=None, description="Leads per month; none: no cap.")
    timezone: TimeZoneName = Field(
        default=DEFAULT_TIMEZONE,
        description="IANA time zone in which days, months and the schedule are counted.",
    )
    schedule: ScheduleIn | None = Field(default=None, description="None: every hour.")
    budget_cents: Budget | None = Field(
        default=None, description="Most the campaign may ever spend; none: no limit."
    )
    exclusive_only: bool = Field(default=False, description="Buy exclusive leads only.")
    active: bool = True
    webhook_url: WebhookUrl | None = Field(
        default=None, description="Where bought leads are delivered; none: pick up by API."
    )
    ping_url: WebhookUrl | None = Field(
        default=None,
        description="The buyer's own real-time bidding endpoint: each ping the campaign matches "
        'is POSTed there (no contact data) and its answer `{"bid_cents": n}` (at most '
        "bid_cents) is the campaign's bid; no answer within the deadline: no bid. Each ping "
        "is signed like a delivery (Standard Webhooks: webhook-id, webhook-timestamp, "
        "webhook-signature) with your webhook secret, so a new ping_url is refused (422) "
        "until you have a webhook endpoint (PUT /api/v1/me/webhook); once it is removed, the "
        "endpoint is not asked. None: the campaign bids bid_cents on every ping it matches.",
    )


class CampaignPatch(RequestModel):
    """Any of the campaign's fields; the ones sent replace the stored values (``filters`` and
    ``schedule`` as a whole). ``null`` clears an optional field (a cap, the budget, the
    schedule, the webhook). ``{"active": false}`` pauses a campaign, ``true`` resumes it."""

    name: str | None = None
    vertical: str | None = None
    filters: dict[str, Any] | None = None
    bid_cents: int | None = None
    currency: str | None = None
    daily_cap: int | None = None
    monthly_cap: int | None = None
    timezone: str | None = None
    schedule: dict[str, Any] | None = None
    budget_cents: int | None = None
    exclusive_only: bool | None = None
    active: bool | None = None
    webhook_url: str | None = None
    ping_url: str | None = None


class CampaignOut(BaseModel):
    id: str
    name: str
    vertical: str
    filters: dict[str, Any]
    bid_cents: int
    currency: str
    daily_cap: int | None
    monthly_cap: int | None
    timezone: str
    schedule: dict[str, Any] | None
    budget_cents: int | None
    spent_cents: int
    exclusive_only: bool
    active: bool
    webhook_url: str | None
    ping_url: str | None = None
    delivered_today: int = Field(description="Leads delivered today, in the campaign's zone.")
    delivered_this_month: int
    created_at: dt.datetime
    updated_at: dt.datetime
