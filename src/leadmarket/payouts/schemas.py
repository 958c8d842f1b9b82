"""What the payouts API (M5) takes and answers."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field


class PayoutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    currency: str = Field(default="USD", pattern="^[A-Z]{3}$")
    destination: str | None = Field(
        default=None,
        max_length=100,
        description="The processor's id of the account to pay; default the seller's own. The "
        "sandbox refuses `sandbox_decline`.",
    )


class PayoutOut(BaseModel):
    id: str
    amount_cents: int
    currency: str
    status: str
    processor: str
    processor_reference: str
    requested_by: str
    created_at: dt.datetime
    balance_cents: int | None = Field(
        default=None, description="The settled balance left (in the answer that paid it)."
    )
