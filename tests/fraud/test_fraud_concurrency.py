"""Fraud signals under concurrency (M6), on SQLite and PostgreSQL: two servers' intake batchers
write a seller's low-quality leads at once while an admin keeps closing the seller's case.
No signal is lost (the tallies add up to every lead), a member never has two open cases, and
every signal belongs to a case of that seller."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from leadmarket.config import Settings
from leadmarket.fraud.service import CaseAction, act_on_case
from leadmarket.kit.db import Database, make_engine
from leadmarket.kit.realtime import LocalBroker
from leadmarket.leads.intake import IntakeBatcher, LeadsKit, Submission, Written, prepare_lead
from leadmarket.leads.schemas import LeadIn
from leadmarket.models import FraudCase, FraudSignal, Lead, User
from tests.fixtures.leads import lead_body
from tests.fixtures.ledger import make_member

pytestmark = pytest.mark.committed

WAVES = 4
PER_WAVE = 10
LEADS = WAVES * PER_WAVE


async def test_intake_signals_add_up_while_an_admin_closes_cases(
    committed_db: Database, settings: Settings, database_url: str
) -> None:
    settings = settings.model_copy(update={"fraud_low_quality_score": 101})
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        reviewer = await make_member(session, "admin")
        seller_id, reviewer_id = seller.id, reviewer.id
    kit = LeadsKit(settings)
    other = Database(make_engine(database_url))
    batchers = [IntakeBatcher(committed_db, kit), IntakeBatcher(other, kit)]
    closed = 0

    async def admin_closes_the_open_case() -> None:
        nonlocal closed
        async with committed_db.transaction() as session:
            case_id = await session.scalar(
                select(FraudCase.id).where(FraudCase.open_key == seller_id)
            )
            admin = await session.get(User, reviewer_id)
            assert admin is not None
            if case_id is None:
                return
            await act_on_case(
                session,
                settings,
                LocalBroker(),
                case_id=case_id,
                admin=admin,
                action=CaseAction.DISMISS,
                note="Looked fine at the time.",
            )
        closed += 1

    async def post(n: int) -> object:
        data = LeadIn.model_validate(lead_body())
        prepared = prepare_lead(
            kit, seller_id=seller_id, seller_username="s", data=data, source="api"
        )
        return await batchers[n % 2].submit(Submission(prepared))

    results: list[object] = []
    try:
        # Waves of leads from both servers, each racing an admin closing the case the wave's
        # first lead opened.
        for wave in range(WAVES):
            results.append(await post(wave * PER_WAVE))  # opens this wave's case
            racing = [post(wave * PER_WAVE + n) for n in range(1, PER_WAVE)]
            *written, _ = await asyncio.gather(*racing, admin_closes_the_open_case())
            results += written
    finally:
        await other.dispose()

    assert all(isinstance(r, Written) and r.status_code == 201 for r in results)
    async with committed_db.transaction() as session:
        assert await session.scalar(select(func.count()).select_from(Lead)) == LEADS
        tallied = await session.scalar(
            select(func.sum(FraudSignal.occurrences)).where(FraudSignal.kind == "low_quality_lead")
        )
        assert tallied == LEADS
        open_cases = await session.scalar(select(func.count()).where(FraudCase.status == "open"))
        assert (open_cases or 0) <= 1
        subjects = set(
            await session.scalars(
                select(FraudCase.subject_user_id).join(
                    FraudSignal, FraudSignal.case_id == FraudCase.id
                )
            )
        )
        assert subjects == {seller_id}
    assert closed == WAVES


async def test_a_suspension_racing_the_sellers_intake_and_messages_does_not_deadlock(
    committed_db: Database, settings: Settings, database_url: str
) -> None:
    """The seller's API-key intake (which touches the key row) and their bulk messages (which
    lock their own row) hold locks an admin's suspension needs, and then wait for the case: the
    suspension takes them in the same order, so every request ends with an answer."""
    from leadmarket.kit.crypto import random_token, token_digest
    from leadmarket.kit.errors import DomainError
    from leadmarket.messages import service as messages
    from leadmarket.models import ApiKey, MemberMessage, SaleVia
    from leadmarket.orders import service as orders
    from tests.fixtures.ledger import fund
    from tests.fixtures.orders import make_lead

    settings = settings.model_copy(
        update={"fraud_low_quality_score": 101, "message_same_text_max_threads": 1}
    )
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        reviewer = await make_member(session, "admin")
        key = ApiKey(
            user_id=seller.id, name="crm", prefix="lmk_" + random_token(6)[:8],
            key_hash=token_digest(random_token(32)),
        )  # fmt: skip
        session.add(key)
        order_ids = []
        for _ in range(6):
            buyer = await make_member(session, "buyer")
            await fund(session, buyer, 1_000)
            lead, _ = await make_lead(session, settings, seller, price_cents=100)
            order = await orders.sell(
                session, settings, lead_id=lead.id, buyer_id=buyer.id, price_cents=100,
                via=SaleVia.FIXED,
            )  # fmt: skip
            order_ids.append(order.id)
        seller_id, reviewer_id, key_id = seller.id, reviewer.id, key.id
    kit = LeadsKit(settings)
    other = Database(make_engine(database_url))
    batchers = [IntakeBatcher(committed_db, kit), IntakeBatcher(other, kit)]

    async def post(n: int) -> object:
        data = LeadIn.model_validate(lead_body())
        prepared = prepare_lead(
            kit, seller_id=seller_id, seller_username="s", data=data, source="api"
        )
        return await batchers[n % 2].submit(Submission(prepared, api_key_id=key_id))

    async def paste(n: int) -> object:
        database = (committed_db, other)[n % 2]
        try:
            async with database.transaction() as session:
                sender = await session.get(User, seller_id)
                assert sender is not None
                await messages.send_message(
                    session, settings, order_id=order_ids[n], sender=sender, body="Buy more!"
                )
        except DomainError as exc:
            return exc.status
        return 201

    async def suspend() -> None:
        async with committed_db.transaction() as session:
            case_id = await session.scalar(
                select(FraudCase.id).where(FraudCase.open_key == seller_id)
            )
            admin = await session.get(User, reviewer_id)
            assert case_id is not None and admin is not None
            await act_on_case(
                session, settings, LocalBroker(), case_id=case_id, admin=admin,
                action=CaseAction.SUSPEND, note="Bulk pasting and junk leads.",
            )  # fmt: skip

    try:
        first = await post(0)  # opens the seller's case
        assert isinstance(first, Written)
        results = await asyncio.gather(
            *(post(n) for n in range(1, 20)), *(paste(n) for n in range(6)), suspend(),
            return_exceptions=True,
        )  # fmt: skip
    finally:
        await other.dispose()

    errors = [r for r in results if isinstance(r, BaseException) and not isinstance(r, DomainError)]
    assert errors == []  # no deadlock, no other failure: each answer is a write or a refusal
    written = 1 + sum(isinstance(r, Written) for r in results)
    async with committed_db.transaction() as session:
        user = await session.get(User, seller_id)
        assert user is not None and user.status == "suspended"
        assert await session.scalar(select(func.count()).select_from(Lead)) == 6 + written
        tallied = await session.scalar(
            select(func.sum(FraudSignal.occurrences)).where(FraudSignal.kind == "low_quality_lead")
        )
        assert tallied == written
        stored = await session.scalar(select(func.count()).select_from(MemberMessage))
        assert (stored or 0) <= 1  # the paste went into one thread at most
