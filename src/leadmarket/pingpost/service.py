"""Ping/post (issue 4, item 4; promises M1, L2, L3, L6): a seller pings a lead without its
contact data, the campaigns that want it bid at once (or through their own endpoint, within a
deadline), the seller learns the price; the post then sends the contact and consent, the lead is
created through intake and sold to the winner, all in one transaction.

**The ping is fast because it holds no transaction of its own.** The seller's API key comes from
the per-process cache (``accounts.auth.requires_rechecked``) and is checked again where the ping
is written; the campaigns come from the in-memory matching index
(``campaigns.matching.MatchingIndex``, re-read at most every ``LEADMARKET_MATCHING_RECHECK_MS``);
the ping record is written by :class:`PingRecorder`, one transaction per batch of concurrent
pings (group commit). A stale index is safe: the post re-checks the campaign in the database.

**What a ping cannot know.** It has no birth date and no contact, so no age band and no quality
score. Campaigns filtering on age do not bid on pings (their filter admits no unknown age); the
quality is taken as 100 for the ping (a campaign with a minimum quality bids), and the post
re-checks every filter, the minimum quality included, against the lead as written: a winner the
real lead does not satisfy does not buy, and the next campaign of the ping's ranking may.

**Duplicates.** The same seller pinging the same lead again (same vertical, place and
attributes; the sale terms do not count) within ``LEADMARKET_PING_DUPLICATE_WINDOW_MINUTES`` is
refused with 409 naming the earlier ping. Each content has one :class:`PingFingerprint` row
(a keyed digest, so the row says nothing of the lead); a ping claims it with ``INSERT … ON
CONFLICT DO UPDATE … WHERE expires_at <= now``: the database, not a process, decides, so two
processes cannot both accept the same ping.

**The post** claims its ping exactly once with a conditional UPDATE (``posted_at IS NULL AND
expires_at > now``), creates the lead through intake (``leads.intake.write_leads``: every rule
of a lead applies), then sells it: ``claim_campaign`` re-checks the winner under lock and claims
its caps and budget, ``orders.service.sell`` takes the lead's slot, holds the funds, records the
disclosure and queues the delivery. If the winner can no longer buy (paused, capped, out of
budget or funds, or the real lead fails its filters), the next campaign of the ping's ranking
buys at its own bid, never above the ping's price; if none can, the answer is ``sold: false``
and nothing of the lead is kept (its rows are rolled back): the consumer's data was given for
this sale, and the seller may still post the lead to the marketplace with ``POST
/api/v1/leads``.

**Signed pings (M1, S1).** Each ping to a buyer's endpoint carries the Standard Webhooks
headers, signed with the buyer's webhook secret, the one their deliveries are signed with, so a
buyer tells our pings from forged ones the way they check deliveries. ``webhook-id`` is
``<ping id>:<campaign id>``, unique per request. The secrets are opened once per process and
snapshot of the matching index (:class:`PingKit`), not per ping: a secret changed or removed
(``PUT``/``DELETE /api/v1/me/webhook``) bumps the matching stamp, so a process signs with the
new one from its next read of the stamp, at most ``LEADMARKET_MATCHING_RECHECK_MS`` later (at
once with the default 0). A buyer with a ``ping_url`` but no webhook endpoint has no secret:
their endpoint is not asked. Making them a secret would not help, since the buyer could never
learn it (a secret is shown once, when ``PUT /me/webhook`` makes it), and an unsigned ping is
exactly what a forger sends."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hmac
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol, cast

import httpx
from sqlalchemy import Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from leadmarket.accounts.repository import (
    API_KEY_TOUCH_INTERVAL,
    api_key_refusal,
    recheck_api_keys,
)
from leadmarket.campaigns.matching import (
    CampaignIndex,
    CompiledCampaign,
    LeadPreview,
    MatchingIndex,
    claim_campaign,
)
from leadmarket.config import Settings
from leadmarket.kit.crypto import derive_key
from leadmarket.kit.db import Database, dialect_insert, utcnow
from leadmarket.kit.errors import (
    Conflict,
    DomainError,
    FieldError,
    NotFound,
    ValidationFailed,
)
from leadmarket.kit.groupcommit import GroupCommit
from leadmarket.kit.idempotency import previous_answer, remember_answer, request_fingerprint
from leadmarket.kit.ids import new_id
from leadmarket.kit.jsontext import json_dumper
from leadmarket.leads import intake
from leadmarket.leads.previews import age_band
from leadmarket.leads.reference import check_postal_code, region_name
from leadmarket.leads.schemas import LeadIn, SaleIn, age_on
from leadmarket.models import Ping, PingFingerprint, PingOutcome, SaleVia, User, UserStatus
from leadmarket.orders import service as orders
from leadmarket.pingpost.schemas import PingIn, PingOut, PostIn, PostOut
from leadmarket.verticals.registry import get_vertical, validate_attributes
from leadmarket.webhooks.outbound import public_client
from leadmarket.webhooks.service import owner_secrets
from leadmarket.webhooks.signing import signed_headers

# A ping has no birth date: its preview's age band is unknown, which no age filter admits.
UNKNOWN_AGE_BAND = ""
# Nor a contact to judge: quality is assumed full at the ping and re-checked at the post.
PING_QUALITY = 100
# How many campaigns a ping keeps in its ranking (the winner and those that may buy instead).
RANKED_KEPT = 10
# How many buyers' own endpoints one ping asks (the highest bidding ones).
EXTERNAL_ASKED = 10
USER_AGENT = "Leadmarket-Ping/1"

_PINGS = cast(Table, Ping.__table__)
_FINGERPRINTS = cast(Table, PingFingerprint.__table__)


# Errors -------------------------------------------------------------------------------------


class DuplicatePing(Conflict):
    slug = "duplicate-ping"
    title = "Duplicate ping"
    explanation = (
        "You pinged the same lead (same vertical, place and attributes) a few minutes ago; the "
        "earlier ping is named in `duplicate_of`."
    )


class PingExpired(Conflict):
    slug = "ping-expired"
    title = "The ping has expired"
    explanation = "A post must arrive before its ping's `expires_at`; ping the lead again."


class PingAlreadyPosted(Conflict):
    slug = "ping-already-posted"
    title = "The ping was posted already"
    explanation = "Each ping is posted at most once."


class PingNotAccepted(Conflict):
    slug = "ping-not-accepted"
    title = "Nobody bid on this ping"
    explanation = (
        "The ping's answer was `accepted: false`, so there is nobody to sell the lead to; post "
        "it to the marketplace with POST /api/v1/leads instead."
    )


# Per-process state --------------------------------------------------------------------------


class PingKit:
    """What pings need, built once per process: the settings, the database, the matching
    index, the recorder, the keys of the digests, and one HTTP client for buyers' endpoints."""

    def __init__(self, settings: Settings, db: Database, index: MatchingIndex) -> None:
        self.settings = settings
        self.db = db
        self.index = index
        root = settings.signing_key()
        # HMAC-SHA256 (``kit.crypto.keyed_hash``) keyed once: each digest copies the keyed
        # state instead of setting up the key again, which cost more than the hashing.
        self._postal_hmac = _keyed_state(derive_key(root, "ping:postal-code"))
        self._fingerprint_hmac = _keyed_state(derive_key(root, "ping:fingerprint"))
        self.recorder = PingRecorder(self)
        self._client: httpx.AsyncClient | None = None
        self._secrets: _OpenedSecrets | None = None
        # Built now, not inside the first ping's deadline: the first client of a process took
        # ~0.1 s, most of a buyer's 150 ms, and that ping silently lost its endpoints' bids.
        self.client()

    def postal_digest(self, country: str, postal_code: str) -> str:
        return _keyed(self._postal_hmac, f"{country}|{postal_code}")

    def fingerprint(self, seller_id: str, content: dict[str, Any]) -> str:
        return _keyed(self._fingerprint_hmac, _FINGERPRINT_JSON([seller_id, content]))

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            # Pinned: each connection goes only to the addresses checked as public when it
            # is made, so a buyer's name cannot rebind to the internal network.
            self._client = public_client(
                self.settings,
                verify=_tls_context(),
                headers={"user-agent": USER_AGENT, "content-type": "application/json"},
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            )
        return self._client

    async def signing_secrets(
        self, index: CampaignIndex, buyer_ids: Iterable[str]
    ) -> Mapping[str, str | None]:
        """The signing secrets of ``buyer_ids`` (None: the buyer has none), opened for the
        snapshot ``index`` of the matching index: read from the database only the first time
        a buyer is asked after the snapshot was built. Each snapshot starts empty, and a change
        of secret makes a new snapshot (see the module docstring), so what is kept here is
        never older than the snapshot the ping matched against."""
        cache = self._secrets
        if cache is None or cache.index is not index:
            cache = self._secrets = _OpenedSecrets(index)
        missing = {b for b in buyer_ids if b not in cache.secrets}
        if missing:
            # One reader at a time: the pings that miss the same buyers at once (right after
            # a rebuild) wait for that one read instead of each making their own.
            async with cache.lock:
                missing = {b for b in missing if b not in cache.secrets}
                if missing:
                    session = self.db.new_session()
                    try:
                        opened = await owner_secrets(session, self.settings, missing)
                    finally:
                        await session.close()
                    cache.secrets.update(opened)
        return cache.secrets

    async def aclose(self) -> None:
        await self.recorder.aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# The fingerprint's text: what json.dumps(…, sort_keys=True, separators=(",", ":")) makes (the
