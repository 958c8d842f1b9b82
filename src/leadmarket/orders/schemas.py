"""The order API's answers (docs/api.md, "Buying": ``{id, lead_id, price_cents, status,
purchased_at, pii_expires_at, contact}`` are fixed; the rest is ours)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AddressOut(BaseModel):
    street: str | None
    city: str
    region: str
    postal_code: str | None
    country: str


class ContactOut(BaseModel):
    first_name: str | None
    last_name: str | None
    email: str | None
    phone: str | None
    birth_date: str | None
    address: AddressOut


class OrderOut(BaseModel):
    id: str
    lead_id: str
    price_cents: int
    currency: str
    status: str = Field(description="held (return window open), settled, cancelled, refunded")
    via: str = Field(description="fixed, buy_now, auction or ping_post")
    vertical: str
    purchased_at: dt.datetime
    return_window_ends_at: dt.datetime
    settled_at: dt.datetime | None
    fee_cents: int | None = Field(
        default=None, description="The platform's fee, taken at settlement (refunded on a return)."
    )
    expected_fee_cents: int = Field(
        default=0, description="The platform's fee this order settles with, at today's rate."
    )
    contact_opened_at: dt.datetime | None = Field(
        default=None,
        description="When the buyer first got the contact: from then on the lead is delivered "
        "and the order can be returned, no longer cancelled.",
    )
    pii_expires_at: dt.datetime | None
    pii_destroyed_at: dt.datetime | None
    consent_withdrawn_at: dt.datetime | None = Field(
        default=None,
        description="When the consumer withdrew their consent (L3). The order stands, but the "
        "contact is no longer shown or delivered: do not contact the consumer.",
    )
    resale_prohibited: bool = Field(
        default=False,
        description="The consumer's browser sent Global Privacy Control and the consumer "
        "directed this lead to one buyer: use it only to answer the request; do not resell or "
        "share it.",
    )
    contact: ContactOut | None = Field(
        description="The consumer's contact, for the buyer only, while it is retained; null "
        "for the seller, after destruction (L4, L6) and after the consumer withdrew (L3)."
    )
    attributes: dict[str, Any] = Field(
        description="The lead's answers: all of them for the buyer while retained, the "
        "preview ones otherwise."
    )
    buyer: str | None = Field(description="The buyer's username (shown to the seller).")
    seller: str = Field(description="The seller's username.")


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2000)
    rotate_secret: bool = Field(
        default=False, description="Generate a new signing secret (the old one stops at once)."
    )


class WebhookOut(BaseModel):
    url: str | None
    secret_prefix: str | None = Field(description="The first characters of the secret.")
    secret: str | None = Field(
        default=None, description="The signing secret, only in the answer that created it."
    )
    updated_at: dt.datetime | None


class AttemptOut(BaseModel):
    attempt: int
    at: dt.datetime
    status_code: int | None
    duration_ms: int
    error: str | None
    next_attempt_at: dt.datetime | None


class DeliveryOut(BaseModel):
    id: str = Field(description="The message's webhook-id.")
    event_type: str
    url: str
    status: str = Field(description="pending, succeeded or failed")
    attempts: list[AttemptOut]
    replay_of: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
