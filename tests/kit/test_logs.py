"""The log formatters mask each value on their own: the same masks as masking the whole line."""

from __future__ import annotations

import json
import logging
import random

import pytest

from leadmarket.kit.logs import JsonFormatter, TextFormatter, mask_personal_data


class _Thing:
    def __str__(self) -> str:
        return "owner ana@example.com"


def _record(message: str, **extra: object) -> logging.LogRecord:
    return logging.getLogger("t").makeRecord(
        "t", logging.INFO, "f", 1, message, (), None, extra=extra
    )


def test_every_kind_of_value_is_masked() -> None:
    record = _record(
        "call +1 415 555 0123",
        who="ana@example.com",
        thing=_Thing(),
        nested={"phone": "(415) 555-0123"},
        status=200,
        ratio=0.5,
        ok=True,
        none=None,
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["event"] == "call [phone]"
    assert entry["who"] == "[email]" and entry["thing"] == "owner [email]"
    assert entry["nested"] == {"phone": "[phone]"}
    assert (entry["status"], entry["ratio"], entry["ok"], entry["none"]) == (200, 0.5, True, None)
    text = TextFormatter().format(record)
    assert "ana@" not in text and "555" not in text and "status=200" in text


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_masking_value_by_value_masks_what_masking_the_line_did(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "0123456789      ()+-.ax@_'"
    for _ in range(3000):
        values = {
            f"k{n}": "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
            for n in range(3)
        }
        message = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        record = _record(message, **values, count=rng.randint(0, 10**12))
        line = JsonFormatter().format(record)
        entry = json.loads(line)
        whole = mask_personal_data(json.dumps(entry | {"event": message, **values}))
        assert line == whole, (message, values)
