"""Opaque, time-ordered identifiers (ULID layout: 48-bit milliseconds + 80 random bits, Crockford
base32). Ordered ids make keyset pagination and "newest first" cheap without exposing a counter."""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str) -> str:
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"
