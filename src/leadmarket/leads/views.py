"""The lead pages (L1, L2, L3, L6): the hosted consumer form a seller links to or embeds, the
consent certificate page where a consumer checks or withdraws a consent, and the seller's own
pages — their leads with quality figures, posting a lead by hand, and the addresses and iframe
snippets of their hosted forms.

Thin like ``api.py``: every form is parsed into :class:`LeadIn` and handed to
:func:`intake.create_lead`, the one intake path; a refused form is shown again with each
message beside its field and nothing written. Three rules of the hosted form
(``/forms/{vertical}?seller=…``) are decided here because only a page knows them:

* **No cookies.** The form lives in an iframe on the seller's site, where browsers often block
  third-party cookies, so it carries a signed hidden token (:class:`ConsumerFormTokens`: an HMAC
  over vertical, seller, issue time and embedding page, valid two hours) instead of a CSRF
  cookie; a POST whose ``Origin`` names another site is refused as well.
* **The evidence comes from the request, never from the form** (L3): the disclosure is the text
  the server renders for this vertical and seller, the time is now, the address and browser
  are the request's; the page is the form's own address, or the page of another site that
  framed it, recorded in the signed token when the frame was loaded.
* **Sale terms of form leads** are the seller's defaults, :data:`FORM_SALE_TERMS`: an exclusive
  auction of 60 minutes with a reserve of 1000 cents. Per-seller settings come later.
* **Global Privacy Control** (``Sec-GPC: 1``) is an opt-out of sale and sharing, yet a consumer
  filling in this form is asking to be put in touch with a company, which on a lead exchange
  is a sale. We honour the signal by selling nothing the consumer did not direct themselves:
  the form says the signal is honoured and adds a second, unticked box in which the consumer
  directs the disclosure to *one* company (:func:`gpc_consent_addendum`, recorded as part of
  the consent text). Without that box ticked nothing is stored and nothing is sent. With it,
  the consent names only the seller and one buyer (``intake.gpc_parties``), records
  ``global_privacy_control``, and the lead is exclusive (one buyer, never shared among
  several); its order tells the buyer it may not be resold or shared onward.

A consumer under 14 is refused with nothing stored and nothing typed shown back (L2); seller
pages never show a lead's contact data, which the lead row does not even hold (L6)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import re
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import ValidationError
from pydantic_core import PydanticCustomError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData
from starlette.responses import Response

from leadmarket.accounts import repository as accounts_repository
from leadmarket.accounts.auth import Principal
from leadmarket.accounts.deps import client_meta
from leadmarket.accounts.policy import Action
from leadmarket.accounts.views import PageRoute, render_page, role_page, see_other, visitor_page
from leadmarket.config import Settings, settings_of
from leadmarket.kit.crypto import derive_key, keyed_hash
from leadmarket.kit.csrf import check_origin, double_submit, trusted_origins
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import (
    DomainError,
    FieldError,
    NotFound,
    ValidationFailed,
    validation_errors,
)
from leadmarket.kit.money import format_money, parse_dollars
from leadmarket.kit.pagination import decode_cursor, encode_cursor
from leadmarket.kit.routing import TransactionalRoute, get_session, guard
from leadmarket.kit.templating import form_text
from leadmarket.leads import intake, previews, service
from leadmarket.leads.api import Kit
from leadmarket.leads.intake import ConsumerOptedOut, DuplicateLead, MinorRefused
from leadmarket.leads.reference import CA_PROVINCES, US_STATES
from leadmarket.leads.schemas import (
    MINOR_ERROR,
    ConsentWithdrawalIn,
    LeadIn,
    check_birth_date,
    clean_page_url,
)
from leadmarket.models import Lead, Role, SaleMode, User, UserStatus
from leadmarket.privacy.preferences import gpc_requested
from leadmarket.verticals.registry import (
    FieldSpec,
    Vertical,
    all_verticals,
    get_vertical,
    validate_attributes,
)

Session = Annotated[AsyncSession, Depends(get_session)]
_F = TypeVar("_F", bound=Callable[..., Any])

router = APIRouter(route_class=PageRoute, include_in_schema=False)

SELLER_LEADS = "/seller/leads"
NEW_LEAD = "/seller/leads/new"
SELLER_FORMS = "/seller/forms"
LEADS_PER_PAGE = 25
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def gpc_consent_addendum(vertical: Vertical) -> str:
    """What the form adds to the consent when the browser sends Global Privacy Control, and
    what the consent evidence then records as the text shown."""
    return (
        "Your browser sent a Global Privacy Control signal, which we honour as your request "
        "not to sell or share your personal information. If you still send this request, you "
        f"direct us to pass it to one company that answers {vertical.name.lower()} requests; "
        "that company may use it only to answer you, and may not resell or share it. Nobody "
        "else receives it."
    )


# The seller's default terms for leads from the hosted form (see the module docstring).
FORM_SALE_TERMS: dict[str, Any] = {
    "mode": SaleMode.AUCTION.value,
    "duration_minutes": 60,
    "exclusive": True,
    "reserve_cents": 1000,
}

# Messages shown after a redirect, chosen by a fixed key so nothing typed is ever reflected.
NOTICES = {
    "posted": "Your lead was posted. Buyers see its preview now, never the contact details.",
    "withdrawn": "This consent is withdrawn. If the request was not sold yet, it left the market.",
}


# Who is looking ---------------------------------------------------------------------------


def seller_page(
    action: Action, *, return_to: str | None = None
) -> Callable[..., Awaitable[Principal]]:
    """Guard of the seller pages: the member guard (sign-in, CSRF, A2), then the role."""
    return role_page(
        action,
        Role.SELLER,
        "These pages are for sellers. Buyers find leads on the market.",
        return_to=return_to,
    )


# Rendering --------------------------------------------------------------------------------


# Form fields ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    value: str
    label: str


@dataclass(frozen=True)
class InputSpec:
    """One control of a lead form, as the templates draw it. ``name`` is the dotted path of the
    value in :class:`LeadIn` (``contact.address.postal_code``), so a validation error names its
    control directly."""

    name: str
    label: str
    kind: str = "text"  # text, number, select, radios, textarea
    required: bool = True
    hint: str | None = None
    input_type: str = "text"
    autocomplete: str | None = None
    inputmode: str | None = None
    width: str | None = None
    maxlength: int | None = None
    minimum: str | None = None
    maximum: str | None = None
    step: str | None = None
    choices: tuple[Choice, ...] = ()
    groups: tuple[tuple[str, tuple[Choice, ...]], ...] = ()
    placeholder: str | None = "Choose…"
    spellcheck: bool | None = None
    rows: int = 4

    @property
    def id(self) -> str:
        return self.name.replace(".", "-")


def _choices(pairs: Mapping[str, str]) -> tuple[Choice, ...]:
    return tuple(Choice(value, label) for value, label in pairs.items())


YES_NO = (Choice("yes", "Yes"), Choice("no", "No"))

CONTACT_INPUTS = (
    InputSpec("contact.first_name", "First name", autocomplete="given-name", maxlength=100),
    InputSpec("contact.last_name", "Last name", autocomplete="family-name", maxlength=100),
    InputSpec(
        "contact.email",
        "Email address",
        input_type="email",
        autocomplete="email",
        spellcheck=False,
        maxlength=320,
    ),
    InputSpec(
        "contact.phone",
        "Phone number",
        input_type="tel",
        autocomplete="tel",
        width="medium",
        maxlength=40,
        hint="A United States or Canadian number, for example (559) 231-4567.",
    ),
    InputSpec(
        "contact.birth_date",
        "Date of birth",
        input_type="date",
        autocomplete="bday",
        width="medium",
        hint="For example 1980-04-02. We cannot take requests for children under 14.",
    ),
    InputSpec(
        "contact.address.street",
        "Street address",
        autocomplete="street-address",
        maxlength=200,
    ),
    InputSpec("contact.address.city", "City", autocomplete="address-level2", width="medium"),
    InputSpec(
        "contact.address.region",
        "State or province",
        kind="select",
        autocomplete="address-level1",
        width="medium",
        groups=(("United States", _choices(US_STATES)), ("Canada", _choices(CA_PROVINCES))),
    ),
    InputSpec(
        "contact.address.postal_code",
        "ZIP or postal code",
        autocomplete="postal-code",
        width="short",
        maxlength=12,
        hint="5-digit ZIP code, or a Canadian postal code such as K1A 0B1.",
    ),
    InputSpec(
        "contact.address.country",
        "Country",
        kind="select",
        autocomplete="country",
        width="medium",
        choices=(Choice("US", "United States"), Choice("CA", "Canada")),
        placeholder=None,
    ),
)

CONSENT_EVIDENCE_INPUTS = (
    InputSpec(
        "consent.disclosure_text",
        "Consent text the consumer agreed to",
        kind="textarea",
        maxlength=10_000,
        rows=10,
        hint="Exactly the words your page showed beside the box the consumer ticked. It starts "
        "as Leadmarket's standard text for this service; change it if your page said otherwise.",
    ),
    InputSpec(
        "consent.page_url",
        "Address of that page",
        input_type="url",
        spellcheck=False,
        maxlength=2000,
        hint="The full https:// address. Anything after ? or # is dropped: it often holds the "
        "consumer's own data.",
    ),
    InputSpec(
        "consent.ip",
        "Consumer's IP address",
        width="medium",
        spellcheck=False,
        maxlength=45,
        hint="IPv4 or IPv6, as your page recorded it when the consumer agreed.",
    ),
    InputSpec(
        "consent.user_agent",
        "Consumer's browser (user agent)",
        spellcheck=False,
        maxlength=1000,
        hint="The User-Agent your page recorded, for example Mozilla/5.0 (…) Firefox/130.0.",
    ),
    InputSpec(
        "consent.given_at",
        "When the consumer agreed (UTC)",
        input_type="datetime-local",
        width="medium",
        hint="Date and time in UTC, within the last 30 days.",
    ),
)

SALE_INPUTS = (
    InputSpec(
        "sale.mode",
        "How to sell it",
        kind="radios",
        choices=(Choice("auction", "Auction"), Choice("fixed", "Fixed price")),
    ),
    InputSpec(
        "sale.currency",
        "Currency",
        kind="select",
        width="short",
        choices=(Choice("USD", "USD"), Choice("CAD", "CAD")),
        placeholder=None,
    ),
    InputSpec(
        "sale.reserve",
        "Reserve price",
        required=False,
        inputmode="decimal",
        width="short",
        hint="Auctions: the lowest bid you accept, in dollars, for example 10.00.",
    ),
    InputSpec(
        "sale.buy_now",
        "Buy-now price",
        required=False,
        inputmode="decimal",
        width="short",
        hint="Auctions: a buyer who pays this gets the lead at once.",
    ),
    InputSpec(
        "sale.price",
        "Fixed price",
        required=False,
        inputmode="decimal",
        width="short",
        hint="Fixed-price sales only.",
    ),
    InputSpec(
        "sale.duration_minutes",
        "Auction length in minutes",
        kind="number",
        required=False,
        inputmode="numeric",
        width="short",
        minimum="5",
        maximum="10080",
        step="1",
        hint="5 to 10080 (a week). Left empty: 60.",
    ),
    InputSpec(
        "sale.exclusive",
        "Buyers",
        kind="radios",
        choices=(Choice("yes", "Exclusive: one buyer"), Choice("no", "Shared: several buyers")),
    ),
    InputSpec(
        "sale.max_buyers",
        "Most buyers of a shared lead",
        kind="number",
        required=False,
        inputmode="numeric",
        width="short",
        minimum="1",
        maximum="4",
        step="1",
        hint="1 to 4. Left empty: 4.",
    ),
)

# Form fields whose value the API takes in cents, and the API's names for them.
_MONEY_FIELDS = {
    "sale.reserve": "reserve_cents",
    "sale.buy_now": "buy_now_cents",
    "sale.price": "price_cents",
}
_API_TO_FORM = {f"sale.{api}": form for form, api in _MONEY_FIELDS.items()}
# The sale model's own messages name API fields; a person at the form knows the labels.
SALE_WORDS = {
    "price_cents": "the fixed price",
    "reserve_cents": "the reserve price",
    "buy_now_cents": "the buy-now price",
    "max_buyers": "the number of buyers",
}


def _number_text(value: float | None) -> str | None:
    if value is None:
        return None
    return str(int(value)) if float(value).is_integer() else str(value)


def attribute_input(spec: FieldSpec) -> InputSpec:
    """The control of one of a vertical's attributes, generated from its definition."""
    name = f"attributes.{spec.name}"
    if spec.type == "boolean":
        return InputSpec(name, spec.label, "radios", spec.required, spec.help, choices=YES_NO)
    if spec.enum is not None:
        choices = tuple(Choice(code, spec.enum_labels.get(code, code)) for code in spec.enum)
        return InputSpec(name, spec.label, "select", spec.required, spec.help, choices=choices)
    if spec.type in ("integer", "number"):
        return InputSpec(
            name,
            spec.label,
            "number",
            spec.required,
            spec.help,
            inputmode="numeric" if spec.type == "integer" else "decimal",
            width="medium",
            minimum=_number_text(spec.minimum),
            maximum=_number_text(spec.maximum),
            step="1" if spec.type == "integer" else "any",
        )
    long_text = spec.max_length is not None and spec.max_length > 200
    return InputSpec(
        name,
        spec.label,
        "textarea" if long_text else "text",
        spec.required,
        spec.help,
        maxlength=spec.max_length,
    )


