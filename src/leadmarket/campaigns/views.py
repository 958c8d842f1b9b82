"""The buyer's campaign pages: the list with today's and this month's deliveries, pause and
resume, the create and edit form (filters drawn from the vertical's preview attributes), and
deletion.

Thin like ``api.py``: a form becomes the same plain body the API takes, checked by
``service.check_campaign`` (the one validation path) and handed to the same service
functions; a refused form comes back with each message beside its control and nothing
written."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData
from starlette.responses import Response

from leadmarket.accounts.auth import Principal
from leadmarket.accounts.policy import Action
from leadmarket.accounts.views import PageRoute, render_page, role_page, see_other
from leadmarket.campaigns import service
from leadmarket.campaigns.schemas import (
    DAYS,
    DEFAULT_TIMEZONE,
    MAX_BID_CENTS,
    MAX_BUDGET_CENTS,
    known_timezones,
)
from leadmarket.config import settings_of
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import FieldError, ValidationFailed
from leadmarket.kit.money import format_money, parse_dollars
from leadmarket.kit.pagination import decode_cursor, encode_cursor
from leadmarket.kit.routing import get_session
from leadmarket.leads.views import Choice, InputSpec
from leadmarket.models import Campaign, Role
from leadmarket.verticals.registry import FieldSpec, Vertical, all_verticals, get_vertical

Session = Annotated[AsyncSession, Depends(get_session)]
CampaignId = Annotated[str, Path(max_length=40)]

router = APIRouter(route_class=PageRoute, include_in_schema=False)

CAMPAIGNS = "/buyer/campaigns"
NEW_CAMPAIGN = "/buyer/campaigns/new"
CAMPAIGNS_PER_PAGE = 25
DAY_NAMES = {
    "mon": "Monday",
    "tue": "Tuesday",
    "wed": "Wednesday",
    "thu": "Thursday",
    "fri": "Friday",
    "sat": "Saturday",
    "sun": "Sunday",
}
# The zones buyers in the United States and Canada use; any other IANA zone set through the
# API is shown too.
COMMON_TIMEZONES = (
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Phoenix",
    "America/Los_Angeles",
    "America/Anchorage",
    "Pacific/Honolulu",
    "America/Puerto_Rico",
    "America/Halifax",
    "America/St_Johns",
    "America/Toronto",
    "America/Winnipeg",
    "America/Regina",
    "America/Edmonton",
    "America/Vancouver",
    "UTC",
)
NOTICES = {
    "created": "The campaign was created.",
    "saved": "The campaign was saved.",
    "paused": "The campaign is paused: it buys nothing until you resume it.",
    "resumed": "The campaign is running again.",
    "deleted": "The campaign was deleted.",
}
# The API's names for the form's controls that differ.
_API_TO_FORM = {"bid_cents": "bid", "budget_cents": "budget"}
_NUMBER = re.compile(r"^[+-]?\d{1,15}(?:\.\d{1,6})?$", re.ASCII)
_WHOLE = re.compile(r"^\d{1,9}$", re.ASCII)


def buyer_page(
    action: Action, *, return_to: str | None = None
) -> Callable[..., Awaitable[Principal]]:
    """Guard of the buyer pages: the member guard (sign-in, CSRF, A2), then the role."""
    return role_page(action, Role.BUYER, "Campaigns are for buyers.", return_to=return_to)


# The list ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignRow:
    id: str
    name: str
    vertical_name: str
    bid: str
    active: bool
    today: str
    month: str
    spent: str
    delivery: str


def campaign_row(campaign: Campaign, counts: tuple[int, int]) -> CampaignRow:
    vertical = get_vertical(campaign.vertical)
    day, month = counts
    return CampaignRow(
        id=campaign.id,
        name=campaign.name,
        vertical_name=vertical.name if vertical else campaign.vertical,
        bid=format_money(campaign.bid_cents, campaign.currency),
        active=campaign.active,
        today=f"{day} of {campaign.daily_cap}" if campaign.daily_cap else str(day),
        month=f"{month} of {campaign.monthly_cap}" if campaign.monthly_cap else str(month),
        spent=format_money(campaign.spent_cents, campaign.currency)
        + (
            f" of {format_money(campaign.budget_cents, campaign.currency)}"
            if campaign.budget_cents
            else ""
        ),
        delivery="Webhook" if campaign.webhook_url else "Pick up by API",
    )


@router.get(CAMPAIGNS)
async def campaigns_page(
    request: Request,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.VIEW_DASHBOARD)),
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    rows = await service.list_campaigns(
        session, principal.user, limit=CAMPAIGNS_PER_PAGE, before_id=decode_cursor(cursor)
    )
    more = len(rows) > CAMPAIGNS_PER_PAGE
    rows = rows[:CAMPAIGNS_PER_PAGE]
    counts = await service.delivered_counts(session, rows, utcnow())
    return render_page(
        request,
        "campaigns/list.html",
        {
            "campaigns": [campaign_row(c, counts[c.id]) for c in rows],
            "next_cursor": encode_cursor(rows[-1].id) if more and rows else None,
            "paged": cursor is not None,
            "notice": NOTICES.get(request.query_params.get("done", "")),
        },
    )


@router.post(CAMPAIGNS + "/{campaign_id}/active")
async def pause_or_resume(
    request: Request,
    campaign_id: CampaignId,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.MANAGE_CAMPAIGNS, return_to=CAMPAIGNS)),
) -> Response:
    form = await request.form()
    active = _text(form, "active") == "yes"
    await service.set_active(session, principal.user, campaign_id, active=active)
    return see_other(f"{CAMPAIGNS}?done={'resumed' if active else 'paused'}")


@router.post(CAMPAIGNS + "/{campaign_id}/delete")
async def delete_campaign(
    campaign_id: CampaignId,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.MANAGE_CAMPAIGNS, return_to=CAMPAIGNS)),
) -> Response:
    await service.delete_campaign(session, principal.user, campaign_id)
    return see_other(f"{CAMPAIGNS}?done=deleted")


# The form ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilterControl:
    """One attribute filter of the form: ``kind`` "checkboxes" (enum codes), "range" (min and
    max) or "yes_no"."""

    name: str
    label: str
    kind: str
    choices: tuple[Choice, ...] = ()
    minimum: str | None = None
    maximum: str | None = None

    @property
    def id(self) -> str:
        return self.name.replace(".", "-")


def _number_text(value: float | None) -> str | None:
    if value is None:
        return None
    return str(int(value)) if float(value).is_integer() else str(value)


def filter_control(spec: FieldSpec) -> FilterControl | None:
    name = f"filters.attributes.{spec.name}"
    if spec.enum is not None:
        choices = tuple(Choice(code, spec.enum_labels.get(code, code)) for code in spec.enum)
        return FilterControl(name, spec.label, "checkboxes", choices)
    if spec.type == "boolean":
        return FilterControl(name, spec.label, "yes_no")
    if spec.type in ("integer", "number"):
        return FilterControl(
            name,
            spec.label,
            "range",
            minimum=_number_text(spec.minimum),
            maximum=_number_text(spec.maximum),
        )
    return None


def filter_controls(vertical: Vertical) -> tuple[FilterControl, ...]:
    """Controls for the attributes a lead's preview shows: the only ones campaigns may use."""
    controls = (filter_control(spec) for spec in vertical.fields if spec.preview)
    return tuple(control for control in controls if control is not None)


