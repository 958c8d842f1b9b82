"""The verticals (kinds of service a consumer asks for) are data, not code: each is one JSON file
in ``definitions/``, so adding a vertical is adding a file. This module loads and checks those
files, derives the JSON Schema of a lead's ``attributes`` from them, and validates submitted
attributes against them.

A definition names only the vertical's own attributes. The contact block (name, email, phone,
birth date, address) is common to every vertical and handled by the leads package; so is the
consent evidence (IP address, user agent). Both still count towards a vertical's CCPA categories,
because a lead in any vertical carries them (promise P1).

A malformed definition is a programming error, not bad input: loading raises
:class:`DefinitionError` naming the file, so a broken vertical never reaches production quietly."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from leadmarket.kit.errors import FieldError

FIELD_TYPES = ("string", "integer", "number", "boolean")

# The statutory categories of Cal. Civ. Code 1798.140(v)(1), as the CCPA notice (seed 003) names
# them. Keys are stable: privacy reports (P1, P2) and disclosure records store them.
PI_CATEGORIES: dict[str, str] = {
    "identifiers": "Identifiers",
    "personal_records": "Personal information categories listed in Cal. Civ. Code 1798.80(e)",
    "protected_characteristics": "Characteristics of protected classifications",
    "commercial_information": "Commercial information",
    "professional_information": "Professional or employment-related information",
    "internet_activity": "Internet or other similar network activity",
    "geolocation": "Geolocation data",
    "inferences": "Inferences drawn from personal information",
}

# Every lead carries the contact block: name, email, phone and address are identifiers and
# 1798.80(e) records; the birth date gives the age, a protected characteristic. The consent
# evidence (IP address, user agent, page) is network activity.
CONTACT_CATEGORIES = frozenset({"identifiers", "personal_records", "protected_characteristics"})
CONSENT_EVIDENCE_CATEGORIES = frozenset({"internet_activity"})

# A buyer sees a lead's preview before buying it (promise L6). Identifiers would let a buyer
# reach the consumer without paying; protected characteristics invite discrimination in who
# gets offered what. Neither may be previewed, whatever a definition file says.
NEVER_PREVIEWED = frozenset({"identifiers", "protected_characteristics"})

# Names the contact block and consent evidence own. A vertical may not declare them, so that
# contact data can never slip into ``attributes``, which buyers may see before purchase.
RESERVED_FIELD_NAMES = frozenset(
    {
        "first_name", "last_name", "name", "full_name", "email", "phone", "mobile",
        "birth_date", "date_of_birth", "dob", "address", "street", "city", "region", "state",
        "postal_code", "zip", "zip_code", "country", "ip", "ip_address", "user_agent",
        "ssn", "social_security_number", "driver_license", "drivers_license_number",
    }
)  # fmt: skip

SELLER_PLACEHOLDER = "{seller}"
_SLUG = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
# Enum codes may start with a digit ("100k_250k"): they are values, not identifiers.
_ENUM_CODE = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
_MAX_FIELD_NAME = 64
_VERTICAL_KEYS = frozenset({"slug", "name", "description", "consent_text", "fields"})
_FIELD_KEYS = frozenset(
    {
        "name", "label", "type", "required", "enum", "labels", "minimum", "maximum",
        "max_length", "personal", "category", "preview", "help",
    }
)  # fmt: skip
# Control characters (C0, DEL, C1) have no place in a form answer and break logs and CSV
# exports; PostgreSQL refuses NUL outright. Lone surrogates cannot be encoded as UTF-8.
_FORBIDDEN_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# The same rule for JSON Schema consumers (ECMA-262 regex; surrogates cannot occur in the
# UTF-8 text a schema validator sees).
_SCHEMA_CONTROL = r"\u0000-\u001f\u007f-\u009f"
_SCHEMA_NO_CONTROL = rf"^[^{_SCHEMA_CONTROL}]*$"
_SCHEMA_NOT_BLANK = rf"^[^{_SCHEMA_CONTROL}]*[^{_SCHEMA_CONTROL}\s][^{_SCHEMA_CONTROL}]*$"


class DefinitionError(ValueError):
    """A vertical definition file is malformed; the message names the file."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    label: str
    type: str
    required: bool
    enum: tuple[str, ...] | None
    # Excluded from hashing: a dict is unhashable, and ``enum`` already identifies the choices.
    enum_labels: dict[str, str] = dataclasses.field(hash=False)
    minimum: float | None
    maximum: float | None
    max_length: int | None
    personal: bool
    category: str | None
    preview: bool
    help: str | None


