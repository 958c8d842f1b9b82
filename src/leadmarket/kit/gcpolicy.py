"""Cyclic garbage collection in a serving process.

CPython's full collection walks every object the collector tracks. A served process holds
many long-lived ones (the application, the models, and above all the matching index: tens of
thousands of objects for 10,000 campaigns), so under load each full collection stopped the
event loop for about 100 ms, every few seconds: the ping benchmark's p99 was 118 ms while its
p95 was 17 ms, and 18 ms with the collector off.

So a serving process freezes what it holds once it is built (``gc.freeze``: the collector
no longer walks those objects; reference counting still frees them), and again whenever the
matching index is replaced. Objects frozen while they were only in flight (a request's frames
and tasks) are cyclic garbage the collector can no longer see once that request ends; to keep
that bounded, each refreeze first unfreezes and runs one full collection, which also frees the
old index. One pause per index rebuild (a rebuild already takes most of a second of compiling)
instead of one every few seconds.

Only ``leadmarket serve`` turns this on (:func:`enable`): tests and commands build and drop
applications by the hundred, and frozen objects would only pile up there."""

from __future__ import annotations

import gc

_enabled = False


def enable() -> None:
    """Freeze what the process holds now, and refreeze after each :func:`settle`."""
    global _enabled
    _enabled = True
    gc.collect()
    gc.freeze()


def disable() -> None:
    global _enabled
    _enabled = False
    gc.unfreeze()


def enabled() -> bool:
    return _enabled


def settle() -> None:
    """A long-lived structure was just replaced: collect what the frozen objects left behind,
    then freeze what lives now. Does nothing unless :func:`enable` was called."""
    if not _enabled:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