def _timezone_choices(current: str | None) -> tuple[Choice, ...]:
    zones = list(COMMON_TIMEZONES)
    if current and current not in zones and current in known_timezones():
        zones.append(current)
    return tuple(Choice(zone, zone.replace("_", " ")) for zone in zones)


HOUR_CHOICES = tuple(Choice(str(h), f"{h:02d}:00") for h in range(24))
END_HOUR_CHOICES = tuple(Choice(str(h), f"{h:02d}:00") for h in range(1, 25))


def main_inputs(timezone: str | None) -> tuple[InputSpec, ...]:
    return (
        InputSpec("name", "Campaign name", maxlength=100),
        InputSpec(
            "bid",
            "Bid per lead",
            inputmode="decimal",
            width="short",
            hint="In dollars, for example 25.00.",
        ),
        InputSpec(
            "currency",
            "Currency",
            kind="select",
            width="short",
            choices=(Choice("USD", "USD"), Choice("CAD", "CAD")),
            placeholder=None,
        ),
        InputSpec(
            "daily_cap",
            "Leads per day",
            kind="number",
            required=False,
            inputmode="numeric",
            width="short",
            minimum="1",
            step="1",
            hint="Empty: no daily limit.",
        ),
        InputSpec(
            "monthly_cap",
            "Leads per month",
            kind="number",
            required=False,
            inputmode="numeric",
            width="short",
            minimum="1",
            step="1",
            hint="Empty: no monthly limit.",
        ),
        InputSpec(
            "budget",
            "Budget",
            required=False,
            inputmode="decimal",
            width="short",
            hint="The most this campaign may ever spend, in dollars. Empty: no limit.",
        ),
        InputSpec(
            "timezone",
            "Time zone",
            kind="select",
            width="medium",
            choices=_timezone_choices(timezone),
            placeholder=None,
            hint="Days, months and the schedule are counted in this zone.",
        ),
        InputSpec(
            "webhook_url",
            "Deliver to webhook",
            required=False,
            input_type="url",
            spellcheck=False,
            maxlength=2000,
            hint="Where bought leads are sent, https://… Empty: pick them up through the API.",
        ),
        InputSpec(
            "ping_url",
            "Bid from your own server",
            required=False,
            input_type="url",
            spellcheck=False,
            maxlength=2000,
            hint="Real-time pings are sent to this https://… address (no contact data); its "
            'answer {"bid_cents": n}, up to the bid above, is the campaign\'s bid. Pings are '
            "signed like deliveries, with your webhook secret: set your webhook first. "
            "Empty: the campaign bids its bid on every ping it matches.",
        ),
    )


