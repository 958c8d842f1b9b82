"""Demo data: a small, believable marketplace of lead sellers, buyers and staff, with leads in
every vertical (auctions ending over the next minutes to a day, fixed-price leads), buyers with
money in their wallets and campaigns that bid by themselves; and what the market has been through
(:mod:`leadmarket.demo_story`): a week of sales with returns, disputes, claims, feedback, member
messages, a fraud case, settlement and a payout, leads destroyed by the 48-hour rule, rights
requests in the privacy officer's queue, a new privacy notice version and a law-enforcement
request. Loading twice changes nothing.

With ``LEADMARKET_DEMO_MARKET=true`` (``make run`` sets it) the market keeps living: a new demo
lead arrives every minute, campaigns bid on it, auctions end and sell (the auction sweeps of
:mod:`leadmarket.marketplace.tasks`)."""

from __future__ import annotations

import datetime as dt
import logging
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts import repository
from leadmarket.accounts.service import AccountsKit
from leadmarket.audit.service import Actor, record
from leadmarket.config import Settings
from leadmarket.demo_story import load_demo_story
from leadmarket.kit.db import Database, is_deadlock, make_engine, utcnow
from leadmarket.kit.errors import DomainError
from leadmarket.kit.jobs import JobContext
from leadmarket.leads.intake import LeadsKit, create_lead
from leadmarket.leads.schemas import LeadIn
from leadmarket.models import Campaign, Lead, Role, User
from leadmarket.verticals.registry import Vertical, all_verticals

log = logging.getLogger("leadmarket.demo")

DEMO_PASSWORD = "lead-exchange-demo-2026"


@dataclass(frozen=True)
class DemoMember:
    username: str
    role: Role
    name: str
    email: str
    phone: str
    city: str
    region: str
    postal_code: str


DEMO_MEMBERS = (
    DemoMember("sunbelt_leads", Role.SELLER, "Maria Gonzalez", "maria@sunbelt-leads.test",
               "+16025550141", "Phoenix", "AZ", "85004"),
    DemoMember("quotehound", Role.SELLER, "Derek Okafor", "derek@quotehound.test",
               "+14045550178", "Atlanta", "GA", "30303"),
    DemoMember("homefix_referrals", Role.SELLER, "Priya Raman", "priya@homefix-referrals.test",
               "+15125550112", "Austin", "TX", "78701"),
    DemoMember("pacific_mutual_agency", Role.BUYER, "Kenji Watanabe", "kenji@pacific-agency.test",
               "+14155550190", "San Francisco", "CA", "94105"),
    DemoMember("lakeside_mortgage", Role.BUYER, "Erin O'Neill", "erin@lakeside-mortgage.test",
               "+13125550166", "Chicago", "IL", "60601"),
    DemoMember("evergreen_insurance", Role.BUYER, "Samuel Byrne", "sam@evergreen-ins.test",
               "+12065550133", "Seattle", "WA", "98101"),
    DemoMember("brightpath_loans", Role.BUYER, "Aisha Khan", "aisha@brightpath-loans.test",
               "+17135550157", "Houston", "TX", "77002"),
    DemoMember("admin", Role.ADMIN, "Dana Reyes", "admin@leadmarket.test",
               "+14155550100", "Oakland", "CA", "94612"),
    DemoMember("privacy_desk", Role.PRIVACY_OFFICER, "Hannah Lewis", "privacy@leadmarket.test",
               "+14155550101", "Oakland", "CA", "94612"),
    DemoMember("support_team", Role.SUPPORT, "Marco Bianchi", "support@leadmarket.test",
               "+14155550102", "Oakland", "CA", "94612"),
)  # fmt: skip


# (city, state, ZIP, area code): consistent, so demo leads score as a real market's would.
DEMO_PLACES = (
    ("Fresno", "CA", "93650", "559"),
    ("San Diego", "CA", "92101", "619"),
    ("Brooklyn", "NY", "11201", "718"),
    ("Dallas", "TX", "75201", "214"),
    ("Miami", "FL", "33101", "305"),
    ("Chicago", "IL", "60601", "312"),
    ("Seattle", "WA", "98101", "206"),
    ("Phoenix", "AZ", "85004", "602"),
    ("Atlanta", "GA", "30303", "404"),
    ("Denver", "CO", "80202", "303"),
)
DEMO_FIRST_NAMES = (
    "Olivia", "Liam", "Emma", "Noah", "Sofia", "Mateo", "Ava", "Elijah", "Mia", "Lucas",
    "Amelia", "Ethan", "Harper", "James", "Layla", "Benjamin", "Chloe", "Daniel", "Zoe", "Henry",
)  # fmt: skip
DEMO_LAST_NAMES = (
    "Nguyen", "Patel", "Johnson", "Garcia", "Kim", "Okafor", "Rossi", "Cohen", "Silva",
    "Murphy", "Haddad", "Larsen", "Moreau", "Tanaka", "Brooks", "Singh", "Lopez", "Walker",
)  # fmt: skip
DEMO_STREETS = ("Oak", "Maple", "Cedar", "Elm", "Willow", "Sycamore")
DEMO_LEADS_PER_VERTICAL = 6
DEMO_WALLET_CENTS = 250_000  # each demo buyer starts with $2,500
# What each demo buyer's campaigns buy: (vertical, bid in cents, daily cap).
DEMO_CAMPAIGNS = {
    "pacific_mutual_agency": (("auto-insurance", 2_600, 20), ("home-insurance", 2_200, 10)),
    "lakeside_mortgage": (("mortgage", 3_400, 15),),
    "evergreen_insurance": (("life-insurance", 2_400, 10), ("health-insurance", 1_900, 10)),
    "brightpath_loans": (("personal-loan", 2_100, 25), ("auto-insurance", 1_700, 5)),
}


