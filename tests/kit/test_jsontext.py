"""kit.jsontext: an encoder built once writes exactly what json.dumps writes."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from leadmarket.kit.jsontext import json_dumper

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_COMPACT = json_dumper(sort_keys=True, separators=(",", ":"))
_DEFAULT = json_dumper()


@given(_VALUES)
def test_the_text_is_json_dumps_text(value: Any) -> None:
    assert _COMPACT(value) == json.dumps(value, sort_keys=True, separators=(",", ":"))
    assert _DEFAULT(value) == json.dumps(value)
