"""Demo data: a small, believable marketplace of lead sellers, buyers and staff. Loading twice
changes nothing. Later issues add leads, auctions and orders here."""

from __future__ import annotations

from dataclasses import dataclass

from leadmarket.accounts import repository
from leadmarket.accounts.service import AccountsKit
from leadmarket.audit.service import Actor, record
from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine, utcnow
from leadmarket.models import Role, User

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


async def load_demo_data(settings: Settings) -> str:
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
    finally:
        await db.dispose()
    names = ", ".join(m.username for m in DEMO_MEMBERS)
    return (
        f"Demo data ready ({created} members added). Sign in as any of: {names}\n"
        f"Password for every demo account: {DEMO_PASSWORD}"
    )
