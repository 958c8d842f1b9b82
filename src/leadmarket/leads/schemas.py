"""Request and response bodies of the lead API (the posting spec in docs/api.md)."""

from __future__ import annotations

import datetime as dt
import functools
import unicodedata
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import email_validator
import phonenumbers
from email_validator import EmailNotValidError, ValidatedEmail, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from email_validator.syntax import (
    DomainNameValidationResult,
    split_email,
    validate_email_domain_name,
    validate_email_length,
    validate_email_local_part,
)
from phonenumbers import PhoneNumberType
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE, _number_type_helper
from phonenumbers.re_util import enable_pattern_cache, re_compile
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from leadmarket.accounts.schemas import Email, check_name
from leadmarket.kit.schemas import RequestModel

# L2: 004 says 14, 000 says 13; the stricter wins.
MINIMUM_AGE = 14
MINOR_ERROR = "minor"

Text100 = Annotated[str, Field(min_length=1, max_length=100)]
PersonNamePart = Annotated[str, Field(max_length=100), AfterValidator(check_name)]


def age_on(birth_date: dt.date, day: dt.date) -> int:
    return day.year - birth_date.year - ((day.month, day.day) < (birth_date.month, birth_date.day))


def check_birth_date(value: dt.date) -> dt.date:
    today = dt.datetime.now(dt.UTC).date()
    if value > today:
        raise ValueError("The birth date is in the future.")
    age = age_on(value, today)
    if age < MINIMUM_AGE:
        # A distinct error type, turned into the /problems/minor answer (see leads.api).
        raise PydanticCustomError(MINOR_ERROR, "The consumer is under 14.")
    if age > 120:
        raise ValueError("The birth date is more than 120 years ago.")
    return value


def clean_page_url(value: str) -> str:
    """Keep scheme, host and path only: query strings and fragments of landing pages often
    carry the consumer's own data (``?email=…``), which has no place in consent evidence."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("Use the full http(s) address of the page the consumer saw.")
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", ""))


class AddressIn(RequestModel):
    street: Annotated[str, Field(min_length=1, max_length=200)]
    city: Text100
    region: Annotated[str, Field(min_length=2, max_length=3, description="State/province code")]
    postal_code: Annotated[str, Field(min_length=3, max_length=12)]
    country: Literal["US", "CA"] = "US"

    @field_validator("street", "city")
    @classmethod
    def _one_line(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("This field is required.")
        return value

    @field_validator("region")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.strip().upper()


class ConsumerPhone(str):
    """A consumer's phone number in E.164, as validated, carrying what validation learnt about
    it on the way (its line type and area code), so that the quality signals of the same lead
    need not parse it and look its country up again. Everywhere else it is the plain string."""

    line_type: int  # a phonenumbers.PhoneNumberType
    area_code: str


# phonenumbers looks each metadata pattern up again on every use; with its own cache (a dict
# bounded by the metadata's patterns) the lookup is a dict get instead of re.compile's.
enable_pattern_cache()


@functools.lru_cache(maxsize=4096)
def _email_domain(
    domain: str, test_environment: bool, globally_deliverable: bool
) -> DomainNameValidationResult:
    """email-validator's check of the part after the @-sign, which depends on nothing else:
    kept for the domains that come again and again (gmail.com). Refusals are not kept."""
    return validate_email_domain_name(
        domain, test_environment=test_environment, globally_deliverable=globally_deliverable
    )


def _validated_email(value: str) -> ValidatedEmail:
    """``validate_email(value, check_deliverability=False)``, step for step in its order, with
    the domain's result taken from :func:`_email_domain`. The rare forms (a display name, a
    quoted local part, a bracketed address, nothing after the @-sign, a local part that Unicode
    normalization changes) go to ``validate_email`` itself."""
    display_name, original_local_part, local_part, quoted, domain_part = split_email(value)
    if (
        display_name is not None
        or quoted
        or not domain_part
        or domain_part.startswith("[")
        or unicodedata.normalize("NFC", local_part) != local_part
    ):
        return validate_email(value, check_deliverability=False)
    local = validate_email_local_part(
        local_part,
        allow_smtputf8=email_validator.ALLOW_SMTPUTF8,
        allow_empty_local=email_validator.ALLOW_EMPTY_LOCAL,
        quoted_local_part=False,
        strict=email_validator.STRICT,
    )
    domain = _email_domain(
        domain_part, email_validator.TEST_ENVIRONMENT, email_validator.GLOBALLY_DELIVERABLE
    )
    info = ValidatedEmail()
    info.original = original_local_part + "@" + domain_part
    info.display_name = None
    info.smtputf8 = local["smtputf8"]
    info.local_part = local["local_part"]
    info.ascii_local_part = local["ascii_local_part"]
    if (
        info.ascii_local_part is not None
        and info.ascii_local_part.lower() in CASE_INSENSITIVE_MAILBOX_NAMES
        and info.local_part is not None
    ):
        info.ascii_local_part = info.ascii_local_part.lower()
        info.local_part = info.local_part.lower()
    info.domain = domain["domain"]
    info.ascii_domain = domain["ascii_domain"]
    info.normalized = info.local_part + "@" + info.domain
    info.ascii_email = (
        info.ascii_local_part + "@" + info.ascii_domain
        if info.ascii_local_part and info.ascii_domain
        else None
    )
    validate_email_length(info)
    return info


def normalize_consumer_email(value: str) -> str:
    """:func:`~leadmarket.accounts.schemas.normalize_email` (same answers, same refusals), with
    the domain's validation remembered: every lead carries an email, most at a few domains."""
    try:
        info = _validated_email(value)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return info.normalized.lower()


