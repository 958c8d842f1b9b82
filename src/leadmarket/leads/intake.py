"""Lead intake (promises L1, L2, L3, L5, L6, S1), the one path every lead comes in by: the API,
the hosted consumer form, the seller's page and the CSV upload.

Intake is two steps:

1. :func:`prepare_lead` does everything that needs no database: the vertical's attributes, the
   address, the blind-index digests, the consent record and the sealing of the personal data
   (AES-256-GCM under a fresh data key). A consumer under 14 never gets this far: the request
   model refuses them, so nothing of theirs exists to store (L2).
2. :func:`write_leads` writes any number of prepared leads in the caller's transaction, each
   judged on its own: credentials still live, ``Idempotency-Key`` replays, consumers who opted
   out of sale (P9), duplicates of the same consumer (in the database or earlier in the same
   batch), velocity signals and quality. What the database holds for these rules is read in
   one lookup for the whole batch and the rows are written table by table for the whole batch
   (on PostgreSQL one statement each, see :mod:`.intake_sql`).

:class:`IntakeBatcher` is what makes the API fast: concurrent ``POST /api/v1/leads`` requests of
one process hand their prepared leads to it, and it writes whatever has queued up in one
transaction (group commit), answering each request only after that commit. A batch costs the
same few statements whether it carries one lead or a hundred; on PostgreSQL the writer runs that
transaction itself on the driver connection, in four round trips (:func:`write_leads_postgres`)."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import to_jsonable_python
from sqlalchemy import (
    Integer,
    Table,
    bindparam,
    func,
    literal_column,
    select,
    text,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.repository import (
    API_KEY_TOUCH_INTERVAL,
    api_key_refusal,
    recheck_api_keys,
)
from leadmarket.config import Settings
from leadmarket.fraud.signals import (
    INTAKE_SIGNAL_CONFLICT,
    intake_signal_rows_through_driver,
    record_intake_signals,
)
from leadmarket.kit.crypto import random_token
from leadmarket.kit.db import Database, insert_ignoring_conflicts, utcnow
from leadmarket.kit.errors import (
    Conflict,
    DomainError,
    FieldError,
    ValidationFailed,
    register_validation_problem,
)
from leadmarket.kit.groupcommit import GroupCommit
from leadmarket.kit.idempotency import IdempotencyKeyReused
from leadmarket.kit.ids import new_id
from leadmarket.leads import intake_sql, quality
from leadmarket.leads.previews import age_band
from leadmarket.leads.reference import check_postal_code, region_name
from leadmarket.leads.schemas import MINIMUM_AGE, MINOR_ERROR, LeadIn, age_on
from leadmarket.leads.vault import BlindIndexer, IndexKind, seal_fields
from leadmarket.models import (
    Consent,
    ConsentText,
    ConsumerOptOut,
    FraudSignal,
    IdempotencyRecord,
    Lead,
    LeadBlindIndex,
    LeadStatus,
    LeadVault,
    SaleMode,
    User,
)
from leadmarket.verticals.registry import Vertical, get_vertical, validate_attributes


class MinorRefused(DomainError):
    status = 422
    slug = "minor"
    title = "Consumer under 14"
    explanation = (
        "Leadmarket takes no data about children (promise L2): a lead for someone under "
        f"{MINIMUM_AGE} is refused and nothing of the request is stored."
    )


register_validation_problem(MINOR_ERROR, MinorRefused)


class DuplicateLead(Conflict):
    slug = "duplicate-lead"
    title = "Duplicate lead"
    explanation = (
        "The same consumer asked for the same service recently; the earlier lead is named in "
        "`duplicate_of`."
    )


class ConsumerOptedOut(Conflict):
    slug = "consumer-opted-out"
    title = "The consumer opted out of the sale of their data"
    explanation = (
        "This consumer asked Leadmarket not to sell or share their personal data (promise P9), "
        "so no lead of theirs is taken, whatever consent a new form recorded. Nothing of the "
        "request was stored."
    )


class LeadsKit:
    """Per-process helpers built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.indexer = BlindIndexer(settings.signing_key())
        settings.keyring()  # fail at start-up, not on the first lead, if the keys are unusable
        # API key id → when this process last marked it used (intake on PostgreSQL)
        self._marked_used: dict[str, dt.datetime] = {}

    def api_keys_to_mark_used(self, key_ids: Iterable[str], now: dt.datetime) -> list[str]:
        """The API keys this process has not marked used in the last minute, now taken as
        marked. The database's own condition keeps "at most once a minute per key" across
        processes (:data:`intake_sql.MARK_API_KEYS_USED`); this only spares a statement per
        batch."""
        if len(self._marked_used) > 10_000:
            self._marked_used.clear()
        since = now - API_KEY_TOUCH_INTERVAL
        due = sorted(k for k in key_ids if self._marked_used.get(k, since) <= since)
        for key_id in due:
            self._marked_used[key_id] = now
        return due