@dataclass(frozen=True)
class Vertical:
    slug: str
    name: str
    description: str
    consent_text: str
    fields: tuple[FieldSpec, ...]

    @property
    def pi_categories(self) -> tuple[str, ...]:
        """The CCPA categories a lead in this vertical holds: the contact block's, the consent
        evidence's, and those of the vertical's personal attributes."""
        categories = set(CONTACT_CATEGORIES | CONSENT_EVIDENCE_CATEGORIES)
        categories.update(f.category for f in self.fields if f.personal and f.category)
        return tuple(sorted(categories))

    def consent_text_for(self, seller: str) -> str:
        # str.replace, not str.format: braces in a seller's name must not be interpreted.
        return self.consent_text.replace(SELLER_PLACEHOLDER, seller)

    def field(self, name: str) -> FieldSpec | None:
        for spec in self.fields:
            if spec.name == name:
                return spec
        return None


# --- loading ---------------------------------------------------------------------------------


def _definitions_dir() -> Traversable:
    return resources.files("leadmarket.verticals").joinpath("definitions")


def _fail(source: str, message: str) -> DefinitionError:
    return DefinitionError(f"vertical definition {source}: {message}")


def _text(
    raw: Mapping[str, Any], key: str, source: str, where: str, *, optional: bool = False
) -> str | None:
    value = raw.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(source, f"{where}'{key}' must be non-empty text")
    if _FORBIDDEN_CHARS.search(value):
        raise _fail(source, f"{where}'{key}' contains control characters")
    return value.strip()


def _flag(raw: Mapping[str, Any], key: str, source: str, where: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise _fail(source, f"{where}'{key}' must be true or false")
    return value


def _bound(raw: Mapping[str, Any], key: str, source: str, where: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(source, f"{where}'{key}' must be a finite number")
    return value


def _parse_field(raw: object, source: str, index: int) -> FieldSpec:
    if not isinstance(raw, dict):
        raise _fail(source, f"fields[{index}] must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not _FIELD_NAME.match(name) or len(name) > _MAX_FIELD_NAME:
        raise _fail(source, f"fields[{index}] needs a snake_case 'name'")
    where = f"field '{name}': "
    unknown = set(raw) - _FIELD_KEYS
    if unknown:
        raise _fail(source, f"{where}unknown keys {sorted(unknown)}")
    if name in RESERVED_FIELD_NAMES:
        raise _fail(source, f"{where}the name belongs to the contact block or consent evidence")
    label = _text(raw, "label", source, where)
    help_text = _text(raw, "help", source, where, optional=True)
    type_ = raw.get("type")
    if type_ not in FIELD_TYPES:
        raise _fail(source, f"{where}unknown type {type_!r}; use one of {', '.join(FIELD_TYPES)}")
    assert isinstance(type_, str)
    required = _flag(raw, "required", source, where, default=False)
    personal = _flag(raw, "personal", source, where, default=False)
    preview = _flag(raw, "preview", source, where, default=False)

    enum: tuple[str, ...] | None = None
    enum_labels: dict[str, str] = {}
    if "enum" in raw:
        values = raw["enum"]
        if type_ != "string":
            raise _fail(source, f"{where}'enum' is only for string fields")
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) and _ENUM_CODE.match(v) for v in values)
        ):
            raise _fail(source, f"{where}'enum' must be a non-empty list of snake_case codes")
        if len(set(values)) != len(values):
            raise _fail(source, f"{where}'enum' repeats a value")
        enum = tuple(values)
        labels = raw.get("labels")
        if not isinstance(labels, dict) or set(labels) != set(values):
            raise _fail(source, f"{where}'labels' must give a label for each enum value, no more")
        for value in values:
            enum_labels[value] = _text(labels, value, source, f"{where}labels: ") or value
    elif "labels" in raw:
        raise _fail(source, f"{where}'labels' without 'enum'")

    minimum = _bound(raw, "minimum", source, where)
    maximum = _bound(raw, "maximum", source, where)
    if (minimum is not None or maximum is not None) and type_ not in ("integer", "number"):
        raise _fail(source, f"{where}'minimum'/'maximum' are only for numeric fields")
    if minimum is not None and maximum is not None and minimum > maximum:
        raise _fail(source, f"{where}'minimum' is greater than 'maximum'")

    max_length = raw.get("max_length")
    if max_length is not None:
        if type_ != "string" or enum is not None:
            raise _fail(source, f"{where}'max_length' is only for free-text string fields")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise _fail(source, f"{where}'max_length' must be a positive whole number")
    elif type_ == "string" and enum is None:
        # Unbounded free text would let one lead carry megabytes into every buyer's export.
        raise _fail(source, f"{where}free-text string fields need 'max_length'")

    category = raw.get("category")
    if personal:
        if category not in PI_CATEGORIES:
            raise _fail(
                source,
                f"{where}a personal field needs a 'category', one of {', '.join(PI_CATEGORIES)}",
            )
    elif category is not None:
        raise _fail(source, f"{where}'category' is only for personal fields")
    assert category is None or isinstance(category, str)

    if preview:
        if category in NEVER_PREVIEWED:
            raise _fail(source, f"{where}a {category} field may not appear in a buyer's preview")
        if type_ == "string" and enum is None:
            # Free text can hold anything, a name or phone number included.
            raise _fail(source, f"{where}a free-text field may not appear in a buyer's preview")

    return FieldSpec(
        name=name,
        label=label or name,
        type=type_,
        required=required,
        enum=enum,
        enum_labels=enum_labels,
        minimum=minimum,
        maximum=maximum,
        max_length=max_length,
        personal=personal,
        category=category,
        preview=preview,
        help=help_text,
    )