# fingerprints of rows already written must come out the same).
_FINGERPRINT_JSON = json_dumper(sort_keys=True, separators=(",", ":"))
# The JSON columns' text, as json.dumps(…) writes it.
_COLUMN_JSON = json_dumper()


class _KeyedState(Protocol):
    def copy(self) -> _KeyedState: ...
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


def _keyed_state(key: bytes) -> _KeyedState:
    """HMAC-SHA256 keyed with ``key``, to be copied per digest: the C object behind
    ``hmac.HMAC`` where OpenSSL backs it (its copy is one C call, where ``HMAC.copy`` builds a
    Python object around two copies: half the cost of a digest), else the ``hmac.HMAC``."""
    keyed = hmac.new(key, digestmod="sha256")
    inner = getattr(keyed, "_hmac", None)
    if inner is not None and all(hasattr(inner, m) for m in ("copy", "update", "hexdigest")):
        return cast(_KeyedState, inner)
    return keyed


def _keyed(keyed: _KeyedState, value: str) -> str:
    """``keyed_hash(key, value)`` for the key ``keyed`` was made with."""
    digest = keyed.copy()
    digest.update(value.encode())
    return digest.hexdigest()


class _OpenedSecrets:
    """Buyers' signing secrets opened for one snapshot of the matching index. The snapshot is
    held, and compared by identity: a rebuilt index is a new object, even at the same stamp."""

    __slots__ = ("index", "lock", "secrets")

    def __init__(self, index: CampaignIndex) -> None:
        self.index = index
        self.secrets: dict[str, str | None] = {}
        self.lock = asyncio.Lock()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One per process: loading the CA bundle took as long as creating every client did."""
    return httpx.create_ssl_context()


# The ping -----------------------------------------------------------------------------------


class CheckedPing(NamedTuple):
    # A named tuple, not a frozen dataclass (whose __init__ sets each field through
    # object.__setattr__): one is made per ping.
    vertical: str
    attributes: dict[str, Any]
    postal_code: str


def check_ping(data: PingIn) -> CheckedPing:
    """What the request model cannot check: the vertical, its preview attributes, the region
    and the postal code against it. Raises :class:`ValidationFailed` naming every bad field."""
    vertical = get_vertical(data.vertical)
    if vertical is None:
        raise ValidationFailed(
            "Unknown vertical.",
            errors=[FieldError("vertical", "No such vertical; GET /api/v1/verticals lists them.")],
        )
    attributes, errors = validate_attributes(vertical, data.attributes, preview_only=True)
    postal: str | None = None
    if region_name(data.country, data.region) is None:
        errors.append(FieldError("region", "Not a state or province of this country."))
    else:
        postal, problem = check_postal_code(data.country, data.region, data.postal_code)
        if problem is not None:
            errors.append(FieldError("postal_code", problem))
    if errors:
        raise ValidationFailed(
            "; ".join(f"{e.field}: {e.message}" for e in errors[:5]), errors=errors
        )
    assert postal is not None
    return CheckedPing(vertical=vertical.slug, attributes=attributes, postal_code=postal)


class Bid(NamedTuple):
    # A named tuple, not a frozen dataclass: a ping makes a score of these, and a frozen
    # dataclass's __init__ sets each field through object.__setattr__.
    campaign: CompiledCampaign
    cents: int


def ranking(
    bids: Sequence[Bid], *, rule: Literal["first", "second"], floor: int, ordered: bool = False
) -> list[Bid]:
    """The bids at or above ``floor``, best first (ties: the campaign's own order, oldest
    first), each at the price it would pay: the winner per ``rule`` (first: its bid; second:
    the next best bid plus one cent, at least ``floor``, never above its own bid), the others,
    who buy only if the winner cannot, at their own bid but never above the winner's price.
    ``ordered``: the caller knows ``bids`` are in that order already (each at its campaign's
    own bid, as the index hands them out), so they need no sorting."""
    if ordered:
        ranked = [b for b in bids if b.cents >= floor][:RANKED_KEPT]
    else:
        ranked = sorted(
            (b for b in bids if b.cents >= floor), key=lambda b: (-b.cents, b.campaign.order_key)
        )[:RANKED_KEPT]
    if not ranked:
        return []
    top = ranked[0].cents
    if rule == "first":
        price = top
    elif len(ranked) > 1:
        price = min(top, max(floor, ranked[1].cents + 1))
    else:
        price = min(top, floor)
    return [b if b.cents <= price else Bid(b.campaign, price) for b in ranked]


_NO_SECRETS: Mapping[str, str | None] = {}


def _candidates(
    matched: Iterable[CompiledCampaign],
    currency: str,
    floor: int,
    *,
    secrets: Mapping[str, str | None] = _NO_SECRETS,
) -> tuple[list[Bid], list[CompiledCampaign]]:
    """From ``matched`` (best bid first, read only as far as needed: the index hands them out
    lazily): the bids of the campaigns that bid their own price
    and could be in the ranking (at most :data:`RANKED_KEPT`, at or above ``floor``: no other
    can be kept, whatever the endpoints bid), and the campaigns whose endpoint is asked
    (at most :data:`EXTERNAL_ASKED`). With thousands of campaigns, hundreds may match a ping;
    making a bid of each only to keep ten was most of a ping's own cost. ``secrets``: the signing
    secrets of the buyers with endpoints; a campaign with an endpoint whose buyer has none
    (None, or not listed) is not asked and does not bid (when no buyer has one, the first few
    bids are all there is)."""
    bids: list[Bid] = []
    external: list[CompiledCampaign] = []
    if not secrets:
        # No endpoint is asked (the usual case): the loop below, less what cannot happen.
        for campaign in matched:
            if campaign.currency != currency or campaign.ping_url is not None:
                continue
            if campaign.bid_cents < floor:
                break  # the rest bid less
            bids.append(Bid(campaign, campaign.bid_cents))
            if len(bids) == RANKED_KEPT:
                break
        return bids, external
    asking = EXTERNAL_ASKED
    for campaign in matched:
        if campaign.currency != currency:
            continue
        if campaign.ping_url is not None:
            if len(external) < asking and secrets.get(campaign.buyer_id) is not None:
                external.append(campaign)
        elif len(bids) < RANKED_KEPT and campaign.bid_cents >= floor:
            bids.append(Bid(campaign, campaign.bid_cents))
        elif len(external) >= asking and (len(bids) >= RANKED_KEPT or campaign.bid_cents < floor):
            break  # the rest bid less: none of them can be kept or asked
    return bids, external


def _external_body(ping_id: str, preview: LeadPreview, data: PingIn, campaign_id: str) -> bytes:
    """What a buyer's endpoint is told: the preview only, never contact data (L6)."""
    return json.dumps(
        {
            "ping_id": ping_id,
            "campaign_id": campaign_id,
            "vertical": preview.vertical,
            "country": preview.country,
            "region": preview.region,
            "postal_prefix": preview.postal_prefix,
            "age_band": preview.age_band or None,
            "attributes": dict(preview.attributes),
            "exclusive": preview.exclusive,
            "currency": data.currency,
        }
    ).encode()