@dataclass(frozen=True)
class CreatedLead:
    lead: Lead
    certificate: str


def default_parties(seller_username: str, vertical: Vertical) -> list[str]:
    return [seller_username, f"Leadmarket buyers of {vertical.name.lower()} leads"]


def gpc_parties(seller_username: str, vertical: Vertical) -> list[str]:
    """The parties of a consent given from a browser sending Global Privacy Control: the
    consumer directed the disclosure themselves, to the seller and to one buyer, and to nobody
    beyond (no resale, no onward sharing)."""
    return [
        seller_username,
        f"one Leadmarket buyer of {vertical.name.lower()} leads (no resale or onward sharing)",
    ]


# Step 1: everything that needs no database ---------------------------------------------------


@dataclass
class PreparedLead:
    """One lead ready to write: its rows, minus the quality that depends on what is already in
    the database. Holds personal data only sealed (``vault``) or as keyed digests."""

    lead: dict[str, Any]
    vault: dict[str, Any]
    email_digest: str
    phone_digest: str
    ip_digest: str
    contact_signals: list[quality.Signal]
    consent_text_sha256: str
    consent_text: str
    consent: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.lead["id"])

    @property
    def seller_id(self) -> str:
        return str(self.lead["seller_id"])

    @property
    def vertical(self) -> str:
        return str(self.lead["vertical"])


def _address_errors(data: LeadIn) -> tuple[str | None, list[FieldError]]:
    address = data.contact.address
    errors: list[FieldError] = []
    if region_name(address.country, address.region) is None:
        errors.append(
            FieldError("contact.address.region", "Not a state or province of this country.")
        )
        return None, errors
    postal, problem = check_postal_code(address.country, address.region, address.postal_code)
    if problem is not None:
        errors.append(FieldError("contact.address.postal_code", problem))
    return postal, errors


