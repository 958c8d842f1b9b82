"""Opaque, time-ordered identifiers (ULID layout: 48-bit milliseconds + 80 random bits, Crockford
base32). Ordered ids make keyset pagination and "newest first" cheap without exposing a counter."""

from __future__ import annotations

import os
import time
from random import getrandbits

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every pair of base32 digits (10 bits): an id is spelled in 13 look-ups instead of 26 shifts
# and appends, which halves the cost of the ids minted on every request.
_PAIRS = [first + second for first in _ALPHABET for second in _ALPHABET]


def new_id(prefix: str) -> str:
    value = (time.time_ns() // 1_000_000 << 80) | int.from_bytes(os.urandom(10))
    p = _PAIRS
    return (
        f"{prefix}_{p[value >> 120]}{p[(value >> 110) & 1023]}{p[(value >> 100) & 1023]}"
        f"{p[(value >> 90) & 1023]}{p[(value >> 80) & 1023]}{p[(value >> 70) & 1023]}"
        f"{p[(value >> 60) & 1023]}{p[(value >> 50) & 1023]}{p[(value >> 40) & 1023]}"
        f"{p[(value >> 30) & 1023]}{p[(value >> 20) & 1023]}{p[(value >> 10) & 1023]}"
        f"{p[value & 1023]}"
    )


_clock = [-1, ""]  # the last millisecond a request id was made in, and its ten digits


def new_request_id() -> str:
    """An id like ``new_id("req")`` (same layout and alphabet) for the id every HTTP request
    gets, at a third of the price: the ten digits of the millisecond are spelled once per
    millisecond, and the 80 random bits come from :func:`random.getrandbits` (seeded from the
    system's entropy at start-up and again in every forked child) instead of a system call.
    A request id only has to tell requests apart in the logs; it guards nothing."""
    ms = time.time_ns() // 1_000_000
    clock = _clock
    if clock[0] != ms:
        p = _PAIRS
        clock[0] = ms
        clock[1] = (
            f"req_{p[ms >> 40]}{p[(ms >> 30) & 1023]}{p[(ms >> 20) & 1023]}"
            f"{p[(ms >> 10) & 1023]}{p[ms & 1023]}"
        )
    r = getrandbits(80)
    p = _PAIRS
    return (
        f"{clock[1]}{p[r >> 70]}{p[(r >> 60) & 1023]}{p[(r >> 50) & 1023]}{p[(r >> 40) & 1023]}"
        f"{p[(r >> 30) & 1023]}{p[(r >> 20) & 1023]}{p[(r >> 10) & 1023]}{p[r & 1023]}"
    )
