"""Privacy tests deliver webhooks to a server on loopback over plain http, which the service
refuses by default (a buyer must not make it call into its own network)."""

from __future__ import annotations

import pytest

from leadmarket.config import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_allow_private_networks": True})