def prepare_lead(
    kit: LeadsKit,
    *,
    seller_id: str,
    seller_username: str,
    data: LeadIn,
    source: str,
    now: dt.datetime | None = None,
) -> PreparedLead:
    """Validate what the request model cannot (the vertical's attributes, state against postal
    code), then build the lead's rows with its personal data sealed. Raises
    :class:`ValidationFailed` naming every bad field."""
    now = now or utcnow()
    vertical = get_vertical(data.vertical)
    if vertical is None:
        raise ValidationFailed(
            "Unknown vertical.",
            errors=[FieldError("vertical", "No such vertical; GET /api/v1/verticals lists them.")],
        )
    attributes, errors = validate_attributes(vertical, data.attributes)
    postal, address_errors = _address_errors(data)
    errors += address_errors
    if errors:
        raise ValidationFailed(
            "; ".join(f"{e.field}: {e.message}" for e in errors[:5]), errors=errors
        )
    assert postal is not None
    contact = data.contact
    address = contact.address
    consent = data.consent
    preview_attributes: dict[str, Any] = {}
    sealed_attributes: dict[str, Any] = {}
    for name, value in attributes.items():
        spec = vertical.field(name)
        # The vertical's loader guarantees a preview field is never identifying, free text or a
        # protected characteristic (L6); everything else stays sealed with the contact data.
        if spec is not None and spec.preview:
            preview_attributes[name] = value
        else:
            sealed_attributes[name] = value

    lead_id = new_id("lead")
    sale = data.sale
    ip_digest = kit.indexer.digest(IndexKind.IP, str(consent.ip))
    vault = seal_fields(
        kit.settings.keyring(),
        lead_id,
        {
            "first_name": contact.first_name,
            "last_name": contact.last_name,
            "email": contact.email,
            "phone": contact.phone,
            "birth_date": contact.birth_date.isoformat(),
            "street": address.street,
            "postal_code": postal,
            "attributes": sealed_attributes or None,
            "consent_ip": str(consent.ip),
            "consent_user_agent": consent.user_agent,
        },
    )
    consent_sha256 = hashlib.sha256(consent.disclosure_text.encode()).hexdigest()
    return PreparedLead(
        lead={
            "id": lead_id,
            "seller_id": seller_id,
            "vertical": vertical.slug,
            "status": LeadStatus.OPEN.value,
            "source": source,
            "country": address.country,
            "region": address.region,
            "city": address.city,
            "postal_prefix": postal[:3],
            "age_band": age_band(age_on(contact.birth_date, now.date())),
            "preview_attributes": preview_attributes,
            "quality_score": 100,
            "quality_reasons": [],
            "sale_mode": sale.mode,
            "currency": sale.currency,
            "reserve_cents": sale.reserve_cents,
            "buy_now_cents": sale.buy_now_cents,
            "price_cents": sale.price_cents,
            "duration_minutes": sale.duration_minutes,
            # Global Privacy Control: sold once, to one buyer, never shared among several.
            "exclusive": sale.exclusive or consent.global_privacy_control,
            "max_buyers": 1 if consent.global_privacy_control else (sale.max_buyers or 1),
            "auction_ends_at": (
                now + dt.timedelta(minutes=sale.duration_minutes or 60)
                if sale.mode == SaleMode.AUCTION.value
                else None
            ),
            "created_at": now,
            "pii_expires_at": None,
            "pii_destroyed_at": None,
        },
        vault={
            "lead_id": lead_id,
            "key_version": vault.key_version,
            "wrapped_key": vault.wrapped_key,
            "sealed_fields": vault.sealed_fields,
            "created_at": now,
        },
        email_digest=kit.indexer.digest(IndexKind.EMAIL, contact.email),
        phone_digest=kit.indexer.digest(IndexKind.PHONE, contact.phone),
        ip_digest=ip_digest,
        contact_signals=quality.contact_signals(
            email=contact.email, phone_e164=contact.phone, region=address.region
        ),
        consent_text_sha256=consent_sha256,
        consent_text=consent.disclosure_text,
        consent={
            "id": new_id("cns"),
            "certificate": "cert_" + random_token(24),
            "lead_id": lead_id,
            "seller_id": seller_id,
            "vertical": vertical.slug,
            "text_sha256": consent_sha256,
            "given_at": consent.given_at,
            "page_url": consent.page_url,
            "parties": (
                gpc_parties(seller_username, vertical)
                if consent.global_privacy_control
                else default_parties(seller_username, vertical)
            ),
            "global_privacy_control": consent.global_privacy_control,
            "ip_digest": ip_digest,
            "user_agent_digest": hashlib.sha256(consent.user_agent.encode()).hexdigest(),
            "recorded_at": now,
            "withdrawn_at": None,
        },
    )


# Step 2: writing a batch ---------------------------------------------------------------------


@dataclass(frozen=True)
class IdempotencyClaim:
    principal: str
    key: str
    fingerprint: str


@dataclass
class Submission:
    """A prepared lead and what its request must still prove when it is written."""

    prepared: PreparedLead
    # The API key the request came with, checked again in the writing transaction: a key
    # revoked (or an account suspended) a moment ago posts nothing.
    api_key_id: str | None = None
    idempotency: IdempotencyClaim | None = None


@dataclass(frozen=True)
class Written:
    """The answer for one submission: a new lead, or the first answer replayed."""

    status_code: int
    body: dict[str, Any]
    # The new lead's rows as written; None for a replayed answer.
    prepared: PreparedLead | None = None

    @property
    def is_new(self) -> bool:
        return self.prepared is not None

    @functools.cached_property
    def created(self) -> CreatedLead | None:
        """The new lead as a (detached) ORM object, for callers that go on working with it.
        Built on first use: the API answers from ``body`` alone, and building the object costs
        more than the rest of the answer."""
        if self.prepared is None:
            return None
        return CreatedLead(
            lead=Lead(**self.prepared.lead), certificate=self.prepared.consent["certificate"]
        )


Outcome = Written | DomainError


def created_answer(prepared: PreparedLead) -> dict[str, Any]:
    """The body of ``201 Created`` for a new lead (also kept for ``Idempotency-Key`` replays),
    from its row: :class:`LeadCreatedOut` as JSON, the preview as :func:`preview_of` gives it.
    Built as plain data and serialised by pydantic's own JSON rules (the rows are ours, nothing
    to validate): four models built and dumped per lead cost more than the rest of the answer.
    ``tests/leads/test_intake.py`` holds it equal to the models' dump."""
    lead = prepared.lead
    vertical = get_vertical(lead["vertical"])

    def quality() -> dict[str, Any]:
        return {"score": lead["quality_score"], "reasons": list(lead["quality_reasons"])}

    answer: dict[str, Any] = to_jsonable_python(
        {
            "id": prepared.id,
            "status": lead["status"],
            "preview": {
                "vertical": lead["vertical"],
                "vertical_name": vertical.name if vertical else lead["vertical"],
                "country": lead["country"],
                "region": lead["region"],
                "city": lead["city"],
                "postal_prefix": lead["postal_prefix"],
                "age_band": lead["age_band"],
                "attributes": dict(lead["preview_attributes"]),
                "created_at": lead["created_at"],
                "quality": quality(),
            },
            "quality": quality(),
            "consent_certificate": prepared.consent["certificate"],
        }
    )
    return answer