def _demo_attributes(vertical: Vertical, rng: random.Random) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field in vertical.fields:
        if field.enum:
            values[field.name] = rng.choice(field.enum)
        elif field.type == "boolean":
            values[field.name] = rng.random() < 0.5
        elif field.type in ("integer", "number"):
            low = field.minimum if field.minimum is not None else 0
            high = field.maximum if field.maximum is not None else low + 100
            number = rng.uniform(low, min(high, low + (high - low) * 0.6))
            values[field.name] = int(number) if field.type == "integer" else round(number, 2)
        elif field.required:
            values[field.name] = "Details on request"
    return values


def _demo_lead(
    seller: User,
    vertical: Vertical,
    n: int,
    rng: random.Random,
    *,
    durations: tuple[int, ...] = (5, 15, 30, 60, 180, 1440),
    fixed_price_cents: int | None = None,
    consent_given_at: dt.datetime | None = None,
) -> LeadIn:
    """A demo consumer's request: an auction or a fixed-price listing by ``n``, or a
    fixed-price listing at ``fixed_price_cents`` (the after-sale stories of
    :mod:`leadmarket.demo_story`), consented to a while before now or at
    ``consent_given_at``."""
    city, state, zip_code, area = rng.choice(DEMO_PLACES)
    first, last = rng.choice(DEMO_FIRST_NAMES), rng.choice(DEMO_LAST_NAMES)
    now = utcnow()
    auction = n % 3 != 2 and fixed_price_cents is None
    sale: dict[str, Any] = (
        {
            "mode": "auction",
            "reserve_cents": rng.choice([800, 1200, 1500, 2500]),
            "buy_now_cents": rng.choice([None, 4000, 6500]),
            "duration_minutes": rng.choice(durations),
            "exclusive": n % 4 != 0,
        }
        if auction
        else {
            "mode": "fixed",
            "price_cents": fixed_price_cents or rng.choice([1800, 2900, 4500]),
            "exclusive": True,
        }
    )
    return LeadIn.model_validate(
        {
            "vertical": vertical.slug,
            "contact": {
                "first_name": first,
                "last_name": last,
                # Every sixth consumer used a throwaway address, so the market shows quality
                # signals at work.
                "email": f"{first}.{last}.{vertical.slug}.{n}@"
                + ("mailinator.com" if n == 5 else "example.com"),
                "phone": f"+1{area}{rng.randint(200, 899)}{rng.randint(0, 9999):04d}",
                "birth_date": f"{rng.randint(1950, 2003)}-{rng.randint(1, 12):02d}-15",
                "address": {
                    "street": f"{rng.randint(10, 9999)} {rng.choice(DEMO_STREETS)} St",
                    "city": city,
                    "region": state,
                    "postal_code": zip_code,
                    "country": "US",
                },
            },
            "attributes": _demo_attributes(vertical, rng),
            "consent": {
                "disclosure_text": vertical.consent_text_for(seller.username),
                "page_url": f"https://{seller.username.replace('_', '-')}.example.com/quote",
                "ip": f"198.51.100.{rng.randint(1, 254)}",
                "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) Safari/604.1",
                "given_at": (
                    consent_given_at or now - dt.timedelta(minutes=rng.randint(1, 600))
                ).isoformat(),
            },
            "sale": sale,
        }
    )


async def _load_demo_leads(session: AsyncSession, settings: Settings) -> int:
    if await session.scalar(select(func.count()).select_from(Lead)):
        return 0
    sellers = [
        user
        for m in DEMO_MEMBERS
        if m.role == Role.SELLER
        and (user := await repository.user_by_username(session, m.username))
    ]
    kit = LeadsKit(settings)
    rng = random.Random(2026)  # noqa: S311 - the same demo market every time, not a secret
    created = 0
    for vertical in all_verticals():
        for n in range(DEMO_LEADS_PER_VERTICAL):
            seller = sellers[(created + n) % len(sellers)]
            data = _demo_lead(seller, vertical, n, rng)
            try:
                async with session.begin_nested():
                    await create_lead(session, kit, seller=seller, data=data, source="form")
                created += 1
            except DomainError:
                continue  # an unlucky random duplicate; the market has enough without it
    return created