def attribute_inputs(vertical: Vertical) -> tuple[InputSpec, ...]:
    return tuple(attribute_input(spec) for spec in vertical.fields)


def _labels(*groups: Sequence[InputSpec]) -> dict[str, str]:
    """What the error summary calls each field, so "This field is required." says which."""
    labels = {spec.name: spec.label for group in groups for spec in group}
    labels["consent.agree"] = "Consent"
    labels["consent.gpc_direct"] = "Your choice despite Global Privacy Control"
    labels["sale"] = "Sale terms"
    return labels


# Reading a lead form ----------------------------------------------------------------------


def _typed(form: FormData, specs: Sequence[InputSpec]) -> dict[str, str]:
    """The values to show again in a refused form."""
    return {spec.name: form_text(form, spec.name).strip() for spec in specs}


_INTEGER = re.compile(r"^[+-]?\d{1,15}$", re.ASCII)
_DECIMAL = re.compile(r"^[+-]?\d{1,15}(?:\.\d{1,6})?$", re.ASCII)


def _whole_number(text: str) -> int | None:
    cleaned = text.replace(",", "").strip()
    return int(cleaned) if _INTEGER.match(cleaned) else None


def _attribute_value(spec: FieldSpec, text: str) -> tuple[Any, str | None]:
    """A form answer as the JSON value the vertical's validation expects, or why it is not one.
    Range and choice checks stay with :func:`validate_attributes`, the one authority."""
    if spec.type == "boolean":
        if text in ("yes", "no"):
            return text == "yes", None
        return None, "Choose yes or no."
    if spec.type == "integer":
        number = _whole_number(text)
        if number is None:
            return None, "Enter a whole number, for example 2019."
        return number, None
    if spec.type == "number":
        cleaned = text.replace(",", "").strip()
        if not _DECIMAL.match(cleaned):
            return None, "Enter a number, for example 52000."
        value = Decimal(cleaned)
        return (int(value) if value == value.to_integral_value() else float(value)), None
    return text, None


