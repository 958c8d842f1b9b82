"""Webhook endpoints and deliveries: where a buyer wants their leads sent, the signed HTTP
delivery itself, retries with backoff through the durable job queue, and the delivery log.

A delivery names a destination URL and a message type; what it carries is built by the
message type's builder (:func:`payload_builder`) **at delivery time**, so personal data is never
stored in the job queue or the delivery log (job payload: the delivery id only). A builder that
raises :class:`PayloadGone` (the lead's personal data was destroyed) ends the delivery for good.

Each attempt runs in three steps so that no lock is held while the buyer's server answers:
read and build the payload in a short transaction of its own (the read of personal data is
audited there), POST with a deadline and no transaction open, then record the attempt and, if
it failed, enqueue the next attempt with exponential backoff — or mark the delivery failed after
``webhook_max_attempts``. A buyer may replay any delivery: a new message (new ``webhook-id``)
with the same content, built afresh."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.crypto import derive_key
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.errors import Conflict, FieldError, NotFound, ValidationFailed
from leadmarket.kit.jobs import describe_error, enqueue, retry_delay
from leadmarket.kit.keyring import (
    DecryptionFailed,
    Keyring,
    KeyringError,
    WrappedKey,
    open_sealed,
)
from leadmarket.models import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from leadmarket.webhooks.outbound import (
    is_local_name,
    is_private_address,
    public_client,
    refused_as_private,
)
from leadmarket.webhooks.signing import SECRET_PREFIX, generate_secret, signed_headers

log = logging.getLogger("leadmarket.webhooks")

DELIVER_JOB = "webhooks.deliver"
MAX_URL_LENGTH = 2000
USER_AGENT = "Leadmarket-Webhooks/1"


class PayloadGone(Exception):
    """The message's content no longer exists (e.g. the lead's personal data was destroyed):
    the delivery ends for good."""


class NoWebhookEndpoint(Conflict):
    slug = "no-webhook-endpoint"
    title = "No webhook endpoint"
    explanation = "Set your webhook endpoint first (PUT /api/v1/me/webhook)."


PayloadBuilder = Callable[[AsyncSession, Settings, WebhookDelivery], Awaitable[dict[str, Any]]]
_BUILDERS: dict[str, PayloadBuilder] = {}


def payload_builder(event_type: str) -> Callable[[PayloadBuilder], PayloadBuilder]:
    """Register the function that builds the body of ``event_type`` messages."""

    def register(func: PayloadBuilder) -> PayloadBuilder:
        _BUILDERS[event_type] = func
        return func

    return register


# Endpoints --------------------------------------------------------------------------------


def _owner(endpoint_id: str) -> str:
    """The name the keyring binds an endpoint's sealed secret to (never a lead's id)."""
    return f"webhook-endpoint|{endpoint_id}"


def _seal_secret(keyring: Keyring, endpoint: WebhookEndpoint, secret: bytes) -> None:
    """The secret is key material itself, so the master key wraps it directly, as it wraps a
    lead's data key: rotating the master key re-wraps it (:func:`rewrap_endpoint_secrets`)."""
    wrapped = keyring.wrap(secret, _owner(endpoint.id))
    endpoint.key_version, endpoint.secret_sealed = wrapped.version, wrapped.wrapped


def _legacy_secret_key(settings: Settings) -> bytes:
    """The key secrets were sealed with before migration 0017: derived from
    ``LEADMARKET_SECRET_KEY``, so changing that setting made them unreadable."""
    return derive_key(settings.signing_key(), "webhook-endpoint-secret")


def _convert_legacy(settings: Settings, endpoint: WebhookEndpoint) -> bytes:
    """Open a secret sealed the old way and seal it again under the master keyring.

    Done lazily, here and in :func:`rewrap_endpoint_secrets`, rather than in migration 0017:
    a migration runs wherever ``leadmarket migrate`` is typed, possibly without the service's
    ``LEADMARKET_SECRET_KEY`` (where :meth:`Settings.signing_key` would even create a fresh
    random one), and would then seal nothing or fail the upgrade. The service and the
    ``keys`` commands run with the service's own settings, which hold the old key. Operators
    run ``leadmarket keys rewrap`` once before changing ``LEADMARKET_SECRET_KEY``; a secret
    that no longer opens stays as it is (it was lost when the key changed) and is counted."""
    context = _owner(endpoint.id).encode()  # the old scheme's context was the same text
    secret = open_sealed(_legacy_secret_key(settings), endpoint.secret_sealed, context)
    _seal_secret(settings.keyring(), endpoint, secret)
    return secret