def parse_vertical(raw: object, source: str) -> Vertical:
    """One vertical from the decoded JSON of its definition file; ``source`` names the file in
    errors."""
    if not isinstance(raw, dict):
        raise _fail(source, "the file must hold one JSON object")
    unknown = set(raw) - _VERTICAL_KEYS
    if unknown:
        raise _fail(source, f"unknown keys {sorted(unknown)}")
    slug = raw.get("slug")
    if not isinstance(slug, str) or not _SLUG.match(slug):
        raise _fail(source, "'slug' must be lowercase words joined by '-'")
    name = _text(raw, "name", source, "")
    description = _text(raw, "description", source, "")
    consent_text = _text(raw, "consent_text", source, "")
    assert consent_text is not None
    if SELLER_PLACEHOLDER not in consent_text:
        raise _fail(source, "'consent_text' must name the seller with the {seller} placeholder")
    if "{" in consent_text.replace(SELLER_PLACEHOLDER, "") or "}" in consent_text.replace(
        SELLER_PLACEHOLDER, ""
    ):
        # A misspelt placeholder ({Seller}) would be shown to consumers verbatim.
        raise _fail(source, "'consent_text' has braces other than the {seller} placeholder")
    raw_fields = raw.get("fields")
    if not isinstance(raw_fields, list):
        raise _fail(source, "'fields' must be a list")
    fields = tuple(_parse_field(item, source, i) for i, item in enumerate(raw_fields))
    seen: set[str] = set()
    for spec in fields:
        if spec.name in seen:
            raise _fail(source, f"field '{spec.name}' is declared twice")
        seen.add(spec.name)
    return Vertical(
        slug=slug,
        name=name or slug,
        description=description or "",
        consent_text=consent_text,
        fields=fields,
    )


def load_verticals(directory: Traversable | None = None) -> list[Vertical]:
    """Every ``*.json`` definition in ``directory`` (the shipped ``definitions/`` by default),
    sorted by slug. Raises :class:`DefinitionError` naming the first bad file."""
    folder = directory if directory is not None else _definitions_dir()
    verticals: dict[str, Vertical] = {}
    entries: Iterable[Traversable] = sorted(folder.iterdir(), key=lambda entry: entry.name)
    for entry in entries:
        if not entry.name.endswith(".json") or not entry.is_file():
            continue
        try:
            raw = json.loads(entry.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise _fail(entry.name, f"not valid JSON ({exc})") from exc
        vertical = parse_vertical(raw, entry.name)
        # One file per vertical, named after it, so the file to edit is obvious.
        if entry.name != f"{vertical.slug}.json":
            raise _fail(entry.name, f"the file must be named {vertical.slug}.json")
        verticals[vertical.slug] = vertical
    return [verticals[slug] for slug in sorted(verticals)]


@cache
def _shipped() -> tuple[tuple[Vertical, ...], dict[str, Vertical]]:
    verticals = tuple(load_verticals())
    return verticals, {v.slug: v for v in verticals}


def all_verticals() -> list[Vertical]:
    """The shipped verticals, loaded once, sorted by slug."""
    return list(_shipped()[0])


def get_vertical(slug: str) -> Vertical | None:
    return _shipped()[1].get(slug)


# --- JSON Schema -----------------------------------------------------------------------------


def _field_schema(spec: FieldSpec) -> dict[str, Any]:
    schema: dict[str, Any] = {"title": spec.label, "type": spec.type}
    if spec.help:
        schema["description"] = spec.help
    if spec.enum is not None:
        schema["enum"] = list(spec.enum)
        # Annotation keywords (ignored by validators, allowed by draft 2020-12) so that a form
        # builder can show labels and a privacy report can name the category.
        schema["x-enum-labels"] = dict(spec.enum_labels)
    elif spec.type == "string":
        schema["pattern"] = _SCHEMA_NOT_BLANK if spec.required else _SCHEMA_NO_CONTROL
        if spec.max_length is not None:
            schema["maxLength"] = spec.max_length
    if spec.minimum is not None:
        schema["minimum"] = spec.minimum
    if spec.maximum is not None:
        schema["maximum"] = spec.maximum
    schema["x-personal"] = spec.personal
    if spec.category is not None:
        schema["x-pi-category"] = spec.category
    schema["x-preview"] = spec.preview
    return schema


def attributes_schema(vertical: Vertical) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a lead's ``attributes`` in this vertical.

    :func:`validate_attributes` is the authority and is slightly stricter in two places a JSON
    Schema cannot express: an ``integer`` must be a JSON integer (``2019.0`` is refused), and
    free text is stripped before its length is checked."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{vertical.name} attributes",
        "type": "object",
        "properties": {spec.name: _field_schema(spec) for spec in vertical.fields},
        "required": [spec.name for spec in vertical.fields if spec.required],
        "additionalProperties": False,
    }