SCHEDULE_INPUTS = (
    InputSpec(
        "schedule.start_hour",
        "From",
        kind="select",
        width="short",
        choices=HOUR_CHOICES,
        placeholder=None,
    ),
    InputSpec(
        "schedule.end_hour",
        "Until",
        kind="select",
        width="short",
        choices=END_HOUR_CHOICES,
        placeholder=None,
    ),
)

TARGETING_INPUTS = (
    InputSpec(
        "filters.regions",
        "States and provinces",
        required=False,
        width="medium",
        spellcheck=False,
        hint="Two-letter codes separated by commas, for example CA, NV, ON. Empty: everywhere.",
    ),
    InputSpec(
        "filters.postal_prefixes",
        "ZIP or postal code prefixes",
        required=False,
        spellcheck=False,
        hint="First 3 characters, separated by commas, for example 936, 937, K1A. Empty: all.",
    ),
    InputSpec(
        "filters.age_min",
        "Youngest age",
        kind="number",
        required=False,
        inputmode="numeric",
        width="short",
        minimum="14",
        maximum="120",
        step="1",
        hint="A lead matches when its whole age band (18-24, 25-34, … 65+) is in your range.",
    ),
    InputSpec(
        "filters.age_max",
        "Oldest age",
        kind="number",
        required=False,
        inputmode="numeric",
        width="short",
        minimum="14",
        maximum="120",
        step="1",
    ),
    InputSpec(
        "filters.min_quality",
        "Lowest quality score",
        kind="number",
        required=False,
        inputmode="numeric",
        width="short",
        minimum="0",
        maximum="100",
        step="1",
        hint="0 to 100. Empty: any.",
    ),
)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _list(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,\s]+", text) if part.strip()]


def _whole(text: str) -> tuple[int | None, str | None]:
    cleaned = text.strip().replace(",", "")
    if not cleaned:
        return None, None
    if not _WHOLE.match(cleaned):
        return None, "Enter a whole number."
    return int(cleaned), None