def endpoint_secret(settings: Settings, endpoint: WebhookEndpoint) -> str:
    """The endpoint's signing secret. A secret still sealed the pre-0017 way is converted on
    the spot (the caller's transaction stores it)."""
    if endpoint.key_version is None:
        return _convert_legacy(settings, endpoint).decode()
    wrapped = WrappedKey(endpoint.key_version, endpoint.secret_sealed)
    return settings.keyring().unwrap(wrapped, _owner(endpoint.id)).decode()


async def rewrap_endpoint_secrets(
    session: AsyncSession, settings: Settings, *, batch_size: int = 500
) -> tuple[int, int]:
    """Seal every endpoint secret under the current master key version (``leadmarket keys
    rotate`` and ``rewrap``), converting those still sealed the pre-0017 way. Returns (done,
    secrets that no longer open: sealed under a secret key that has since changed). An
    endpoint locked right now is skipped and keeps its version in use."""
    keyring = settings.keyring()
    done = lost = 0
    after = ""
    while True:
        found = (
            await session.scalars(
                select(WebhookEndpoint)
                .where(
                    WebhookEndpoint.id > after,
                    or_(
                        WebhookEndpoint.key_version.is_(None),
                        WebhookEndpoint.key_version != keyring.current,
                    ),
                )
                .order_by(WebhookEndpoint.id)
                .limit(batch_size)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not found:
            return done, lost
        for endpoint in found:
            after = endpoint.id
            try:
                secret = endpoint_secret(settings, endpoint)  # converts a pre-0017 secret
            except DecryptionFailed:
                lost += 1
                continue
            if endpoint.key_version != keyring.current:
                _seal_secret(keyring, endpoint, secret.encode())
            done += 1
        await session.flush()


async def owner_secrets(
    session: AsyncSession, settings: Settings, owner_ids: Iterable[str]
) -> dict[str, str | None]:
    """The signing secret of each of ``owner_ids``: None for an owner with no endpoint, or
    whose secret no longer opens (sealed under a key that has since changed). Read-only: a
    secret still sealed the pre-0017 way is opened, not converted (nothing here commits)."""
    wanted = sorted(set(owner_ids))
    secrets: dict[str, str | None] = dict.fromkeys(wanted)
    if not wanted:
        return secrets
    for endpoint in await session.scalars(
        select(WebhookEndpoint).where(WebhookEndpoint.owner_id.in_(wanted))
    ):
        try:
            secrets[endpoint.owner_id] = endpoint_secret(settings, endpoint)
        except (DecryptionFailed, KeyringError):
            continue
    return secrets


async def endpoint_key_versions_in_use(session: AsyncSession) -> set[int]:
    versions = await session.scalars(select(WebhookEndpoint.key_version).distinct())
    return {version for version in versions if version is not None}


def url_problem(url: str, settings: Settings) -> str | None:
    """Why ``url`` cannot be a buyer's public endpoint (webhook or ping), or None. A host name
    passes here; its addresses are checked when connecting (``outbound``)."""
    if len(url) > MAX_URL_LENGTH:
        return f"Use at most {MAX_URL_LENGTH} characters."
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # an unbalanced [ in the host
        return "Give a full https:// address."
    if parts.scheme not in ("https", "http") or not host:
        return "Give a full https:// address."
    if parts.username or parts.password:
        return "Put no user name or password in the address; the signature authenticates us."
    if not settings.webhook_allow_private_networks:
        if parts.scheme != "https":
            return "Use https: what we send there must not be readable on the way (S1)."
        if _is_private_host(host):
            return "This address is not on the public internet."
    return None


def check_url(url: str, settings: Settings) -> str:
    """Refuse (422, field ``url``) what cannot be a buyer's public endpoint."""
    url = url.strip()
    message = url_problem(url, settings)
    if message is not None:
        raise ValidationFailed(message, errors=[FieldError("url", message)])
    return url


def _is_private_host(host: str) -> bool:
    if is_local_name(host):
        return True
    try:
        return is_private_address(host)
    except ValueError:
        return False  # a name: checked when it is resolved, at connection time (outbound)


async def get_endpoint(session: AsyncSession, owner_id: str) -> WebhookEndpoint | None:
    endpoint: WebhookEndpoint | None = await session.scalar(
        select(WebhookEndpoint).where(WebhookEndpoint.owner_id == owner_id)
    )
    return endpoint


async def save_endpoint(
    session: AsyncSession, settings: Settings, owner_id: str, *, url: str, new_secret: bool
) -> tuple[WebhookEndpoint, str | None]:
    """Set the owner's endpoint URL; a secret is generated the first time and whenever
    ``new_secret`` asks. Returns the endpoint and the new secret (shown once), or None."""
    url = check_url(url, settings)
    endpoint = await get_endpoint(session, owner_id)
    now = utcnow()
    if endpoint is None:
        endpoint = WebhookEndpoint(owner_id=owner_id, url=url, created_at=now, updated_at=now)
        endpoint.secret_sealed = b""
        endpoint.secret_prefix = ""
        session.add(endpoint)
        await session.flush()
        new_secret = True
    endpoint.url = url
    endpoint.updated_at = now
    secret: str | None = None
    if new_secret:
        secret = generate_secret()
        _seal_secret(settings.keyring(), endpoint, secret.encode())
        endpoint.secret_prefix = secret[: len(SECRET_PREFIX) + 4]
        await _secret_changed(session)
    await session.flush()
    return endpoint, secret


async def delete_endpoint(session: AsyncSession, owner_id: str) -> None:
    endpoint = await get_endpoint(session, owner_id)
    if endpoint is not None:
        await session.delete(endpoint)
        await _secret_changed(session)
        await session.flush()


async def _secret_changed(session: AsyncSession) -> None:
    """Pings to buyers' endpoints are signed with this secret from a per-process cache that
    lives as long as the process's matching index (``pingpost.service.PingKit``): bumping the
    matching stamp in this transaction makes every process drop it as it drops a stale index,
    within ``LEADMARKET_MATCHING_RECHECK_MS`` (promise M1). Imported here: the campaigns'
    service imports this module for :func:`url_problem`."""
    from leadmarket.campaigns.service import bump_matching_version

    await bump_matching_version(session)


# Deliveries -------------------------------------------------------------------------------


async def enqueue_delivery(
    session: AsyncSession,
    *,
    order_id: str,
    buyer_id: str,
    url: str,
    event_type: str,
    replay_of: str | None = None,
) -> WebhookDelivery:
    """A delivery of ``event_type`` for the order to ``url`` (the buyer's endpoint, or a
    campaign's own URL), queued in the caller's transaction. Signed with the buyer's secret."""
    delivery = WebhookDelivery(
        order_id=order_id,
        buyer_id=buyer_id,
        event_type=event_type,
        url=url,
        status=DeliveryStatus.PENDING.value,
        attempts=0,
        replay_of=replay_of,
        created_at=utcnow(),
    )
    session.add(delivery)
    await session.flush()
    await enqueue(session, DELIVER_JOB, {"delivery_id": delivery.id})
    return delivery


async def replay_delivery(
    session: AsyncSession, *, order_id: str, delivery_id: str, buyer_id: str
) -> WebhookDelivery:
    """Send a delivery's message again, as a new delivery to the buyer's current endpoint (or
    the original URL when none is set). 404 unless it is the buyer's delivery of that order."""
    original = await session.get(WebhookDelivery, delivery_id)
    if original is None or original.order_id != order_id or original.buyer_id != buyer_id:
        raise NotFound("No such delivery.")
    endpoint = await get_endpoint(session, buyer_id)
    if endpoint is None:
        raise NoWebhookEndpoint("Set your webhook endpoint before replaying a delivery.")
    return await enqueue_delivery(
        session,
        order_id=order_id,
        buyer_id=buyer_id,
        url=endpoint.url,
        event_type=original.event_type,
        replay_of=original.id,
    )


@dataclass(frozen=True)
class DeliveryLog:
    delivery: WebhookDelivery
    attempts: list[WebhookAttempt]


async def deliveries_of(session: AsyncSession, order_id: str) -> list[DeliveryLog]:
    deliveries = list(
        await session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.order_id == order_id)
            .order_by(WebhookDelivery.id.desc())
        )
    )
    attempts: dict[str, list[WebhookAttempt]] = {d.id: [] for d in deliveries}
    if deliveries:
        for attempt in await session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(attempts)))
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.attempt)
        ):
            attempts[attempt.delivery_id].append(attempt)
    return [DeliveryLog(d, attempts[d.id]) for d in deliveries]


