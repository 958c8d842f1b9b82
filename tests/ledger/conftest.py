"""Wallet tests may send deposits through a recording processor adapter instead of the
sandbox (``tests.fixtures.ledger.RecordingProcessor``)."""

from __future__ import annotations

import pytest

from leadmarket.ledger import service
from leadmarket.payments.processor import PaymentProcessor
from tests.fixtures.ledger import RecordingProcessor


@pytest.fixture
def processor(monkeypatch: pytest.MonkeyPatch) -> RecordingProcessor:
    """The processor every deposit of the test goes through (instead of the sandbox)."""
    adapter = RecordingProcessor()
    chosen: PaymentProcessor = adapter
    monkeypatch.setattr(service, "payment_processor", lambda settings: chosen)
    return adapter
