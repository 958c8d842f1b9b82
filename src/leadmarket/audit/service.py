"""The audit log (promise A4): security events and every read of personal data, append-only and
hash-chained. Each entry's hash covers its content and the previous entry's hash, so editing,
deleting or reordering any entry breaks the chain, which :func:`verify_chain` detects.

Appends are serialised through the single ``audit_head`` row: the first statement of an append
is an UPDATE of that row, which on PostgreSQL row-locks it until the transaction ends and on
SQLite runs inside the write lock. Two concurrent appends therefore never share a predecessor."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.kit.db import insert_ignoring_conflicts, utcnow
from leadmarket.models import AuditEvent, AuditHead

GENESIS_HASH = "0" * 64
_HEAD_ID = 1


@dataclass(frozen=True)
class Actor:
    """Who did it: a member (``user``), a member through an API key (``api_key``), the platform
    itself (``system``) or someone not signed in (``anonymous``)."""

    type: str
    id: str | None = None

    @classmethod
    def system(cls) -> Actor:
        return cls("system")

    @classmethod
    def anonymous(cls) -> Actor:
        return cls("anonymous")


def _entry_hash(prev_hash: str, seq: int, content: dict[str, Any]) -> str:
    canonical = json.dumps(
        {"prev": prev_hash, "seq": seq, **content}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _content(event: AuditEvent) -> dict[str, Any]:
    return {
        "at": event.at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "action": event.action,
        "subject_type": event.subject_type,
        "subject_id": event.subject_id,
        "fields": event.fields,
        "reason": event.reason,
        "details": event.details,
    }


async def _advance_head(session: AsyncSession) -> tuple[int, str]:
    advance = (
        update(AuditHead)
        .where(AuditHead.id == _HEAD_ID)
        .values(last_seq=AuditHead.last_seq + 1)
        .returning(AuditHead.last_seq, AuditHead.last_hash)
    )
    row = (await session.execute(advance)).one_or_none()
    if row is None:
        # First entry ever: create the head, tolerating a concurrent first appender.
        await session.execute(
            insert_ignoring_conflicts(session, AuditHead).values(
                id=_HEAD_ID, last_seq=0, last_hash=GENESIS_HASH
            )
        )
        row = (await session.execute(advance)).one()
    return int(row[0]), str(row[1])


async def record(
    session: AsyncSession,
    *,
    actor: Actor,
    action: str,
    subject_type: str | None = None,
    subject_id: str | None = None,
    fields: Sequence[str] | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one entry in the caller's transaction. ``details`` holds ids and flags only:
    the audit log itself must never become a copy of the personal data it guards."""
    seq, prev_hash = await _advance_head(session)
    # Microsecond precision survives both databases, so the hash can be recomputed exactly.
    event = AuditEvent(
        seq=seq,
        at=utcnow(),
        actor_type=actor.type,
        actor_id=actor.id,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        fields=list(fields) if fields is not None else None,
        reason=reason,
        details=details,
        prev_hash=prev_hash,
    )
    event.entry_hash = _entry_hash(prev_hash, seq, _content(event))
    session.add(event)
    await session.execute(
        update(AuditHead).where(AuditHead.id == _HEAD_ID).values(last_hash=event.entry_hash)
    )
    return event


@dataclass
class ChainReport:
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def _events_in_order(session: AsyncSession, batch: int = 1000) -> AsyncIterator[AuditEvent]:
    last = 0
    while True:
        rows = (
            await session.scalars(
                select(AuditEvent)
                .where(AuditEvent.seq > last)
                .order_by(AuditEvent.seq)
                .limit(batch)
            )
        ).all()
        if not rows:
            return
        for row in rows:
            yield row
        last = rows[-1].seq


async def verify_chain(session: AsyncSession) -> ChainReport:
    """Recompute every hash in order; report gaps, broken links, altered entries and a head
    that does not point at the last entry."""
    report = ChainReport()
    expected_prev = GENESIS_HASH
    expected_seq = 1
    async for event in _events_in_order(session):
        if event.seq != expected_seq:
            report.problems.append(f"entry {expected_seq} is missing (next is {event.seq})")
        if event.prev_hash != expected_prev:
            report.problems.append(f"entry {event.seq} does not link to the entry before it")
        if _entry_hash(event.prev_hash, event.seq, _content(event)) != event.entry_hash:
            report.problems.append(f"entry {event.seq} was altered after it was written")
        expected_prev = event.entry_hash
        expected_seq = event.seq + 1
        report.checked += 1
    head = await session.get(AuditHead, _HEAD_ID)
    if head is None:
        if report.checked:
            report.problems.append("the chain head is missing")
    elif head.last_seq != expected_seq - 1 or head.last_hash != expected_prev:
        report.problems.append(
            f"the chain head names entry {head.last_seq}, but the last entry is "
            f"{expected_seq - 1}: entries were removed from the end"
        )
    return report