def _table(model: type[Any]) -> Table:
    """The model's table, for plain multi-row INSERTs that skip the ORM's unit of work."""
    table: Table = model.__table__
    return table


def _lock_key(value: str) -> int:
    """A PostgreSQL advisory-lock key (a positive 60-bit integer) for a digest or a name."""
    return int(hashlib.sha256(value.encode()).hexdigest()[:15], 16)


@dataclass
class _Batch:
    """The state of one :func:`write_leads` call: which submissions are still in the running."""

    submissions: Sequence[Submission]
    outcomes: list[Outcome | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.outcomes = [None] * len(self.submissions)

    def pending(self) -> list[tuple[int, Submission]]:
        return [(i, s) for i, s in enumerate(self.submissions) if self.outcomes[i] is None]

    def answers(self) -> list[Outcome]:
        outcomes = [o for o in self.outcomes if o is not None]
        assert len(outcomes) == len(self.submissions)
        return outcomes


async def write_leads(
    session: AsyncSession, kit: LeadsKit, submissions: Sequence[Submission]
) -> list[Outcome]:
    """Write ``submissions`` in the session's transaction; one outcome per submission, in order.
    A refused submission (duplicate, replay, revoked key) writes nothing and does not stop the
    others. The caller commits."""
    if not submissions:
        return []
    if session.get_bind().dialect.name == "postgresql":
        # The locks go through the session: its first statement begins the transaction the
        # driver's statements then run in.
        await _lock(session, submissions)
        driver = await intake_sql.postgres_driver(session)
        return await _write_through_driver(driver, kit, submissions)
    batch = _Batch(submissions)
    now = utcnow()
    await _check_credentials(session, batch, now)
    found = await _find(session, kit, batch, now)
    accepted = _judge(kit, batch, found)
    for table, on_conflict, rows in _rows(accepted, batch, now):
        if rows:
            statement = insert_ignoring_conflicts(session, table) if on_conflict else table.insert()
            await session.execute(statement, rows)
    # M6: low-quality and velocity leads become fraud signals against their seller, tallied
    # per batch (nothing at all for a clean batch).
    await record_intake_signals(session, kit.settings, [p.lead for p in accepted])
    return batch.answers()


async def write_leads_postgres(
    driver: intake_sql.Driver, kit: LeadsKit, submissions: Sequence[Submission]
) -> list[Outcome]:
    """:func:`write_leads` on PostgreSQL's driver connection with no session, for
    :class:`IntakeBatcher`: the batch is its own transaction in four round trips (``BEGIN``
    with the advisory locks, the look-up, the INSERTs, ``COMMIT``) where a session took eight
    under load, and none of the session's CPU. If the connection is already in a transaction
    (a test's), the batch joins it and leaves ending it to its owner."""
    own = not driver.is_in_transaction()
    try:
        await driver.execute(intake_sql.begin_and_lock(_lock_keys(submissions), begin=own))
        outcomes = await _write_through_driver(driver, kit, submissions)
        if own:
            await driver.execute("COMMIT")
    except Exception:
        if own and driver.is_in_transaction():
            try:
                await driver.execute("ROLLBACK")
            except Exception:
                driver.terminate()  # the pool finds it closed and replaces it
        raise
    except BaseException:
        # Cancelled (shutdown): no awaiting now; a connection closed mid-transaction rolls it
        # back, and the pool does not hand out a closed connection.
        if own and driver.is_in_transaction():
            driver.terminate()
        raise
    return outcomes


async def _write_through_driver(
    driver: intake_sql.Driver, kit: LeadsKit, submissions: Sequence[Submission]
) -> list[Outcome]:
    """The batch after its locks on PostgreSQL: one look-up (:func:`intake_sql.find`, which
    also rechecks the API keys and finds the sellers' fraud cases) and one INSERT statement
    carrying the fraud signals too (:func:`intake_sql.insert_batch`)."""
    settings = kit.settings
    batch = _Batch(submissions)
    now = utcnow()
    key_ids = sorted({s.api_key_id for s in submissions if s.api_key_id is not None})
    due = kit.api_keys_to_mark_used(key_ids, now)
    if due:
        # Before the look-up, which share-locks the sellers' fraud cases: a key row, then the
        # case, the order a suspension takes them in (a case first could deadlock with it).
        await driver.execute(intake_sql.MARK_API_KEYS_USED, now, due, now - API_KEY_TOUCH_INTERVAL)
    rows = await intake_sql.find(driver, **_find_arguments(kit, batch, now), api_keys=key_ids)
    live = {key_id: status for key_id, (status, _) in rows.api_keys.items()}
    _refuse_keys(batch, {key_id: api_key_refusal(live.get(key_id)) for key_id in key_ids})
    found = Found(
        replays=rows.replays,
        opted_out=rows.opted_out,
        first_lead=_earliest(rows.recent),
        seller_recent=rows.seller_recent,
        ip_recent=rows.ip_recent,
    )
    accepted = _judge(kit, batch, found)
    tables = _rows(accepted, batch, now)
    # M6, as record_intake_signals: the batch's fraud signals go in the same statement.
    signals = await intake_signal_rows_through_driver(
        driver, settings, [p.lead for p in accepted], rows.open_cases, now
    )
    tables.append((_table(FraudSignal), INTAKE_SIGNAL_CONFLICT, signals))
    await intake_sql.insert_batch(driver, tables)
    return batch.answers()


def _judge(kit: LeadsKit, batch: _Batch, found: Found) -> list[PreparedLead]:
    """The rules, in order, for the submissions still in the running; the accepted ones are
    scored and answered, and returned."""
    _replay_or_claim_keys(batch, found)
    _refuse_opted_out(batch, found)
    _refuse_duplicates(kit, batch, found)
    accepted = batch.pending()
    _score(kit, [s.prepared for _, s in accepted], found)
    for i, submission in accepted:
        batch.outcomes[i] = Written(201, created_answer(submission.prepared), submission.prepared)
    return [s.prepared for _, s in accepted]


def _lock_keys(submissions: Sequence[Submission]) -> list[int]:
    """The advisory-lock keys of a batch: per consumer (their digests: the duplicate check and
    the opt-out registry are judged per consumer, and ``lock_consumer`` takes the same keys)
    and per Idempotency-Key."""
    names: list[str] = []
    for submission in submissions:
        names += (submission.prepared.email_digest, submission.prepared.phone_digest)
        if (claim := submission.idempotency) is not None:
            names.append(f"idempotency\0{claim.principal}\0{claim.key}")
    return sorted({_lock_key(name) for name in names})


async def _lock(session: AsyncSession, submissions: Sequence[Submission]) -> None:
    """On PostgreSQL, serialise writers of the same consumer and of the same Idempotency-Key, so
    two concurrent transactions cannot both pass the checks below; different consumers never
    wait for each other (see :func:`take_advisory_locks`)."""
    await _take_lock_keys(session, _lock_keys(submissions))


async def lock_consumer(session: AsyncSession, digests: Sequence[str]) -> None:
    """Take the same per-consumer locks :func:`write_leads` takes (PostgreSQL), so a change to
    what intake checks for this consumer (an opt-out) and a batch carrying one of their leads
    happen one after the other, never interleaved."""
    await take_advisory_locks(session, digests)


async def take_advisory_locks(session: AsyncSession, names: Iterable[str]) -> None:
    """On PostgreSQL, take the transaction's advisory lock of each name (a digest or a name
    with its own prefix). All keys are taken in one statement, in ascending order, so two
    transactions sharing some of them cannot deadlock. (SQLite needs nothing: every
    transaction holds the write lock.)"""
    await _take_lock_keys(session, sorted({_lock_key(name) for name in names}))


async def _take_lock_keys(session: AsyncSession, keys: list[int]) -> None:
    if session.get_bind().dialect.name != "postgresql":
        return
    if keys:
        await session.execute(
            text("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:keys AS bigint[])) k"),
            {"keys": keys},
        )


async def _check_credentials(session: AsyncSession, batch: _Batch, now: dt.datetime) -> None:
    key_ids = {s.api_key_id for _, s in batch.pending() if s.api_key_id is not None}
    if not key_ids:
        return
    _refuse_keys(batch, await recheck_api_keys(session, key_ids, now))


def _refuse_keys(batch: _Batch, refusals: Mapping[str, DomainError | None]) -> None:
    """Each submission whose API key was revoked (or its account suspended) meanwhile gets the
    key's refusal."""
    for i, submission in batch.pending():
        if submission.api_key_id is not None:
            refusal = refusals.get(submission.api_key_id)
            if refusal is not None:
                batch.outcomes[i] = refusal


@dataclass
class Found:
    """What the database already holds that a batch's rules ask about, read once for all its
    submissions (reading for more submissions than are still in the running changes no
    answer: each rule looks up only its own submission's keys)."""

    # (principal, Idempotency-Key) → (request fingerprint, status code, answer)
    replays: dict[tuple[str, str], tuple[str, int, dict[str, Any]]]
    # (kind, digest) of the consumers in the opt-out registry (P9)
    opted_out: set[tuple[str, str]]
    # (digest, vertical) → the earliest lead within the duplicate window
    first_lead: dict[tuple[str, str], str]
    # leads in the velocity windows, each counted only up to its limit
    seller_recent: dict[str, int]
    ip_recent: dict[str, int]


def _find_arguments(kit: LeadsKit, batch: _Batch, now: dt.datetime) -> dict[str, Any]:
    """What a batch's look-up asks about (the arguments of :func:`intake_sql.find`)."""
    settings = kit.settings
    prepared = [s.prepared for s in batch.submissions]
    claims = [s.idempotency for s in batch.submissions if s.idempotency is not None]
    digests = sorted({d for p in prepared for d in (p.email_digest, p.phone_digest)})
    # No window, no duplicates: nothing to look up.
    window = settings.duplicate_window_days
    return {
        "principals": sorted({c.principal for c in claims}),
        "keys": sorted({c.key for c in claims}),
        "digests": digests,
        "kinds": [IndexKind.EMAIL.value, IndexKind.PHONE.value],
        "duplicate_digests": digests if window else [],
        "verticals": sorted({p.vertical for p in prepared}),
        "duplicate_since": now - dt.timedelta(days=window),
        "sellers": sorted({p.seller_id for p in prepared}),
        "seller_since": now - dt.timedelta(minutes=1),
        "seller_cap": settings.velocity_seller_per_minute,
        "addresses": sorted({p.ip_digest for p in prepared}),
        "address_since": now - dt.timedelta(hours=1),
        "address_cap": settings.velocity_ip_per_hour,
    }


async def _find(session: AsyncSession, kit: LeadsKit, batch: _Batch, now: dt.datetime) -> Found:
    """The look-up on SQLite, five statements (PostgreSQL: :func:`intake_sql.find`)."""
    asked = _find_arguments(kit, batch, now)
    principals, keys = asked["principals"], asked["keys"]
    digests, duplicate_digests = asked["digests"], asked["duplicate_digests"]
    kinds, verticals = asked["kinds"], asked["verticals"]
    replays: dict[tuple[str, str], tuple[str, int, dict[str, Any]]] = {}
    if principals:
        for r in await session.execute(
            select(
                IdempotencyRecord.principal,
                IdempotencyRecord.key,
                IdempotencyRecord.request_sha256,
                IdempotencyRecord.status_code,
                IdempotencyRecord.response,
            ).where(IdempotencyRecord.principal.in_(principals), IdempotencyRecord.key.in_(keys))
        ):
            replays[(r.principal, r.key)] = (r.request_sha256, r.status_code, dict(r.response))
    opted_out = await session.execute(
        select(ConsumerOptOut.kind, ConsumerOptOut.digest).where(ConsumerOptOut.digest.in_(digests))
    )
    recent: list[tuple[str, str, str]] = []
    if duplicate_digests:
        recent = [
            (digest, vertical, lead_id)
            for digest, vertical, lead_id in await session.execute(
                select(LeadBlindIndex.digest, LeadBlindIndex.vertical, LeadBlindIndex.lead_id)
                .where(
                    LeadBlindIndex.kind.in_(kinds),
                    LeadBlindIndex.digest.in_(duplicate_digests),
                    LeadBlindIndex.vertical.in_(verticals),
                    LeadBlindIndex.created_at > asked["duplicate_since"],
                )
                .order_by(LeadBlindIndex.created_at.desc())
            )
        ]
    return Found(
        replays=replays,
        opted_out={(str(kind), str(digest)) for kind, digest in opted_out},
        first_lead=_earliest(recent),
        seller_recent=await _recent_counts(
            session, "seller", asked["sellers"], asked["seller_since"], asked["seller_cap"]
        ),
        ip_recent=await _recent_counts(
            session, "address", asked["addresses"], asked["address_since"], asked["address_cap"]
        ),
    )


def _earliest(newest_first: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str], str]:
    """(digest, vertical) → lead id, keeping the earliest lead of each (rows come newest
    first, so the earliest is written last)."""
    return {(digest, vertical): lead_id for digest, vertical, lead_id in newest_first}