ConsumerEmail = Annotated[str, Field(max_length=320), AfterValidator(normalize_consumer_email)]


def _region_and_type(number: phonenumbers.PhoneNumber) -> tuple[str | None, int]:
    """The number's region (what ``region_code_for_number`` answers) and its line type in that
    region (what ``number_type`` answers; UNKNOWN when the number is not valid there), for a
    North American (+1) number. Walks the NANPA regions the way ``region_code_for_number``
    does, but keeps the line type it computes on the way instead of computing it twice more
    (for validity, then for the type): the type helper is the expensive part of validation."""
    national = phonenumbers.national_significant_number(number)
    for region in COUNTRY_CODE_TO_REGION_CODE[1]:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region, None)
        if metadata is None:
            continue
        if metadata.leading_digits is not None:
            if re_compile(metadata.leading_digits).match(national):
                return region, _number_type_helper(national, metadata)
        else:
            line_type = _number_type_helper(national, metadata)
            if line_type != PhoneNumberType.UNKNOWN:
                return region, line_type
    return None, PhoneNumberType.UNKNOWN


def _other_country(number: phonenumbers.PhoneNumber) -> str:
    """Why a number outside +1 is refused, as for any number: invalid, or not North American."""
    region = phonenumbers.region_code_for_number(number)
    if region is None or not phonenumbers.is_valid_number_for_region(number, region):
        return "This phone number does not exist."
    return "Use a United States or Canadian phone number."


def normalize_consumer_phone(value: str, country: str) -> str:
    try:
        number = phonenumbers.parse(value, country)
    except phonenumbers.NumberParseException:
        raise ValueError("Not a phone number.") from None
    if number.country_code != 1:
        raise ValueError(_other_country(number))
    # is_valid_number(number) is exactly is_valid_number_for_region(number, its region), which
    # is "its type in that region is not UNKNOWN": region, validity and line type in one walk.
    region, line_type = _region_and_type(number)
    if region is None or line_type == PhoneNumberType.UNKNOWN:
        raise ValueError("This phone number does not exist.")
    if region not in ("US", "CA"):
        raise ValueError("Use a United States or Canadian phone number.")
    phone = ConsumerPhone(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
    phone.line_type = line_type
    phone.area_code = str(number.national_number)[:3]
    return phone


class ContactIn(RequestModel):
    first_name: PersonNamePart
    last_name: PersonNamePart
    email: ConsumerEmail
    birth_date: Annotated[dt.date, AfterValidator(check_birth_date)]
    # Before phone, so the phone is read in the address's country.
    address: AddressIn
    phone: Annotated[str, Field(min_length=3, max_length=40)]

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str, info: ValidationInfo) -> str:
        address = info.data.get("address")
        return normalize_consumer_phone(value, address.country if address else "US")


def _ip_address(value: object) -> object:
    """The consumer's address as IPv4 or IPv6, with one message for both failing."""
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    if not isinstance(value, str):
        raise ValueError("Give the address as text, for example 203.0.113.7.")
    try:
        return ip_address(value.strip())
    except ValueError:
        raise ValueError("Not an IPv4 or IPv6 address.") from None


