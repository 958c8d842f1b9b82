"""Request and response bodies of ping/post (docs/api.md "Buying": ``POST /api/v1/ping`` and
``POST /api/v1/post``). A ping carries no contact data: any field not listed here is refused
(422 naming it), so a name, email or phone cannot slip in."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_core import PydanticCustomError

from leadmarket.kit.schemas import RequestModel
from leadmarket.leads.schemas import MINIMUM_AGE, MINOR_ERROR, ConsentIn, ContactIn

Cents = Annotated[int, Field(ge=1, le=100_000_000)]


class PingIn(RequestModel):
    vertical: Annotated[str, Field(min_length=1, max_length=40)]
    country: Literal["US", "CA"] = "US"
    region: Annotated[str, Field(min_length=2, max_length=3, description="State/province code")]
    postal_code: Annotated[str, Field(min_length=3, max_length=12)]
    attributes: dict[str, Any] = Field(
        default_factory=dict,
        description="The vertical's preview attributes (those a buyer sees before buying); the "
        "others are sent with the post.",
    )
    exclusive: bool = Field(default=True, description="Sold to one buyer only.")
    currency: Literal["USD", "CAD"] = "USD"
    min_price_cents: Cents = Field(
        default=1,
        description="The lowest price the seller accepts (a reserve); bids below it do not count.",
    )
    age: Annotated[int, Field(ge=0, le=120)] | None = Field(
        default=None,
        description="The consumer's age in years. Only its band (18-24, 25-34, …) is kept and "
        "shown to buyers; campaigns with an age filter bid only on pings that give it, and the "
        "post's birth date must fall in the same band.",
    )

    @field_validator("region")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.strip().upper()

    @field_validator("age")
    @classmethod
    def _not_a_child(cls, value: int | None) -> int | None:
        if value is not None and value < MINIMUM_AGE:
            # The /problems/minor answer, as for a lead: nothing of the ping is stored (L2).
            raise PydanticCustomError(MINOR_ERROR, "The consumer is under 14.")
        return value


class PingOut(BaseModel):
    ping_id: str
    accepted: bool
    price_cents: int
    currency: str
    expires_at: dt.datetime


class PostIn(RequestModel):
    ping_id: Annotated[str, Field(min_length=1, max_length=40)]
    contact: ContactIn
    consent: ConsentIn
    attributes: dict[str, Any] = Field(
        default_factory=dict,
        description="The vertical's attributes that are not in a lead's preview (and so were "
        "not sent with the ping); the ping's own attributes may be repeated, not changed.",
    )


class PostOut(BaseModel):
    sold: bool
    order_id: str | None
    price_cents: int
    currency: str
    lead_id: str | None = Field(description="The lead created; none when nothing was sold.")


class PingRowOut(BaseModel):
    """A seller's ping, as their page lists it."""

    id: str
    vertical: str
    region: str
    postal_prefix: str
    age_band: str | None = Field(description="The band of the age the ping gave, if any.")
    accepted: bool
    price_cents: int
    currency: str
    created_at: dt.datetime
    expires_at: dt.datetime
    posted_at: dt.datetime | None
    outcome: str | None
    sold_price_cents: int | None
    order_id: str | None
