"""Proxy bidding on a shared lead (M1, issue 4): a bid is the bidder's maximum, the exchange
bids for them up to it, and a maximum only rises. On a shared lead every bid from the opening
up may win one of the places, so a bidder who does not lead may bid again; but a later bid of
theirs never lowers their own maximum (it is refused, 422 ``bid-too-low`` naming the lowest
accepted, nothing changed), and the price shown, the top bidder's proxy price (one increment
above the runner-up's maximum), never falls because a lower maximum came in."""

from __future__ import annotations

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.realtime import LocalBroker
from leadmarket.ledger.service import wallet_summary
from leadmarket.ledger.verify import verify_ledger
from leadmarket.marketplace import service
from leadmarket.models import Auction, Bid, Order
from tests.fixtures.auctions import open_auction
from tests.fixtures.ledger import make_member
from tests.marketplace.test_buy_now import funded_buyer
from tests.marketplace.test_close import end_now
from tests.marketplace.test_standing import bid, standing


async def test_a_lower_maximum_neither_lowers_the_price_nor_the_bidders_own_maximum(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    increment = settings.auction_min_increment_cents
    seller = await make_member(session, "seller")
    lead = await open_auction(session, seller.id, exclusive=False, max_buyers=2)
    ana, ana_auth = await funded_buyer(client, session)
    ben, ben_auth = await funded_buyer(client, session)
    cy, cy_auth = await funded_buyer(client, session)

    await bid(client, lead.id, ana_auth, 6_000)
    second = await bid(client, lead.id, ben_auth, 5_000)
    # Ana's proxy answers Ben: one increment above his maximum.
    assert second["current_price_cents"] == 5_000 + increment
    third = await bid(client, lead.id, cy_auth, 2_000)
    assert (third["leading"], third["winning"]) == (False, False)
    # A maximum far below the runner-up's does not bring Ana's price down to 2,050.
    assert third["current_price_cents"] == 5_000 + increment

    # Ben, holding a winning place with 5,000, cannot cut his own maximum to 1,500 ...
    lower = await client.post(
        f"/api/v1/leads/{lead.id}/bids", json={"amount_cents": 1_500}, headers=ben_auth
    )
    assert lower.status_code == 422, lower.text
    assert lower.headers["content-type"].startswith("application/problem+json")
    assert lower.json()["type"].endswith("/bid-too-low")
    assert lower.json()["minimum_bid_cents"] == 5_000 + increment
    assert "your own maximum" in lower.json()["detail"]
    # ... nor repeat it: a new maximum must beat his own by the increment.
    same = await client.post(
        f"/api/v1/leads/{lead.id}/bids", json={"amount_cents": 5_000}, headers=ben_auth
    )
    assert same.status_code == 422, same.text
    assert await standing(client, lead.id, ben_auth) == (False, True, 2)
    assert await standing(client, lead.id, cy_auth) == (False, False, 2)
    bids = list(await session.scalars(select(Bid).where(Bid.lead_id == lead.id)))
    assert sorted((b.buyer_id, b.max_cents) for b in bids) == sorted(
        [(ana, 6_000), (ben, 5_000), (cy, 2_000)]
    )
    auction = await session.get(Auction, lead.id, populate_existing=True)
    assert auction is not None and auction.bid_count == 3
    assert auction.current_price_cents == 5_000 + increment

    # Raising his own maximum is a bid like any other.
    raised = await bid(client, lead.id, ben_auth, 5_000 + increment)
    assert (raised["leading"], raised["winning"]) == (False, True)
    assert raised["current_price_cents"] == 5_000 + 2 * increment

    # The close sells the two places at the proxy prices: Ana one increment above Ben's
    # maximum, Ben one above Cy's, each holding just that.
    await end_now(session, lead)
    await service.close_due_auctions(session, settings, LocalBroker())
    sold = {
        o.buyer_id: o.price_cents
        for o in await session.scalars(select(Order).where(Order.lead_id == lead.id))
    }
    assert sold == {ana: 5_000 + 2 * increment, ben: 2_000 + increment}
    for buyer_id, price in sold.items():
        assert (await wallet_summary(session, buyer_id, "USD")).held_cents == price
    assert (await wallet_summary(session, cy, "USD")).held_cents == 0
    report = await verify_ledger(session)
    assert report.ok, report.problems
