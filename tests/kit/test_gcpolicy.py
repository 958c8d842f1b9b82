"""Garbage collection in a serving process (``kit.gcpolicy``): what it holds is frozen, so
full collections no longer walk it; a cycle frozen while in flight is freed at the next
settle; nothing happens unless the process serves."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from leadmarket.campaigns.matching import MatchingIndex
from leadmarket.kit import gcpolicy
from leadmarket.kit.db import Database


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector can free it


@pytest.fixture
def serving() -> Iterator[None]:
    gcpolicy.enable()
    try:
        yield
    finally:
        gcpolicy.disable()


def test_nothing_is_frozen_unless_the_process_serves() -> None:
    assert not gcpolicy.enabled()
    before = gc.get_freeze_count()
    gcpolicy.settle()
    assert gc.get_freeze_count() == before


def test_a_cycle_frozen_in_flight_is_freed_at_the_next_settle(serving: None) -> None:
    assert gc.get_freeze_count() > 0
    node = Node()
    gone = weakref.ref(node)
    gc.freeze()  # as if a request was in flight at the last freeze
    del node
    gc.collect()
    assert gone() is not None  # frozen: the collector does not see it
    gcpolicy.settle()
    assert gone() is None
    assert gc.get_freeze_count() > 0


async def test_an_index_rebuild_settles(serving: None, db: Database) -> None:
    node = Node()
    gone = weakref.ref(node)
    gc.freeze()
    del node
    await MatchingIndex().current_from(db)  # the first call builds the index
    assert gone() is None
