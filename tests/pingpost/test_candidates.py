"""A ping makes bids only of the campaigns that could be in its ranking (``_candidates``); the
ranking must be the one made from a bid of every matching campaign, whatever the bids, floor,
currencies and endpoints; an endpoint whose buyer has no signing secret is never asked and
takes no place of one that can be."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, cast

import pytest

from leadmarket.campaigns.matching import CompiledCampaign
from leadmarket.pingpost.service import EXTERNAL_ASKED, Bid, _candidates, ranking


@dataclass
class Campaign:
    id: str
    buyer_id: str
    bid_cents: int
    currency: str
    ping_url: str | None

    @property
    def order_key(self) -> tuple[int, str]:
        return (-self.bid_cents, self.id)


def every_bid_ranking(
    matched: list[Any],
    currency: str,
    floor: int,
    answers: dict[str, int],
    rule: Any,
    askable: set[str],
) -> list[tuple[str, int]]:
    """The ranking as pings made it before: a bid of every matching campaign."""
    same = [c for c in matched if c.currency == currency]
    bids = [Bid(c, c.bid_cents) for c in same if c.ping_url is None]
    asked = [c for c in same if c.ping_url is not None and c.buyer_id in askable]
    asked = asked[:EXTERNAL_ASKED]
    bids += [Bid(c, min(answers[c.id], c.bid_cents)) for c in asked]
    return [(b.campaign.id, b.cents) for b in ranking(bids, rule=rule, floor=floor)]


@pytest.mark.parametrize("seed", range(300))
def test_the_ranking_is_that_of_every_bid(seed: int) -> None:
    rng = random.Random(seed)
    endpoints = rng.random() < 0.5
    matched = sorted(
        (
            Campaign(
                id=f"cmp_{n:04d}",
                buyer_id=f"usr_{rng.randint(0, 5)}",
                bid_cents=rng.choice([100, 500, 900, 1000, 1500, 2000, 3000]),
                currency=rng.choice(["USD", "USD", "CAD"]),
                ping_url="https://buyer.example" if endpoints and rng.random() < 0.3 else None,
            )
            for n in range(rng.randint(0, 60))
        ),
        key=lambda c: c.order_key,
    )
    floor = rng.choice([1, 500, 1000, 2500])
    answers = {c.id: rng.choice([50, 800, 1200, 5000]) for c in matched}
    rule = rng.choice(["first", "second"])
    # Buyers 0-3 have a signing secret; 4 and 5 do not (their endpoints are never asked).
    # Or, some of the time, no buyer's secret is known (endpoints, but nobody to ask).
    askable = {f"usr_{i}" for i in range(4)} if endpoints and rng.random() < 0.8 else set()
    # Buyer 4's secret was removed (None); buyer 5 was never asked for one (not listed).
    secrets = {**{b: "secret" for b in askable}, "usr_4": None} if askable else {}
    bids, asked = _candidates(cast(list[CompiledCampaign], matched), "USD", floor, secrets=secrets)
    bids += [Bid(c, min(answers[c.id], c.bid_cents)) for c in asked]
    made = [(b.campaign.id, b.cents) for b in ranking(bids, rule=rule, floor=floor)]
    assert made == every_bid_ranking(matched, "USD", floor, answers, rule, askable)
    if not asked:  # as a ping ranks them: in the index's order, unsorted
        ordered = ranking(bids, rule=rule, floor=floor, ordered=True)
        assert [(b.campaign.id, b.cents) for b in ordered] == made
    assert [c.id for c in asked] == [
        c.id
        for c in matched
        if c.currency == "USD" and c.ping_url is not None and c.buyer_id in askable
    ][:EXTERNAL_ASKED]