def _replay_or_claim_keys(batch: _Batch, found: Found) -> None:
    in_this_batch: set[tuple[str, str]] = set()
    for i, submission in batch.pending():
        claim = submission.idempotency
        if claim is None:
            continue
        earlier = found.replays.get((claim.principal, claim.key))
        if earlier is not None:
            fingerprint, status_code, response = earlier
            if fingerprint != claim.fingerprint:
                batch.outcomes[i] = IdempotencyKeyReused(
                    "This Idempotency-Key was already used with another body."
                )
            else:
                batch.outcomes[i] = Written(status_code, response)
        elif (claim.principal, claim.key) in in_this_batch:
            batch.outcomes[i] = Conflict(
                "A request with this Idempotency-Key is being processed; retry to get its answer."
            )
        else:
            in_this_batch.add((claim.principal, claim.key))


def _refuse_opted_out(batch: _Batch, found: Found) -> None:
    """A consumer in the opt-out registry (P9), by the same digests the duplicate check uses,
    is refused and nothing of the lead is written. A fresh consent on a new form does not lift
    the opt-out: a seller's form is not proof that the consumer changed their mind (see
    ``privacy.consumer_data.opt_out_consumer``)."""
    if not found.opted_out:
        return
    for i, submission in batch.pending():
        prepared = submission.prepared
        if (IndexKind.EMAIL.value, prepared.email_digest) in found.opted_out or (
            IndexKind.PHONE.value,
            prepared.phone_digest,
        ) in found.opted_out:
            batch.outcomes[i] = ConsumerOptedOut(
                "This consumer opted out of the sale and sharing of their personal data; "
                "the lead was not taken and nothing of it was stored."
            )


