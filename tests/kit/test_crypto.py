"""Signed link tokens: round trip, purpose separation, expiry, and no crash on any input."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leadmarket.kit.crypto import BadSignature, Signer

signer = Signer(b"k" * 32)


def test_round_trip_and_purpose_separation() -> None:
    token = signer.sign("verify-email", {"u": "usr_1"}, ttl_seconds=60)
    assert signer.unsign("verify-email", token)["u"] == "usr_1"
    with pytest.raises(BadSignature):
        signer.unsign("reset-password", token)
    with pytest.raises(BadSignature):
        Signer(b"other-key" * 4).unsign("verify-email", token)


def test_expired_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    token = signer.sign("verify-email", {"u": "usr_1"}, ttl_seconds=60)
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(BadSignature, match="expired"):
        signer.unsign("verify-email", token)


@given(st.text(max_size=300))
def test_any_text_is_refused_cleanly(text: str) -> None:
    with pytest.raises(BadSignature):
        signer.unsign("verify-email", text)