async def _ask_buyer(
    kit: PingKit, campaign: CompiledCampaign, body: bytes, headers: dict[str, str]
) -> int | None:
    """The bid of the campaign's own endpoint (at most the campaign's bid), or None: no
    answer, an error, a refusal, or an address that is not on the public internet."""
    url = campaign.ping_url
    assert url is not None
    try:
        response = await kit.client().post(url, content=body, headers=headers)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        answer = response.json()
    except ValueError:
        return None
    bid = answer.get("bid_cents") if isinstance(answer, dict) else None
    if not isinstance(bid, int) or isinstance(bid, bool) or bid < 1:
        return None
    return min(bid, campaign.bid_cents)


async def _external_bids(
    kit: PingKit,
    secrets: Mapping[str, str | None],
    asked: Sequence[CompiledCampaign],
    ping_id: str,
    preview: LeadPreview,
    data: PingIn,
    started: float,
) -> list[Bid]:
    """Ask every endpoint of ``asked`` at once, each request signed with its buyer's secret
    (``secrets``: :func:`_candidates` chose only buyers who have one). Each gets
    ``ping_buyer_timeout_ms``, all of them together no more than what is left of
    ``ping_deadline_ms``. Whoever has not answered by then is cancelled and does not bid."""
    settings = kit.settings
    per_buyer = settings.ping_buyer_timeout_ms / 1000
    campaigns = list(asked)
    timestamp = int(time.time())

    async def ask(campaign: CompiledCampaign) -> int | None:
        body = _external_body(ping_id, preview, data, campaign.id)
        secret = secrets[campaign.buyer_id]
        assert secret is not None
        headers = signed_headers(secret, f"{ping_id}:{campaign.id}", body, timestamp=timestamp)
        try:
            return await asyncio.wait_for(_ask_buyer(kit, campaign, body, headers), per_buyer)
        except TimeoutError:
            return None

    tasks = [asyncio.create_task(ask(c)) for c in campaigns]
    left = settings.ping_deadline_ms / 1000 - (time.monotonic() - started)
    done, pending = await asyncio.wait(tasks, timeout=max(0.0, left))
    for task in pending:
        task.cancel()
    bids = []
    for campaign, task in zip(campaigns, tasks, strict=True):
        if task in done and not task.cancelled() and task.exception() is None:
            cents = task.result()
            if cents is not None:
                bids.append(Bid(campaign, cents))
    return bids


