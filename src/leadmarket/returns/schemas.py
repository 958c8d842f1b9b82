"""Bodies and answers of the after-sale API (docs/api.md "Buying": ``POST
/api/v1/orders/{id}/returns`` ``{reason, note?}`` → 201 ``{id, status, decide_by}``, ``POST
/api/v1/returns/{id}/decision`` ``{approve, note?}``, ``POST /api/v1/returns/{id}/dispute``
``{note}`` → 201 are fixed; the rest is ours)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from leadmarket.models import ClaimCategory, ReturnReason


class ReturnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: ReturnReason
    note: str | None = Field(default=None, max_length=2000)
    evidence_text: str | None = Field(
        default=None,
        max_length=4000,
        description="What shows the lead is bad (call logs, a bounce, …). Files: POST "
        "/api/v1/returns/{id}/evidence.",
    )


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approve: bool
    note: str | None = Field(
        default=None, max_length=2000, description="Required to deny; the buyer reads it."
    )


class DisputeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str = Field(max_length=2000, description="Why the denial is wrong.")


class DisputeDecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: Literal["for_buyer", "for_seller"]
    note: str = Field(max_length=2000, description="The reason, recorded in the audit log.")


class ReviewDecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approve: bool
    note: str = Field(max_length=2000, description="The reason, recorded in the audit log.")


class ClaimIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: ClaimCategory
    text: str = Field(max_length=4000)


class ClaimDecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: Literal["resolved", "rejected"]
    note: str = Field(max_length=2000, description="The answer, shown to both parties.")


class ReasonOut(BaseModel):
    code: str
    label: str


class EvidenceOut(BaseModel):
    id: str
    filename: str
    media_type: str
    size_bytes: int
    uploaded_by: str = Field(description="buyer or seller")
    uploaded_at: dt.datetime
    url: str


class DisputeOut(BaseModel):
    id: str
    return_id: str
    order_id: str
    status: str = Field(description="open or decided")
    note: str
    opened_at: dt.datetime
    outcome: str | None = Field(description="for_buyer or for_seller, once decided (final)")
    decided_at: dt.datetime | None
    decision_note: str | None


class ReturnOut(BaseModel):
    id: str
    order_id: str
    status: str = Field(description="requested, review, approved, denied or disputed")
    reason: str
    note: str | None
    evidence_text: str | None
    evidence: list[EvidenceOut]
    requested_at: dt.datetime
    decide_by: dt.datetime | None = Field(description="The seller's deadline; silence approves.")
    review_reason: str | None
    decided_at: dt.datetime | None
    decided_by: str | None = Field(description="seller, silence, trusted, admin or dispute")
    decision_note: str | None
    dispute_by: dt.datetime | None = Field(description="A denial may be disputed until then.")
    refund_kind: str | None = Field(description="released, refunded or clawed_back")
    refunded_cents: int | None
    clawed_back_cents: int | None
    dispute: DisputeOut | None


class ClaimOut(BaseModel):
    id: str
    order_id: str
    filed_by: str = Field(description="buyer or seller")
    category: str
    text: str
    status: str = Field(description="open, resolved or rejected")
    filed_at: dt.datetime
    resolved_at: dt.datetime | None
    resolution: str | None


class EventOut(BaseModel):
    at: dt.datetime
    actor: str = Field(description="buyer, seller, admin or system")
    event: str
    subject_id: str | None
    note: str | None


class AfterSaleOut(BaseModel):
    order_id: str
    status: str
    price_cents: int
    currency: str
    fee_cents: int | None = Field(description="The platform's fee, once settled.")
    return_window_ends_at: dt.datetime
    cancellable: bool
    cancel_refusal: str | None
    returnable: bool
    return_refusal: str | None
    return_: ReturnOut | None = Field(alias="return", serialization_alias="return")
    claims: list[ClaimOut]
    history: list[EventOut]

    model_config = ConfigDict(populate_by_name=True)


class CancelOut(BaseModel):
    order_id: str
    status: str
    released_cents: int
    currency: str