def _refuse_duplicates(kit: LeadsKit, batch: _Batch, found: Found) -> None:
    """The same consumer (by email or phone digest) asking for the same vertical within the
    window is a duplicate of the earliest such lead, whether that lead is already stored or
    was earlier in this batch."""
    if kit.settings.duplicate_window_days == 0:
        return
    first_lead = dict(found.first_lead)
    for i, submission in batch.pending():
        prepared = submission.prepared
        mine = [(d, prepared.vertical) for d in (prepared.email_digest, prepared.phone_digest)]
        earlier = next((first_lead[k] for k in mine if k in first_lead), None)
        if earlier is not None:
            batch.outcomes[i] = DuplicateLead(
                f"This consumer already asked for this service in lead {earlier}.",
                extra={"duplicate_of": earlier},
            )
            continue
        for k in mine:
            first_lead[k] = prepared.id


@functools.lru_cache(maxsize=512)
def _capped_counts(counted: str, how_many: int) -> Any:
    """One statement counting the recent leads of ``how_many`` sellers (``counted="seller"``)
    or consumer addresses (``"address"``), each only up to ``:cap``: the signal asks "at least
    the limit?", and a seller posting thousands a minute must not make every batch scan all of
    them. Built once per shape and reused, so SQLAlchemy compiles it once too."""
    branches: list[Any] = []
    for position in range(how_many):
        key: Any = bindparam(f"key_{position}")
        recent: Any
        if counted == "seller":
            recent = select(Lead.id).where(
                Lead.seller_id == key,
                Lead.created_at > bindparam("since"),
                Lead.source != "csv",  # files are bursts by nature; see _score
            )
        else:
            recent = select(LeadBlindIndex.id).where(
                LeadBlindIndex.kind == IndexKind.IP.value,
                LeadBlindIndex.digest == key,
                LeadBlindIndex.created_at > bindparam("since"),
            )
        branches.append(
            select(
                func.count().label("n"), literal_column(str(position)).label("position")
            ).select_from(recent.limit(bindparam("cap", type_=Integer)).subquery())
        )
    return branches[0] if how_many == 1 else union_all(*branches)