# Sending ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    url: str
    secret: str
    body: bytes


@dataclass(frozen=True)
class _Outcome:
    status_code: int | None
    duration_ms: int
    error: str | None
    permanent: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def _prepare(
    database: Database, settings: Settings, delivery_id: str
) -> _Prepared | _Outcome | None:
    """Step 1, in its own short transaction: None when there is nothing (more) to do."""
    async with database.transaction() as session:
        delivery = await session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status != DeliveryStatus.PENDING.value:
            return None
        endpoint = await get_endpoint(session, delivery.buyer_id)
        if endpoint is None:
            return _Outcome(None, 0, "The buyer has no webhook endpoint (secret) any more.", True)
        try:
            secret = endpoint_secret(settings, endpoint)
        except DecryptionFailed:
            message = "The signing secret no longer opens (the secret key changed); set a new one."
            return _Outcome(None, 0, message, True)
        builder = _BUILDERS.get(delivery.event_type)
        if builder is None:
            return _Outcome(None, 0, f"Unknown message type {delivery.event_type}.", True)
        try:
            payload = await builder(session, settings, delivery)
        except PayloadGone as gone:
            return _Outcome(None, 0, str(gone), True)
        body = json.dumps(
            {"type": delivery.event_type, "timestamp": utcnow().isoformat(), "data": payload},
            separators=(",", ":"),
        ).encode()
        return _Prepared(url=delivery.url, secret=secret, body=body)


