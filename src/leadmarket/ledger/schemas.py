"""The wallet API's bodies and answers (docs/api.md, "Buying": the field names shown there are
fixed)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from leadmarket.kit.money import DEFAULT_CURRENCY, Currency


class WalletOut(BaseModel):
    balance_cents: int = Field(description="What the buyer may spend now.")
    held_cents: int = Field(description="Set aside for won sales that have not settled yet.")
    currency: str


class DepositIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The upper bound is the setting deposit_max_cents, checked by the route.
    amount_cents: int = Field(gt=0, description="Whole cents, at least 1.", strict=True)
    currency: Currency = DEFAULT_CURRENCY
    payment_method: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        pattern=r"^[\x21-\x7e]+$",
        description="The processor's token of the card or account to charge; omitted, the "
        "member's default. The sandbox processor declines `sandbox_decline`.",
    )


class DepositOut(BaseModel):
    id: str
    amount_cents: int
    currency: str
    status: str
    processor: str
    created_at: dt.datetime
    balance_cents: int = Field(description="The wallet's balance right after this deposit.")


class EntryOut(BaseModel):
    id: str
    account: str = Field(description="buyer_wallet, buyer_held or seller_payable")
    amount_cents: int = Field(description="Signed: + into this account, − out of it.")
    balance_after_cents: int
    currency: str
    kind: str = Field(description="deposit, hold, release, settle, refund or payout")
    reference: str = Field(description="What caused it: a deposit id, an order id…")
    transaction_id: str
    created_at: dt.datetime