def _number(text: str) -> tuple[float | int | None, str | None]:
    cleaned = text.strip().replace(",", "")
    if not cleaned:
        return None, None
    if not _NUMBER.match(cleaned):
        return None, "Enter a number."
    value = Decimal(cleaned)
    return (int(value) if value == value.to_integral_value() else float(value)), None


@dataclass
class ReadForm:
    payload: dict[str, Any]
    values: dict[str, Any]
    errors: dict[str, str]


def read_campaign_form(form: FormData, vertical: Vertical) -> ReadForm:
    """The API body a campaign form stands for, what to show again, and what could not even be
    read (a price that is not a number)."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in (
        "name",
        "currency",
        "timezone",
        "webhook_url",
        "ping_url",
        "bid",
        "budget",
        "daily_cap",
    ):
        values[name] = _text(form, name).strip()
    values["monthly_cap"] = _text(form, "monthly_cap").strip()
    payload: dict[str, Any] = {
        "vertical": vertical.slug,
        "name": values["name"],
        "currency": values["currency"] or "USD",
        "timezone": values["timezone"] or DEFAULT_TIMEZONE,
        "webhook_url": values["webhook_url"] or None,
        "ping_url": values["ping_url"] or None,
        "exclusive_only": _text(form, "exclusive_only") == "yes",
        "active": _text(form, "active") == "yes",
    }
    values["exclusive_only"] = payload["exclusive_only"]
    values["active"] = payload["active"]
    # The page takes dollars: its messages say amounts in the campaign's money, never the
    # API's cents ("Input should be less than or equal to 1000000").
    currency = payload["currency"] if payload["currency"] in ("USD", "CAD") else "USD"
    for form_name, api_name, most in (
        ("bid", "bid_cents", MAX_BID_CENTS),
        ("budget", "budget_cents", MAX_BUDGET_CENTS),
    ):
        cents, message = parse_dollars(values[form_name])
        if message is None and cents is None and form_name == "bid":
            message = "Enter the bid per lead, in dollars, for example 25.00."
        elif message is None and cents is not None and not 1 <= cents <= most:
            message = (
                f"Enter an amount from {format_money(1, currency)} "
                f"to {format_money(most, currency)}."
            )
        if message:
            errors[form_name] = message
        payload[api_name] = cents
    for name in ("daily_cap", "monthly_cap"):
        number, message = _whole(values[name])
        if message:
            errors[name] = message
        payload[name] = number

    days = [day for day in form.getlist("schedule.days") if isinstance(day, str)]
    values["schedule.days"] = days
    values["schedule.start_hour"] = _text(form, "schedule.start_hour") or "0"
    values["schedule.end_hour"] = _text(form, "schedule.end_hour") or "24"
    payload["schedule"] = None
    if days:
        start, start_error = _whole(values["schedule.start_hour"])
        until, until_error = _whole(values["schedule.end_hour"])
        if start_error or until_error:
            errors["schedule.start_hour"] = "Choose the hours."
        payload["schedule"] = {
            "days": days,
            "start_hour": 0 if start is None else start,
            "end_hour": 24 if until is None else until,
        }

    filters: dict[str, Any] = {}
    for name in ("regions", "postal_prefixes"):
        text = _text(form, f"filters.{name}").strip()
        values[f"filters.{name}"] = text
        filters[name] = _list(text)
    for name in ("age_min", "age_max", "min_quality"):
        text = _text(form, f"filters.{name}").strip()
        values[f"filters.{name}"] = text
        number, message = _whole(text)
        if message:
            errors[f"filters.{name}"] = message
        elif number is not None:
            filters[name] = number
    attributes: dict[str, Any] = {}
    for control in filter_controls(vertical):
        attribute = control.name.rpartition(".")[2]
        if control.kind == "checkboxes":
            codes = [v for v in form.getlist(control.name) if isinstance(v, str)]
            values[control.name] = codes
            if codes:
                attributes[attribute] = codes
        elif control.kind == "yes_no":
            answer = _text(form, control.name)
            values[control.name] = answer
            if answer in ("yes", "no"):
                attributes[attribute] = answer == "yes"
        else:
            bounds: dict[str, Any] = {}
            for side in ("min", "max"):
                text = _text(form, f"{control.name}.{side}").strip()
                values[f"{control.name}.{side}"] = text
                amount, message = _number(text)
                if message:
                    errors[control.name] = message
                elif amount is not None:
                    bounds[side] = amount
            if bounds:
                attributes[attribute] = bounds
    filters["attributes"] = attributes
    payload["filters"] = filters
    return ReadForm(payload=payload, values=values, errors=errors)


def form_values(campaign: Campaign) -> dict[str, Any]:
    """A stored campaign as the form's values."""
    filters = campaign.filters
    values: dict[str, Any] = {
        "name": campaign.name,
        "bid": f"{Decimal(campaign.bid_cents) / 100:.2f}",
        "currency": campaign.currency,
        "daily_cap": str(campaign.daily_cap or ""),
        "monthly_cap": str(campaign.monthly_cap or ""),
        "budget": f"{Decimal(campaign.budget_cents) / 100:.2f}" if campaign.budget_cents else "",
        "timezone": campaign.timezone,
        "webhook_url": campaign.webhook_url or "",
        "ping_url": campaign.ping_url or "",
        "exclusive_only": campaign.exclusive_only,
        "active": campaign.active,
        "filters.regions": ", ".join(filters.get("regions", [])),
        "filters.postal_prefixes": ", ".join(filters.get("postal_prefixes", [])),
    }
    for name in ("age_min", "age_max", "min_quality"):
        number = filters.get(name)
        values[f"filters.{name}"] = "" if number is None else str(number)
    schedule = campaign.schedule or {}
    values["schedule.days"] = list(schedule.get("days", []))
    values["schedule.start_hour"] = str(schedule.get("start_hour", 0))
    values["schedule.end_hour"] = str(schedule.get("end_hour", 24))
    for name, rule in filters.get("attributes", {}).items():
        key = f"filters.attributes.{name}"
        if isinstance(rule, bool):
            values[key] = "yes" if rule else "no"
        elif isinstance(rule, list):
            values[key] = list(rule)
        elif isinstance(rule, dict):
            for end in ("min", "max"):
                if rule.get(end) is not None:
                    values[f"{key}.{end}"] = _number_text(rule[end]) or ""
    return values