def _attributes_payload(
    form: FormData, vertical: Vertical
) -> tuple[dict[str, Any], dict[str, str]]:
    """The vertical's attributes from the form. A blank answer is left out, so that a required
    one is reported as required and an optional one is simply not given."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for spec in vertical.fields:
        name = f"attributes.{spec.name}"
        text = form_text(form, name).strip()
        if not text:
            continue
        value, message = _attribute_value(spec, text)
        if message is not None:
            errors[name] = message
        else:
            values[spec.name] = value
    return values, errors


def _contact_payload(form: FormData) -> tuple[dict[str, Any], dict[str, str]]:
    errors: dict[str, str] = {}
    contact: dict[str, Any] = {}
    for part in ("first_name", "last_name", "email", "phone"):
        value = form_text(form, f"contact.{part}").strip()
        if value:
            contact[part] = value
    birth = form_text(form, "contact.birth_date").strip()
    if birth:
        try:
            contact["birth_date"] = dt.date.fromisoformat(birth).isoformat()
        except ValueError:
            errors["contact.birth_date"] = "Enter the date as year-month-day, like 1980-04-02."
    address: dict[str, Any] = {}
    for part in ("street", "city", "region", "postal_code", "country"):
        value = form_text(form, f"contact.address.{part}").strip()
        if value:
            address[part] = value
    contact["address"] = address
    return contact, errors


def _is_minor(birth_date_text: str) -> bool:
    """Whether a typed birth date is a child's (L2), by the schema's own rule."""
    try:
        check_birth_date(dt.date.fromisoformat(birth_date_text.strip()))
    except PydanticCustomError as exc:
        return exc.type == MINOR_ERROR
    except ValueError:
        return False
    return False


# The sale fields that belong to one way of selling. The page shows them all at once (an
# auction's prefilled with the seller's defaults), so the fields of the other way are not read:
# a seller who picks "Fixed price" and types a price must not be refused for the reserve the
# form itself filled in.
_AUCTION_ONLY = frozenset({"sale.reserve", "sale.buy_now", "sale.duration_minutes"})
_FIXED_ONLY = frozenset({"sale.price"})


def _sale_payload(form: FormData) -> tuple[dict[str, Any], dict[str, str]]:
    errors: dict[str, str] = {}
    sale: dict[str, Any] = {"exclusive": form_text(form, "sale.exclusive") != "no"}
    for name in ("mode", "currency"):
        value = form_text(form, f"sale.{name}").strip()
        if value:
            sale[name] = value
    mode = sale.get("mode")
    ignored = (
        _AUCTION_ONLY
        if mode == SaleMode.FIXED.value
        else _FIXED_ONLY
        if mode == SaleMode.AUCTION.value
        else frozenset()
    )
    for form_name, api_name in _MONEY_FIELDS.items():
        if form_name in ignored:
            continue
        cents, message = parse_dollars(form_text(form, form_name))
        if message is not None:
            errors[form_name] = message
        elif cents is not None:
            sale[api_name] = cents
    for name in ("duration_minutes", "max_buyers"):
        if f"sale.{name}" in ignored:
            continue
        text = form_text(form, f"sale.{name}").strip()
        if not text:
            continue
        number = _whole_number(text)
        if number is None:
            errors[f"sale.{name}"] = "Enter a whole number."
        else:
            sale[name] = number
    return sale, errors


def _consent_payload(form: FormData) -> tuple[dict[str, Any], dict[str, str]]:
    """The consent evidence a seller supplies for a lead posted by hand."""
    errors: dict[str, str] = {}
    consent: dict[str, Any] = {}
    # Its hash is the evidence of the words shown, so only what a browser adds is undone:
    # textareas send CRLF line breaks, and the ends pick up stray blank lines.
    disclosure = form_text(form, "consent.disclosure_text").replace("\r\n", "\n")
    if disclosure.strip():
        consent["disclosure_text"] = disclosure.strip()
    for part in ("page_url", "ip", "user_agent"):
        value = form_text(form, f"consent.{part}").strip()
        if value:
            consent[part] = value
    given = form_text(form, "consent.given_at").strip()
    if given:
        try:
            moment = dt.datetime.fromisoformat(given)
        except ValueError:
            errors["consent.given_at"] = "Enter the date and time, like 2025-05-01T14:30."
        else:
            # A datetime-local control sends no offset; the label says the time is UTC.
            consent["given_at"] = (
                moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
            ).isoformat()
    return consent, errors


def sale_rule_in_words(message: str) -> str:
    """A sale rule's message with the form's words for the API's field names ("A fixed-price
    sale needs the fixed price.", not "… needs price_cents.")."""
    for api_name, words in SALE_WORDS.items():
        message = message.replace(api_name, words)
    return message[:1].upper() + message[1:]


