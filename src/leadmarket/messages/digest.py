"""The digest of a message's text, on its own so that the retention sweep (which redacts
messages, :mod:`leadmarket.messages.redaction`) can use it without importing the sending
rules and, through them, the order and lead services that import the sweep's deadlines."""

from __future__ import annotations

import hashlib
import unicodedata


def body_digest(text: str) -> str:
    """The same text whatever its case and spacing: a paste with a changed line break or
    capital is still the same paste."""
    folded = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return hashlib.sha256(folded.encode()).hexdigest()
