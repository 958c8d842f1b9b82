"""Fraud signals (promise M6): the one way any part of Leadmarket says "an admin should look at
this member", and the case that gathers them.

Other features call :func:`record_fraud_signal`; intake calls :func:`record_intake_signals`
once per batch. Each signal lands in the member's open case (one per member, opened by the
first signal), in the caller's transaction. This module imports only models and the kit, so
intake and the messages can use it without importing the admin side.

The returns call it when a return for a fake or fraudulent identity is approved (by the
seller, silence, trust, an admin's review or a dispute's decision), in the approval's
transaction (:func:`leadmarket.returns.service._signal_fraud_return`)::

    await record_fraud_signal(
        session, kind=SignalKind.FRAUD_RETURN, subject_user_id=order.seller_id,
        lead_id=order.lead_id, source=SignalSource.RETURNS,
        details={"return_id": ..., "order_id": ...}, dedupe_key=f"return:{return_id}",
        settings=settings,
    )

Once a seller has ``fraud_returns_threshold`` of them within ``fraud_returns_window_days``, the
same call adds a :attr:`SignalKind.MANY_FRAUD_RETURNS` signal (once per case), and
:func:`sellers_with_many_fraud_returns` lists such sellers."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import dialect_insert, insert_ignoring_conflicts, utcnow
from leadmarket.kit.ids import new_id
from leadmarket.models import FraudCase, FraudCaseStatus, FraudSignal


class SignalKind(enum.StrEnum):
    COMPLAINT = "complaint"  # a member's fraud complaint about a lead or a member
    SPAM_REPORT = "spam_report"  # a member message reported as spam by its recipient
    BULK_MESSAGING = "bulk_messaging"  # the same text pasted into many order threads
    LOW_QUALITY_LEAD = "low_quality_lead"  # intake: quality score below the threshold
    VELOCITY = "velocity"  # intake: seller burst or many leads from one consumer address
    FRAUD_RETURN = "fraud_return"  # a return approved as "fake or fraudulent identity"
    MANY_FRAUD_RETURNS = "many_fraud_returns"  # a seller past the fraud-return threshold


class SignalSource(enum.StrEnum):
    MEMBER = "member"
    MESSAGES = "messages"
    INTAKE = "intake"
    RETURNS = "returns"


# The intake quality reasons (leads.quality) that are velocity hits.
VELOCITY_CODES = frozenset({"seller_burst", "ip_velocity"})


def _table(model: type[Any]) -> Table:
    table: Table = model.__table__
    return table


async def open_case(
    session: AsyncSession, subject_user_id: str, now: dt.datetime, *, exclusive: bool = False
) -> FraudCase:
    """The member's open case, opened if there is none, share-locked until the transaction
    ends: signal writers do not wait for each other, an admin closing the case (``FOR UPDATE``)
    waits for them or is waited for, so a signal never lands in a case closed under it (the
    re-checked ``open_key`` no longer matches and a new case opens). ``open_key`` is unique, so
    two first signals open one case. (SQLite's write lock serialises it all anyway.)

    ``exclusive`` locks it ``FOR UPDATE`` instead, for a writer that counts the case's signals
    and acts on the count (the fraud-return threshold): two such writers then take turns, and
    the second counts the first's committed signal."""
    for _ in range(3):
        await session.execute(
            insert_ignoring_conflicts(
                session, FraudCase, index_elements=[FraudCase.open_key]
            ).values(
                id=new_id("frc"),
                subject_user_id=subject_user_id,
                open_key=subject_user_id,
                status=FraudCaseStatus.OPEN.value,
                opened_at=now,
            )
        )
        case = await session.scalar(
            select(FraudCase)
            .where(FraudCase.open_key == subject_user_id)
            .with_for_update(read=not exclusive)
            .execution_options(populate_existing=True)
        )
        if case is not None:
            return case
    raise RuntimeError("could not open a fraud case")  # closed three times in a row meanwhile


@dataclass(frozen=True)
class Recorded:
    signal: FraudSignal
    case: FraudCase
    created: bool  # False: the dedupe key existed, its occurrences went up by one


async def add_signal(
    session: AsyncSession,
    *,
    kind: SignalKind,
    subject_user_id: str,
    source: SignalSource | str,
    details: Mapping[str, Any] | None = None,
    lead_id: str | None = None,
    message_id: str | None = None,
    reporter_id: str | None = None,
    reason: str | None = None,
    dedupe_key: str | None = None,
    now: dt.datetime | None = None,
    count_repeat: bool = True,
    per_case: bool = False,
    exclusive: bool = False,
) -> Recorded:
    """Record one signal in the member's open case. With ``dedupe_key``, a second signal with
    the same key is not a new row: the existing one's ``occurrences`` goes up, or, without
    ``count_repeat`` (an idempotent retry of the same event), nothing changes. ``per_case``
    scopes the key to the open case: the same thing may be signalled again once the case is
    decided. ``exclusive``: see :func:`open_case`."""
    now = now or utcnow()
    case = await open_case(session, subject_user_id, now, exclusive=exclusive)
    if per_case and dedupe_key is not None:
        dedupe_key = f"{case.id}:{dedupe_key}"
    signal_id = new_id("frs")
    inserted = await session.execute(
        insert_ignoring_conflicts(
            session, FraudSignal, index_elements=[FraudSignal.dedupe_key]
        ).values(
            id=signal_id,
            case_id=case.id,
            kind=kind.value,
            source=str(source),
            subject_user_id=subject_user_id,
            lead_id=lead_id,
            message_id=message_id,
            reporter_id=reporter_id,
            reason=reason,
            details=dict(details or {}),
            dedupe_key=dedupe_key,
            occurrences=1,
            created_at=now,
            last_seen_at=now,
        )
    )
    created = int(getattr(inserted, "rowcount", 0) or 0) == 1
    if not created and count_repeat:
        assert dedupe_key is not None
        await session.execute(
            update(FraudSignal)
            .where(FraudSignal.dedupe_key == dedupe_key)
            .values(occurrences=FraudSignal.occurrences + 1, last_seen_at=now)
            .execution_options(synchronize_session=False)
        )
    signal = await session.scalar(
        select(FraudSignal)
        .where(FraudSignal.id == signal_id if created else FraudSignal.dedupe_key == dedupe_key)
        .execution_options(populate_existing=True)
    )
    assert signal is not None
    return Recorded(signal, case, created)


async def record_fraud_signal(
    session: AsyncSession,
    *,
    kind: SignalKind | str,
    subject_user_id: str,
    lead_id: str | None = None,
    source: SignalSource | str,
    details: Mapping[str, Any] | None = None,
    dedupe_key: str | None = None,
    settings: Settings | None = None,
) -> FraudSignal:
    """The interface for other features: record that ``subject_user_id`` did something
    suspicious (ids and codes in ``details``, never a consumer's personal data). It lands in the
    member's open case on the admin's queue, in the caller's transaction. A call with the
    ``dedupe_key`` of an earlier one (a retried job) changes nothing and returns that signal.

    A :attr:`SignalKind.FRAUD_RETURN` also checks the seller against the fraud-return threshold
    (``settings``, else the defaults) and adds :attr:`SignalKind.MANY_FRAUD_RETURNS` once per
    case when it is reached. It locks the seller's case ``FOR UPDATE`` (not shared), so
    concurrent approvals are counted one after the other: without that, three approvals
    committing together would each count only itself and the earlier ones, and none might
    reach the threshold. Callers take it before any ledger row (the fraud review locks the
    case before the ledger too)."""
    kind = SignalKind(kind)
    now = utcnow()
    recorded = await add_signal(
        session,
        kind=kind,
        subject_user_id=subject_user_id,
        source=source,
        details=details,
        lead_id=lead_id,
        dedupe_key=dedupe_key,
        now=now,
        count_repeat=False,
        # Racing approvals of one seller's fraud returns take turns on the case, so the last
        # of them counts them all and the threshold's signal is never missed.
        exclusive=kind is SignalKind.FRAUD_RETURN,
    )
    if kind is SignalKind.FRAUD_RETURN and recorded.created:
        threshold, window_days = _fraud_return_limits(settings)
        since = now - dt.timedelta(days=window_days)
        count = await fraud_returns_of(session, subject_user_id, since=since)
        if count >= threshold:
            await add_signal(
                session,
                kind=SignalKind.MANY_FRAUD_RETURNS,
                subject_user_id=subject_user_id,
                source=source,
                lead_id=lead_id,
                details={"approved_fraud_returns": count, "window_days": window_days},
                dedupe_key=f"many_fraud_returns:{recorded.case.id}",
                now=now,
                # Once per case: the returns past the threshold are counted as fraud_return
                # signals, not as more escalations.
                count_repeat=False,
            )
    return recorded.signal


def _fraud_return_limits(settings: Settings | None) -> tuple[int, int]:
    if settings is not None:
        return settings.fraud_returns_threshold, settings.fraud_returns_window_days
    fields = Settings.model_fields
    threshold = fields["fraud_returns_threshold"].default
    window = fields["fraud_returns_window_days"].default
    assert isinstance(threshold, int)
    assert isinstance(window, int)
    return threshold, window


async def fraud_returns_of(session: AsyncSession, seller_id: str, *, since: dt.datetime) -> int:
    """Approved fraud returns of one seller since ``since``."""
    total = await session.scalar(
        select(func.coalesce(func.sum(FraudSignal.occurrences), 0)).where(
            FraudSignal.kind == SignalKind.FRAUD_RETURN.value,
            FraudSignal.subject_user_id == seller_id,
            FraudSignal.created_at >= since,
        )
    )
    return int(total or 0)


async def sellers_with_many_fraud_returns(
    session: AsyncSession, settings: Settings, *, now: dt.datetime | None = None
) -> list[tuple[str, int]]:
    """Sellers with at least ``fraud_returns_threshold`` approved returns for a fake or
    fraudulent identity in the last ``fraud_returns_window_days``, most first:
    ``[(seller id, count)]``."""
    now = now or utcnow()
    since = now - dt.timedelta(days=settings.fraud_returns_window_days)
    total = func.sum(FraudSignal.occurrences)
    rows = await session.execute(
        select(FraudSignal.subject_user_id, total)
        .where(
            FraudSignal.kind == SignalKind.FRAUD_RETURN.value,
            FraudSignal.created_at >= since,
        )
        .group_by(FraudSignal.subject_user_id)
        .having(total >= settings.fraud_returns_threshold)
        .order_by(total.desc(), FraudSignal.subject_user_id)
    )
    return [(str(seller), int(count)) for seller, count in rows]


# Intake ---------------------------------------------------------------------------------------

# The intake upsert of each dialect, built on first use: it is the same statement for every
# batch, and building it again each time cost more CPU than sending it.
_INTAKE_UPSERTS: dict[str, Any] = {}


def _intake_upsert(session: AsyncSession) -> Any:
    """``INSERT … ON CONFLICT (dedupe_key) DO UPDATE``: a signal already there for the day
    counts the new leads too and names the latest one."""
    dialect = session.get_bind().dialect.name
    upsert = _INTAKE_UPSERTS.get(dialect)
    if upsert is None:
        table = _table(FraudSignal)
        insert = dialect_insert(session, table)
        upsert = _INTAKE_UPSERTS[dialect] = insert.on_conflict_do_update(
            index_elements=[table.c.dedupe_key],
            set_={
                "occurrences": table.c.occurrences + insert.excluded.occurrences,
                "last_seen_at": insert.excluded.last_seen_at,
                "lead_id": insert.excluded.lead_id,
            },
        )
    return upsert


# Opening the sellers' cases on PostgreSQL through the driver, for intake's batches (one round
# trip each instead of the ORM's three or four statements): share-locked in the sellers' order
# (as :func:`open_case` takes them). The batch's own look-up finds the cases already open.
OPEN_CASES_SQL = """
SELECT id, open_key FROM fraud_cases WHERE open_key = ANY($1::text[]) ORDER BY open_key FOR SHARE
"""
NEW_CASES_SQL = """
INSERT INTO fraud_cases (id, subject_user_id, open_key, status, opened_at)
SELECT id, subject, subject, 'open', $3 FROM unnest($1::text[], $2::text[]) AS u(id, subject)
ORDER BY subject
ON CONFLICT (open_key) DO NOTHING
RETURNING id, open_key
"""


async def _open_cases_through_driver(
    driver: Any, sellers: list[str], now: dt.datetime
) -> dict[str, str]:
    """:func:`open_case` for ``sellers`` (sorted) at once: seller → open case id. A case found
    is share-locked; a case opened here is this transaction's own row until it commits. A case
    another transaction opens or closes meanwhile is looked for again, as ``open_case`` does."""
    found: dict[str, str] = {}
    for _ in range(3):
        missing = [seller for seller in sellers if seller not in found]
        for row in await driver.fetch(OPEN_CASES_SQL, missing):
            found[row["open_key"]] = row["id"]
        missing = [seller for seller in sellers if seller not in found]
        if not missing:
            return found
        ids = [new_id("frc") for _ in missing]
        for row in await driver.fetch(NEW_CASES_SQL, ids, missing, now):
            found[row["open_key"]] = row["id"]
        if len(found) == len(sellers):
            return found
    raise RuntimeError("could not open a fraud case")  # closed three times in a row meanwhile


@dataclass
class _Tally:
    occurrences: int = 0
    last_lead_id: str = ""
    lowest_score: int = 101
    codes: set[str] = field(default_factory=set)


def intake_kinds(lead: Mapping[str, Any], settings: Settings) -> list[SignalKind]:
    """The signals one new lead raises against its seller."""
    kinds: list[SignalKind] = []
    score = int(lead["quality_score"])
    if settings.fraud_low_quality_score and score < settings.fraud_low_quality_score:
        kinds.append(SignalKind.LOW_QUALITY_LEAD)
    codes = {str(r.get("code")) for r in lead.get("quality_reasons") or ()}
    if codes & VELOCITY_CODES:
        kinds.append(SignalKind.VELOCITY)
    return kinds


def _intake_tallies(
    settings: Settings, leads: Sequence[Mapping[str, Any]]
) -> dict[tuple[str, SignalKind], _Tally]:
    """The leads that raise signals, tallied per seller and kind."""
    tallies: dict[tuple[str, SignalKind], _Tally] = {}
    for lead in leads:
        for kind in intake_kinds(lead, settings):
            tally = tallies.setdefault((str(lead["seller_id"]), kind), _Tally())
            tally.occurrences += 1
            tally.last_lead_id = max(tally.last_lead_id, str(lead["id"]))
            tally.lowest_score = min(tally.lowest_score, int(lead["quality_score"]))
            tally.codes |= {str(r.get("code")) for r in lead.get("quality_reasons") or ()}
    return tallies


def _intake_signal_rows(
    tallies: Mapping[tuple[str, SignalKind], _Tally],
    case_ids: Mapping[str, str],
    now: dt.datetime,
) -> list[dict[str, Any]]:
    day = now.strftime("%Y-%m-%d")
    rows = []
    for (seller_id, kind), tally in sorted(tallies.items()):
        case_id = case_ids[seller_id]
        rows.append(
            {
                "id": new_id("frs"),
                "case_id": case_id,
                "kind": kind.value,
                "source": SignalSource.INTAKE.value,
                "subject_user_id": seller_id,
                "lead_id": tally.last_lead_id,
                "message_id": None,
                "reporter_id": None,
                "reason": None,
                "details": {
                    "lowest_score": tally.lowest_score,
                    "codes": sorted(tally.codes),
                    "day": day,
                },
                "dedupe_key": f"intake:{kind.value}:{case_id}:{day}",
                "occurrences": tally.occurrences,
                "created_at": now,
                "last_seen_at": now,
            }
        )
    return rows


async def record_intake_signals(
    session: AsyncSession, settings: Settings, leads: Sequence[Mapping[str, Any]]
) -> int:
    """Called by intake once per written batch, after its leads are inserted (``leads`` are
    their rows: ``id``, ``seller_id``, ``quality_score``, ``quality_reasons``). Only leads that
    score below ``fraud_low_quality_score`` or carry a velocity hit count; a clean batch costs
    nothing. The rest are tallied per seller and kind into one signal row a day per case
    (``occurrences`` counts the leads, ``lead_id`` names the latest), so a seller's file of ten
    thousand bad rows is one row on the queue, not ten thousand. Returns the leads counted.

    Intake's PostgreSQL batches write the same rows with their leads instead
    (:func:`intake_signal_rows_through_driver`)."""
    tallies = _intake_tallies(settings, leads)
    if not tallies:
        return 0
    now = utcnow()
    sellers = sorted({seller for seller, _ in tallies})
    # Sellers in a fixed order: two batches lock their cases in the same order, never crosswise.
    case_ids = {seller_id: (await open_case(session, seller_id, now)).id for seller_id in sellers}
    await session.execute(_intake_upsert(session), _intake_signal_rows(tallies, case_ids, now))
    await session.flush()
    return sum(t.occurrences for t in tallies.values())


# What a signal already there for the day does with the new leads' tally (the PostgreSQL text of
# :func:`_intake_upsert`'s conflict clause).
INTAKE_SIGNAL_CONFLICT = (
    "ON CONFLICT (dedupe_key) DO UPDATE SET "
    "occurrences = fraud_signals.occurrences + excluded.occurrences, "
    "last_seen_at = excluded.last_seen_at, lead_id = excluded.lead_id"
)


async def intake_signal_rows_through_driver(
    driver: Any,
    settings: Settings,
    leads: Sequence[Mapping[str, Any]],
    open_cases: Mapping[str, str],
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """:func:`record_intake_signals` for intake's PostgreSQL batches: the ``fraud_signals`` rows
    to write (with :data:`INTAKE_SIGNAL_CONFLICT`) in the batch's own INSERT statement.
    ``open_cases`` are the sellers' open cases the batch already found and share-locked; a
    seller without one gets it here (:func:`_open_cases_through_driver`, its own round trips:
    once per seller until the case is closed)."""
    tallies = _intake_tallies(settings, leads)
    if not tallies:
        return []
    sellers = sorted({seller for seller, _ in tallies})
    case_ids = {seller: open_cases[seller] for seller in sellers if seller in open_cases}
    missing = [seller for seller in sellers if seller not in case_ids]
    if missing:
        case_ids.update(await _open_cases_through_driver(driver, missing, now))
    return _intake_signal_rows(tallies, case_ids, now)