async def _recent_counts(
    session: AsyncSession, counted: str, ordered: list[str], since: dt.datetime, cap: int
) -> dict[str, int]:
    params: dict[str, Any] = {f"key_{i}": key for i, key in enumerate(ordered)}
    rows = await session.execute(
        _capped_counts(counted, len(ordered)), {**params, "since": since, "cap": cap}
    )
    return {ordered[row.position]: int(row.n) for row in rows}


def _score(kit: LeadsKit, accepted: list[PreparedLead], found: Found) -> None:
    """Quality: the contact signals found in step 1, plus velocity of the seller (leads in the
    last minute) and of the consumer's network address (last hour), counting the leads of this
    batch that come before each one."""
    settings = kit.settings
    seller_recent = dict(found.seller_recent)
    ip_recent = dict(found.ip_recent)
    for prepared in accepted:
        # A CSV file is a burst by nature: its rows are not judged by the seller's pace.
        bulk = prepared.lead["source"] == "csv"
        signals = prepared.contact_signals + quality.velocity_signals(
            seller_recent=0 if bulk else seller_recent[prepared.seller_id],
            seller_limit=settings.velocity_seller_per_minute,
            ip_recent=ip_recent[prepared.ip_digest],
            ip_limit=settings.velocity_ip_per_hour,
        )
        seller_recent[prepared.seller_id] += 1
        ip_recent[prepared.ip_digest] += 1
        prepared.lead["quality_score"] = quality.score(signals)
        prepared.lead["quality_reasons"] = [s.as_dict() for s in signals]


