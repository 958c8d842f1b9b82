"""JSON text from an encoder built once (infrastructure for hot paths)."""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any


def json_dumper(
    *, sort_keys: bool = False, separators: tuple[str, str] = (", ", ": ")
) -> Callable[[Any], str]:
    """A function giving ``json.dumps(value, sort_keys=…, separators=…)``'s text, for hot paths
    that encode many small values (a ping's fingerprint and columns). ``json.dumps`` and
    ``JSONEncoder.encode`` build a new C encoder on every call, which costs more than encoding
    a small value; this one is built once. No circular check: only for values that cannot be
    circular (parsed from a request, or built from such)."""
    reference = json.JSONEncoder(sort_keys=sort_keys, separators=separators)
    make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_encoder is None:  # a Python without the C accelerator
        return reference.encode
    encoder = make_encoder(
        None,  # no markers: no circular check, for values that cannot be circular
        reference.default,
        json.encoder.encode_basestring_ascii,
        None,
        separators[1],
        separators[0],
        sort_keys,
        False,
        True,
    )
    join = "".join

    def encode(value: Any) -> str:
        return join(encoder(value, 0))

    return encode
