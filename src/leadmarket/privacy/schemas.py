"""Request and response bodies of the consumer rights API (``/api/v1/privacy/requests``, P1–P6)
and of the privacy officer's API."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator

from leadmarket.accounts.schemas import Email, PersonName, check_name
from leadmarket.kit.errors import FieldError
from leadmarket.kit.schemas import RequestModel
from leadmarket.leads.schemas import normalize_consumer_phone
from leadmarket.models.privacy import DenialReason, RequestType

MAX_PROOF_DOCUMENT_BYTES = 512 * 1024
PROOF_CONTENT_TYPES = ("application/pdf", "image/png", "image/jpeg", "text/plain")
MAX_CORRECTIONS = 20
MAX_DETAILS_CHARS = 2000
# The consumer's data a correction may name (P3); attributes go as ``attributes.<name>``.
CORRECTABLE_FIELDS = (
    "name",
    "first_name",
    "last_name",
    "email",
    "phone",
    "birth_date",
    "address.street",
    "address.city",
    "address.region",
    "address.postal_code",
)
# The everyday names a person writes (the privacy center's own example says ``street: …``).
CORRECTION_ALIASES = {
    "street": "address.street",
    "city": "address.city",
    "state": "address.region",
    "province": "address.region",
    "region": "address.region",
    "postal_code": "address.postal_code",
    "zip": "address.postal_code",
    "zip_code": "address.postal_code",
    "date_of_birth": "birth_date",
}


def correction_field(name: str) -> str:
    """The canonical name of a field to correct, as typed (any case, an everyday alias)."""
    key = "_".join(name.strip().lower().split())
    return CORRECTION_ALIASES.get(key, key)


CODE_LENGTH = 6

RequestTypeName = Literal["know", "access", "delete", "correct", "opt_out"]


def _phone(value: str) -> str:
    # The same normalisation as lead intake (E.164), so the digests match the leads' indexes.
    return normalize_consumer_phone(value, "US")


ConsumerPhone = Annotated[str, Field(min_length=3, max_length=40), AfterValidator(_phone)]


class ProofDocumentIn(RequestModel):
    """A signed permission or a proof of parenthood, as a file (P4)."""

    filename: Annotated[str, Field(min_length=1, max_length=200)]
    content_type: Literal["application/pdf", "image/png", "image/jpeg", "text/plain"]
    data_base64: Annotated[
        str,
        Field(
            min_length=4,
            max_length=(MAX_PROOF_DOCUMENT_BYTES * 4) // 3 + 8,
            description="The file's bytes, base64 encoded (at most 512 KiB).",
        ),
    ]

    @field_validator("filename")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        value = value.strip()
        if not value or any(c in value for c in "/\\") or any(ord(c) < 32 for c in value):
            raise ValueError("Give a plain file name, without folders.")
        return value

    @field_validator("data_base64")
    @classmethod
    def _decodes(cls, value: str) -> str:
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("Not valid base64.") from None
        if not data:
            raise ValueError("The file is empty.")
        if len(data) > MAX_PROOF_DOCUMENT_BYTES:
            raise ValueError("The file is larger than 512 KiB.")
        return value

    def content(self) -> bytes:
        return base64.b64decode(self.data_base64)


class PrivacyRequestIn(RequestModel):
    """A rights request. Give the email address and/or the phone number the platform may hold
    about you; the one-time code goes to the email when given, else by text message.

    ``name``, ``postal_code`` and ``birth_date`` are used only to verify an ``access`` request
    (two of them must match the data held before specific pieces are disclosed) and are then
    deleted (P4). ``details`` is free text, or for ``correct`` an object field → new value.
    An authorized agent or a parent sets ``on_behalf`` and gives ``agent_name`` and a proof
    (``proof_text`` and/or ``proof_document``), which a privacy officer must accept."""

    type: RequestTypeName
    email: Email | None = None
    phone: ConsumerPhone | None = None
    name: PersonName | None = None
    postal_code: Annotated[str, Field(min_length=3, max_length=12)] | None = None
    birth_date: dt.date | None = None
    details: Annotated[str, Field(max_length=MAX_DETAILS_CHARS)] | dict[str, str] | None = None
    on_behalf: Literal["self", "agent", "parent"] = "self"
    agent_name: Annotated[str, Field(max_length=200), AfterValidator(check_name)] | None = None
    proof_text: Annotated[str, Field(min_length=10, max_length=4000)] | None = None
    proof_document: ProofDocumentIn | None = None

    @field_validator("postal_code")
    @classmethod
    def _postal(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = " ".join(value.split()).upper()
        if not value.replace(" ", "").replace("-", "").isalnum():
            raise ValueError("Not a postal code.")
        return value

    @field_validator("birth_date")
    @classmethod
    def _past(cls, value: dt.date | None) -> dt.date | None:
        if value is not None and value > dt.datetime.now(dt.UTC).date():
            raise ValueError("The birth date is in the future.")
        return value

    @field_validator("details")
    @classmethod
    def _details(cls, value: str | dict[str, str] | None) -> str | dict[str, str] | None:
        if isinstance(value, dict):
            if len(value) > MAX_CORRECTIONS:
                raise ValueError(f"At most {MAX_CORRECTIONS} corrections per request.")
            for field, new in value.items():
                if not field.strip() or len(field) > 60:
                    raise ValueError("Name each field to correct (at most 60 characters).")
                if len(new) > 500:
                    raise ValueError("A corrected value has at most 500 characters.")
            return {correction_field(field): new.strip() for field, new in value.items()}
        if isinstance(value, str):
            return value.strip() or None
        return value

    def problems(self) -> list[FieldError]:
        """What the fields cannot say on their own: which combinations are required. (Checked
        here rather than in a model validator so that each message names its field.)"""
        errors: list[FieldError] = []
        if self.email is None and self.phone is None:
            message = "Give your email address or your phone number (or both)."
            errors += [FieldError("email", message), FieldError("phone", message)]
        if self.type == RequestType.CORRECT.value:
            if not isinstance(self.details, dict) or not self.details:
                errors.append(
                    FieldError(
                        "details",
                        "For a correction, name each field and its correct value, "
                        'e.g. {"name": "Ana Silva"}.',
                    )
                )
            else:
                # Said now, not after the code: a field no correction can change.
                unknown = [
                    name
                    for name in self.details
                    if name not in CORRECTABLE_FIELDS and not name.startswith("attributes.")
                ]
                if unknown:
                    errors.append(
                        FieldError(
                            "details",
                            f"These cannot be corrected: {', '.join(unknown)}. Use "
                            f"{', '.join(CORRECTABLE_FIELDS)}, street, city, state, zip "
                            "or attributes.<name>.",
                        )
                    )
        elif isinstance(self.details, dict):
            errors.append(FieldError("details", "Free text for this type of request."))
        if self.on_behalf == "self":
            for name in ("agent_name", "proof_text", "proof_document"):
                if getattr(self, name):
                    errors.append(
                        FieldError(name, "Only for a request made on behalf of someone else.")
                    )
        else:
            if not self.agent_name:
                errors.append(FieldError("agent_name", "An agent or parent gives their name."))
            if not self.proof_text and self.proof_document is None:
                errors.append(
                    FieldError(
                        "proof_text",
                        "Give proof of your authority: a declaration and/or a signed "
                        "permission as a file (proof_document).",
                    )
                )
        return errors

    def verification_data(self) -> dict[str, str]:
        points: dict[str, str] = {}
        if self.name:
            points["name"] = self.name
        if self.postal_code:
            points["postal_code"] = self.postal_code
        if self.birth_date:
            points["birth_date"] = self.birth_date.isoformat()
        return points


class PrivacyRequestCreated(BaseModel):
    id: str
    status: str = Field(examples=["identity_unverified"])
    token: str = Field(
        description="Shown once. Send it as `Authorization: Bearer <token>` to read the "
        "request's status and download its report."
    )


class VerifyIn(RequestModel):
    code: Annotated[str, Field(min_length=1, max_length=20)]

    @field_validator("code")
    @classmethod
    def _digits(cls, value: str) -> str:
        value = "".join(value.split())
        if not value.isdigit() or len(value) != CODE_LENGTH:
            raise ValueError(f"The code has {CODE_LENGTH} digits.")
        return value


class VerifyOut(BaseModel):
    status: str


class PrivacyRequestStatusOut(BaseModel):
    id: str
    type: str
    status: str
    received_at: dt.datetime
    due_at: dt.datetime
    extended_until: dt.datetime | None = None
    extension_reason: str | None = None
    denial_reason: str | None = None
    decision_note: str | None = None
    closed_at: dt.datetime | None = None
    report: dict[str, Any] | None = Field(
        default=None,
        description="The answer: for know/access the report while it is downloadable; for "
        "delete, correct and opt-out what was done and what was kept with its legal reason.",
    )
    report_available_until: dt.datetime | None = None


class ExtendIn(RequestModel):
    reason: Annotated[str, Field(min_length=10, max_length=1000)]


class DenyIn(RequestModel):
    reason: DenialReason = DenialReason.OTHER
    note: Annotated[str, Field(min_length=10, max_length=1000)]


class ProofReviewIn(RequestModel):
    accept: bool
    note: Annotated[str, Field(max_length=1000)] | None = None


class TypeMetrics(BaseModel):
    type: str
    received: int
    complied_in_whole: int
    complied_in_part: int
    denied: int
    denied_by_reason: dict[str, int]
    expired_unverified: int
    open: int
    median_days_to_respond: float | None
    mean_days_to_respond: float | None


class MetricsOut(BaseModel):
    year: int
    types: list[TypeMetrics]
