"""Opaque, time-ordered identifiers (ULID layout: 48-bit milliseconds + 80 random bits, Crockford
base32). Ordered ids make keyset pagination and "newest first" cheap without exposing a counter."""

from __future__ import annotations

import os
import time
from collections import deque
from random import getrandbits

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every pair of base32 digits (10 bits): an id is spelled in 13 look-ups instead of 26 shifts
# and appends, which halves the cost of the ids minted on every request.
_PAIRS = [first + second for first in _ALPHABET for second in _ALPHABET]


# The 80 random bits of new ids, drawn from the system's CSPRNG a few hundred ids at a time:
# one os.urandom call per id was half the cost of an id. The pool is a deque (popleft and extend
# are atomic, so two threads never get the same bits) and a forked child empties its copy, so
# it never hands out the bits its parent will hand out too. Same source, same unpredictability:
# ids such as a ping's are shown to their owner only and must not let anyone guess another's.
_IDS_PER_DRAW = 256
_random_pool: deque[int] = deque()
os.register_at_fork(after_in_child=_random_pool.clear)
# The last millisecond an id was made in, and its ten digits (one tuple, replaced whole).
_id_clock: list[tuple[int, str]] = [(-1, "")]


def _random_bits() -> int:
    try:
        return _random_pool.popleft()
    except IndexError:
        drawn = os.urandom(10 * _IDS_PER_DRAW)
        _random_pool.extend([int.from_bytes(drawn[i : i + 10]) for i in range(10, len(drawn), 10)])
        return int.from_bytes(drawn[:10])


def new_id(prefix: str) -> str:
    ms = time.time_ns() // 1_000_000
    p = _PAIRS
    clock = _id_clock[0]
    if clock[0] != ms:
        clock = (
            ms,
            f"{p[ms >> 40]}{p[(ms >> 30) & 1023]}{p[(ms >> 20) & 1023]}"
            f"{p[(ms >> 10) & 1023]}{p[ms & 1023]}",
        )
        _id_clock[0] = clock
    r = _random_bits()
    return (
        f"{prefix}_{clock[1]}{p[r >> 70]}{p[(r >> 60) & 1023]}{p[(r >> 50) & 1023]}"
        f"{p[(r >> 40) & 1023]}{p[(r >> 30) & 1023]}{p[(r >> 20) & 1023]}"
        f"{p[(r >> 10) & 1023]}{p[r & 1023]}"
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