def _schema_errors(exc: ValidationError) -> list[FieldError]:
    raw: list[dict[str, Any]] = []
    for error in exc.errors():
        entry: dict[str, Any] = dict(error)
        if tuple(error["loc"]) == ("sale",):
            # The sale terms' own checks: keep their message (not "This field is required.")
            # and say it with the form's words.
            message = str(entry.get("msg", "")).removeprefix("Value error, ")
            entry = {**entry, "type": "sale_terms", "msg": sale_rule_in_words(message)}
        raw.append(entry)
    return validation_errors(raw)


def _place(
    errors: Sequence[FieldError], known: Collection[str], *, unplaced: str | None
) -> dict[str, str]:
    """Each message beside its control: an error below a control (a union branch, a list item)
    goes to the control; one that belongs to no control goes to the form as a whole, as
    ``unplaced`` if given (a consumer cannot act on the name of a field they never saw)."""
    placed: dict[str, str] = {}
    for error in errors:
        name = _API_TO_FORM.get(error.field, error.field)
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            placed.setdefault(name, error.message)
        else:
            placed.setdefault("form", unplaced or f"{error.field}: {error.message}")
    return placed


@dataclass
class Checked:
    """A lead form after validation: the lead, or the messages by field, or a child (L2)."""

    data: LeadIn | None = None
    errors: dict[str, str] = field(default_factory=dict)
    minor: bool = False


def check_lead_form(
    vertical: Vertical,
    *,
    contact: tuple[dict[str, Any], dict[str, str]],
    attributes: tuple[dict[str, Any], dict[str, str]],
    consent: tuple[dict[str, Any], dict[str, str]],
    sale: tuple[dict[str, Any], dict[str, str]],
    form_errors: Mapping[str, str],
    known: Collection[str],
    unplaced: str | None,
) -> Checked:
    """Validate with the API's own schema, and report every problem of the form at once: the
    schema's, the vertical's attribute checks (which otherwise run only after the schema
    passed), and what could not even be read as a number or date."""
    conversion = {**contact[1], **attributes[1], **consent[1], **sale[1], **form_errors}
    payload = {
        "vertical": vertical.slug,
        "contact": contact[0],
        "attributes": attributes[0],
        "consent": consent[0],
        "sale": sale[0],
    }
    data: LeadIn | None = None
    found: list[FieldError] = []
    try:
        data = LeadIn.model_validate(payload)
    except ValidationError as exc:
        if any(error["type"] == MINOR_ERROR for error in exc.errors()):
            return Checked(minor=True)
        found = _schema_errors(exc)
    if data is not None and not conversion:
        return Checked(data=data)
    found += validate_attributes(vertical, attributes[0])[1]
    errors = dict(conversion)
    for name, message in _place(found, known, unplaced=unplaced).items():
        errors.setdefault(name, message)
    return Checked(errors=errors)


# The hosted consumer form -----------------------------------------------------------------

FORM_TOKEN_FIELD = "form_token"
FORM_TOKEN_TTL = dt.timedelta(hours=2)
# A token issued by another worker whose clock runs a little ahead is still good.
_CLOCK_SKEW_SECONDS = 300
_MAX_FORM_TOKEN_LENGTH = 4000
_TOKENS_STATE_ATTR = "consumer_form_tokens"
EXPIRED_MESSAGE = "This form expired, please submit again."
CONSUMER_UNPLACED = (
    "We could not take your request from this browser. Please try again, or use another one."
)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


