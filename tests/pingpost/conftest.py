"""Ping/post tests call buyers' bidding endpoints and webhooks on loopback over plain http,
which the service refuses by default (a buyer must not make it call into its own network)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from leadmarket.campaigns.matching import MatchingIndex
from leadmarket.config import Settings
from leadmarket.kit.db import Database
from leadmarket.pingpost.service import PingKit


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_allow_private_networks": True})


MakeKit = Callable[[Settings, Database], PingKit]


@pytest.fixture
async def make_kit() -> AsyncIterator[MakeKit]:
    """``PingKit(settings, db, MatchingIndex())``, closed after the test as the application's
    shutdown closes its own: on PostgreSQL its recorder holds a pooled connection while busy
    (``service.HeldConnection``), which must go back to the pool before the loop ends."""
    made: list[PingKit] = []

    def make(settings: Settings, db: Database) -> PingKit:
        kit = PingKit(settings, db, MatchingIndex())
        made.append(kit)
        return kit

    yield make
    for kit in made:
        await kit.aclose()
