"""The record of every disclosure of personal data, written as it happens (P2, P9, P10).

Every path that hands personal data to someone calls :func:`record_disclosure`, in the same
transaction as the hand-off, so a disclosure that is rolled back leaves no record and one that
commits always has one. The privacy reports read the rows; they never reconstruct disclosures
from orders or logs. The kinds, and where each is written today:

* **Sale** (``sold=True``): a lead's personal data to the buyer who bought it, under the
  consumer's consent, whose certificate is the basis reference (P9). Written by
  :func:`leadmarket.orders.service.sell`, the one sale step of buying outright, auctions and
  ping/post; the webhook delivery that follows is part of that sale, not another disclosure.
* **Service provider** (``sold=False``, a business purpose): personal data handed to a company
  that processes it on the platform's behalf under contract. Today there is one: the SMTP relay
  (``LEADMARKET_MAIL_BACKEND=smtp``) receives each member's email address with the mail sent to
  them (:func:`leadmarket.notifications.service.send_queued_mail`). No lead's consumer data goes
  to any outside service: pings carry previews only, the payment processor is a sandbox that
  receives a member id, and the development mail backend writes files. A new integration (a
  real payment processor, an enrichment or fraud service) must call this function too.
* **Law enforcement** (``sold=False``): a production answering a verified legal request, the
  legal document being the basis (:mod:`leadmarket.privacy.legal`)."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.kit.db import utcnow
from leadmarket.models import Disclosure, LegalDocumentKind
from leadmarket.verticals.registry import PI_CATEGORIES


class DisclosureKind(enum.StrEnum):
    SALE = "sale"
    SERVICE_PROVIDER = "service_provider"
    LAW_ENFORCEMENT = "law_enforcement"


class RecipientCategory(enum.StrEnum):
    """The CCPA's "categories of third parties" as the P2 lists group them."""

    BUYER = "buyer"
    SERVICE_PROVIDER = "service_provider"
    LAW_ENFORCEMENT = "law_enforcement"


class DisclosurePurpose(enum.StrEnum):
    SALE = "sale"
    EMAIL_DELIVERY = "email_delivery"
    PAYMENT_PROCESSING = "payment_processing"
    FRAUD_PREVENTION = "fraud_prevention"
    LEGAL_REQUEST = "legal_request"


class LegalBasis(enum.StrEnum):
    CONSUMER_CONSENT = "consumer_consent"
    SERVICE_PROVIDER_CONTRACT = "service_provider_contract"
    SUBPOENA = LegalDocumentKind.SUBPOENA.value
    COURT_ORDER = LegalDocumentKind.COURT_ORDER.value
    SEARCH_WARRANT = LegalDocumentKind.SEARCH_WARRANT.value
    EMERGENCY_DISCLOSURE = LegalDocumentKind.EMERGENCY_DISCLOSURE.value


# What each kind is, in the P2 lists: who receives it, whether it is a sale, and the bases it
# may rest on. A sale rests on consent only (P9); a production on a legal document only (P10).
_KINDS: dict[DisclosureKind, tuple[RecipientCategory, bool, frozenset[LegalBasis]]] = {
    DisclosureKind.SALE: (
        RecipientCategory.BUYER,
        True,
        frozenset({LegalBasis.CONSUMER_CONSENT}),
    ),
    DisclosureKind.SERVICE_PROVIDER: (
        RecipientCategory.SERVICE_PROVIDER,
        False,
        frozenset({LegalBasis.SERVICE_PROVIDER_CONTRACT}),
    ),
    DisclosureKind.LAW_ENFORCEMENT: (
        RecipientCategory.LAW_ENFORCEMENT,
        False,
        frozenset(LegalBasis(kind.value) for kind in LegalDocumentKind),
    ),
}


def record_disclosure(
    session: AsyncSession,
    kind: DisclosureKind,
    *,
    categories: Iterable[str],
    purpose: DisclosurePurpose,
    legal_basis: LegalBasis,
    basis_reference: str | None,
    lead_id: str | None = None,
    subject_user_id: str | None = None,
    recipient_id: str | None = None,
    recipient_name: str | None = None,
    order_id: str | None = None,
    legal_request_id: str | None = None,
    at: dt.datetime | None = None,
) -> Disclosure:
    """Add the record of one disclosure to the caller's transaction and return it.

    ``lead_id`` (a lead's consumer) or ``subject_user_id`` (a member) says whose data it is;
    ``recipient_id`` (a member) or ``recipient_name`` (someone outside) to whom. ``categories``
    are keys of :data:`~leadmarket.verticals.registry.PI_CATEGORIES`. The kind decides the
    recipient category and whether it counts as sold. A call that breaks these rules is a
    programming error (``ValueError``), never a record that would mislead the reports."""
    recipient_category, sold, bases = _KINDS[kind]
    if (lead_id is None) == (subject_user_id is None):
        raise ValueError("a disclosure is about one lead or one member")
    if recipient_id is None and not recipient_name:
        raise ValueError("a disclosure names its recipient")
    if legal_basis not in bases:
        raise ValueError(f"a {kind.value} disclosure cannot rest on {legal_basis.value}")
    if kind is DisclosureKind.SALE and (recipient_id is None or purpose != DisclosurePurpose.SALE):
        raise ValueError("a sale is made to a member buyer, for the sale")
    if kind is DisclosureKind.LAW_ENFORCEMENT and (legal_request_id is None or not basis_reference):
        raise ValueError("a law-enforcement disclosure names its request and legal document")
    wanted = sorted(set(categories))
    unknown = [c for c in wanted if c not in PI_CATEGORIES]
    if unknown or not wanted:
        raise ValueError(f"unknown or no categories of personal data: {unknown}")
    disclosure = Disclosure(
        lead_id=lead_id,
        subject_user_id=subject_user_id,
        recipient_id=recipient_id,
        recipient_name=recipient_name,
        recipient_category=recipient_category.value,
        categories=wanted,
        purpose=purpose.value,
        sold=sold,
        legal_basis=legal_basis.value,
        basis_reference=basis_reference,
        order_id=order_id,
        legal_request_id=legal_request_id,
        disclosed_at=at or utcnow(),
    )
    session.add(disclosure)
    return disclosure
