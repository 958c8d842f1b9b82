"""Request and response bodies of the accounts API. Validation lives here so that bad input is
refused with the offending field named before any service code runs."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from typing import Annotated, Literal

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, Field, field_validator

from leadmarket.accounts.passwords import MAX_PASSWORD_LENGTH
from leadmarket.feedback.schemas import PublicFeedback
from leadmarket.kit.schemas import RequestModel

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
    street: ShortText | None = None
    city: ShortText | None = None
    region: Annotated[str, Field(min_length=1, max_length=80)] | None = None
    postal_code: Annotated[str, Field(min_length=1, max_length=20)] | None = None
    country: Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")] = "US"

    @field_validator("country")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()


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
    address: Address | None
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
