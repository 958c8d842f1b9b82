"""The payment processor interface, and the built-in sandbox processor (M5).

A deposit asks the configured :class:`PaymentProcessor` to charge the buyer once, naming an
idempotency key; the processor answers *settled* (the money is ours, with the processor's id of
the charge) or *declined* (with a reason code). The ledger then books the deposit from the
processor's clearing account to the buyer's wallet, or changes nothing.

The shape an adapter for a real processor (Stripe, PayPal, Adyen…) fills — none is written yet;
``LEADMARKET_PAYMENT_PROCESSOR`` accepts only ``sandbox`` until one is:

* ``name``: a short id stored with each deposit (``"stripe"``).
* ``charge(request)``: one call to the processor's "create and confirm a payment" endpoint
  (Stripe: ``POST /v1/payment_intents`` with ``confirm=true``, ``amount``, ``currency``,
  ``payment_method`` = ``request.payment_method``, ``customer`` looked up from
  ``request.member_id``, and the ``Idempotency-Key`` header = ``request.idempotency_key``, so a
  retried deposit is never charged twice). It maps the processor's answer: succeeded →
  ``ChargeResult.settled(<payment intent id>)``; a card error → ``ChargeResult.declined(<its
  decline_code>, <a message fit to show the member>)``. Network errors and 5xx answers raise
  (the deposit request then fails and is rolled back; the client retries with the same key).
* Deadlines: the adapter sets its own HTTP timeout (httpx, async) well under the request's.

* ``payout(request)``: pay a seller out of the platform's balance at the processor, once per
  ``request.idempotency_key`` (the payout's id). Stripe Connect: ``POST /v1/transfers`` with
  ``amount``, ``currency``, ``destination`` = the seller's connected account (looked up from
  ``request.member_id``, or ``request.destination``), ``transfer_group`` = the payout id and
  the ``Idempotency-Key`` header; PayPal: ``POST /v1/payments/payouts`` with
  ``sender_batch_header.sender_batch_id`` = the key. Accepted → ``PayoutResult.paid(<transfer
  id>)``; refused (no connected account, account restricted) → ``PayoutResult.refused(<code>,
  <message>)``; network errors and 5xx raise, and the payout is rolled back.

What such an adapter also needs, and the sandbox does not: charges that settle later (3-D
Secure, bank debits), i.e. a ``pending`` answer, a deposit stored as pending, and the
processor's webhook settling it; and a deposit recorded (committed) before the charge so a crash
between the charge and the commit can be reconciled. Both are missing today. The same holds
for payouts: a real processor's transfer can fail after it was accepted (Stripe's
``transfer.reversed``), which needs its webhook to book the money back to the seller."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Protocol

from leadmarket.config import Settings

SANDBOX_DECLINE = "sandbox_decline"


class ChargeStatus(enum.StrEnum):
    SETTLED = "settled"
    DECLINED = "declined"


@dataclass(frozen=True)
class ChargeRequest:
    amount_cents: int
    currency: str
    member_id: str
    # The same key for every retry of one deposit: a processor charges a key at most once.
    idempotency_key: str
    # The processor's token for the card or account to charge; None: the member's default.
    payment_method: str | None = None


@dataclass(frozen=True)
class ChargeResult:
    status: ChargeStatus
    # The processor's id of the charge (settled charges only).
    processor_reference: str | None = None
    # A short code (``card_declined``) and a sentence to show the member (declined only).
    decline_code: str | None = None
    decline_message: str | None = None

    @classmethod
    def settled(cls, processor_reference: str) -> ChargeResult:
        return cls(ChargeStatus.SETTLED, processor_reference=processor_reference)

    @classmethod
    def declined(cls, code: str, message: str) -> ChargeResult:
        return cls(ChargeStatus.DECLINED, decline_code=code, decline_message=message)


class PayoutOutcome(enum.StrEnum):
    PAID = "paid"
    REFUSED = "refused"


@dataclass(frozen=True)
class PayoutRequest:
    amount_cents: int
    currency: str
    member_id: str  # the seller
    # The payout's id: a processor pays a key at most once.
    idempotency_key: str
    # The processor's id of the seller's bank account or connected account; None: their default.
    destination: str | None = None


@dataclass(frozen=True)
class PayoutResult:
    status: PayoutOutcome
    processor_reference: str | None = None
    refusal_code: str | None = None
    refusal_message: str | None = None

    @classmethod
    def paid(cls, processor_reference: str) -> PayoutResult:
        return cls(PayoutOutcome.PAID, processor_reference=processor_reference)

    @classmethod
    def refused(cls, code: str, message: str) -> PayoutResult:
        return cls(PayoutOutcome.REFUSED, refusal_code=code, refusal_message=message)


class PaymentProcessor(Protocol):
    name: str

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        """Charge once per ``request.idempotency_key``; raise only when the answer is unknown."""
        ...

    async def payout(self, request: PayoutRequest) -> PayoutResult:
        """Pay a seller once per ``request.idempotency_key``; raise only when unknown."""
        ...


class SandboxProcessor:
    """Settles every charge at once, except when told to decline: the payment method
    ``sandbox_decline`` is always declined. The same idempotency key always gives the same
    charge id, as a real processor's would."""

    name = "sandbox"

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        if request.payment_method == SANDBOX_DECLINE:
            return ChargeResult.declined(
                "card_declined", "The sandbox card was declined, as asked. Nothing was charged."
            )
        digest = hashlib.sha256(request.idempotency_key.encode()).hexdigest()[:24]
        return ChargeResult.settled(f"sbx_{digest}")

    async def payout(self, request: PayoutRequest) -> PayoutResult:
        """Pays every payout at once, except to the destination ``sandbox_decline``."""
        if request.destination == SANDBOX_DECLINE:
            return PayoutResult.refused(
                "account_restricted", "The sandbox account refused the payout, as asked."
            )
        digest = hashlib.sha256(request.idempotency_key.encode()).hexdigest()[:24]
        return PayoutResult.paid(f"sbxpo_{digest}")


def payment_processor(settings: Settings) -> PaymentProcessor:
    """The processor the settings name."""
    if settings.payment_processor == "sandbox":
        return SandboxProcessor()
    raise RuntimeError(f"no adapter for payment processor {settings.payment_processor!r}")
