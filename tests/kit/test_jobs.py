"""The job queue's promises, against the real database: a job lives and dies with the transaction
that enqueued it, runs to completion exactly once however many workers share the queue or
crash, retries with backoff and then gives up, and never keeps personal data in its error."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine, utcnow
from leadmarket.kit.jobs import (
    RETRY_MAX_DELAY,
    JobContext,
    JobRegistry,
    Worker,
    enqueue,
    purge_finished_jobs,
    retry_delay,
)
from leadmarket.models.job import Job, JobStatus

# A scratch table outside the application's schema: handlers write here, so the tests can count
# which job's effects were committed, and by which worker.
_effects_metadata = MetaData()
effects = Table(
    "test_job_effects",
    _effects_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(40), nullable=False),
    Column("worker", String(40), nullable=False),
)

Registry = JobRegistry[str]
Context = JobContext[str]


class Clock:
    """A worker's notion of now, moved by the test instead of waiting."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> None:
        self.now += delta


@pytest.fixture
async def jobs_db(committed_db: Database) -> AsyncIterator[Database]:
    async with committed_db.engine.begin() as connection:
        await connection.run_sync(_effects_metadata.create_all)
    try:
        yield committed_db
    finally:
        async with committed_db.engine.begin() as connection:
            await connection.run_sync(_effects_metadata.drop_all)


def make_worker(
    db: Database,
    registry: Registry,
    settings: Settings,
    name: str,
    *,
    clock: Clock | None = None,
    concurrency: int = 1,
) -> Worker[str]:
    # The services object is the worker's name, so handlers can record who ran them.
    return Worker(
        db,
        registry,
        name,
        settings,
        worker_id=name,
        concurrency=concurrency,
        clock=clock or utcnow,
    )


async def record_effect(ctx: Context) -> None:
    await ctx.session.execute(effects.insert().values(job_id=ctx.job_id, worker=ctx.services))


async def committed_effects(db: Database) -> list[tuple[str, str]]:
    async with db.transaction() as session:
        rows = await session.execute(select(effects.c.job_id, effects.c.worker))
        return [(row.job_id, row.worker) for row in rows]


async def load_job(db: Database, job_id: str) -> Job:
    async with db.transaction() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        return job


async def enqueue_committed(db: Database, kind: str, *, max_attempts: int | None = None) -> str:
    async with db.transaction() as session:
        job_id = await enqueue(session, kind, {"ref": "x1"}, max_attempts=max_attempts)
    assert job_id is not None
    return job_id


async def test_rolled_back_job_never_runs_and_committed_job_runs_exactly_once(
    jobs_db: Database, settings: Settings
) -> None:
    registry = Registry()
    registry.handler("test.effect")(record_effect)

    async def enqueue_then_fail() -> None:
        async with jobs_db.transaction() as session:
            await enqueue(session, "test.effect", {"ref": "rolled-back"})
            raise RuntimeError("the business change failed")

    with pytest.raises(RuntimeError):
        await enqueue_then_fail()
    committed = await enqueue_committed(jobs_db, "test.effect")

    worker = make_worker(jobs_db, registry, settings, "w1")
    assert await worker.run_once() == 1
    assert await worker.run_once() == 0

    assert await committed_effects(jobs_db) == [(committed, "w1")]
    job = await load_job(jobs_db, committed)
    assert (job.status, job.attempts) == (JobStatus.DONE, 1)
    assert job.finished_at is not None