async def _load_demo_money_and_campaigns(session: AsyncSession, settings: Settings) -> int:
    """Money in each demo buyer's wallet and their campaigns, once."""
    from leadmarket.campaigns.schemas import CampaignIn
    from leadmarket.campaigns.service import create_campaign
    from leadmarket.ledger.service import deposit
    from leadmarket.payments.processor import SandboxProcessor

    if await session.scalar(select(func.count()).select_from(Campaign)):
        return 0
    made = 0
    for username, campaigns in DEMO_CAMPAIGNS.items():
        buyer = await repository.user_by_username(session, username)
        if buyer is None:
            continue
        await deposit(
            session,
            SandboxProcessor(),
            member_id=buyer.id,
            amount_cents=DEMO_WALLET_CENTS,
            currency="USD",
        )
        for vertical, bid_cents, daily_cap in campaigns:
            await create_campaign(
                session,
                buyer,
                CampaignIn.model_validate(
                    {
                        "name": f"{vertical.replace('-', ' ').capitalize()} (demo)",
                        "vertical": vertical,
                        "bid_cents": bid_cents,
                        "daily_cap": daily_cap,
                        "timezone": "America/Chicago",
                    }
                ),
            )
            made += 1
    return made


async def post_demo_lead(session: AsyncSession, settings: Settings) -> str | None:
    """One more demo lead, as if a consumer had just filled in a demo seller's form: a short
    auction most of the time, so the market keeps turning over. None if there is no demo."""
    sellers = [
        user
        for m in DEMO_MEMBERS
        if m.role == Role.SELLER
        and (user := await repository.user_by_username(session, m.username))
    ]
    if not sellers:
        return None
    rng = random.Random()  # noqa: S311 - demo content, not a secret
    vertical = rng.choice(all_verticals())
    seller = rng.choice(sellers)
    data = _demo_lead(seller, vertical, rng.randrange(1_000_000), rng, durations=(5, 10, 15))
    try:
        async with session.begin_nested():
            created = await create_lead(
                session, LeadsKit(settings), seller=seller, data=data, source="form"
            )
    except DomainError:
        return None
    return created.lead.id


NEW_DEMO_LEAD_JOB = "demo.new_lead"


async def new_demo_lead_job(ctx: JobContext[Any]) -> None:
    """Every minute, with ``LEADMARKET_DEMO_MARKET=true``: one more demo lead."""
    if ctx.services.settings.demo_market:
        await post_demo_lead(ctx.session, ctx.services.settings)


# How often the demo loads again after losing a deadlock (see load_demo_data).
DEMO_LOAD_ATTEMPTS = 3


async def load_demo_data(settings: Settings) -> str:
    """Load the demo (idempotent: what is there already is not added again). The history's
    after-sale step makes several sales in one transaction, so it takes lead, ledger and audit
    locks in an order a single sale never does; a job worker running at the same time (a live
    server's, or `leadmarket worker`) may then deadlock with it on PostgreSQL. Each step is one
    transaction, so the victim lost only its own step: the load simply runs again."""
    attempt = 1
    while True:
        try:
            return await _load_demo_data(settings)
        except DBAPIError as exc:
            if not is_deadlock(exc) or attempt >= DEMO_LOAD_ATTEMPTS:
                raise
            attempt += 1
            log.warning("demo load lost a deadlock to a running job; loading again")


async def _load_demo_data(settings: Settings) -> str:
    kit = AccountsKit(settings)
    password_hash = kit.passwords.hash(DEMO_PASSWORD)
    db = Database(make_engine(settings.database_url))
    created = 0
    try:
        async with db.transaction() as session:
            for member in DEMO_MEMBERS:
                if await repository.user_by_username(session, member.username) is not None:
                    continue
                user = User(
                    email=member.email,
                    username=member.username,
                    username_key=member.username.casefold(),
                    role=member.role.value,
                    name=member.name,
                    phone=member.phone,
                    address={
                        "street": None,
                        "city": member.city,
                        "region": member.region,
                        "postal_code": member.postal_code,
                        "country": "US",
                    },
                    password_hash=password_hash,
                    email_verified_at=utcnow(),
                )
                session.add(user)
                await session.flush()
                await record(
                    session,
                    actor=Actor.system(),
                    action="account.demo_created",
                    subject_type="user",
                    subject_id=user.id,
                    details={"role": user.role},
                )
                created += 1
        async with db.transaction() as session:
            leads = await _load_demo_leads(session, settings)
        async with db.transaction() as session:
            campaigns = await _load_demo_money_and_campaigns(session, settings)
        story = await load_demo_story(db, settings)
    finally:
        await db.dispose()
    names = ", ".join(m.username for m in DEMO_MEMBERS)
    return (
        f"Demo data ready ({created} members, {leads} leads and {campaigns} campaigns added). "
        f"After the sale: {story.orders} orders, {story.returns} returns, {story.disputes} "
        f"disputes, {story.payouts} payout, {story.destroyed} leads past the 48-hour rule; "
        f"privacy: {story.privacy_requests} rights requests, {story.notices} notice version, "
        f"{story.legal_requests} law-enforcement request (added).\n"
        f"Sign in as any of: {names}\n"
        f"Password for every demo account: {DEMO_PASSWORD}"
    )
