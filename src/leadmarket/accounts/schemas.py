"""Request and response bodies of the accounts API. Validation lives here so that bad input is
refused with the offending field named before any service code runs."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Collection
from typing import Annotated, Literal

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, Field, ValidationInfo, field_validator

from leadmarket.accounts.passwords import MAX_PASSWORD_LENGTH
from leadmarket.feedback.schemas import PublicFeedback
from leadmarket.kit.schemas import RequestModel
from leadmarket.leads.reference import CA_PROVINCES, US_STATES, check_postal_code

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{1,30})[A-Za-z0-9]$")
RESERVED_USERNAMES = frozenset(
    {
        "admin", "administrator", "support", "help", "leadmarket", "root", "system", "privacy",
        "security", "staff", "moderator", "api", "me", "null", "anonymous",
    }
)  # fmt: skip


def normalize_email(value: str) -> str:
    try:
        info = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return info.normalized.lower()


def normalize_phone(value: str) -> str:
    try:
        number = phonenumbers.parse(value, "US")
    except phonenumbers.NumberParseException:
        raise ValueError(
            "Not a phone number; use the international form, e.g. +14155550123."
        ) from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("This phone number does not exist.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def check_username(value: str) -> str:
    value = unicodedata.normalize("NFKC", value).strip()
    if not USERNAME_PATTERN.fullmatch(value):
        raise ValueError(
            "Use 3 to 32 letters, digits, '.', '_' or '-', starting and ending with a letter "
            "or digit."
        )
    if value.casefold() in RESERVED_USERNAMES:
        raise ValueError("This username is reserved.")
    return value


def check_name(value: str) -> str:
    value = " ".join(value.split())
    if not value:
        raise ValueError("A name is required.")
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in value):
        raise ValueError("The name contains control characters.")
    return value


Email = Annotated[str, Field(max_length=320), AfterValidator(normalize_email)]
Phone = Annotated[str, Field(max_length=40), AfterValidator(normalize_phone)]
Username = Annotated[str, Field(max_length=32), AfterValidator(check_username)]
PersonName = Annotated[str, Field(max_length=200), AfterValidator(check_name)]
Password = Annotated[str, Field(max_length=MAX_PASSWORD_LENGTH)]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]


class Address(RequestModel):
    """A member's postal address (for billing, M5). The country comes first: its region and
    postal code are checked against it where the platform knows the country's codes (the
    United States and Canada, as for leads); elsewhere they are taken as written."""

    country: Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")] = "US"
    street: ShortText | None = None
    city: ShortText | None = None
    region: Annotated[str, Field(min_length=1, max_length=80)] | None = None
    postal_code: Annotated[str, Field(min_length=1, max_length=20)] | None = None

    @field_validator("country")
    @classmethod
    def _known_country(cls, value: str) -> str:
        code = value.upper()
        if code not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError("Enter a country's two-letter code, such as US or CA.")
        return code

    @field_validator("region")
    @classmethod
    def _known_region(cls, value: str | None, info: ValidationInfo) -> str | None:
        regions = _REGIONS_BY_COUNTRY.get(info.data.get("country", ""))
        if value is None or regions is None:
            return value
        code = value.strip().upper()
        if code not in regions:
            raise ValueError(
                "Enter the two-letter code of a state (such as NY)."
                if info.data["country"] == "US"
                else "Enter the two-letter code of a province or territory (such as ON)."
            )
        return code

    @field_validator("postal_code")
    @classmethod
    def _postal_code_of_country(cls, value: str | None, info: ValidationInfo) -> str | None:
        country = info.data.get("country", "")
        if value is None or country not in _REGIONS_BY_COUNTRY:
            return value
        normalized, error = check_postal_code(country, info.data.get("region") or "", value)
        if error is not None:
            raise ValueError(error)
        return normalized


# The countries whose regions and postal codes the platform can check (leads.reference).
_REGIONS_BY_COUNTRY: dict[str, Collection[str]] = {"US": US_STATES, "CA": CA_PROVINCES}


class AddressOut(BaseModel):
    """A stored address as given back: read as it was kept (an address stored before the
    checks above got stricter still reads)."""

    country: str | None = None
    street: str | None = None
    city: str | None = None
    region: str | None = None
    postal_code: str | None = None


class RegisterIn(RequestModel):
    email: Email
    username: Username
    password: Password
    role: Literal["buyer", "seller"]
    name: PersonName
    phone: Phone | None = None
    address: Address | None = None


class AccountOut(BaseModel):
    id: str
    username: str
    role: str


class LoginIn(RequestModel):
    login: Annotated[str, Field(min_length=1, max_length=320)] = Field(
        description="Email address or username."
    )
    password: Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)]
    remember: bool = False


class LoginOut(BaseModel):
    token: str
    session_id: str
    expires_at: dt.datetime
    remembered: bool


class ReauthIn(RequestModel):
    password: Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)]


class ReauthOut(BaseModel):
    reauth_until: dt.datetime


class MeOut(BaseModel):
    id: str
    username: str
    role: str
    status: str
    email: str
    email_verified: bool
    name: str | None
    phone: str | None
    address: AddressOut | None
    created_at: dt.datetime


class MePatch(RequestModel):
    username: Username | None = None
    email: Email | None = None
    name: PersonName | None = None
    phone: Phone | None = None
    address: Address | None = None


class PasswordChangeIn(RequestModel):
    current_password: Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)]
    new_password: Password


class SessionOut(BaseModel):
    id: str
    kind: str
    remembered: bool
    current: bool
    created_at: dt.datetime
    last_used_at: dt.datetime
    expires_at: dt.datetime
    ip: str | None
    user_agent: str | None


class ApiKeyIn(RequestModel):
    name: Annotated[str, Field(min_length=1, max_length=100)]


class ApiKeyOut(BaseModel):
    id: str
    name: str
    prefix: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


class ApiKeyCreated(BaseModel):
    id: str
    name: str
    prefix: str
    key: str = Field(description="The full key. Shown this once; only its hash is kept.")


class VerifyEmailIn(RequestModel):
    token: Annotated[str, Field(min_length=1, max_length=2000)]


class PasswordResetRequestIn(RequestModel):
    email: Email


class PasswordResetIn(RequestModel):
    token: Annotated[str, Field(min_length=1, max_length=2000)]
    new_password: Password


class PublicProfile(BaseModel):
    """What anyone may see of a member (A1, M3): the username and ratings, never a name or
    contact data."""

    username: str
    role: str
    member_since: dt.datetime
    rating_average: float | None = Field(description="Of the visible ratings, two decimals.")
    rating_count: int
    rating_counts: dict[str, int] = Field(description='How many ratings of each star, "5" to "1".')
    feedback: list[PublicFeedback] = Field(
        description="The most recent feedback about the member, newest first; more at "
        "GET /api/v1/members/{username}/feedback."
    )
