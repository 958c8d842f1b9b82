"""Where a bidder stands in a shared auction (M1): a shared lead sells to its best ``places``
maximums, so the bid answer, the auction's API read and its page tell each bidder whether
they hold one of the winning places and how many there are, besides whether they lead. What
they are told must be what the close then does."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.realtime import LocalBroker
from leadmarket.marketplace import service
from leadmarket.models import Order, User
from leadmarket.orders.service import purchase
from tests.fixtures.auctions import open_auction
from tests.fixtures.ledger import make_member
from tests.ledger.test_wallet_page import field
from tests.marketplace.test_buy_now import funded_buyer
from tests.marketplace.test_close import end_now
from tests.orders.test_pages import web_buyer

FUNDS = 50_000


async def bid(
    client: httpx.AsyncClient, lead_id: str, auth: dict[str, str], cents: int
) -> dict[str, Any]:
    placed = await client.post(
        f"/api/v1/leads/{lead_id}/bids", json={"amount_cents": cents}, headers=auth
    )
    assert placed.status_code == 201, placed.text
    answer: dict[str, Any] = placed.json()
    return answer


async def standing(
    client: httpx.AsyncClient, lead_id: str, auth: dict[str, str]
) -> tuple[bool, bool, int]:
    state = await client.get(f"/api/v1/leads/{lead_id}/auction", headers=auth)
    assert state.status_code == 200, state.text
    return state.json()["leading"], state.json()["winning"], state.json()["places"]


async def test_a_shared_auction_tells_each_bidder_whether_they_hold_a_winning_place(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await make_member(session, "seller")
    lead = await open_auction(session, seller.id, exclusive=False, max_buyers=2)
    ana, ana_auth = await funded_buyer(client, session)
    ben, ben_auth = await funded_buyer(client, session)
    cy, cy_auth = await funded_buyer(client, session)

    first = await bid(client, lead.id, ana_auth, 4_000)
    assert (first["leading"], first["winning"], first["places"]) == (True, True, 2)
    second = await bid(client, lead.id, ben_auth, 3_000)
    # Not the top bid, but one of the two best: Ben would buy a place if it ended now.
    assert (second["leading"], second["winning"], second["places"]) == (False, True, 2)
    third = await bid(client, lead.id, cy_auth, 1_000)
    assert (third["leading"], third["winning"]) == (False, False)
    assert set(first) >= {"id", "leading", "current_price_cents", "ends_at"}  # api.md's fields

    assert await standing(client, lead.id, ana_auth) == (True, True, 2)
    assert await standing(client, lead.id, ben_auth) == (False, True, 2)
    assert await standing(client, lead.id, cy_auth) == (False, False, 2)

    # Cy's new maximum pushes Ben out of the places; an equal one would not (earlier wins).
    level = await bid(client, lead.id, cy_auth, 3_000)
    assert level["winning"] is False
    above = await bid(client, lead.id, cy_auth, 3_500)
    assert (above["leading"], above["winning"]) == (False, True)
    assert await standing(client, lead.id, ben_auth) == (False, False, 2)
    told = {
        buyer_id: (await standing(client, lead.id, auth))[1]
        for buyer_id, auth in ((ana, ana_auth), (ben, ben_auth), (cy, cy_auth))
    }

    # The close sells to exactly the bidders who were told they were winning.
    await end_now(session, lead)
    await service.close_due_auctions(session, settings, LocalBroker())
    buyers = set(await session.scalars(select(Order.buyer_id).where(Order.lead_id == lead.id)))
    assert buyers == {buyer_id for buyer_id, winning in told.items() if winning} == {ana, cy}


async def test_a_maximum_below_the_reserve_holds_no_place(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    seller = await make_member(session, "seller")
    lead = await open_auction(
        session, seller.id, exclusive=False, max_buyers=3, reserve_cents=5_000
    )
    _, ana_auth = await funded_buyer(client, session)
    _, ben_auth = await funded_buyer(client, session)
    low = await bid(client, lead.id, ana_auth, 2_000)
    assert (low["leading"], low["winning"], low["places"]) == (True, False, 3)
    await bid(client, lead.id, ben_auth, 6_000)
    assert await standing(client, lead.id, ben_auth) == (True, True, 3)
    assert await standing(client, lead.id, ana_auth) == (False, False, 3)


async def test_an_exclusive_auction_has_one_place_the_leaders_once_the_reserve_is_met(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    seller = await make_member(session, "seller")
    lead = await open_auction(session, seller.id, reserve_cents=2_500)
    _, ana_auth = await funded_buyer(client, session)
    _, ben_auth = await funded_buyer(client, session)
    below = await bid(client, lead.id, ana_auth, 2_000)
    assert (below["leading"], below["winning"], below["places"]) == (True, False, 1)
    over = await bid(client, lead.id, ben_auth, 3_000)
    assert (over["leading"], over["winning"], over["places"]) == (True, True, 1)
    assert await standing(client, lead.id, ana_auth) == (False, False, 1)


async def test_a_place_bought_outright_is_no_longer_to_win(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    seller = await make_member(session, "seller")
    lead = await open_auction(
        session, seller.id, exclusive=False, max_buyers=2, buy_now_cents=9_000
    )
    ana, ana_auth = await funded_buyer(client, session)
    _, ben_auth = await funded_buyer(client, session)
    _, cy_auth = await funded_buyer(client, session)
    await bid(client, lead.id, ana_auth, 4_000)
    await bid(client, lead.id, ben_auth, 3_000)
    await bid(client, lead.id, cy_auth, 2_000)
    assert await standing(client, lead.id, cy_auth) == (False, False, 2)

    # Ana buys outright: one place left, and her own bid no longer counts for it.
    buyer = await session.get(User, ana)
    assert buyer is not None
    await purchase(session, settings, lead_id=lead.id, buyer=buyer, idempotency_key=None)
    assert await standing(client, lead.id, ben_auth) == (False, True, 1)
    assert await standing(client, lead.id, cy_auth) == (False, False, 1)


async def test_the_auction_page_shows_a_winning_place(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    seller = await make_member(session, "seller")
    lead = await open_auction(session, seller.id, exclusive=False, max_buyers=3)
    _, rival_auth = await funded_buyer(client, session)
    await bid(client, lead.id, rival_auth, 5_000)
    await web_buyer(client, session, FUNDS)  # signs this client in to the pages
    page = await client.get(f"/auctions/{lead.id}")
    assert page.status_code == 200
    assert 'data-testid="places">3<' in page.text
    assert "Open for bids." in page.text

    form = {"csrf_token": field(page.text, "csrf_token"), "amount": "20.00"}
    placed = await client.post(f"/auctions/{lead.id}/bids", data=form)
    assert placed.status_code == 303, placed.text
    assert placed.headers["location"].endswith("?done=winning")
    after = await client.get(placed.headers["location"])
    assert "Your bid holds one of the winning places" in after.text
    assert "Your bid holds one of the 3 winning places." in after.text
