"""Verticals: the kinds of service a consumer can ask for, each defined by one JSON file."""

from leadmarket.verticals.registry import (
    PI_CATEGORIES,
    DefinitionError,
    FieldSpec,
    Vertical,
    all_verticals,
    attributes_schema,
    get_vertical,
    load_verticals,
    validate_attributes,
)

__all__ = [
    "PI_CATEGORIES",
    "DefinitionError",
    "FieldSpec",
    "Vertical",
    "all_verticals",
    "attributes_schema",
    "get_vertical",
    "load_verticals",
    "validate_attributes",
]