@dataclass(frozen=True)
class FormTicket:
    """What a genuine form token says: the embedding page, and whether it is still valid."""

    embedded_in: str | None
    fresh: bool


class ConsumerFormTokens:
    """Signed hidden tokens for the hosted consumer forms, in place of a CSRF cookie: browsers
    often block cookies in a third-party iframe. The token binds vertical, seller, issue time
    and the embedding page with an HMAC under a key of its own; a form older than two hours, or
    a token made for another form, is refused before anything is read."""

    def __init__(self, root_key: bytes, *, ttl: dt.timedelta = FORM_TOKEN_TTL) -> None:
        self._key = derive_key(root_key, "consumer-form")
        self._ttl_seconds = int(ttl.total_seconds())

    def _mac(self, vertical: str, seller_id: str, issued: int, embedded_in: str) -> str:
        # The embedding page is the only free-form part and comes last, so no value can be
        # shifted into another's place.
        return keyed_hash(self._key, f"{vertical}|{seller_id}|{issued}|{embedded_in}")

    def issue(
        self, vertical: str, seller_id: str, *, now: dt.datetime, embedded_in: str | None
    ) -> str:
        issued = int(now.timestamp())
        embedded = embedded_in or ""
        mac = self._mac(vertical, seller_id, issued, embedded)
        return f"{issued}.{_b64(embedded)}.{mac}"

    def read(
        self, token: str, vertical: str, seller_id: str, *, now: dt.datetime
    ) -> FormTicket | None:
        """The ticket of a token this service issued for this form, else None."""
        if len(token) > _MAX_FORM_TOKEN_LENGTH:
            return None
        issued_text, _, rest = token.partition(".")
        encoded, _, mac = rest.partition(".")
        if not issued_text.isascii() or not issued_text.isdigit() or len(issued_text) > 12:
            return None
        try:
            embedded = _unb64(encoded)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        issued = int(issued_text)
        expected = self._mac(vertical, seller_id, issued, embedded)
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            return None
        age = now.timestamp() - issued
        fresh = -_CLOCK_SKEW_SECONDS <= age <= self._ttl_seconds
        return FormTicket(embedded_in=embedded or None, fresh=fresh)


def form_tokens(request: Request) -> ConsumerFormTokens:
    """The app's token maker, built on first use (the key is derived once per process)."""
    existing: ConsumerFormTokens | None = getattr(request.app.state, _TOKENS_STATE_ATTR, None)
    if existing is not None:
        return existing
    created = ConsumerFormTokens(settings_of(request).signing_key())
    setattr(request.app.state, _TOKENS_STATE_ATTR, created)
    return created


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def embedding_page(request: Request) -> str | None:
    """The page of another site showing this form in a frame, when the browser says so.

    ``Sec-Fetch-Dest: iframe`` tells a frame load from a visit; only then is the Referer the
    page the consumer is on (by default browsers send just its origin across sites). The
    address is cleaned of query and fragment at once: those often carry the consumer's data."""
    if request.headers.get("sec-fetch-dest") not in ("iframe", "frame"):
        return None
    referer = request.headers.get("referer", "")
    if not referer or len(referer) > _MAX_FORM_TOKEN_LENGTH:
        return None
    try:
        page = clean_page_url(referer)
    except ValueError:
        return None
    if _origin(page) in trusted_origins(request, settings_of(request)):
        return None
    # The evidence column holds 2000 characters; the site alone is better than nothing.
    return page if len(page) <= 2000 else _origin(page) + "/"


def own_form_url(settings: Settings, vertical: Vertical) -> str:
    """The form's public address, without the query (the seller is recorded on its own)."""
    return f"{settings.base_url.rstrip('/')}/forms/{vertical.slug}"


def form_path(vertical: Vertical, seller_username: str) -> str:
    return f"/forms/{vertical.slug}?{urlencode({'seller': seller_username})}"


@guard
async def consumer_form_guard(request: Request) -> None:
    """Guard of the hosted forms: anyone may open and send them. A POST must come from a page
    of this site (``Origin``); its signed form token is checked by the handler, which knows the
    seller the token was made for."""
    if request.method not in _SAFE_METHODS:
        settings = settings_of(request)
        check_origin(request, trusted_origins(request, settings))


