"""Durable background jobs on the ``jobs`` table: an outbox drained by one or more workers.

The contract every handler relies on:

* **Enqueued in the caller's transaction.** :func:`enqueue` only adds a row to the session it is
  given, so a rolled-back change leaves no phantom job and a committed one never loses its job.
* **At least once, committed at most once.** A worker claims a job with a lease (a random token and
  an expiry). The handler's writes and the job's "done" mark share one transaction, and that mark
  only matches while the worker still holds the lease; a worker whose lease ran out (it crashed,
  hung or was too slow) has its work rolled back, and another worker runs the job again. Effects
  outside the database (a sent mail, an HTTP call) can therefore happen twice: handlers make them
  idempotent (check-then-skip on their own rows, stable message ids, idempotency keys).
* **Handlers finish within the lease** (``settings.job_lease_seconds``). A handler still running
  shortly before its lease ends is cancelled and the attempt counts as failed, so a slow job never
  runs on two workers at once. Long work is split into batches that enqueue their continuation.
* **Retries back off.** A failing attempt is retried later with exponential backoff and jitter;
  after the job's last attempt it is ``dead`` and keeps its (masked) last error for inspection.

Claiming uses ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL so any number of workers in any
number of processes share the queue; on SQLite every write transaction starts with
``BEGIN IMMEDIATE`` (see ``kit.db``), which already serialises claimers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
import secrets
import signal
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, insert_ignoring_conflicts, utcnow
from leadmarket.kit.ids import new_id
from leadmarket.kit.logs import mask_personal_data
from leadmarket.models.job import Job, JobStatus

log = logging.getLogger("leadmarket.jobs")

S = TypeVar("S")

# Stored in ``jobs.max_attempts`` when the enqueuer did not choose: the worker then applies
# ``settings.job_max_attempts``, so the setting also governs jobs already in the queue.
USE_WORKER_MAX_ATTEMPTS = 0

RETRY_BASE_DELAY = dt.timedelta(seconds=10)
RETRY_MAX_DELAY = dt.timedelta(hours=1)
# Finished jobs are kept this long for inspection, then purged by ``jobs.purge_finished``.
FINISHED_JOB_RETENTION = dt.timedelta(days=7)
DEAD_JOB_RETENTION = dt.timedelta(days=30)
PURGE_FINISHED_JOBS_KIND = "jobs.purge_finished"
LAST_ERROR_MAX_CHARS = 500

# Jitter only spreads retries apart; it protects nothing, so a non-cryptographic source is right.
_jitter = random.Random()  # noqa: S311


@dataclass(frozen=True)
class JobContext(Generic[S]):
    """What a handler gets. ``session`` is the transaction the handler's writes belong to: the
    worker commits it together with the job's "done" mark, so handlers never commit.

    ``database`` is for the rare handler that calls out (HTTP) and must not hold a transaction
    open meanwhile: it reads in a short transaction of its own, calls out, then writes through
    ``session``, which opens its connection (and, on SQLite, the write lock) only when first
    used."""

    session: AsyncSession
    payload: Mapping[str, Any]
    job_id: str
    kind: str
    attempt: int
    max_attempts: int
    services: S
    database: Database

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts


JobHandler = Callable[[JobContext[S]], Awaitable[None]]


@dataclass(frozen=True)
class JobKind(Generic[S]):
    kind: str
    handler: JobHandler[S]
    # Runs in the transaction that marks the job dead, so the domain can record the give-up
    # (for example an outbox row marked failed) atomically with it.
    on_dead: JobHandler[S] | None = None
    every: dt.timedelta | None = None


class JobRegistry(Generic[S]):
    """Job kinds and their handlers. Each domain keeps its own registry in its ``tasks.py``;
    ``leadmarket.tasks.build_registry`` combines them for the worker."""

    def __init__(self) -> None:
        self._kinds: dict[str, JobKind[S]] = {}

    def handler(
        self, kind: str, *, on_dead: JobHandler[S] | None = None
    ) -> Callable[[JobHandler[S]], JobHandler[S]]:
        def register(func: JobHandler[S]) -> JobHandler[S]:
            self._add(JobKind(kind, func, on_dead=on_dead))
            return func

        return register

    def periodic(
        self, kind: str, every: dt.timedelta, *, on_dead: JobHandler[S] | None = None
    ) -> Callable[[JobHandler[S]], JobHandler[S]]:
        """A sweep run once per ``every`` slot (slots are aligned to the Unix epoch), however
        many workers there are. ``every`` must be shorter than the retention of finished jobs:
        the finished row is what stops a slot from being scheduled twice."""
        if every <= dt.timedelta(0):
            raise ValueError("a periodic job needs a positive interval")
        if every >= FINISHED_JOB_RETENTION:
            raise ValueError(
                f"a periodic job must run more often than every {FINISHED_JOB_RETENTION}"
            )

        def register(func: JobHandler[S]) -> JobHandler[S]:
            self._add(JobKind(kind, func, on_dead=on_dead, every=every))
            return func

        return register

    def include(self, other: JobRegistry[S]) -> None:
        for job_kind in other._kinds.values():
            self._add(job_kind)

    def without(self, *kinds: str) -> JobRegistry[S]:
        """A copy without ``kinds``: a worker that must leave those jobs alone (a benchmark's
        baseline, a test isolating one mechanism from another)."""
        copy: JobRegistry[S] = JobRegistry()
        for job_kind in self._kinds.values():
            if job_kind.kind not in kinds:
                copy._add(job_kind)
        return copy

    def _add(self, job_kind: JobKind[S]) -> None:
        if job_kind.kind in self._kinds:
            raise ValueError(f"job kind {job_kind.kind!r} is registered twice")
        self._kinds[job_kind.kind] = job_kind

    def get(self, kind: str) -> JobKind[S] | None:
        return self._kinds.get(kind)

    @property
    def kinds(self) -> list[str]:
        return sorted(self._kinds)

    @property
    def periodic_kinds(self) -> list[JobKind[S]]:
        return [k for k in self._kinds.values() if k.every is not None]


def _check_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    encoded = json.dumps(payload, sort_keys=True)
    # A cheap second line of defence: payloads carry ids, and the job table is not the place
    # where personal data may live (it is logged, retried and kept for inspection). Only email
    # addresses are refused here: the phone pattern would also match long numeric ids.
    if mask_personal_data(encoded).count("[email]") > encoded.count("[email]"):
        raise ValueError("job payloads carry ids, never email addresses or other personal data")
    decoded: dict[str, Any] = json.loads(encoded)
    return decoded


async def enqueue(
    session: AsyncSession,
    kind: str,
    payload: Mapping[str, Any],
    *,
    run_at: dt.datetime | None = None,
    dedupe_key: str | None = None,
    max_attempts: int | None = None,
) -> str | None:
    """Add a job to the caller's transaction; returns its id, or None when a job with the same
    ``dedupe_key`` already exists (then nothing changes and the transaction stays usable)."""
    if max_attempts is not None and max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    job_id = new_id("job")
    now = utcnow()
    values = {
        "id": job_id,
        "kind": kind,
        "payload": _check_payload(payload),
        "status": JobStatus.QUEUED.value,
        "dedupe_key": dedupe_key,
        "run_at": run_at or now,
        "attempts": 0,
        "max_attempts": max_attempts or USE_WORKER_MAX_ATTEMPTS,
        "created_at": now,
    }
    statement = (
        insert_ignoring_conflicts(session, Job, index_elements=[Job.dedupe_key])
        .values(**values)
        .returning(Job.id)
    )
    inserted = (await session.execute(statement)).scalar_one_or_none()
    return str(inserted) if inserted is not None else None


async def purge_finished_jobs(session: AsyncSession, *, now: dt.datetime | None = None) -> int:
    """Delete done jobs after :data:`FINISHED_JOB_RETENTION` and dead ones after
    :data:`DEAD_JOB_RETENTION` (long enough for someone to look at why they died)."""
    now = now or utcnow()
    purged = 0
    for status, retention in (
        (JobStatus.DONE, FINISHED_JOB_RETENTION),
        (JobStatus.DEAD, DEAD_JOB_RETENTION),
    ):
        result = await session.execute(
            delete(Job).where(Job.status == status.value, Job.finished_at < now - retention)
        )
        purged += cast("CursorResult[Any]", result).rowcount
    return purged


async def purge_finished_jobs_handler(ctx: JobContext[Any]) -> None:
    purged = await purge_finished_jobs(ctx.session)
    log.info("finished jobs purged", extra={"job_id": ctx.job_id, "purged": purged})


def retry_delay(attempt: int) -> dt.timedelta:
    """Exponential backoff with jitter: waits double per attempt up to an hour, and each is
    drawn from the upper half of its window so a burst of failures does not retry in step."""
    ceiling = min(
        RETRY_MAX_DELAY.total_seconds(),
        RETRY_BASE_DELAY.total_seconds() * 2 ** max(0, attempt - 1),
    )
    return dt.timedelta(seconds=_jitter.uniform(ceiling / 2, ceiling))


def describe_error(exc: BaseException) -> str:
    """The stored and logged form of a failure: exception messages can quote personal data
    (an address a mail server refused), so they are masked and cut short."""
    message = mask_personal_data(str(exc))
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:LAST_ERROR_MAX_CHARS]


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    kind: str
    payload: dict[str, Any]
    attempt: int
    max_attempts: int
    lease_token: str


class LeaseLost(Exception):
    """Another worker took the job over because this worker's lease ran out."""