def new_values() -> dict[str, Any]:
    return {
        "currency": "USD",
        "timezone": DEFAULT_TIMEZONE,
        "active": True,
        "schedule.days": [],
        "schedule.start_hour": "8",
        "schedule.end_hour": "20",
    }


def place_errors(errors: Sequence[FieldError], known: set[str]) -> dict[str, str]:
    """Each message beside its control (``filters.regions.2`` goes to ``filters.regions``)."""
    placed: dict[str, str] = {}
    for error in errors:
        name = _API_TO_FORM.get(error.field, error.field)
        while name and name not in known:
            name = name.rpartition(".")[0]
        placed.setdefault(
            name or "form", error.message if name else f"{error.field}: {error.message}"
        )
    return placed


def _known(vertical: Vertical) -> set[str]:
    names = {spec.name for spec in (*main_inputs(None), *SCHEDULE_INPUTS, *TARGETING_INPUTS)}
    names |= {control.name for control in filter_controls(vertical)}
    return names | {"schedule.days", "schedule", "exclusive_only", "active"}


def _form_page(
    request: Request,
    vertical: Vertical | None,
    *,
    campaign_id: str | None,
    values: Mapping[str, Any],
    errors: Mapping[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    labels = {
        spec.name: spec.label for spec in (*main_inputs(None), *SCHEDULE_INPUTS, *TARGETING_INPUTS)
    }
    if vertical is not None:
        labels.update({c.name: c.label for c in filter_controls(vertical)})
    labels["schedule.days"] = "Days"
    return render_page(
        request,
        "campaigns/form.html",
        {
            "vertical": vertical,
            "verticals": all_verticals(),
            "campaign_id": campaign_id,
            "main_inputs": main_inputs(str(values.get("timezone", "")) or None),
            "schedule_inputs": SCHEDULE_INPUTS,
            "targeting_inputs": TARGETING_INPUTS,
            "filter_controls": filter_controls(vertical) if vertical else (),
            "days": [Choice(day, DAY_NAMES[day]) for day in DAYS],
            "labels": labels,
            "values": values,
            "errors": errors or {},
        },
        status_code=status_code,
    )


@router.get(NEW_CAMPAIGN)
async def new_campaign_form(
    request: Request,
    principal: Principal = Depends(buyer_page(Action.VIEW_DASHBOARD)),
    vertical: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    chosen = get_vertical(vertical) if vertical else None
    if vertical is not None and chosen is None:
        return _form_page(
            request,
            None,
            campaign_id=None,
            values={},
            errors={"vertical": "Choose one of the kinds of service listed."},
            status_code=404,
        )
    return _form_page(request, chosen, campaign_id=None, values=new_values())


async def _save(
    request: Request,
    session: AsyncSession,
    principal: Principal,
    vertical: Vertical,
    campaign_id: str | None,
) -> Response:
    read = read_campaign_form(await request.form(), vertical)
    # Collected first so that they are shown together with whatever check_campaign refuses.
    url_errors = service.endpoint_url_errors(read.payload, settings_of(request))
    # Placed after the others: an address that is no address at all is told so first.
    current = (
        await service.get_campaign(session, principal.user, campaign_id)
        if campaign_id is not None
        else None
    )
    secret_errors = await service.ping_url_errors(session, principal.user, read.payload, current)
    try:
        data, _ = service.check_campaign(read.payload)
        if read.errors or url_errors or secret_errors:
            raise ValidationFailed(errors=[])
        if campaign_id is None:
            await service.create_campaign(session, principal.user, data)
        else:
            await service.update_campaign(session, principal.user, campaign_id, read.payload)
    except ValidationFailed as exc:
        await session.rollback()
        errors = dict(read.errors)
        found = [*url_errors, *exc.errors, *secret_errors]
        for name, message in place_errors(found, _known(vertical)).items():
            errors.setdefault(name, message)
        return _form_page(
            request,
            vertical,
            campaign_id=campaign_id,
            values=read.values,
            errors=errors,
            status_code=422,
        )
    return see_other(f"{CAMPAIGNS}?done={'created' if campaign_id is None else 'saved'}")


@router.post(NEW_CAMPAIGN)
async def create_campaign(
    request: Request,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.MANAGE_CAMPAIGNS, return_to=NEW_CAMPAIGN)),
) -> Response:
    form = await request.form()
    vertical = get_vertical(_text(form, "vertical"))
    if vertical is None:
        return _form_page(
            request,
            None,
            campaign_id=None,
            values={},
            errors={"vertical": "Choose one of the kinds of service listed."},
            status_code=422,
        )
    return await _save(request, session, principal, vertical, None)


@router.get(CAMPAIGNS + "/{campaign_id}")
async def edit_campaign_form(
    request: Request,
    campaign_id: CampaignId,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.VIEW_DASHBOARD)),
) -> Response:
    campaign = await service.get_campaign(session, principal.user, campaign_id)
    return _form_page(
        request,
        get_vertical(campaign.vertical),
        campaign_id=campaign.id,
        values=form_values(campaign),
    )


@router.post(CAMPAIGNS + "/{campaign_id}")
async def save_campaign(
    request: Request,
    campaign_id: CampaignId,
    session: Session,
    principal: Principal = Depends(buyer_page(Action.MANAGE_CAMPAIGNS)),
) -> Response:
    campaign = await service.get_campaign(session, principal.user, campaign_id)
    vertical = get_vertical(campaign.vertical)
    if vertical is None:
        raise ValidationFailed("This campaign's vertical is no longer offered.")
    return await _save(request, session, principal, vertical, campaign_id)