class EmbeddedFormRoute(TransactionalRoute):
    """Route class of the hosted forms: any error becomes a page in the form's own small frame
    (no site navigation: it is shown inside another site's iframe), after the rollback."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        run_in_transaction = super().get_route_handler()

        async def run_form(request: Request) -> Response:
            try:
                return await run_in_transaction(request)
            except DomainError as exc:
                return render_page(
                    request,
                    "leads/form_problem.html",
                    {"title": exc.title, "detail": exc.detail, "status": exc.status},
                    status_code=exc.status,
                    headers=exc.headers,
                )

        return run_form


@dataclass(frozen=True)
class FormSeller:
    """The seller a hosted form sends requests to, copied out of the ORM object: the pages
    that answer a refused request are drawn after the rollback, which expires that object."""

    user: User
    id: str
    username: str


async def _form_target(
    session: AsyncSession, vertical_slug: str, request: Request
) -> tuple[Vertical, FormSeller]:
    """The vertical and the seller a hosted form is for; only an active seller takes leads."""
    vertical = get_vertical(vertical_slug)
    if vertical is None:
        raise NotFound("There is no form for this kind of service.")
    username = request.query_params.get("seller", "").strip()
    if not username or len(username) > 64:
        raise NotFound("This form does not name the company it sends requests to.")
    seller = await accounts_repository.user_by_username(session, username)
    if (
        seller is None
        or seller.role != Role.SELLER.value
        or seller.status != UserStatus.ACTIVE.value
    ):
        raise NotFound("The company this form sends requests to does not take them here.")
    return vertical, FormSeller(seller, seller.id, seller.username)


def _consumer_form(
    request: Request,
    vertical: Vertical,
    seller: FormSeller,
    *,
    embedded_in: str | None,
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    minor: bool = False,
    status_code: int = 200,
) -> Response:
    token = form_tokens(request).issue(
        vertical.slug, seller.id, now=utcnow(), embedded_in=embedded_in
    )
    inputs = attribute_inputs(vertical)
    gpc = gpc_requested(request.headers)
    return render_page(
        request,
        "leads/consumer_form.html",
        {
            "vertical": vertical,
            "seller_username": seller.username,
            "consent_text": vertical.consent_text_for(seller.username),
            "gpc": gpc,
            "gpc_text": gpc_consent_addendum(vertical) if gpc else None,
            "action": form_path(vertical, seller.username),
            "form_token": token,
            "contact_inputs": CONTACT_INPUTS,
            "attribute_inputs": inputs,
            "labels": _labels(CONTACT_INPUTS, inputs),
            "values": values if values is not None else {"contact.address.country": "US"},
            "errors": errors or {},
            "minor": minor,
        },
        status_code=status_code,
    )


def _form_route(method: str, path: str) -> Callable[[_F], _F]:
    """Register a hosted-form route with :class:`EmbeddedFormRoute` on the pages router."""

    def register(endpoint: _F) -> _F:
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            route_class_override=EmbeddedFormRoute,
            include_in_schema=False,
            dependencies=[Depends(consumer_form_guard)],
        )
        return endpoint

    return register


@_form_route("GET", "/forms/{vertical_slug}")
async def consumer_form(
    request: Request, vertical_slug: Annotated[str, Path(max_length=40)], session: Session
) -> Response:
    vertical, seller = await _form_target(session, vertical_slug, request)
    return _consumer_form(request, vertical, seller, embedded_in=embedding_page(request))


@_form_route("POST", "/forms/{vertical_slug}")
async def consumer_form_submit(
    request: Request,
    vertical_slug: Annotated[str, Path(max_length=40)],
    session: Session,
    kit: Kit,
) -> Response:
    vertical, seller = await _form_target(session, vertical_slug, request)
    form = await request.form()
    now = utcnow()
    inputs = attribute_inputs(vertical)
    typed = _typed(form, (*CONTACT_INPUTS, *inputs))

    def minor_page() -> Response:
        # L2: nothing of the request is kept, not even in the page sent back.
        return _consumer_form(
            request, vertical, seller, embedded_in=embedded_in, minor=True, status_code=422
        )

    ticket = form_tokens(request).read(
        form_text(form, FORM_TOKEN_FIELD), vertical.slug, seller.id, now=now
    )
    embedded_in = ticket.embedded_in if ticket else None
    if ticket is None or not ticket.fresh:
        if _is_minor(typed["contact.birth_date"]):
            return minor_page()
        return _consumer_form(
            request,
            vertical,
            seller,
            embedded_in=embedded_in,
            values=typed,
            errors={"form": EXPIRED_MESSAGE},
            status_code=400,
        )

    agreed = form_text(form, "consent.agree") == "yes"
    form_errors = {} if agreed else {"consent.agree": "Tick “I agree” to send your request."}
    disclosure = vertical.consent_text_for(seller.username)
    gpc = gpc_requested(request.headers)
    if gpc:
        # GPC on the consumer form: see the module docstring.
        disclosure = f"{disclosure}\n\n{gpc_consent_addendum(vertical)}"
        if form_text(form, "consent.gpc_direct") != "yes":
            form_errors["consent.gpc_direct"] = (
                "Your browser asks us not to sell or share your data. Tick this box if you "
                "still want one company to answer your request; otherwise nothing is sent."
            )
    consent = {
        # Re-rendered, never read from the form: the evidence is what this page showed.
        "disclosure_text": disclosure,
        "page_url": embedded_in or own_form_url(settings_of(request), vertical),
        "ip": client_meta(request).ip,
        "user_agent": request.headers.get("user-agent", ""),
        "given_at": now.isoformat(),
        "global_privacy_control": gpc,
    }
    checked = check_lead_form(
        vertical,
        contact=_contact_payload(form),
        attributes=_attributes_payload(form, vertical),
        consent=(consent, {}),
        sale=(dict(FORM_SALE_TERMS), {}),
        form_errors=form_errors,
        known={spec.name for spec in (*CONTACT_INPUTS, *inputs)}
        | {"consent.agree", "consent.gpc_direct"},
        unplaced=CONSUMER_UNPLACED,
    )
    if checked.minor:
        return minor_page()
    if checked.data is None:
        return _consumer_form(
            request,
            vertical,
            seller,
            embedded_in=embedded_in,
            values=typed,
            errors=checked.errors,
            status_code=422,
        )
    try:
        created = await intake.create_lead(
            session, kit, seller=seller.user, data=checked.data, source="form"
        )
    except MinorRefused:
        await session.rollback()
        return minor_page()
    except DuplicateLead:
        await session.rollback()
        return render_page(
            request,
            "leads/consumer_duplicate.html",
            {"vertical": vertical, "seller_username": seller.username},
            status_code=409,
        )
    except ConsumerOptedOut:
        await session.rollback()
        return render_page(
            request,
            "leads/consumer_opted_out.html",
            {"vertical": vertical, "seller_username": seller.username},
            status_code=409,
        )
    except ValidationFailed as exc:
        await session.rollback()
        errors = _place(exc.errors, typed.keys(), unplaced=CONSUMER_UNPLACED)
        return _consumer_form(
            request,
            vertical,
            seller,
            embedded_in=embedded_in,
            values=typed,
            errors=errors or {"form": exc.detail},
            status_code=422,
        )
    return render_page(
        request,
        "leads/consumer_thanks.html",
        {
            "vertical": vertical,
            "seller_username": seller.username,
            "certificate": created.certificate,
        },
        status_code=201,
    )


# Consent certificates (L3) ----------------------------------------------------------------

Certificate = Annotated[str, Path(max_length=64)]


async def _consent_page(
    request: Request,
    session: AsyncSession,
    certificate: str,
    *,
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    consent, text = await service.consent_by_certificate(session, certificate)
    vertical = get_vertical(consent.vertical)
    csrf = double_submit(request)
    issued = csrf.issue(request)
    response = render_page(
        request,
        "leads/consent.html",
        {
            "consent": consent,
            "vertical_name": vertical.name if vertical else consent.vertical,
            "disclosure_text": text.text,
            "disclosure_sha256": text.sha256,
            "values": values or {},
            "errors": errors or {},
            "notice": None if errors else NOTICES.get(request.query_params.get("done", "")),
            "csrf_token": issued.field_value,
        },
        status_code=status_code,
    )
    csrf.attach(response, issued)
    return response


@router.get("/consents/{certificate}")
async def consent_certificate(
    request: Request,
    certificate: Certificate,
    session: Session,
    _: Principal | None = Depends(visitor_page()),
) -> Response:
    return await _consent_page(request, session, certificate)


@router.post("/consents/{certificate}")
async def withdraw_consent(
    request: Request,
    certificate: Certificate,
    session: Session,
    kit: Kit,
    _: Principal | None = Depends(visitor_page()),
) -> Response:
    form = await request.form()
    typed = {name: form_text(form, name).strip() for name in ("email", "phone")}
    try:
        body = ConsentWithdrawalIn.model_validate(
            {name: value for name, value in typed.items() if value}
        )
    except ValidationError as exc:
        errors = _place(
            validation_errors([dict(e) for e in exc.errors()]), ("email", "phone"), unplaced=None
        )
        if "form" in errors:
            errors["form"] = "Give the email address or the phone number you agreed with."
        return await _consent_page(
            request, session, certificate, values=typed, errors=errors, status_code=422
        )
    try:
        await service.withdraw_consent(
            session, kit, certificate, email=body.email, phone=body.phone
        )
    except NotFound:
        await session.rollback()
        return await _consent_page(
            request,
            session,
            certificate,
            values=typed,
            errors={"form": "This consent was not given with that email address or phone."},
            status_code=404,
        )
    return see_other(f"/consents/{quote(certificate)}?done=withdrawn")


# Seller pages -----------------------------------------------------------------------------


def sale_terms_text(lead: Lead) -> str:
    sale = previews.sale_of(lead, show_reserve=True)
    parts: list[str] = []
    if sale.mode == SaleMode.AUCTION.value:
        parts.append(f"Auction, {sale.duration_minutes} min")
        if sale.reserve_cents is not None:
            parts.append(f"reserve {format_money(sale.reserve_cents, sale.currency)}")
        if sale.buy_now_cents is not None:
            parts.append(f"buy now {format_money(sale.buy_now_cents, sale.currency)}")
    else:
        parts.append(f"Fixed price {format_money(sale.price_cents, sale.currency)}")
    parts.append("exclusive" if sale.exclusive else f"shared by up to {sale.max_buyers} buyers")
    return ", ".join(parts)


def _preview_answers(lead: Lead, vertical: Vertical | None) -> list[tuple[str, str]]:
    answers: list[tuple[str, str]] = []
    for name, value in lead.preview_attributes.items():
        spec = vertical.field(name) if vertical else None
        label = spec.label if spec else name
        if isinstance(value, bool):
            shown = "Yes" if value else "No"
        elif spec is not None and spec.enum is not None:
            shown = spec.enum_labels.get(str(value), str(value))
        else:
            shown = str(value)
        answers.append((label, shown))
    return answers


@dataclass(frozen=True)
class LeadRow:
    """One of a seller's leads as the page shows it: what the lead row holds, which is never
    contact data (L6)."""

    id: str
    created_at: dt.datetime
    vertical_name: str
    place: str
    postal_area: str
    age_band: str
    status: str
    source: str
    sale_terms: str
    auction: bool
    ends_at: dt.datetime | None
    score: int
    reasons: tuple[str, ...]
    answers: tuple[tuple[str, str], ...]


def lead_row(lead: Lead) -> LeadRow:
    vertical = get_vertical(lead.vertical)
    return LeadRow(
        id=lead.id,
        created_at=lead.created_at,
        vertical_name=vertical.name if vertical else lead.vertical,
        place=f"{lead.city}, {lead.region}",
        postal_area=f"{'ZIP' if lead.country == 'US' else 'Postal code'} {lead.postal_prefix}…",
        age_band=lead.age_band,
        status=lead.status,
        source=lead.source,
        sale_terms=sale_terms_text(lead),
        auction=lead.sale_mode == SaleMode.AUCTION.value,
        ends_at=lead.auction_ends_at,
        score=lead.quality_score,
        reasons=tuple(str(reason.get("message", "")) for reason in lead.quality_reasons),
        answers=tuple(_preview_answers(lead, vertical)),
    )


# What the quality figures call each reason; a code added later still shows, as its code.
REASON_NAMES = {
    "disposable_email": "Disposable email address",
    "non_personal_phone": "Toll-free or service phone",
    "voip_phone": "VoIP phone",
    "landline": "Landline phone",
    "area_code_mismatch": "Area code of another state or province",
    "seller_burst": "Many leads from you in one minute",
    "ip_velocity": "Many leads from one network address",
}


@router.get(SELLER_LEADS)
async def seller_leads(
    request: Request,
    session: Session,
    principal: Principal = Depends(seller_page(Action.VIEW_DASHBOARD)),
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    rows = await service.list_visible_leads(
        session,
        principal.user,
        vertical=None,
        region=None,
        status=None,
        limit=LEADS_PER_PAGE,
        before_id=decode_cursor(cursor),
    )
    more = len(rows) > LEADS_PER_PAGE
    rows = rows[:LEADS_PER_PAGE]
    summary = await service.seller_quality_summary(session, principal.user.id)
    return render_page(
        request,
        "leads/seller_leads.html",
        {
            "leads": [lead_row(lead) for lead in rows],
            "summary": summary,
            "reason_names": REASON_NAMES,
            "next_cursor": encode_cursor(rows[-1].id) if more and rows else None,
            "paged": cursor is not None,
            "notice": NOTICES.get(request.query_params.get("done", "")),
        },
    )


def _seller_form_defaults(vertical: Vertical, seller_username: str) -> dict[str, str]:
    return {
        "contact.address.country": "US",
        "consent.disclosure_text": vertical.consent_text_for(seller_username),
        "consent.given_at": utcnow().strftime("%Y-%m-%dT%H:%M"),
        "sale.mode": "auction",
        "sale.currency": "USD",
        "sale.reserve": "10.00",
        "sale.duration_minutes": "60",
        "sale.exclusive": "yes",
    }


def _new_lead_page(
    request: Request,
    seller_username: str,
    vertical: Vertical | None,
    *,
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    minor: bool = False,
    status_code: int = 200,
) -> Response:
    inputs = attribute_inputs(vertical) if vertical else ()
    return render_page(
        request,
        "leads/seller_new.html",
        {
            "vertical": vertical,
            "verticals": all_verticals(),
            "contact_inputs": CONTACT_INPUTS,
            "attribute_inputs": inputs,
            "consent_inputs": CONSENT_EVIDENCE_INPUTS,
            "sale_inputs": SALE_INPUTS,
            "labels": _labels(CONTACT_INPUTS, inputs, CONSENT_EVIDENCE_INPUTS, SALE_INPUTS),
            "values": (
                values
                if values is not None
                else (_seller_form_defaults(vertical, seller_username) if vertical else {})
            ),
            "errors": errors or {},
            "minor": minor,
        },
        status_code=status_code,
    )


@router.get(NEW_LEAD)
async def new_lead_form(
    request: Request,
    principal: Principal = Depends(seller_page(Action.VIEW_DASHBOARD)),
    vertical: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    if vertical is None:
        return _new_lead_page(request, principal.user.username, None)
    chosen = get_vertical(vertical)
    if chosen is None:
        return _new_lead_page(
            request,
            principal.user.username,
            None,
            errors={"vertical": "Choose one of the kinds of service listed."},
            status_code=404,
        )
    return _new_lead_page(request, principal.user.username, chosen)


@router.post(NEW_LEAD)
async def post_lead_by_hand(
    request: Request,
    session: Session,
    kit: Kit,
    principal: Principal = Depends(seller_page(Action.SELL_LEADS, return_to=NEW_LEAD)),
) -> Response:
    form = await request.form()
    seller = principal.user
    # A refused lead is answered after the rollback, which expires the ORM objects.
    username = seller.username
    vertical = get_vertical(form_text(form, "vertical"))
    if vertical is None:
        return _new_lead_page(
            request,
            username,
            None,
            errors={"vertical": "Choose one of the kinds of service listed."},
            status_code=422,
        )
    inputs = attribute_inputs(vertical)
    every_input = (*CONTACT_INPUTS, *inputs, *CONSENT_EVIDENCE_INPUTS, *SALE_INPUTS)
    typed = _typed(form, every_input)
    # The disclosure's line breaks are part of the words the consumer saw.
    typed["consent.disclosure_text"] = form_text(form, "consent.disclosure_text")

    def minor_page() -> Response:
        return _new_lead_page(request, username, vertical, minor=True, status_code=422)

    checked = check_lead_form(
        vertical,
        contact=_contact_payload(form),
        attributes=_attributes_payload(form, vertical),
        consent=_consent_payload(form),
        sale=_sale_payload(form),
        form_errors={},
        known={spec.name for spec in every_input} | {"sale"},
        unplaced=None,
    )
    if checked.minor:
        return minor_page()
    if checked.data is None:
        return _new_lead_page(
            request, username, vertical, values=typed, errors=checked.errors, status_code=422
        )
    try:
        await intake.create_lead(session, kit, seller=seller, data=checked.data, source="manual")
    except MinorRefused:
        await session.rollback()
        return minor_page()
    except DuplicateLead:
        await session.rollback()
        return render_page(
            request, "leads/seller_duplicate.html", {"vertical": vertical}, status_code=409
        )
    except ValidationFailed as exc:
        await session.rollback()
        errors = _place(exc.errors, typed.keys(), unplaced=None)
        return _new_lead_page(
            request,
            username,
            vertical,
            values=typed,
            errors=errors or {"form": exc.detail},
            status_code=422,
        )
    return see_other(f"{SELLER_LEADS}?done=posted")


@dataclass(frozen=True)
class HostedForm:
    vertical: Vertical
    url: str
    snippet: str


def iframe_snippet(url: str, vertical: Vertical) -> str:
    """The markup a seller pastes into their page. About one screen tall, the form scrolling
    inside it: a frame as tall as the form would leave the consumer looking at its empty
    bottom after sending, where the button was, while the answer (thanks, or the errors) shows
    at its top; without a script nothing can resize the frame. No sandbox attribute: a
    sandboxed frame sends ``Origin: null``, which the form refuses. The referrer policy lets
    the form record the page it is embedded in as consent evidence (scheme, host and path
    only are kept)."""
    return (
        f'<iframe src="{url}" title="{vertical.name} request form" width="100%" height="900" '
        'loading="lazy" referrerpolicy="no-referrer-when-downgrade"></iframe>'
    )


@router.get(SELLER_FORMS)
async def seller_forms(
    request: Request,
    principal: Principal = Depends(seller_page(Action.VIEW_DASHBOARD)),
) -> Response:
    base = settings_of(request).base_url.rstrip("/")
    forms = []
    for vertical in all_verticals():
        url = base + form_path(vertical, principal.user.username)
        forms.append(HostedForm(vertical, url, iframe_snippet(url, vertical)))
    return render_page(request, "leads/seller_forms.html", {"forms": forms})