# --- validation ------------------------------------------------------------------------------


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _check_value(spec: FieldSpec, value: object) -> tuple[object, str | None]:
    """The cleaned value, or an error message. Messages never quote the value: it may be
    personal data, and it travels back in responses and logs."""
    if spec.type == "boolean":
        if not isinstance(value, bool):
            return None, "Must be true or false."
        return value, None
    if spec.type == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return None, "Must be a whole number, written without a decimal point."
        return _check_bounds(spec, value)
    if spec.type == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, "Must be a number."
        if isinstance(value, float) and not math.isfinite(value):
            return None, "Must be a finite number."
        return _check_bounds(spec, value)
    if not isinstance(value, str):
        return None, "Must be text."
    if spec.enum is not None:
        # Codes are compared exactly: they are machine values, and the schema says the same.
        if value not in spec.enum:
            return None, f"Must be one of: {', '.join(spec.enum)}."
        return value, None
    if _FORBIDDEN_CHARS.search(value):
        return None, "Must not contain control characters."
    text = value.strip()
    if spec.max_length is not None and len(text) > spec.max_length:
        return None, f"Must be at most {spec.max_length} characters."
    return text, None


def _check_bounds(spec: FieldSpec, value: float) -> tuple[object, str | None]:
    if spec.minimum is not None and value < spec.minimum:
        return None, f"Must be at least {_number_text(spec.minimum)}."
    if spec.maximum is not None and value > spec.maximum:
        return None, f"Must be at most {_number_text(spec.maximum)}."
    return value, None


def validate_attributes(
    vertical: Vertical, data: object, *, preview_only: bool = False
) -> tuple[dict[str, Any], list[FieldError]]:
    """Check a lead's ``attributes`` against the vertical. Returns the cleaned attributes (only
    declared keys, free text stripped, blank optional text left out) and the errors, each named
    ``attributes.<field>``; the cleaned dict is only meaningful when there are no errors.

    ``preview_only``: the attributes of a ping, which buyers (and their own endpoints) see
    before buying: only the preview attributes, the required ones required; any other attribute
    is refused, as it may be sent only with the lead itself (L6)."""
    if not isinstance(data, dict):
        return {}, [FieldError("attributes", "Must be an object of this vertical's attributes.")]
    cleaned: dict[str, Any] = {}
    errors: list[FieldError] = []
    for spec in vertical.fields:
        if preview_only and not spec.preview:
            if spec.name in data:
                errors.append(
                    FieldError(
                        f"attributes.{spec.name}",
                        "Not part of a ping: buyers see a ping before buying, so this answer "
                        "is sent with the post.",
                    )
                )
            continue
        if spec.name not in data:
            if spec.required:
                errors.append(FieldError(f"attributes.{spec.name}", "This field is required."))
            continue
        value, message = _check_value(spec, data[spec.name])
        if message is not None:
            errors.append(FieldError(f"attributes.{spec.name}", message))
        elif value == "" and spec.type == "string":
            # Blank text carries no answer: a form's empty optional box is simply left out.
            if spec.required:
                errors.append(FieldError(f"attributes.{spec.name}", "This field is required."))
        else:
            cleaned[spec.name] = value
    declared = {spec.name for spec in vertical.fields}
    unnamed_unknown = False
    for key in data:
        if key in declared:
            continue
        if isinstance(key, str) and _FIELD_NAME.match(key) and len(key) <= _MAX_FIELD_NAME:
            errors.append(FieldError(f"attributes.{key}", "This vertical has no such attribute."))
        else:
            # A key that is not a plausible field name could be anything, personal data
            # included, so it is not repeated back.
            unnamed_unknown = True
    if unnamed_unknown:
        errors.append(
            FieldError("attributes", "Holds attribute names this vertical does not have.")
        )
    return cleaned, errors