class PingRecord(NamedTuple):
    """A ping ready to write: its row, and what its request must still prove when written.
    (A named tuple, as :class:`CheckedPing`.)"""

    row: dict[str, Any]
    api_key_id: str | None
    answer: PingOut


async def ping(kit: PingKit, *, seller: User, api_key_id: str | None, data: PingIn) -> PingOut:
    """Price a lead for ``seller`` (``POST /api/v1/ping``) and record the ping. Raises
    :class:`ValidationFailed` (bad vertical, attributes, region, postal code) or
    :class:`DuplicatePing`."""
    started = time.monotonic()
    checked = check_ping(data)
    now = utcnow()
    ping_id = new_id("png")
    preview = LeadPreview(
        vertical=checked.vertical,
        region=data.region,
        postal_prefix=checked.postal_code[:3],
        age_band=UNKNOWN_AGE_BAND if data.age is None else age_band(data.age),
        quality_score=PING_QUALITY,
        exclusive=data.exclusive,
        attributes=checked.attributes,
        country=data.country,
    )
    index = await kit.index.current_from(kit.db)
    secrets: Mapping[str, str | None] = {}
    if index.has_endpoints(checked.vertical):
        # Only endpoints whose buyer has a signing secret are asked (pings are signed); the
        # others must not take the places of those that can be (cached per index snapshot).
        secrets = await kit.signing_secrets(index, index.endpoint_buyers(checked.vertical))
    bids, external = _candidates(
        index.matching(preview, now, data.currency),
        data.currency,
        data.min_price_cents,
        secrets=secrets,
    )
    if external:
        bids += await _external_bids(kit, secrets, external, ping_id, preview, data, started)
    ranked = ranking(
        bids,
        rule=kit.settings.ping_price_rule,
        floor=data.min_price_cents,
        # Without endpoints' bids, the index's order (highest bid, then oldest) is the ranking's.
        ordered=not external,
    )
    price = ranked[0].cents if ranked else 0
    expires_at = now + dt.timedelta(seconds=kit.settings.ping_expiry_seconds)
    answer = PingOut(
        ping_id=ping_id,
        accepted=bool(ranked),
        price_cents=price,
        currency=data.currency,
        expires_at=expires_at,
    )
    content = {
        "vertical": checked.vertical,
        "country": data.country,
        "region": data.region,
        "postal_code": checked.postal_code,
        "age_band": preview.age_band,
        "attributes": checked.attributes,
    }
    row = {
        "id": ping_id,
        "seller_id": seller.id,
        "vertical": checked.vertical,
        "country": data.country,
        "region": data.region,
        "postal_prefix": preview.postal_prefix,
        "postal_digest": kit.postal_digest(data.country, checked.postal_code),
        "age_band": preview.age_band,
        "preview_attributes": checked.attributes,
        "exclusive": data.exclusive,
        "currency": data.currency,
        "accepted": bool(ranked),
        "price_cents": price,
        "campaign_id": ranked[0].campaign.id if ranked else None,
        "ranked": [[b.campaign.id, b.cents] for b in ranked],
        "fingerprint": kit.fingerprint(seller.id, content),
        "created_at": now,
        "expires_at": expires_at,
        "posted_at": None,
        "outcome": None,
        "lead_id": None,
        "order_id": None,
        "sold_price_cents": None,
    }
    return await kit.recorder.submit(PingRecord(row, api_key_id, answer))


class PingRecorder(GroupCommit[PingRecord, PingOut]):
    """Writes the pings of concurrent requests together (group commit), waiting
    ``ping_batch_wait_ms`` for stragglers once busy; a ping is answered after its batch
    committed, so an answered ping can always be posted. On PostgreSQL a batch is one statement
    on the driver's connection (:func:`write_pings_postgres`), its own transaction."""

    def __init__(self, kit: PingKit, *, max_batch: int = 200) -> None:
        settings = kit.settings

        async def write(session: AsyncSession, batch: Sequence[PingRecord]) -> list[Any]:
            return await write_pings(session, settings, batch)

        db = kit.db
        if not db.is_sqlite and db.owns_connections():
            db = HeldConnection(db.engine, wait=lambda: settings.ping_batch_wait_ms / 1000)
        super().__init__(
            db, write, wait_ms=lambda: settings.ping_batch_wait_ms, max_batch=max_batch
        )
        self.settings = settings

    async def write_items(
        self, db: Database, items: Sequence[PingRecord]
    ) -> Sequence[PingOut | DomainError]:
        if db.is_sqlite:
            return await super().write_items(db, items)
        # No session, no BEGIN or COMMIT: a py-spy profile put a quarter of a ping's CPU in
        # the batch's transaction and its four round trips.
        if isinstance(db, HeldConnection):
            async with db.driver() as connection:
                return await write_pings_postgres(connection, self.settings, items)
        async with db.driver_connection() as connection:
            return await write_pings_postgres(connection, self.settings, items)

    async def aclose(self) -> None:
        if isinstance(self.db, HeldConnection):
            await self.db.release()