async def _post(settings: Settings, delivery_id: str, prepared: _Prepared) -> _Outcome:
    """Step 2, with no transaction open. The connection goes only to addresses checked as
    public when it is made (:mod:`leadmarket.webhooks.outbound`); a refused address ends the
    delivery for good, as a refused URL would."""
    headers = {
        **signed_headers(prepared.secret, delivery_id, prepared.body, timestamp=int(time.time())),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
    started = time.monotonic()
    try:
        async with public_client(settings, timeout=settings.webhook_timeout_seconds) as client:
            response = await client.post(prepared.url, content=prepared.body, headers=headers)
    except httpx.HTTPError as exc:
        elapsed = int((time.monotonic() - started) * 1000)
        if refused_as_private(exc):
            return _Outcome(
                None, elapsed, "The endpoint's address is not on the public internet.", True
            )
        return _Outcome(None, elapsed, describe_error(exc)[:300])
    elapsed = int((time.monotonic() - started) * 1000)
    error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
    return _Outcome(response.status_code, elapsed, error)


async def _record(
    session: AsyncSession, settings: Settings, delivery_id: str, outcome: _Outcome
) -> None:
    """Step 3, in the job's transaction: the attempt, then success, the next try or the end."""
    delivery = await session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if delivery is None or delivery.status != DeliveryStatus.PENDING.value:
        return
    now = utcnow()
    delivery.attempts += 1
    attempt = WebhookAttempt(
        delivery_id=delivery.id,
        attempt=delivery.attempts,
        at=now,
        status_code=outcome.status_code,
        duration_ms=outcome.duration_ms,
        error=outcome.error,
    )
    if outcome.ok:
        delivery.status = DeliveryStatus.SUCCEEDED.value
        delivery.finished_at = now
    elif outcome.permanent or delivery.attempts >= settings.webhook_max_attempts:
        delivery.status = DeliveryStatus.FAILED.value
        delivery.finished_at = now
    else:
        attempt.next_attempt_at = now + retry_delay(delivery.attempts)
        await enqueue(
            session, DELIVER_JOB, {"delivery_id": delivery.id}, run_at=attempt.next_attempt_at
        )
    session.add(attempt)
    await session.flush()
    log.info(
        "webhook attempt",
        extra={
            "delivery_id": delivery.id,
            "order_id": delivery.order_id,
            "attempt": attempt.attempt,
            "status_code": outcome.status_code,
            "duration_ms": outcome.duration_ms,
            "error": outcome.error,
            "delivery_status": delivery.status,
        },
    )


async def deliver(
    database: Database, session: AsyncSession, settings: Settings, delivery_id: str
) -> None:
    """One attempt of a delivery (the job handler's body)."""
    prepared = await _prepare(database, settings, delivery_id)
    if prepared is None:
        return
    outcome = (
        prepared if isinstance(prepared, _Outcome) else await _post(settings, delivery_id, prepared)
    )
    await _record(session, settings, delivery_id, outcome)
