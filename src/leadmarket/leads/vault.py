"""The only place that sees a lead's personal data in the clear.

Sealing: each lead gets a fresh data key; every personal field is encrypted with AES-256-GCM,
bound to the lead id and the field name; the data key is stored wrapped by the current master
key. Identifiers are also stored as keyed blind indexes (HMAC-SHA256 with one HKDF-derived key
per kind, over the normalised value) so a consumer can be found without decrypting anything.

Opening happens in :func:`reveal_personal_data` only, which checks the reader's right and
records the read in the audit log (A4). Destroying (:func:`destroy_personal_data`) deletes the
wrapped key, the ciphertext and the indexes in one statement each: without the data key no
copy of the ciphertext can ever be opened again (L4)."""

from __future__ import annotations

import base64
import datetime as dt
import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

from sqlalchemy import String, any_, delete, exists, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.audit.service import Actor, record
from leadmarket.config import Settings
from leadmarket.kit.crypto import derive_key, keyed_hash
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import FieldError, Forbidden, NotFound, ValidationFailed
from leadmarket.kit.keyring import Keyring, Sealer, WrappedKey, new_data_key, open_sealed
from leadmarket.models import Lead, LeadBlindIndex, LeadVault, Order, OrderStatus, Role


class IndexKind(enum.StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    IP = "ip"


class BlindIndexer:
    """Keyed digests of normalised identifiers. The keys come from the service's root secret,
    not from the master keys, so rotating master keys leaves every index valid."""

    def __init__(self, root_key: bytes) -> None:
        self._keys = {kind: derive_key(root_key, f"blind-index:{kind}") for kind in IndexKind}

    def digest(self, kind: IndexKind, value: str) -> str:
        return keyed_hash(self._keys[kind], value.strip().lower())


def _context(lead_id: str, field: str) -> bytes:
    return f"lead|{lead_id}|{field}".encode()


def _json(value: Any) -> bytes:
    """``json.dumps(value).encode()``; a string (nine of a lead's ten fields) goes straight to
    the encoder ``json.dumps`` itself ends in for one."""
    if type(value) is str:
        return encode_basestring_ascii(value).encode()
    return json.dumps(value).encode()


@dataclass(frozen=True)
class Sealed:
    """A lead's vault row before it is written: the wrapped data key and the sealed fields."""

    key_version: int
    wrapped_key: bytes
    sealed_fields: dict[str, str]


def seal_fields(keyring: Keyring, lead_id: str, values: Mapping[str, Any]) -> Sealed:
    """Seal ``values`` (None values are left out) under a fresh data key, each bound to the
    lead and its field name, and wrap the data key with the current master key."""
    data_key = new_data_key()
    sealer = Sealer(data_key)
    sealed = {
        field: base64.b64encode(sealer.seal(_json(value), _context(lead_id, field))).decode()
        for field, value in values.items()
        if value is not None
    }
    wrapped = keyring.wrap(data_key, lead_id)
    return Sealed(wrapped.version, wrapped.wrapped, sealed)


def seal_personal_data(keyring: Keyring, lead_id: str, values: Mapping[str, Any]) -> LeadVault:
    """:func:`seal_fields` as a :class:`LeadVault` to add to a session."""
    sealed = seal_fields(keyring, lead_id, values)
    return LeadVault(
        lead_id=lead_id,
        key_version=sealed.key_version,
        wrapped_key=sealed.wrapped_key,
        sealed_fields=sealed.sealed_fields,
    )


def _open(keyring: Keyring, vault: LeadVault, fields: Iterable[str] | None) -> dict[str, Any]:
    data_key = keyring.unwrap(WrappedKey(vault.key_version, vault.wrapped_key), vault.lead_id)
    wanted = vault.sealed_fields.keys() if fields is None else fields
    return {
        field: json.loads(
            open_sealed(
                data_key,
                base64.b64decode(vault.sealed_fields[field]),
                _context(vault.lead_id, field),
            )
        )
        for field in wanted
        if field in vault.sealed_fields
    }


class Purpose(enum.StrEnum):
    """Why personal data is being opened. Each purpose names who may open it (A4: least
    privilege). Support staff have none: they work from previews. A privacy officer has none
    of their own: they see a consumer's data only inside a verified rights request."""

    ADMIN_REVIEW = "admin_review"  # an admin, with a written reason (recorded)
    BUYER_ORDER = "buyer_order"  # the buyer of a live order of the lead (L6), while retained
    LEGAL_REQUEST = "legal_request"  # an admin producing a verified legal request (P10)
    # The privacy engine itself, answering a verified consumer rights request (P1, P3, P4):
    # no person reads through it; the reason names the request.
    RIGHTS_REQUEST = "rights_request"


class PersonalDataDestroyed(NotFound):
    slug = "personal-data-destroyed"
    title = "The lead's personal data is destroyed"
    explanation = (
        "A lead's personal data is destroyed 48 hours after its sale (promise L4); nothing of "
        "it can be shown or delivered any more."
    )


# Orders whose buyer may still see the lead: not cancelled, not refunded.
LIVE_ORDER_STATUSES = (OrderStatus.HELD.value, OrderStatus.SETTLED.value)


async def _buys_lead(session: AsyncSession, lead_id: str, buyer_id: str) -> bool:
    live = exists().where(
        Order.lead_id == lead_id,
        Order.buyer_id == buyer_id,
        Order.status.in_(LIVE_ORDER_STATUSES),
    )
    return bool(await session.scalar(select(live)))


SYSTEM_ROLE = "system"


@dataclass(frozen=True)
class Reader:
    user_id: str
    role: str

    @classmethod
    def privacy_engine(cls) -> Reader:
        """The platform answering a verified rights request: a system actor, not a member."""
        return cls("privacy-engine", SYSTEM_ROLE)


# Who may open a lead for each purpose that is not a buyer's own order.
_ADMIN_PURPOSES = frozenset({Purpose.ADMIN_REVIEW, Purpose.LEGAL_REQUEST})


async def reveal_personal_data(
    session: AsyncSession,
    settings: Settings,
    lead_id: str,
    *,
    reader: Reader,
    purpose: Purpose,
    reason: str,
    fields: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Decrypt a lead's personal data for ``reader``, if ``purpose`` entitles them to it, and
    record the read.

    * ``ADMIN_REVIEW``: admins only, with a written ``reason`` (A4).
    * ``LEGAL_REQUEST``: admins only; :mod:`leadmarket.privacy.legal` calls it for a verified
      request, with the request's id in the reason (P10).
    * ``BUYER_ORDER``: only the buyer of a live (held or settled) order of this lead, and only
      until the lead's ``pii_expires_at``. Anyone else gets 404, as if there were nothing.
    * ``RIGHTS_REQUEST``: only the privacy engine (:meth:`Reader.privacy_engine`), with the
      request id as ``reason``; recorded as a system read.

    For every purpose, past ``pii_expires_at`` the data counts as destroyed even if the
    retention sweep has not run yet (L4): nobody reads or delivers it in between."""
    if purpose in _ADMIN_PURPOSES:
        if reader.role != Role.ADMIN.value:
            raise Forbidden(
                "Only an admin may open a lead's personal data, and only with a reason."
            )
        if not reason.strip():
            raise ValidationFailed(
                "Say why you need the personal data.",
                errors=[FieldError("reason", "A reason is required; it is recorded.")],
            )
    if purpose is Purpose.RIGHTS_REQUEST and (reader.role != SYSTEM_ROLE or not reason.strip()):
        raise Forbidden("Only the privacy engine opens personal data for a rights request.")
    if purpose is Purpose.BUYER_ORDER and (
        reader.role != Role.BUYER.value or not await _buys_lead(session, lead_id, reader.user_id)
    ):
        raise NotFound("No such order.")
    lead = await session.get(Lead, lead_id)
    if lead is None:
        raise NotFound("No such lead.")
    if is_past_retention(lead, utcnow()):
        raise PersonalDataDestroyed("This lead's personal data has been destroyed.")
    vault = await session.get(LeadVault, lead_id)
    if vault is None:
        raise PersonalDataDestroyed("This lead's personal data has been destroyed.")
    values = _open(settings.keyring(), vault, fields)
    await record(
        session,
        actor=Actor.system() if reader.role == SYSTEM_ROLE else Actor("user", reader.user_id),
        action="pii.read",
        subject_type="lead",
        subject_id=lead_id,
        fields=sorted(values),
        reason=f"{purpose.value}: {reason}",
    )
    return values


async def open_for_destruction(
    session: AsyncSession,
    keyring: Keyring,
    lead_ids: Sequence[str],
    *,
    fields: Iterable[str],
    reason: str,
) -> dict[str, dict[str, Any]]:
    """Decrypt ``fields`` of ``lead_ids`` for the platform itself, in the transaction that
    destroys them right after (the retention sweep finding the copies members typed into their
    messages, L4/M4): no person reads them, and no deadline check applies, since the data is
    opened precisely because its deadline has passed. One audit entry records the read (A4),
    with the leads' ids, never the values. Leads without a vault are left out."""
    if not lead_ids:
        return {}
    wanted = list(fields)
    vaults = await session.scalars(
        select(LeadVault).where(lead_id_among(session, LeadVault.lead_id, list(lead_ids)))
    )
    opened = {vault.lead_id: _open(keyring, vault, wanted) for vault in vaults}
    if opened:
        await record(
            session,
            actor=Actor.system(),
            action="pii.read",
            subject_type="lead",
            fields=wanted,
            reason=reason,
            details={"lead_ids": sorted(opened)},
        )
    return opened


def is_past_retention(lead: Lead, now: dt.datetime) -> bool:
    """Whether ``lead``'s personal data counts as gone: destroyed, or past its deadline."""
    return lead.pii_destroyed_at is not None or (
        lead.pii_expires_at is not None and lead.pii_expires_at <= now
    )


async def destroy_personal_data(session: AsyncSession, lead: Lead, *, now: dt.datetime) -> None:
    """Crypto-shred: the wrapped key and ciphertext go, and so do the blind indexes."""
    await shred_personal_data(session, [lead.id])
    lead.pii_destroyed_at = now


async def shred_personal_data(session: AsyncSession, lead_ids: Sequence[str]) -> int:
    """Crypto-shred many leads at once: one multi-row DELETE of their vaults (wrapped data key
    and ciphertext) and one of their blind indexes. The caller marks the leads destroyed in the
    same transaction. Returns how many vaults went."""
    if not lead_ids:
        return 0
    ids = list(lead_ids)
    deleted = await session.execute(
        delete(LeadVault)
        .where(lead_id_among(session, LeadVault.lead_id, ids))
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        delete(LeadBlindIndex)
        .where(lead_id_among(session, LeadBlindIndex.lead_id, ids))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(deleted, "rowcount", 0) or 0)


def lead_id_among(session: AsyncSession, column: Any, ids: list[str]) -> Any:
    """``column`` is one of ``ids``: ``= ANY(array)`` on PostgreSQL (one parameter, one
    prepared statement whatever the count), ``IN (…)`` on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(literal(ids, ARRAY(String)))
    return column.in_(ids)


async def rewrap_all(session: AsyncSession, keyring: Keyring, *, batch_size: int = 500) -> int:
    """Re-wrap every lead's data key under the current master key (``leadmarket keys
    rotate``). Sealed fields are untouched; only the small wrapped keys change."""
    done = 0
    while True:
        vaults = (
            await session.scalars(
                select(LeadVault)
                .where(LeadVault.key_version != keyring.current)
                .limit(batch_size)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not vaults:
            return done
        for vault in vaults:
            wrapped = keyring.rewrap(
                WrappedKey(vault.key_version, vault.wrapped_key), vault.lead_id
            )
            vault.key_version, vault.wrapped_key = wrapped.version, wrapped.wrapped
        await session.flush()
        done += len(vaults)


async def key_versions_in_use(session: AsyncSession) -> set[int]:
    return set(await session.scalars(select(LeadVault.key_version).distinct()))
