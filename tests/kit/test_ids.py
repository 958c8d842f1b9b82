"""Identifiers: ULID layout spelled in Crockford base32, ordered by time."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from leadmarket.kit import ids

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _spelled(value: int) -> str:
    """The reference spelling: 26 digits of 5 bits, most significant first."""
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


@pytest.mark.parametrize("random_bytes", [bytes(10), b"\xff" * 10, bytes(range(1, 11))])
def test_an_id_is_the_time_and_random_bits_in_crockford_base32(
    monkeypatch: pytest.MonkeyPatch, random_bytes: bytes
) -> None:
    millis = 1_795_000_000_123
    monkeypatch.setattr(ids.time, "time_ns", lambda: millis * 1_000_000 + 999_999)
    monkeypatch.setattr(ids.os, "urandom", lambda n: random_bytes[:n])
    ids._random_pool.clear()  # bits drawn before the patch would come first
    value = (millis << 80) | int.from_bytes(random_bytes)
    assert ids.new_id("lead") == "lead_" + _spelled(value)


def test_ids_are_unique_and_ordered_by_time() -> None:
    assert ids.time is time and ids.os is os  # the test above patched the real modules
    first = ids.new_id("x")
    time.sleep(0.002)
    later = [ids.new_id("x") for _ in range(1000)]
    assert len(set(later)) == 1000
    assert all(first < i for i in later)
    assert all(len(i) == 28 and set(i[2:]) <= set(_CROCKFORD) for i in later)


def test_ids_are_unique_across_threads_and_forked_children() -> None:
    """The random bits are drawn a few hundred ids at a time: no two threads may get the same
    bits, and a forked child must not hand out the bits its parent still holds."""
    ids.new_id("x")  # the pool now holds bits the parent will use
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        os.close(reading)
        os.write(writing, "\n".join(ids.new_id("x") for _ in range(100)).encode())
        os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as pipe:
        in_child = set(pipe.read().split("\n"))
    os.waitpid(child, 0)
    with ThreadPoolExecutor(4) as pool:
        in_threads = [i for batch in pool.map(_ids, range(8)) for i in batch]
    in_parent = {ids.new_id("x") for _ in range(100)} | set(in_threads)
    assert len(in_child) == 100 and len(in_threads) == len(set(in_threads)) == 8 * 500
    assert not in_child & in_parent, "a forked child repeated its parent's random bits"
    assert {i[12:] for i in in_child}.isdisjoint({i[12:] for i in in_parent})


def _ids(_: int) -> list[str]:
    return [ids.new_id("x") for _ in range(500)]


def test_a_request_id_is_spelled_like_any_other_id(monkeypatch: pytest.MonkeyPatch) -> None:
    millis = 1_795_000_000_123
    bits = 0xFEDCBA9876543210ABCD
    monkeypatch.setattr(ids.time, "time_ns", lambda: millis * 1_000_000 + 5)
    monkeypatch.setattr(ids, "getrandbits", lambda n: bits if n == 80 else 0)
    assert ids.new_request_id() == "req_" + _spelled((millis << 80) | bits)
    # The spelled millisecond is kept: the next millisecond spells its own.
    monkeypatch.setattr(ids.time, "time_ns", lambda: (millis + 1) * 1_000_000)
    assert ids.new_request_id() == "req_" + _spelled(((millis + 1) << 80) | bits)


def test_request_ids_are_unique_and_ordered_by_millisecond() -> None:
    first = ids.new_request_id()
    time.sleep(0.002)
    later = [ids.new_request_id() for _ in range(1000)]
    assert len(set(later)) == 1000 and all(first < i for i in later)
    assert all(len(i) == 30 and set(i[4:]) <= set(_CROCKFORD) for i in later)
