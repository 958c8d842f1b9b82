"""An opt-out (P9) racing a lead of the same consumer in intake, on PostgreSQL with real
commits: the opt-out waits for the batch in flight and withdraws its lead, so no lead of an
opted-out consumer is left on the market either way."""

from __future__ import annotations

import asyncio

import pytest

from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.leads.intake import LeadsKit, Submission, Written, prepare_lead, write_leads
from leadmarket.leads.schemas import LeadIn
from leadmarket.models import Lead
from leadmarket.privacy import consumer_data
from leadmarket.privacy.consumer_data import consumer_from
from tests.fixtures.leads import lead_body
from tests.fixtures.ledger import make_member


async def test_an_opt_out_waits_for_a_lead_in_flight_and_withdraws_it(
    committed_db: Database, settings: Settings, is_postgres: bool
) -> None:
    if not is_postgres:
        pytest.skip("SQLite runs one writer at a time: there is no race to lose")
    kit = LeadsKit(settings)
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
    body = lead_body()
    prepared = prepare_lead(
        kit,
        seller_id=seller.id,
        seller_username=seller.username,
        data=LeadIn.model_validate(body),
        source="api",
    )
    consumer = consumer_from(kit, email=body["contact"]["email"], phone=None)

    intake = committed_db.new_session()
    try:
        (written,) = await write_leads(intake, kit, [Submission(prepared)])
        assert isinstance(written, Written)

        async def opt_out() -> consumer_data.OptOutOutcome:
            async with committed_db.transaction() as session:
                return await consumer_data.opt_out_consumer(
                    session, settings, consumer, request_id="prq_race", now=utcnow()
                )

        racing = asyncio.create_task(opt_out())
        await asyncio.sleep(0.5)
        assert not racing.done()  # it waits for the consumer's lock held by the batch
        await intake.commit()
    finally:
        await intake.close()
    outcome = await asyncio.wait_for(racing, timeout=10)

    assert outcome.withdrawn_lead_ids == [prepared.id]
    async with committed_db.transaction() as session:
        lead = await session.get(Lead, prepared.id)
        assert lead is not None and lead.status == "withdrawn"
