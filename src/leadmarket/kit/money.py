"""Money as integer cents with an ISO 4217 currency: the currencies the exchange trades in, and
how an amount is written for people. No float ever holds money."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Literal

Currency = Literal["USD", "CAD"]
CURRENCIES: tuple[Currency, ...] = ("USD", "CAD")
DEFAULT_CURRENCY: Currency = "USD"

_SYMBOLS = {"USD": "$", "CAD": "CA$"}


def format_money(cents: int | None, currency: str) -> str:
    """``-1234, "USD"`` → ``−$12.34``; None → an em dash."""
    if cents is None:
        return "—"
    symbol = _SYMBOLS.get(currency, currency + " ")
    sign = "−" if cents < 0 else ""
    return f"{sign}{symbol}{Decimal(abs(cents)) / 100:,.2f}"


_DOLLARS = re.compile(r"^\d{1,9}(?:\.\d{1,2})?$", re.ASCII)


def parse_dollars(text: str) -> tuple[int | None, str | None]:
    """An amount typed in a form ("12.50", "$1,200") as cents, or why it is not one. A blank
    answer is ``(None, None)``: the caller decides whether the field was required."""
    cleaned = text.strip().replace(",", "").removeprefix("$").strip()
    if not cleaned:
        return None, None
    if not _DOLLARS.match(cleaned):
        return None, "Enter an amount in dollars, for example 12.50."
    return int(Decimal(cleaned) * 100), None
