"""Wiring for the job worker: every domain's job handlers, the services they need, and the
``leadmarket worker`` entry point. Domains keep their handlers in their own ``tasks.py``."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

from leadmarket import demo
from leadmarket.config import Settings
from leadmarket.kit import idempotency
from leadmarket.kit.db import Database, make_engine
from leadmarket.kit.jobs import (
    PURGE_FINISHED_JOBS_KIND,
    JobRegistry,
    Worker,
    purge_finished_jobs_handler,
    serve_worker,
)
from leadmarket.kit.realtime import Broker, make_broker
from leadmarket.leads import tasks as leads_tasks
from leadmarket.marketplace import tasks as marketplace_tasks
from leadmarket.notifications import tasks as notifications_tasks
from leadmarket.notifications.mail import MailBackend, make_mail_backend
from leadmarket.notifications.sms import SmsBackend, make_sms_backend
from leadmarket.orders import tasks as orders_tasks
from leadmarket.pingpost import retention as ping_retention
from leadmarket.privacy import (
    consumer_data,  # noqa: F401  (registers lead.erased/lead.corrected)
    retention_tasks,
)
from leadmarket.privacy import tasks as privacy_tasks
from leadmarket.returns import tasks as returns_tasks


@dataclass(frozen=True)
class JobServices:
    """What job handlers may use besides their session, built once per worker."""

    settings: Settings
    mail_backend: MailBackend
    # Where live page updates go: the app's own broker when the worker runs in the server
    # process, so its pages hear about auctions closing.
    broker: Broker
    sms_backend: SmsBackend


def build_services(settings: Settings, *, broker: Broker | None = None) -> JobServices:
    return JobServices(
        settings=settings,
        mail_backend=make_mail_backend(settings),
        broker=broker or make_broker(settings.redis_url),
        sms_backend=make_sms_backend(settings),
    )


def build_registry(settings: Settings | None = None) -> JobRegistry[JobServices]:
    """Every job kind. ``settings`` give the intervals that are settings (the retention sweep);
    without them, their defaults."""
    registry: JobRegistry[JobServices] = JobRegistry()
    registry.include(retention_tasks.registry_for(settings))
    registry.include(notifications_tasks.registry)
    registry.include(leads_tasks.registry)
    registry.include(marketplace_tasks.registry)
    registry.include(orders_tasks.registry)
    registry.include(privacy_tasks.registry)
    registry.include(returns_tasks.registry)
    registry.periodic(demo.NEW_DEMO_LEAD_JOB, every=dt.timedelta(minutes=1))(demo.new_demo_lead_job)
    registry.periodic(PURGE_FINISHED_JOBS_KIND, every=dt.timedelta(hours=1))(
        purge_finished_jobs_handler
    )
    registry.periodic(idempotency.PURGE_JOB_KIND, every=dt.timedelta(hours=1))(
        idempotency.purge_expired_records_handler
    )
    registry.periodic(ping_retention.SWEEP_JOB, every=ping_retention.SWEEP_EVERY)(
        ping_retention.sweep_pings_handler
    )
    return registry


async def run_worker(
    settings: Settings, *, concurrency: int = 1, stop: asyncio.Event | None = None
) -> None:
    """Run a worker on its own engine until ``stop`` is set (or SIGINT/SIGTERM without one)."""
    # Each running job holds a connection; claiming and scheduling need one more.
    pool_size = max(settings.database_pool_size, concurrency + 1)
    db = Database(make_engine(settings.database_url, pool_size=pool_size))
    try:
        worker = Worker(
            db,
            build_registry(settings),
            build_services(settings),
            settings,
            concurrency=concurrency,
        )
        await serve_worker(worker, stop)
    finally:
        await db.dispose()