async def test_failing_job_backs_off_then_dies_with_a_masked_error(
    jobs_db: Database, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    address = "ana.silva" + "@example.com"
    phone = "+1 415 555 " + "0100"
    registry = Registry()

    @registry.handler("test.flaky")
    async def fail(ctx: Context) -> None:
        await record_effect(ctx)  # must be rolled back with the failed attempt
        raise ConnectionError(f"relay refused {address}, call {phone}")

    job_id = await enqueue_committed(jobs_db, "test.flaky", max_attempts=3)
    clock = Clock()
    worker = make_worker(jobs_db, registry, settings, "w1", clock=clock)
    caplog.set_level(logging.INFO, logger="leadmarket.jobs")

    assert await worker.run_once() == 1
    job = await load_job(jobs_db, job_id)
    assert (job.status, job.attempts) == (JobStatus.QUEUED, 1)
    assert clock.now < job.run_at <= clock.now + RETRY_MAX_DELAY
    assert job.last_error is not None
    assert job.last_error.startswith("ConnectionError: relay refused [email]")
    assert "[phone]" in job.last_error

    assert await worker.run_once() == 0, "a retry waits for its backoff"

    for attempt in (2, 3):
        clock.advance(RETRY_MAX_DELAY)
        assert await worker.run_once() == 1
        job = await load_job(jobs_db, job_id)
        assert job.attempts == attempt
    assert job.status == JobStatus.DEAD
    assert job.finished_at is not None

    clock.advance(RETRY_MAX_DELAY * 2)
    assert await worker.run_once() == 0, "a dead job stays dead"
    assert await committed_effects(jobs_db) == []
    for record in caplog.records:
        logged = str(vars(record))
        assert address not in logged
        assert phone not in logged


def test_retry_delays_grow_and_are_capped() -> None:
    first = [retry_delay(1) for _ in range(50)]
    late = [retry_delay(30) for _ in range(50)]
    assert all(dt.timedelta(0) < delay <= dt.timedelta(seconds=10) for delay in first)
    assert all(RETRY_MAX_DELAY / 2 <= delay <= RETRY_MAX_DELAY for delay in late)
    assert len(set(late)) > 1, "retries are jittered, not in lockstep"


async def test_job_of_a_crashed_worker_runs_again_after_its_lease(
    jobs_db: Database, settings: Settings
) -> None:
    registry = Registry()
    entered = asyncio.Event()

    @registry.handler("test.crashy")
    async def hang_first_time(ctx: Context) -> None:
        if ctx.attempt == 1:
            entered.set()
            await asyncio.Event().wait()  # the worker dies in here
        await record_effect(ctx)

    job_id = await enqueue_committed(jobs_db, "test.crashy")
    clock = Clock()
    crashing = asyncio.create_task(
        make_worker(jobs_db, registry, settings, "crashed", clock=clock).run_once()
    )
    await entered.wait()
    crashing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await crashing

    same_time = make_worker(jobs_db, registry, settings, "early", clock=clock)
    assert await same_time.run_once() == 0, "a live lease keeps other workers off"

    later = Clock()
    later.now = clock.now + dt.timedelta(seconds=settings.job_lease_seconds + 1)
    assert await make_worker(jobs_db, registry, settings, "rescuer", clock=later).run_once() == 1

    assert await committed_effects(jobs_db) == [(job_id, "rescuer")]
    job = await load_job(jobs_db, job_id)
    assert (job.status, job.attempts) == (JobStatus.DONE, 2)


@pytest.mark.parametrize("stale_finishes", ["after the rescuer", "while the rescuer runs"])
async def test_stale_worker_finishing_late_does_not_commit_its_effects(
    jobs_db: Database, settings: Settings, stale_finishes: str
) -> None:
    registry = Registry()
    entered = {1: asyncio.Event(), 2: asyncio.Event()}
    release = {1: asyncio.Event(), 2: asyncio.Event()}

    @registry.handler("test.slow")
    async def wait_for_the_test(ctx: Context) -> None:
        entered[ctx.attempt].set()
        await release[ctx.attempt].wait()
        await record_effect(ctx)

    job_id = await enqueue_committed(jobs_db, "test.slow")
    clock = Clock()
    stale = asyncio.create_task(
        make_worker(jobs_db, registry, settings, "stale", clock=clock).run_once()
    )
    await entered[1].wait()
    later = Clock()
    later.now = clock.now + dt.timedelta(seconds=settings.job_lease_seconds + 1)
    rescuer = asyncio.create_task(
        make_worker(jobs_db, registry, settings, "rescuer", clock=later).run_once()
    )
    await entered[2].wait()

    if stale_finishes == "after the rescuer":
        release[2].set()
        assert await rescuer == 1
        release[1].set()
        await stale
    else:
        release[1].set()
        await stale
        release[2].set()
        assert await rescuer == 1

    assert await committed_effects(jobs_db) == [(job_id, "rescuer")]
    job = await load_job(jobs_db, job_id)
    assert (job.status, job.attempts) == (JobStatus.DONE, 2)


async def test_handler_outliving_its_lease_is_stopped_and_retried(
    jobs_db: Database, settings: Settings
) -> None:
    registry = Registry()

    @registry.handler("test.stuck")
    async def stuck(ctx: Context) -> None:
        await record_effect(ctx)
        await asyncio.Event().wait()

    job_id = await enqueue_committed(jobs_db, "test.stuck")
    short_lease = settings.model_copy(update={"job_lease_seconds": 1})
    assert await make_worker(jobs_db, registry, short_lease, "w1").run_once() == 1

    job = await load_job(jobs_db, job_id)
    assert (job.status, job.attempts) == (JobStatus.QUEUED, 1)
    assert job.last_error is not None
    assert job.last_error.startswith("LeaseTimeout")
    assert await committed_effects(jobs_db) == []


async def test_several_workers_run_every_job_exactly_once_and_never_concurrently(
    jobs_db: Database, settings: Settings, database_url: str
) -> None:
    registry = Registry()
    running: set[str] = set()
    overlaps: list[str] = []

    @registry.handler("test.count")
    async def count(ctx: Context) -> None:
        if ctx.job_id in running:
            overlaps.append(ctx.job_id)
        running.add(ctx.job_id)
        try:
            await asyncio.sleep(0)  # let the other workers interleave
            await record_effect(ctx)
        finally:
            running.discard(ctx.job_id)

    async with jobs_db.transaction() as session:
        job_ids = {await enqueue(session, "test.count", {"n": n}) for n in range(200)}

    # Separate engines, so each worker has its own connections, as separate processes would.
    engines = [make_engine(database_url, pool_size=6) for _ in range(4)]
    try:
        workers = [
            make_worker(Database(engine), registry, settings, f"w{n}", concurrency=4)
            for n, engine in enumerate(engines)
        ]
        ran = await asyncio.gather(*(worker.run_once() for worker in workers))
    finally:
        for engine in engines:
            await engine.dispose()

    assert sum(ran) == 200
    assert overlaps == []
    done = await committed_effects(jobs_db)
    assert sorted(job_id for job_id, _ in done) == sorted(job_ids)  # type: ignore[type-var]
    async with jobs_db.transaction() as session:
        states = (await session.execute(select(Job.status, Job.attempts).distinct())).all()
    assert [tuple(state) for state in states] == [(JobStatus.DONE, 1)]


async def test_periodic_sweep_runs_once_per_slot_whatever_the_number_of_workers(
    jobs_db: Database, settings: Settings
) -> None:
    registry = Registry()
    registry.periodic("test.sweep", every=dt.timedelta(minutes=5))(record_effect)
    clock = Clock()
    one, two = (make_worker(jobs_db, registry, settings, n, clock=clock) for n in ("a", "b"))

    assert await one.schedule_periodic(clock.now) + await two.schedule_periodic(clock.now) == 1
    clock.advance(dt.timedelta(minutes=5))
    scheduled = await asyncio.gather(
        one.schedule_periodic(clock.now), two.schedule_periodic(clock.now)
    )
    assert sum(scheduled) == 1

    ran = await asyncio.gather(one.run_once(), two.run_once())
    assert sum(ran) == 2
    assert len(await committed_effects(jobs_db)) == 2


async def test_sweeps_finish_quietly_and_other_jobs_say_they_are_done(
    jobs_db: Database, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A sweep runs every few seconds: its success is not news at INFO (the `make run` console
    would fill with it); a queued job's is."""
    registry = Registry()
    registry.periodic("test.sweep", every=dt.timedelta(seconds=10))(record_effect)
    registry.handler("test.effect")(record_effect)
    worker = make_worker(jobs_db, registry, settings, "w1")
    await worker.schedule_periodic()
    await enqueue_committed(jobs_db, "test.effect")

    with caplog.at_level(logging.INFO, logger="leadmarket.jobs"):
        assert await worker.run_once() == 2
    done = [r for r in caplog.records if r.getMessage() == "job done" and r.levelno >= logging.INFO]
    assert [getattr(r, "kind", None) for r in done] == ["test.effect"]
    assert len(await committed_effects(jobs_db)) == 2


def test_periodic_interval_must_be_positive_and_shorter_than_job_retention() -> None:
    registry = Registry()
    with pytest.raises(ValueError, match="positive"):
        registry.periodic("test.never", every=dt.timedelta(0))
    with pytest.raises(ValueError, match="more often"):
        registry.periodic("test.rare", every=dt.timedelta(days=30))


async def test_worker_loop_runs_jobs_as_they_come_and_finishes_them_on_stop(
    jobs_db: Database, settings: Settings
) -> None:
    registry = Registry()
    entered, release, five_ran = asyncio.Event(), asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    @registry.handler("test.effect")
    async def effect(ctx: Context) -> None:
        await record_effect(ctx)
        ran.append(ctx.job_id)
        if len(ran) == 5:
            five_ran.set()

    @registry.handler("test.last")
    async def last(ctx: Context) -> None:
        entered.set()
        await release.wait()
        await record_effect(ctx)

    fast_poll = settings.model_copy(update={"job_poll_seconds": 0.02})
    worker = make_worker(jobs_db, registry, fast_poll, "looping", concurrency=2)
    stop = asyncio.Event()
    loop = asyncio.create_task(worker.run(stop))

    for _ in range(5):
        await enqueue_committed(jobs_db, "test.effect")
    last_id = await enqueue_committed(jobs_db, "test.last")
    async with asyncio.timeout(20):
        await five_ran.wait()
        await entered.wait()

    stop.set()
    release.set()
    await loop
    effects_done = await committed_effects(jobs_db)
    assert len(effects_done) == 6
    assert (await load_job(jobs_db, last_id)).status == JobStatus.DONE


async def test_unknown_job_kind_goes_dead_with_a_clear_error(
    jobs_db: Database, settings: Settings
) -> None:
    job_id = await enqueue_committed(jobs_db, "test.nobody-handles-this")
    assert await make_worker(jobs_db, Registry(), settings, "w1").run_once() == 1
    job = await load_job(jobs_db, job_id)
    assert job.status == JobStatus.DEAD
    assert job.last_error is not None
    assert "no handler is registered for 'test.nobody-handles-this'" in job.last_error


async def test_dedupe_key_enqueues_once_and_keeps_the_transaction_usable(
    session: AsyncSession,
) -> None:
    first = await enqueue(session, "test.once", {"ref": "a"}, dedupe_key="once:a")
    again = await enqueue(session, "test.once", {"ref": "a"}, dedupe_key="once:a")
    other = await enqueue(session, "test.once", {"ref": "b"}, dedupe_key="once:b")

    assert first is not None
    assert again is None
    assert other is not None
    count = await session.scalar(
        select(func.count()).select_from(Job).where(Job.kind == "test.once")
    )
    assert count == 2


async def test_dedupe_across_committed_transactions_keeps_the_callers_other_work(
    jobs_db: Database,
) -> None:
    async with jobs_db.transaction() as session:
        assert await enqueue(session, "test.once", {}, dedupe_key="once:x") is not None
    async with jobs_db.transaction() as session:
        assert await enqueue(session, "test.once", {}, dedupe_key="once:x") is None
        await session.execute(effects.insert().values(job_id="after-duplicate", worker="caller"))
    assert await committed_effects(jobs_db) == [("after-duplicate", "caller")]


async def test_job_payload_refuses_email_addresses(session: AsyncSession) -> None:
    with pytest.raises(ValueError, match="never email addresses"):
        await enqueue(session, "test.leaky", {"to": "ana.silva" + "@example.com"})
    assert await enqueue(session, "test.fine", {"mail_id": "mail_01J9ZQ4", "n": 4155550100})


async def test_finished_jobs_are_purged_after_their_retention(session: AsyncSession) -> None:
    now = utcnow()
    old_done = await enqueue(session, "test.old", {})
    recent_done = await enqueue(session, "test.recent", {})
    old_dead = await enqueue(session, "test.old-dead", {})
    queued = await enqueue(session, "test.waiting", {}, run_at=now - dt.timedelta(days=60))
    for job_id, status, finished in (
        (old_done, JobStatus.DONE, now - dt.timedelta(days=8)),
        (recent_done, JobStatus.DONE, now - dt.timedelta(days=1)),
        (old_dead, JobStatus.DEAD, now - dt.timedelta(days=8)),
    ):
        await session.execute(
            update(Job).where(Job.id == job_id).values(status=status, finished_at=finished)
        )

    assert await purge_finished_jobs(session, now=now) == 1
    left = set((await session.scalars(select(Job.id))).all())
    assert left >= {recent_done, old_dead, queued}
    assert old_done not in left


def test_a_registry_without_some_kinds_leaves_the_original_whole() -> None:
    registry: JobRegistry[str] = JobRegistry()

    async def handle(ctx: Context) -> None:
        return None

    registry.handler("one")(handle)
    registry.periodic("sweep", dt.timedelta(seconds=10))(handle)
    trimmed = registry.without("sweep")
    assert trimmed.kinds == ["one"] and trimmed.periodic_kinds == []
    assert registry.kinds == ["one", "sweep"]
    assert trimmed.get("one") is registry.get("one")
