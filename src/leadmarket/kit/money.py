"""Money as people read and type it: integer cents in, "$12.50" out, and "12.50" typed into a
form back to cents. Amounts are never floats."""

from __future__ import annotations

import re
from decimal import Decimal

_DOLLARS = re.compile(r"^\d{1,9}(?:\.\d{1,2})?$", re.ASCII)
_SYMBOLS = {"USD": "$", "CAD": "CA$"}


def format_cents(cents: int | None, currency: str) -> str:
    """``1250, "USD"`` → ``$12.50``; no amount → an em dash."""
    if cents is None:
        return "—"
    symbol = _SYMBOLS.get(currency, currency + " ")
    return f"{symbol}{Decimal(cents) / 100:,.2f}"


def parse_dollars(text: str) -> tuple[int | None, str | None]:
    """An amount typed in dollars ("12.50", "$1,200") as cents, or why it is not one; blank
    text is no amount and no error."""
    cleaned = text.strip().replace(",", "").removeprefix("$").strip()
    if not cleaned:
        return None, None
    if not _DOLLARS.match(cleaned):
        return None, "Enter an amount in dollars, for example 12.50."
    return int(Decimal(cleaned) * 100), None