class Worker(Generic[S]):
    """Claims due jobs and runs them, up to ``concurrency`` at a time. Any number of workers,
    in this process or others, may share one database."""

    def __init__(
        self,
        db: Database,
        registry: JobRegistry[S],
        services: S,
        settings: Settings,
        worker_id: str | None = None,
        *,
        concurrency: int = 1,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.db = db
        self.registry = registry
        self.services = services
        self.settings = settings
        self.worker_id = worker_id or new_id("worker")
        self.concurrency = concurrency
        self._clock = clock
        self._lease = dt.timedelta(seconds=settings.job_lease_seconds)
        # Leave time for the commit after the handler: the lease must still hold when it lands.
        self._handler_budget = settings.job_lease_seconds - min(
            5.0, settings.job_lease_seconds * 0.2
        )
        self._scheduled_slots: dict[str, int] = {}

    # -- the loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then finish the jobs in hand (within their lease)."""
        log.info(
            "worker started", extra={"worker_id": self.worker_id, "concurrency": self.concurrency}
        )
        stop_waiter = asyncio.create_task(stop.wait())
        running: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                await self._schedule_periodic_safely()
                free = self.concurrency - len(running)
                claimed = await self._claim_safely(free) if free > 0 else []
                for job in claimed:
                    running.add(asyncio.create_task(self._execute(job)))
                # Every slot busy: wake when one frees up. Queue drained: also at the next poll.
                busy = len(running) >= self.concurrency
                timeout = None if busy else self.settings.job_poll_seconds
                done, _ = await asyncio.wait(
                    {*running, stop_waiter},
                    timeout=timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                running -= done
        finally:
            stop_waiter.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            log.info("worker stopped", extra={"worker_id": self.worker_id})

    async def run_once(self) -> int:
        """Run every job that is due now, ``concurrency`` at a time; returns how many ran.
        Retries are scheduled in the future, so a failing job runs at most once per call."""
        ran = 0
        while claimed := await self._claim(self.concurrency):
            await asyncio.gather(*(self._execute(job) for job in claimed))
            ran += len(claimed)
        return ran

    # -- periodic sweeps ------------------------------------------------------------------

    async def schedule_periodic(self, now: dt.datetime | None = None) -> int:
        """Insert the job of each periodic kind's current slot; returns how many were new.
        The dedupe key names the slot, so workers racing here create each slot's job once."""
        now = now or self._clock()
        inserted = 0
        async with self.db.transaction() as session:
            for job_kind in self.registry.periodic_kinds:
                assert job_kind.every is not None
                slot = _slot_of(now, job_kind.every)
                job_id = await enqueue(
                    session,
                    job_kind.kind,
                    {},
                    run_at=_slot_start(slot, job_kind.every),
                    dedupe_key=f"periodic:{job_kind.kind}:{slot}",
                )
                if job_id is not None:
                    inserted += 1
        return inserted

    async def _schedule_periodic_safely(self) -> None:
        now = self._clock()
        current = {k.kind: _slot_of(now, k.every) for k in self.registry.periodic_kinds if k.every}
        # Only touch the database when a slot turned over since this worker last scheduled.
        if current == self._scheduled_slots:
            return
        try:
            await self.schedule_periodic(now)
        except Exception as exc:
            log.error("scheduling periodic jobs failed", extra={"error": describe_error(exc)})
            return
        self._scheduled_slots = current

    # -- claiming -------------------------------------------------------------------------

    async def _claim_safely(self, limit: int) -> list[ClaimedJob]:
        try:
            return await self._claim(limit)
        except Exception as exc:
            # The database may be restarting; the loop polls again after job_poll_seconds.
            log.error("claiming jobs failed", extra={"error": describe_error(exc)})
            return []

    async def _claim(self, limit: int) -> list[ClaimedJob]:
        now = self._clock()
        claimed: list[ClaimedJob] = []
        async with self.db.transaction() as session:
            due = or_(
                and_(Job.status == JobStatus.QUEUED.value, Job.run_at <= now),
                # A running job whose lease ran out belongs to a worker that died or hung.
                and_(Job.status == JobStatus.RUNNING.value, Job.leased_until < now),
            )
            jobs = (
                await session.scalars(
                    select(Job)
                    .where(due)
                    .order_by(Job.run_at, Job.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for job in jobs:
                job.status = JobStatus.RUNNING.value
                job.attempts += 1
                job.lease_token = secrets.token_hex(16)
                job.leased_until = now + self._lease
                claimed.append(
                    ClaimedJob(
                        id=job.id,
                        kind=job.kind,
                        payload=dict(job.payload),
                        attempt=job.attempts,
                        max_attempts=job.max_attempts or self.settings.job_max_attempts,
                        lease_token=job.lease_token,
                    )
                )
        return claimed

    # -- running --------------------------------------------------------------------------

    def _log_extra(self, job: ClaimedJob, **more: Any) -> dict[str, Any]:
        return {
            "job_id": job.id,
            "kind": job.kind,
            "attempt": job.attempt,
            "worker_id": self.worker_id,
            **more,
        }

    async def _execute(self, job: ClaimedJob) -> None:
        job_kind = self.registry.get(job.kind)
        if job_kind is None:
            await self._record_failure(
                job, None, f"UnknownJobKind: no handler is registered for {job.kind!r}", dead=True
            )
            return
        if job.attempt > job.max_attempts:
            # Only a lease that expired on the final attempt gets here: that attempt crashed.
            await self._record_failure(
                job,
                job_kind,
                "LeaseExpired: the last attempt did not finish within its lease",
                dead=True,
            )
            return
        try:
            async with asyncio.timeout(self._handler_budget):
                async with self.db.transaction() as session:
                    await job_kind.handler(self._context(session, job))
                    await self._mark_done(session, job)
        except LeaseLost:
            log.warning("job lease lost; its work was rolled back", extra=self._log_extra(job))
        except TimeoutError as exc:
            await self._record_failure(
                job, job_kind, "LeaseTimeout: the handler did not finish within its lease", exc=exc
            )
        except Exception as exc:
            await self._record_failure(job, job_kind, describe_error(exc), exc=exc)
        else:
            # A sweep runs every few seconds; only its failures are news.
            level = logging.DEBUG if job_kind.every is not None else logging.INFO
            log.log(level, "job done", extra=self._log_extra(job))

    def _context(self, session: AsyncSession, job: ClaimedJob) -> JobContext[S]:
        return JobContext(
            session=session,
            payload=job.payload,
            job_id=job.id,
            kind=job.kind,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            services=self.services,
            database=self.db,
        )

    async def _mark_done(self, session: AsyncSession, job: ClaimedJob) -> None:
        """Commits only while this worker holds the lease: the row lock this UPDATE takes
        also keeps a concurrent claimer off the job until the transaction ends."""
        marked = (
            await session.execute(
                update(Job)
                .where(
                    Job.id == job.id,
                    Job.lease_token == job.lease_token,
                    Job.status == JobStatus.RUNNING.value,
                )
                .values(
                    status=JobStatus.DONE.value,
                    finished_at=self._clock(),
                    leased_until=None,
                    last_error=None,
                )
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
        ).scalar_one_or_none()
        if marked is None:
            raise LeaseLost(job.id)

    async def _record_failure(
        self,
        job: ClaimedJob,
        job_kind: JobKind[S] | None,
        error: str,
        *,
        dead: bool = False,
        exc: BaseException | None = None,
    ) -> None:
        now = self._clock()
        dead = dead or job.attempt >= job.max_attempts
        values: dict[str, Any] = {"last_error": error[:LAST_ERROR_MAX_CHARS], "leased_until": None}
        if dead:
            values.update(status=JobStatus.DEAD.value, finished_at=now)
        else:
            values.update(status=JobStatus.QUEUED.value, run_at=now + retry_delay(job.attempt))
        extra = self._log_extra(job, error=error, dead=dead)
        if exc is not None:
            extra["traceback"] = "".join(traceback.format_tb(exc.__traceback__))
        try:
            async with self.db.transaction() as session:
                recorded = (
                    await session.execute(
                        update(Job)
                        .where(
                            Job.id == job.id,
                            Job.lease_token == job.lease_token,
                            # A commit that landed just as the time budget ran out made the
                            # job done; it must not be queued again.
                            Job.status == JobStatus.RUNNING.value,
                        )
                        .values(**values)
                        .returning(Job.id)
                        .execution_options(synchronize_session=False)
                    )
                ).scalar_one_or_none()
                if recorded is None:
                    log.warning("job failed after its lease was lost", extra=extra)
                    return
                if dead and job_kind is not None and job_kind.on_dead is not None:
                    await self._run_on_dead(session, job, job_kind.on_dead)
        except Exception as record_exc:
            # The lease will expire and the job run again; nothing is lost.
            log.error(
                "recording a job failure failed",
                extra=self._log_extra(job, error=describe_error(record_exc)),
            )
            return
        if dead:
            log.error("job dead", extra=extra)
        else:
            log.warning("job failed; will retry", extra=extra)

    async def _run_on_dead(
        self, session: AsyncSession, job: ClaimedJob, on_dead: JobHandler[S]
    ) -> None:
        try:
            async with session.begin_nested():
                await on_dead(self._context(session, job))
        except Exception as exc:
            # The job is dead either way; a broken hook must not keep it alive.
            log.error(
                "job on_dead hook failed", extra=self._log_extra(job, error=describe_error(exc))
            )


def _slot_of(now: dt.datetime, every: dt.timedelta) -> int:
    return int(now.timestamp() // every.total_seconds())


def _slot_start(slot: int, every: dt.timedelta) -> dt.datetime:
    return dt.datetime.fromtimestamp(slot * every.total_seconds(), dt.UTC)


async def serve_worker(worker: Worker[Any], stop: asyncio.Event | None = None) -> None:
    """Run ``worker`` until ``stop`` is set, or until SIGINT/SIGTERM when no event is given."""
    if stop is not None:
        await worker.run(stop)
        return
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        await worker.run(stop)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
