"""The README documents every setting the service reads."""

from __future__ import annotations

from pathlib import Path

from leadmarket.config import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_documented() -> None:
    text = README.read_text()
    missing = [
        f"LEADMARKET_{name.upper()}"
        for name in Settings.model_fields
        if f"`LEADMARKET_{name.upper()}`" not in text
    ]
    assert missing == []