class HeldConnection(Database):
    """The recorder's database on PostgreSQL: one pooled connection kept from one batch to the
    next for as long as pings keep coming, and given back to the pool after :attr:`LINGER`
    seconds without a batch.

    The group commit checks a connection out for each burst (``Database.pinned``); under load
    a burst often ends after a batch or two, and each checkout (SQLAlchemy's pool, then the
    checkout ping's round trip, ``kit.db._ping_on_checkout``) cost a twentieth of a ping's CPU
    and put a round trip in front of the next batch. Here :meth:`pinned` checks nothing out
    and :meth:`driver` hands out the held connection, checked out (and pinged) only when
    there is none. A connection that failed otherwise than by a refusal of the server (lost,
    closed, or a statement cancelled mid-way) is invalidated, so the next batch (the group
    commit writes a failed batch's pings again one by one) gets a fresh one. Each statement is
    its own transaction: nothing is held between batches but the connection itself.

    That checkout was also the batching of a busy server: while it ran, more pings queued for
    the burst's first batch (the group commit waits ``ping_batch_wait_ms`` only between the
    batches of one burst). Without it, the first batches went out with a median of 5 pings
    instead of 14 to 17, and the CPU saved went into 50% more batches. So a burst that starts
    less than :attr:`BUSY_GAPS` waits after the previous batch (the server is busy) first
    waits one ``wait``, as the group commit does between batches; a ping arriving at an idle
    server is written at once."""

    LINGER = 1.0
    BUSY_GAPS = 2

    def __init__(self, engine: AsyncEngine, *, wait: Callable[[], float] = lambda: 0.0) -> None:
        super().__init__(engine)
        self._wait = wait
        self._connection: AsyncConnection | None = None
        self._driver: Any = None
        self._busy = False
        self._last_used = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def pinned(self) -> AsyncIterator[Database]:
        """A burst of the group commit: nothing to check out; a wait first when busy."""
        wait = self._wait()
        if wait > 0 and time.monotonic() - self._last_used < self.BUSY_GAPS * wait:
            await asyncio.sleep(wait)
        yield self

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[Any]:
        """The held asyncpg connection, for one statement (one user at a time)."""
        if self._driver is not None and self._driver.is_closed():
            await self._invalidate()
        if self._connection is None:
            connection = await self.engine.connect()
            try:
                self._driver = (await connection.get_raw_connection()).driver_connection
            except BaseException:
                await connection.close()
                raise
            self._connection = connection
            self._timer = asyncio.get_running_loop().call_later(self.LINGER, self._release_if_idle)
        driver = self._driver
        self._busy = True
        try:
            yield driver
        except BaseException as exc:
            if not _server_refusal(exc) or driver.is_closed():
                await self._invalidate()
            raise
        finally:
            self._busy = False
            self._last_used = time.monotonic()

    def _release_if_idle(self) -> None:
        self._timer = None
        if self._connection is None:
            return
        idle = time.monotonic() - self._last_used
        if self._busy or idle < self.LINGER:
            self._timer = asyncio.get_running_loop().call_later(
                max(self.LINGER - idle, 0.01), self._release_if_idle
            )
            return
        task = asyncio.get_running_loop().create_task(self.release())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    def _forget(self) -> AsyncConnection | None:
        """Stop holding the connection; returns it, for the caller to close or invalidate."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        connection, self._connection, self._driver = self._connection, None, None
        return connection

    async def release(self) -> None:
        """Give the connection back to the pool (the application's shutdown; or idle)."""
        connection = self._forget()
        if connection is not None:
            await connection.close()

    async def _invalidate(self) -> None:
        connection = self._forget()
        if connection is not None:
            # It is being thrown away: the pool forgets it whatever closing it says.
            with suppress(Exception):
                await connection.invalidate()


def _server_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL refusing a statement (it has an SQLSTATE), which leaves
    the connection as it was (the statement was its own transaction); a connection error
    (class 08) or anything else does not."""
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and not sqlstate.startswith("08")


async def write_pings(
    session: AsyncSession, settings: Settings, records: Sequence[PingRecord]
) -> list[PingOut | DomainError]:
    """Write ``records`` in the session's transaction; one outcome per record, in order: its
    answer, or the refusal (a key revoked meanwhile, a duplicate) of that record alone.

    Duplicates: the first ping of each content in this batch claims the content's fingerprint
    row, unless a live one (younger than the window) holds it: one upsert for the batch, its
    rows in key order so two batches cannot deadlock. Every other ping of that content, in this
    batch or not, is a duplicate of the ping that holds the row afterwards.

    On PostgreSQL all of it is the one statement of :func:`write_pings_postgres`."""
    if session.get_bind().dialect.name == "postgresql":
        connection = await session.connection()
        driver = (await connection.get_raw_connection()).driver_connection
        return await write_pings_postgres(driver, settings, records)
    now = utcnow()
    outcomes: list[PingOut | DomainError | None] = [None] * len(records)
    refusals = await recheck_api_keys(
        session, {r.api_key_id for r in records if r.api_key_id is not None}, now
    )
    for i, record in enumerate(records):
        if record.api_key_id is not None and record.api_key_id in refusals:
            outcomes[i] = refusals[record.api_key_id]
    live = [(i, r) for i, r in enumerate(records) if outcomes[i] is None]
    firsts: dict[str, str] = {}  # fingerprint -> the first live ping of that content
    if settings.ping_duplicate_window_minutes:
        for _, record in live:
            firsts.setdefault(record.row["fingerprint"], record.row["id"])
    if firsts:
        until = now + dt.timedelta(minutes=settings.ping_duplicate_window_minutes)
        won = await _claim_sqlite(session, firsts, until, now)
        holders = {f: firsts[f] for f in won}
        lost = set(firsts) - won
        if lost:
            rows = await session.execute(
                select(PingFingerprint.fingerprint, PingFingerprint.ping_id).where(
                    PingFingerprint.fingerprint.in_(lost)
                )
            )
            holders.update({str(f): str(p) for f, p in rows.all()})
        for i, record in live:
            holder = holders.get(record.row["fingerprint"], "")
            if holder != record.row["id"]:
                outcomes[i] = _duplicate(holder)
    accepted = [(i, r) for i, r in live if outcomes[i] is None]
    if accepted:
        await session.execute(_PINGS.insert(), [r.row for _, r in accepted])
    for i, record in accepted:
        outcomes[i] = record.answer
    return [o for o in outcomes if o is not None]


async def write_pings_postgres(
    connection: Any, settings: Settings, records: Sequence[PingRecord]
) -> list[PingOut | DomainError]:
    """:func:`write_pings` on PostgreSQL, as one statement on the asyncpg ``connection``
    (prepared once per connection by asyncpg's statement cache): outside a transaction it is
    its own, so the batch is written whole or not at all, with a single round trip. It
    rechecks the API keys (``recheck_api_keys``: only the pings of keys still valid are
    written, and stale keys are marked used), claims the fingerprints of the first ping of
    each content in key order, inserts the pings that won their claim, and returns each key's
    account status and each claimed fingerprint's holder afterwards. The rows go as one array
    per column: SQLAlchemy's executemany compiled and processed every value in Python, which
    cost more CPU than all the rest of a ping."""
    now = utcnow()
    window = settings.ping_duplicate_window_minutes
    arguments: list[Any] = [
        *_ping_arrays([r.row for r in records]),
        [r.api_key_id for r in records],
        now,
        now - API_KEY_TOUCH_INTERVAL,
    ]
    if window:
        arguments.append(now + dt.timedelta(minutes=window))
    rows = await connection.fetch(
        _WRITE_PINGS_POSTGRES if window else _WRITE_PINGS_POSTGRES_NO_WINDOW, *arguments
    )
    statuses: dict[str, str] = {}
    holders: dict[str, str] = {}
    for kind, name, value in rows:
        (statuses if kind == "key" else holders)[name] = value
    outcomes: list[PingOut | DomainError] = []
    for record in records:
        refusal = (
            None if record.api_key_id is None else api_key_refusal(statuses.get(record.api_key_id))
        )
        if refusal is None and window:
            holder = holders.get(record.row["fingerprint"], "")
            if holder != record.row["id"]:
                refusal = _duplicate(holder)
        outcomes.append(record.answer if refusal is None else refusal)
    return outcomes


def _duplicate(earlier: str) -> DuplicatePing:
    return DuplicatePing(
        f"You pinged this lead a few minutes ago as {earlier}.", extra={"duplicate_of": earlier}
    )


async def _claim_sqlite(
    session: AsyncSession, firsts: dict[str, str], until: dt.datetime, now: dt.datetime
) -> set[str]:
    """Claim the fingerprints of ``firsts`` for their pings; the fingerprints won."""
    insert = dialect_insert(session, _FINGERPRINTS).values(
        [{"fingerprint": f, "ping_id": firsts[f], "expires_at": until} for f in sorted(firsts)]
    )
    claim = insert.on_conflict_do_update(
        index_elements=[_FINGERPRINTS.c.fingerprint],
        set_={"ping_id": insert.excluded.ping_id, "expires_at": insert.excluded.expires_at},
        where=_FINGERPRINTS.c.expires_at <= now,
    ).returning(_FINGERPRINTS.c.fingerprint)
    return set((await session.scalars(claim)).all())


# The columns of a new ping, in the order of the statements' arrays (the JSON ones as text); the
# others (posted_at, outcome, lead_id, order_id, sold_price_cents) are NULL.
_PING_COLUMNS = (
    "id",
    "seller_id",
    "vertical",
    "country",
    "region",
    "postal_prefix",
    "postal_digest",
    "age_band",
    "preview_attributes",
    "exclusive",
    "currency",
    "accepted",
    "price_cents",
    "campaign_id",
    "ranked",
    "fingerprint",
    "created_at",
    "expires_at",
)
_JSON_COLUMNS = frozenset({"preview_attributes", "ranked"})


def _ping_arrays(rows: Sequence[dict[str, Any]]) -> tuple[list[Any], ...]:
    return tuple(
        [_COLUMN_JSON(row[name]) for row in rows]
        if name in _JSON_COLUMNS
        else [row[name] for row in rows]
        for name in _PING_COLUMNS
    )


# The statement of write_pings_postgres. Parameters: $1-$18 the pings' columns, $19 their API
# keys (NULL: signed in otherwise), $20 now, $21 when a key last used earlier counts as stale,
# $22 until when a claim holds. Data-modifying WITHs run to completion whether or not the
# outer query reads them, and all parts see the database as the statement found it: a key is
# judged, and its pings written or not, on one reading.
_COLUMN_LIST = ", ".join(_PING_COLUMNS)
_WRITE_PINGS_WITH = (
    "WITH incoming AS ("  # noqa: S608 (constants only, no input)
    "SELECT id, seller_id, vertical, country, region, postal_prefix, postal_digest, age_band, "
    "preview_attributes::json AS preview_attributes, exclusive, currency, accepted, "
    "price_cents, campaign_id, ranked::json AS ranked, fingerprint, created_at, expires_at, "
    "api_key_id, n "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], "
    "$7::text[], $8::text[], $9::text[], $10::bool[], $11::text[], $12::bool[], $13::int[], "
    "$14::text[], $15::text[], $16::text[], $17::timestamptz[], $18::timestamptz[], $19::text[]) "
    "WITH ORDINALITY AS t(" + _COLUMN_LIST + ", api_key_id, n)), "
    # recheck_api_keys: the keys still valid, their account's status, and the stale ones marked.
    "keys AS (SELECT k.id, u.status, k.last_used_at FROM api_keys k "
    "JOIN users u ON u.id = k.user_id WHERE k.id = ANY($19::text[]) AND k.revoked_at IS NULL), "
    "touched AS (UPDATE api_keys SET last_used_at = $20::timestamptz WHERE id IN "
    "(SELECT id FROM keys WHERE last_used_at IS NULL OR last_used_at < $21::timestamptz)), "
    "live AS (SELECT * FROM incoming WHERE api_key_id IS NULL OR api_key_id IN "
    "(SELECT id FROM keys WHERE status = 'active')), "
)
assert UserStatus.ACTIVE.value == "active"
_WRITE_PINGS_POSTGRES = (
    _WRITE_PINGS_WITH  # noqa: S608 (constants only, no input)
    # The first live ping of each content claims its fingerprint, in key order (no deadlock
    # between batches) unless a live claim holds it; every claimed row is returned with its
    # holder afterwards, so the duplicates learn theirs without another query.
    + "firsts AS (SELECT DISTINCT ON (fingerprint) fingerprint, id FROM live "
    "ORDER BY fingerprint, n), "
    "claimed AS (INSERT INTO ping_fingerprints (fingerprint, ping_id, expires_at) "
    "SELECT fingerprint, id, $22::timestamptz FROM firsts ORDER BY fingerprint "
    "ON CONFLICT (fingerprint) DO UPDATE SET "
    "ping_id = CASE WHEN ping_fingerprints.expires_at <= $20::timestamptz "
    "THEN excluded.ping_id ELSE ping_fingerprints.ping_id END, "
    "expires_at = CASE WHEN ping_fingerprints.expires_at <= $20::timestamptz "
    "THEN excluded.expires_at ELSE ping_fingerprints.expires_at END "
    "RETURNING fingerprint, ping_id), "
    "inserted AS (INSERT INTO pings (" + _COLUMN_LIST + ") "
    "SELECT " + _COLUMN_LIST + " FROM live WHERE id IN (SELECT ping_id FROM claimed)) "
    "SELECT 'key', id::text, status::text FROM keys "
    "UNION ALL SELECT 'ping', fingerprint::text, ping_id::text FROM claimed"
)
_WRITE_PINGS_POSTGRES_NO_WINDOW = (
    _WRITE_PINGS_WITH  # noqa: S608 (constants only, no input)
    + "inserted AS (INSERT INTO pings ("
    + _COLUMN_LIST
    + ") SELECT "
    + _COLUMN_LIST
    + " FROM live) SELECT 'key', id::text, status::text FROM keys"
)


# The post -----------------------------------------------------------------------------------


def _lead_of(kit: PingKit, ping: Ping, data: PostIn, now: dt.datetime) -> LeadIn:
    """The lead the post makes: the ping's fields, the post's contact, consent and remaining
    attributes, sold at the ping's price. Raises :class:`ValidationFailed` when the contact's
    place or age band is not the ping's, or the post changes an attribute the ping gave."""
    address = data.contact.address
    errors: list[FieldError] = []
    if ping.age_band:
        band = age_band(age_on(data.contact.birth_date, now.date()))
        if band != ping.age_band:
            errors.append(
                FieldError("contact.birth_date", f"Not in the ping's age band ({ping.age_band}).")
            )
    if address.country != ping.country:
        errors.append(FieldError("contact.address.country", "Not the country of the ping."))
    elif address.region != ping.region:
        errors.append(FieldError("contact.address.region", "Not the region of the ping."))
    else:
        postal, _ = check_postal_code(address.country, address.region, address.postal_code)
        if postal is not None and kit.postal_digest(ping.country, postal) != ping.postal_digest:
            errors.append(
                FieldError("contact.address.postal_code", "Not the postal code of the ping.")
            )
    for name, value in data.attributes.items():
        if name in ping.preview_attributes and ping.preview_attributes[name] != value:
            errors.append(
                FieldError(f"attributes.{name}", "Given with the ping; it cannot change.")
            )
    if errors:
        raise ValidationFailed("; ".join(f"{e.field}: {e.message}" for e in errors), errors=errors)
    return LeadIn(
        vertical=ping.vertical,
        contact=data.contact,
        attributes={**data.attributes, **ping.preview_attributes},
        consent=data.consent,
        sale=SaleIn(
            mode="fixed",
            currency=cast(Literal["USD", "CAD"], ping.currency),
            price_cents=ping.price_cents,
            exclusive=ping.exclusive,
        ),
    )


def _why_not_posted(ping: Ping | None, seller: User, now: dt.datetime) -> DomainError:
    if ping is None or ping.seller_id != seller.id:
        return NotFound("None of your pings has this id.")
    if ping.posted_at is not None:
        return PingAlreadyPosted(f"Ping {ping.id} was posted already.")
    if ping.expires_at <= now:
        return PingExpired(f"Ping {ping.id} expired at {ping.expires_at.isoformat()}.")
    return PingNotAccepted(f"Nobody bid on ping {ping.id}.")


class _NobodyBuys(Exception):
    """Raised inside the lead's SAVEPOINT to undo it when no campaign can buy."""


@dataclass(frozen=True)
class _Sale:
    order_id: str
    campaign_id: str
    price_cents: int


async def _sell_to_first_able(
    session: AsyncSession,
    settings: Settings,
    ping: Ping,
    lead_id: str,
    preview: LeadPreview,
    now: dt.datetime,
) -> _Sale | None:
    """Down the ping's ranking: the first campaign that may still buy (re-checked and claimed
    in the database) and whose buyer can pay gets the lead. Each try is a SAVEPOINT: a refusal
    gives back the campaign's claim."""
    for campaign_id, price_cents in ping.ranked:
        try:
            async with session.begin_nested():
                campaign = await claim_campaign(
                    session, campaign_id, preview, price_cents=price_cents, now=now
                )
                if campaign is None:
                    raise _NobodyBuys
                order = await orders.sell(
                    session,
                    settings,
                    lead_id=lead_id,
                    buyer_id=campaign.buyer_id,
                    price_cents=price_cents,
                    via=SaleVia.PING_POST,
                    deliver_to=campaign.webhook_url,
                )
        except (_NobodyBuys, DomainError):
            continue
        return _Sale(order.id, campaign_id, price_cents)
    return None


async def post(
    session: AsyncSession,
    kit: PingKit,
    leads_kit: intake.LeadsKit,
    *,
    seller: User,
    data: PostIn,
    idempotency_key: str | None,
) -> tuple[int, dict[str, Any]]:
    """Post a pinged lead (``POST /api/v1/post``): ``(201, PostOut as JSON)``. Raises NotFound
    (no such ping of this seller), :class:`PingAlreadyPosted`, :class:`PingExpired`,
    :class:`PingNotAccepted`, :class:`ValidationFailed` or any refusal of intake (a duplicate
    lead); then nothing is changed, and the ping may still be posted while it lives."""
    fingerprint = request_fingerprint({"pingpost.post": data.model_dump(mode="json")})
    if idempotency_key is not None:
        earlier = await previous_answer(session, seller.id, idempotency_key, fingerprint)
        if earlier is not None:
            return earlier.status_code, dict(earlier.response)
    now = utcnow()
    ping = await session.get(Ping, data.ping_id)
    if (
        ping is None
        or ping.seller_id != seller.id
        or ping.posted_at is not None
        or ping.expires_at <= now
        or not ping.accepted
    ):
        raise _why_not_posted(ping, seller, now)
    prepared = intake.prepare_lead(
        leads_kit,
        seller_id=seller.id,
        seller_username=seller.username,
        data=_lead_of(kit, ping, data, now),
        source="ping",
        now=now,
    )
    # Exactly once, however many posts of this ping race: the first UPDATE wins, the others
    # (waiting for its row lock on PostgreSQL, or for the write lock on SQLite) find it posted.
    claimed = await session.execute(
        update(Ping)
        # By its id alone (its seller was checked above and never changes): with the seller
        # too, and statistics taken while the table was small, PostgreSQL went down the
        # seller's index and read all their pings to find this one (test_hot_plans).
        .where(Ping.id == ping.id, Ping.posted_at.is_(None), Ping.expires_at > now)
        .values(posted_at=now)
        .returning(Ping.id)
        .execution_options(synchronize_session=False)
    )
    if claimed.one_or_none() is None:
        raise _why_not_posted(
            await session.get(Ping, data.ping_id, populate_existing=True), seller, now
        )
    sale: _Sale | None = None
    lead_id: str | None = None
    try:
        async with session.begin_nested():
            (outcome,) = await intake.write_leads(session, leads_kit, [intake.Submission(prepared)])
            if isinstance(outcome, DomainError):
                raise outcome
            assert outcome.created is not None
            lead = outcome.created.lead
            sale = await _sell_to_first_able(
                session, kit.settings, ping, lead.id, LeadPreview.of_lead(lead), now
            )
            if sale is None:
                raise _NobodyBuys
            lead_id = lead.id
    except _NobodyBuys:
        sale = None
    await session.execute(
        update(Ping)
        .where(Ping.id == ping.id)
        .values(
            outcome=(PingOutcome.SOLD if sale else PingOutcome.UNSOLD).value,
            lead_id=lead_id,
            order_id=sale.order_id if sale else None,
            sold_price_cents=sale.price_cents if sale else None,
        )
        .execution_options(synchronize_session=False)
    )
    answer = PostOut(
        sold=sale is not None,
        order_id=sale.order_id if sale else None,
        price_cents=sale.price_cents if sale else 0,
        currency=ping.currency,
        lead_id=lead_id,
    ).model_dump(mode="json")
    if idempotency_key is not None:
        # The answer names ids and a price only: no contact data in that table.
        await remember_answer(session, seller.id, idempotency_key, fingerprint, 201, answer)
    return 201, answer


# Reading ----------------------------------------------------------------------------------


async def recent_pings(
    session: AsyncSession, seller: User, *, limit: int, before_id: str | None = None
) -> list[Ping]:
    """A seller's pings, newest first (``limit`` + 1 rows)."""
    query = (
        select(Ping).where(Ping.seller_id == seller.id).order_by(Ping.id.desc()).limit(limit + 1)
    )
    if before_id is not None:
        query = query.where(Ping.id < before_id)
    return list(await session.scalars(query))


async def ping_counts(session: AsyncSession, seller: User) -> dict[str, int]:
    """How many of the seller's pings were accepted, posted and sold."""
    row = (
        await session.execute(
            select(
                func.count(),
                func.count().filter(Ping.accepted.is_(True)),
                func.count().filter(Ping.posted_at.is_not(None)),
                func.count().filter(Ping.outcome == PingOutcome.SOLD.value),
            ).where(Ping.seller_id == seller.id)
        )
    ).one()
    return {"pings": row[0], "accepted": row[1], "posted": row[2], "sold": row[3]}