class ConsentIn(RequestModel):
    disclosure_text: Annotated[str, Field(min_length=20, max_length=10_000)]
    page_url: Annotated[str, Field(max_length=2000), AfterValidator(clean_page_url)]
    ip: Annotated[IPv4Address | IPv6Address, BeforeValidator(_ip_address)]
    user_agent: Annotated[str, Field(min_length=1, max_length=1000)]
    given_at: AwareDatetime
    global_privacy_control: bool = Field(
        default=False,
        description="The consumer's browser sent Global Privacy Control (Sec-GPC: 1) with the "
        "form and the consumer directed this disclosure anyway: the lead is sold to one buyer "
        "only, who may not resell or share it (see docs: GPC on lead forms).",
    )

    @field_validator("given_at")
    @classmethod
    def _plausible_time(cls, value: dt.datetime) -> dt.datetime:
        now = dt.datetime.now(dt.UTC)
        if value > now + dt.timedelta(minutes=5):
            raise ValueError("Consent cannot be given in the future.")
        if value < now - dt.timedelta(days=30):
            raise ValueError("Consent older than 30 days is too old for a new lead.")
        return value.astimezone(dt.UTC)


Cents = Annotated[int, Field(ge=0, le=100_000_000)]


class SaleIn(RequestModel):
    mode: Literal["auction", "fixed"]
    currency: Literal["USD", "CAD"] = "USD"
    reserve_cents: Cents | None = None
    buy_now_cents: Annotated[int, Field(ge=1, le=100_000_000)] | None = None
    price_cents: Annotated[int, Field(ge=1, le=100_000_000)] | None = None
    duration_minutes: Annotated[int, Field(ge=5, le=10_080)] | None = None
    exclusive: bool = True
    max_buyers: Annotated[int, Field(ge=1, le=4)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SaleIn:
        if self.mode == "fixed":
            if self.price_cents is None:
                raise PydanticCustomError("missing", "A fixed-price sale needs price_cents.")
            if self.reserve_cents is not None or self.buy_now_cents is not None:
                raise ValueError("reserve_cents and buy_now_cents belong to auctions.")
        else:
            if self.price_cents is not None:
                raise ValueError("price_cents belongs to fixed-price sales; use buy_now_cents.")
            if self.duration_minutes is None:
                self.duration_minutes = 60
            if (
                self.buy_now_cents is not None
                and self.reserve_cents is not None
                and self.buy_now_cents < self.reserve_cents
            ):
                raise ValueError("buy_now_cents cannot be below reserve_cents.")
        if self.exclusive:
            if self.max_buyers not in (None, 1):
                raise ValueError("An exclusive lead has exactly one buyer.")
            self.max_buyers = 1
        elif self.max_buyers is None:
            self.max_buyers = 4
        return self


class LeadIn(RequestModel):
    vertical: Annotated[str, Field(min_length=1, max_length=40)]
    contact: ContactIn
    attributes: dict[str, Any] = Field(default_factory=dict)
    consent: ConsentIn
    sale: SaleIn


class QualityOut(BaseModel):
    score: int
    reasons: list[dict[str, Any]]


class PreviewOut(BaseModel):
    vertical: str
    vertical_name: str
    country: str
    region: str
    city: str
    postal_prefix: str
    age_band: str
    attributes: dict[str, Any]
    created_at: dt.datetime
    quality: QualityOut


class SaleOut(BaseModel):
    mode: str
    currency: str
    reserve_cents: int | None = None
    buy_now_cents: int | None
    price_cents: int | None
    duration_minutes: int | None
    exclusive: bool
    max_buyers: int
    ends_at: dt.datetime | None


class LeadCreatedOut(BaseModel):
    id: str
    status: str
    preview: PreviewOut
    quality: QualityOut
    consent_certificate: str


class SellerOut(BaseModel):
    username: str
    rating: float | None


class LeadOut(BaseModel):
    id: str
    vertical: str
    status: str
    preview: PreviewOut
    sale: SaleOut
    seller: SellerOut
    pii_expires_at: dt.datetime | None
    pii_destroyed_at: dt.datetime | None


class ConsentCertificateOut(BaseModel):
    certificate: str
    status: Literal["valid", "withdrawn"]
    vertical: str
    given_at: dt.datetime
    recorded_at: dt.datetime
    page_url: str
    disclosure_text: str
    disclosure_sha256: str
    parties: list[str]
    withdrawn_at: dt.datetime | None


class ConsentWithdrawalIn(RequestModel):
    """The consumer proves it is their consent by naming the email or phone it was given with."""

    email: Email | None = None
    phone: Annotated[str, Field(min_length=3, max_length=40)] | None = None

    @model_validator(mode="after")
    def _one_identifier(self) -> ConsentWithdrawalIn:
        if self.email is None and self.phone is None:
            raise ValueError(
                "Give the email address or the phone number the consent was given with."
            )
        return self