def _rows(
    prepared: list[PreparedLead], batch: _Batch, now: dt.datetime
) -> list[tuple[Table, intake_sql.OnConflict, list[dict[str, Any]]]]:
    """The batch's rows, table by table, parents before children: ``(table, what a row
    already there does, rows)``."""
    indexes = [
        {
            "lead_id": p.id,
            "kind": kind.value,
            "digest": digest,
            "vertical": p.vertical,
            "created_at": now,
        }
        for p in prepared
        for kind, digest in (
            (IndexKind.EMAIL, p.email_digest),
            (IndexKind.PHONE, p.phone_digest),
            (IndexKind.IP, p.ip_digest),
        )
    ]
    texts = {p.consent_text_sha256: p.consent_text for p in prepared}
    records = [
        {
            "principal": s.idempotency.principal,
            "key": s.idempotency.key,
            "request_sha256": s.idempotency.fingerprint,
            "status_code": outcome.status_code,
            "response": outcome.body,
            "created_at": now,
        }
        for s, outcome in zip(batch.submissions, batch.outcomes, strict=True)
        if s.idempotency is not None and isinstance(outcome, Written) and outcome.is_new
    ]
    return [
        (_table(Lead), False, [p.lead for p in prepared]),
        (_table(LeadVault), False, [p.vault for p in prepared]),
        (_table(LeadBlindIndex), False, indexes),
        (
            _table(ConsentText),
            True,  # the same disclosure text is stored once, whoever showed it first
            [{"sha256": sha, "text": body, "created_at": now} for sha, body in texts.items()],
        ),
        (_table(Consent), False, [p.consent for p in prepared]),
        (_table(IdempotencyRecord), False, records),
    ]


async def create_lead(
    session: AsyncSession, kit: LeadsKit, *, seller: User, data: LeadIn, source: str
) -> CreatedLead:
    """One lead, written in the caller's transaction (pages, CSV rows, demo data). Raises the
    refusal (:class:`ValidationFailed`, :class:`DuplicateLead`) instead of returning it."""
    prepared = prepare_lead(
        kit, seller_id=seller.id, seller_username=seller.username, data=data, source=source
    )
    (outcome,) = await write_leads(session, kit, [Submission(prepared)])
    if isinstance(outcome, DomainError):
        raise outcome
    assert outcome.created is not None
    return outcome.created


# Group commit for the API --------------------------------------------------------------------


class IntakeBatcher(GroupCommit[Submission, Written]):
    """Writes the leads of concurrent API requests together, one transaction per batch
    (:class:`~leadmarket.kit.groupcommit.GroupCommit` of :func:`write_leads`), waiting
    ``intake_batch_wait_ms`` for stragglers once busy. A request is answered only after its
    batch committed."""

    def __init__(self, db: Database, kit: LeadsKit, *, max_batch: int = 100) -> None:
        async def write(session: AsyncSession, batch: Sequence[Submission]) -> list[Outcome]:
            return await write_leads(session, kit, batch)

        super().__init__(
            db, write, wait_ms=lambda: kit.settings.intake_batch_wait_ms, max_batch=max_batch
        )
        self.kit = kit

    async def write_items(
        self, db: Database, items: Sequence[Submission]
    ) -> Sequence[Written | DomainError]:
        if db.is_sqlite:
            return await super().write_items(db, items)
        # No session: on the pinned connection the batch is a transaction of four round trips
        # (see write_leads_postgres).
        async with db.driver_connection() as driver:
            return await write_leads_postgres(driver, self.kit, items)
