"""Everything the platform holds about one consumer, found by their identifiers' keyed digests,
and the four things a verified rights request can do with it (P1–P3): report it, erase it,
correct it, and take it off the market.

INTERFACE ONLY (in-branch scaffolding for parallel work; every body is replaced before this
lands on main). The request lifecycle (``privacy.requests``) calls these after verifying the
requester; nothing here checks identity."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.leads.intake import LeadsKit


@dataclass(frozen=True)
class Consumer:
    """Who a request is about, as the keyed digests intake stores: never the plain values."""

    email_digest: str | None
    phone_digest: str | None


def consumer_from(kit: LeadsKit, *, email: str | None, phone: str | None) -> Consumer:
    """Normalise (phone to E.164 as intake does) and digest the requester's identifiers. An
    identifier that cannot be normalised gives ``None`` for that digest."""
    raise NotImplementedError


async def find_consumer_leads(
    session: AsyncSession, consumer: Consumer, *, since: dt.datetime | None = None
) -> list[str]:
    """Ids of the leads whose personal data is still held for this consumer (through the blind
    indexes), newest first, optionally only those created at or after ``since``."""
    raise NotImplementedError


async def count_matching_data_points(
    session: AsyncSession,
    settings: Settings,
    lead_ids: list[str],
    *,
    data_points: Mapping[str, str],
    request_id: str,
) -> int:
    """How many of the requester's extra data points (``name``, ``postal_code``,
    ``birth_date``, ``phone``, ``email``) match the data held in at least one of the leads.
    Opens the vaults for verification only; each opening is audited under ``request_id``."""
    raise NotImplementedError


async def build_report(
    session: AsyncSession,
    settings: Settings,
    consumer: Consumer,
    *,
    since: dt.datetime,
    include_pieces: bool,
    request_id: str,
) -> dict[str, Any]:
    """The answer to a right-to-know (``include_pieces=False``) or access request
    (``include_pieces=True``) covering ``since`` to now (P1, P2, P5):
    ``categories_collected``, ``sources``, ``purposes``, ``recipient_categories``,
    ``categories_sold`` ({recipient category: [categories]}),
    ``categories_disclosed_for_business_purpose`` (same shape), built from the disclosure
    records, and ``pieces`` (one entry per lead: its id, vertical, collected_at and decrypted
    fields) only for access. Every decryption is audited under ``request_id``."""
    raise NotImplementedError


def report_as_csv(report: Mapping[str, Any]) -> str:
    """The same report, flattened to ``section,key,value`` rows (portable, P1)."""
    raise NotImplementedError


@dataclass
class KeptRecord:
    """Something not erased, and the statutory exception that keeps it (P3)."""

    record: str
    count: int
    legal_reason: str


@dataclass
class ErasureOutcome:
    erased_lead_ids: list[str] = field(default_factory=list)
    kept: list[KeptRecord] = field(default_factory=list)
    notified_buyer_ids: list[str] = field(default_factory=list)


async def erase_consumer(
    session: AsyncSession,
    settings: Settings,
    consumer: Consumer,
    *,
    request_id: str,
    now: dt.datetime,
) -> ErasureOutcome:
    """Shred the consumer's data everywhere it is still held, tell each buyer who received it
    (signed webhook event and email) and list what is kept and why."""
    raise NotImplementedError


@dataclass
class CorrectionOutcome:
    corrected_lead_ids: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    notified_buyer_ids: list[str] = field(default_factory=list)


async def correct_consumer(
    session: AsyncSession,
    settings: Settings,
    consumer: Consumer,
    corrections: Mapping[str, str],
    *,
    request_id: str,
) -> CorrectionOutcome:
    """Re-seal the corrected fields (e.g. ``name``, ``phone``, ``address.city``) in every lead
    still held, refresh the blind indexes, and tell each buyer who received the old values.
    Raises ``ValidationFailed`` (nothing changed) for an unknown field or an invalid value."""
    raise NotImplementedError


@dataclass
class OptOutOutcome:
    withdrawn_lead_ids: list[str] = field(default_factory=list)


async def opt_out_consumer(
    session: AsyncSession,
    settings: Settings,
    consumer: Consumer,
    *,
    request_id: str,
    now: dt.datetime,
) -> OptOutOutcome:
    """Opt the consumer out of sale and sharing (P9): open leads leave the market, pending
    deliveries stop, and new leads of this consumer are refused at intake from now on."""
    raise NotImplementedError
