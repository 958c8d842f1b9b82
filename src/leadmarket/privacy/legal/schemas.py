"""Bodies of the law-enforcement request API (P10), and the list of fields a production may
hold: exactly those seed 000 names ("name, city, state, postcode, telephone number, email
address, User ID history, IP address, fraud complaints, lead purchase and listing history")."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from leadmarket.accounts.schemas import normalize_email
from leadmarket.kit.schemas import RequestModel
from leadmarket.models import LegalDocumentKind


class LegalField(enum.StrEnum):
    """P10's list, and nothing else: a production can hold no other field."""

    NAME = "name"
    CITY = "city"
    STATE = "state"
    POSTCODE = "postcode"
    TELEPHONE = "telephone"
    EMAIL = "email"
    USER_ID_HISTORY = "user_id_history"
    IP_ADDRESS = "ip_address"
    FRAUD_COMPLAINTS = "fraud_complaints"
    PURCHASE_AND_LISTING_HISTORY = "purchase_and_listing_history"


FIELD_LABELS: dict[LegalField, str] = {
    LegalField.NAME: "Name",
    LegalField.CITY: "City",
    LegalField.STATE: "State",
    LegalField.POSTCODE: "Postcode",
    LegalField.TELEPHONE: "Telephone number",
    LegalField.EMAIL: "Email address",
    LegalField.USER_ID_HISTORY: "User ID history",
    LegalField.IP_ADDRESS: "IP address",
    LegalField.FRAUD_COMPLAINTS: "Fraud complaints",
    LegalField.PURCHASE_AND_LISTING_HISTORY: "Lead purchase and listing history",
}

# The CCPA categories (verticals.registry.PI_CATEGORIES) each field belongs to, for the
# disclosure record (P2).
FIELD_CATEGORIES: dict[LegalField, tuple[str, ...]] = {
    LegalField.NAME: ("identifiers", "personal_records"),
    LegalField.CITY: ("personal_records",),
    LegalField.STATE: ("personal_records",),
    LegalField.POSTCODE: ("personal_records",),
    LegalField.TELEPHONE: ("identifiers", "personal_records"),
    LegalField.EMAIL: ("identifiers",),
    LegalField.USER_ID_HISTORY: ("identifiers",),
    LegalField.IP_ADDRESS: ("identifiers", "internet_activity"),
    LegalField.FRAUD_COMPLAINTS: ("commercial_information",),
    LegalField.PURCHASE_AND_LISTING_HISTORY: ("commercial_information",),
}

DOCUMENT_KIND_LABELS: dict[LegalDocumentKind, str] = {
    LegalDocumentKind.SUBPOENA: "Subpoena",
    LegalDocumentKind.COURT_ORDER: "Court order",
    LegalDocumentKind.SEARCH_WARRANT: "Search warrant",
    LegalDocumentKind.EMERGENCY_DISCLOSURE: "Emergency disclosure request",
}

Line = Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=200)]
# A legal document kept as text, when no file was sent (a faxed subpoena typed in, an emergency
# request received by telephone and written down).
MAX_DOCUMENT_TEXT = 200_000


class LegalRequestIn(RequestModel):
    agency: Line
    officer_name: Line
    officer_email: Annotated[str, Field(max_length=320), AfterValidator(normalize_email)]
    officer_phone: Annotated[
        str | None, StringConstraints(strip_whitespace=True, max_length=40)
    ] = None
    document_kind: LegalDocumentKind
    document_reference: Line
    # The document: as text, or as a file (base64). Exactly one.
    document_text: Annotated[str | None, Field(max_length=MAX_DOCUMENT_TEXT)] = None
    document_base64: str | None = None
    document_filename: Annotated[str | None, Field(max_length=200)] = None
    document_content_type: Annotated[str | None, Field(max_length=100)] = None
    # Whose data: a member (username) or a lead (id). Exactly one.
    subject_username: Annotated[str | None, Field(max_length=32)] = None
    subject_lead_id: Annotated[str | None, Field(max_length=40)] = None
    fields: Annotated[list[LegalField], Field(min_length=1, max_length=len(LegalField))]


class RejectIn(RequestModel):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=5, max_length=1000)]


class LegalRequestOut(BaseModel):
    id: str
    status: str
    agency: str
    officer_name: str
    officer_email: str
    officer_phone: str | None
    document_kind: str
    document_reference: str
    document_filename: str
    document_content_type: str
    document_size: int
    document_sha256: str
    subject_kind: str
    subject_username: str | None
    subject_lead_id: str | None
    fields_requested: list[str]
    entered_by: str
    entered_at: dt.datetime
    verified_by: str | None
    verified_at: dt.datetime | None
    rejected_by: str | None
    rejected_at: dt.datetime | None
    rejection_reason: str | None
    produced_by: str | None
    produced_at: dt.datetime | None
    production_fields: list[str] | None


class ProductionOut(BaseModel):
    """What is handed to the agency: only the requested P10 fields, and notes on what could not
    be produced and why (destroyed, never kept)."""

    legal_request_id: str
    agency: str
    document_kind: str
    document_reference: str
    subject: dict[str, str]
    fields_requested: list[str]
    produced_at: dt.datetime
    data: dict[str, Any]
    notes: list[str]
