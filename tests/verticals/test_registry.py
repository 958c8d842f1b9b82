"""Verticals are data (promise L1): every shipped definition loads, describes its attributes with
a valid JSON Schema that agrees with the server's own validation, keeps identifying and protected
data out of buyers' previews (L6), declares its CCPA categories (P1), and a malformed definition
stops the service from starting instead of misbehaving quietly.

The schema checks use ``jsonschema_rs`` (installed with schemathesis), a draft 2020-12
validator independent of the code under test."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leadmarket.kit.errors import FieldError
from leadmarket.verticals import registry
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

REQUIRED_SLUGS = {
    "auto-insurance",
    "life-insurance",
    "home-insurance",
    "health-insurance",
    "mortgage",
    "personal-loan",
    "home-services",
}
VERTICALS = all_verticals()
SLUGS = [v.slug for v in VERTICALS]

# A realistic request per vertical, as a seller's form would send it.
REALISTIC: dict[str, dict[str, Any]] = {
    "auto-insurance": {
        "vehicle_year": 2019,
        "vehicle_make": "toyota",
        "vehicle_model": "Camry",
        "current_insurer": "geico",
        "coverage_wanted": "full",
        "driving_record": "minor_violations",
        "gender": "female",
        "marital_status": "married",
    },
    "life-insurance": {
        "coverage_amount": 500000,
        "policy_type": "term",
        "term_length": "20_years",
        "smoker": False,
        "health_class": "good",
    },
    "home-insurance": {
        "property_type": "single_family",
        "ownership": "owner",
        "year_built": 1978,
        "property_value": "300k_500k",
        "contents_value": "50k_100k",
        "claims_last_5_years": 0,
    },
    "health-insurance": {
        "household_size": 3,
        "income_band": "50k_75k",
        "current_coverage": "none",
        "plan_type": "family",
        "smoker": False,
    },
    "mortgage": {
        "loan_purpose": "refinance",
        "loan_amount": "200k_300k",
        "property_value": "300k_500k",
        "credit_band": "good",
        "employment_status": "self_employed",
        "veteran": True,
    },
    "personal-loan": {
        "loan_amount": 12000,
        "loan_purpose": "debt_consolidation",
        "credit_band": "fair",
        "employment_status": "employed",
        "annual_income": 58250.5,
    },
    "home-services": {
        "service_type": "roofing",
        "project_timeframe": "within_1_month",
        "homeowner": True,
        "property_type": "townhouse",
        "project_description": "Replace a leaking flat roof over the garage.",
    },
}

# Submitted text that must never come back in an error message.
MARKER = "zq-marker-7731"


def validator_for(vertical: Vertical) -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator(attributes_schema(vertical))


def assert_agree(vertical: Vertical, data: Any) -> list[FieldError]:
    """The published schema and the server's validation give the same verdict."""
    _, errors = validate_attributes(vertical, data)
    assert validator_for(vertical).is_valid(data) == (not errors), (data, errors)
    return errors


def test_the_required_verticals_ship_sorted_by_slug() -> None:
    assert set(SLUGS) >= REQUIRED_SLUGS
    assert sorted(SLUGS) == SLUGS
    assert set(REALISTIC) == set(SLUGS), "give every shipped vertical a realistic example"
    for vertical in VERTICALS:
        assert get_vertical(vertical.slug) is vertical
        assert vertical.description.endswith(".")
        assert vertical.fields
    assert get_vertical("no-such-vertical") is None


def test_the_seed_attributes_are_all_collected_somewhere() -> None:
    """L1 names what the forms ask by vertical; each must exist in at least one vertical."""
    names = {f.name for v in VERTICALS for f in v.fields}
    wanted = {
        "gender", "smoker", "driving_record", "loan_amount", "contents_value",
        "marital_status", "employment_status", "veteran",
    }  # fmt: skip
    assert wanted <= names


@pytest.mark.parametrize("slug", SLUGS)
def test_schema_is_valid_json_schema(slug: str) -> None:
    schema = attributes_schema(_vertical(slug))
    jsonschema_rs.meta.validate(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {f.name for f in _vertical(slug).fields}
    for spec in _vertical(slug).fields:
        prop = schema["properties"][spec.name]
        assert prop["title"] == spec.label
        assert (spec.name in schema["required"]) == spec.required
        if spec.enum is not None:
            assert prop["enum"] == list(spec.enum)
    # The schema is served as JSON, so it must survive a round trip unchanged.
    assert json.loads(json.dumps(schema)) == schema


@pytest.mark.parametrize("slug", SLUGS)
def test_a_realistic_request_is_accepted_and_cleaned(slug: str) -> None:
    vertical = _vertical(slug)
    data = REALISTIC[slug]
    cleaned, errors = validate_attributes(vertical, data)
    assert errors == []
    assert cleaned == data
    assert validator_for(vertical).is_valid(data)
    # The smallest valid request: only the required fields.
    minimal = {k: v for k, v in data.items() if _field(vertical, k).required}
    assert assert_agree(vertical, minimal) == []


def _bad_values(spec: FieldSpec) -> list[Any]:
    """Values the field must refuse, whatever the vertical."""
    bad: list[Any] = [None, [], {"nested": 1}]
    if spec.type == "boolean":
        bad += [1, 0, "true", "yes"]
    elif spec.type in ("integer", "number"):
        bad += [True, False, "12", MARKER]
        if spec.type == "integer":
            bad.append(1.5)
        if spec.minimum is not None:
            bad.append(int(spec.minimum) - 1)
        if spec.maximum is not None:
            bad.append(int(spec.maximum) + 1)
    elif spec.enum is not None:
        bad += [MARKER, spec.enum[0].upper(), f" {spec.enum[0]}", 1, True]
    else:
        bad += [1, True, f"{MARKER}\x00", f"{MARKER}\x07bell", f"{MARKER}\u0085"]
        assert spec.max_length is not None
        bad.append(MARKER + "x" * spec.max_length)
    return bad


def _cases() -> list[tuple[str, str, Any]]:
    return [(v.slug, f.name, bad) for v in VERTICALS for f in v.fields for bad in _bad_values(f)]


@pytest.mark.parametrize(("slug", "name", "bad"), _cases())
def test_a_bad_value_is_refused_by_schema_and_server_alike(slug: str, name: str, bad: Any) -> None:
    vertical = _vertical(slug)
    data = copy.deepcopy(REALISTIC[slug])
    data[name] = bad
    errors = assert_agree(vertical, data)
    assert errors, (name, bad)
    assert [e.field for e in errors] == [f"attributes.{name}"]
    assert MARKER not in errors[0].message


@pytest.mark.parametrize("slug", SLUGS)
def test_missing_required_and_unknown_fields(slug: str) -> None:
    vertical = _vertical(slug)
    for spec in vertical.fields:
        data = {k: v for k, v in REALISTIC[slug].items() if k != spec.name}
        errors = assert_agree(vertical, data)
        if spec.required:
            assert errors == [FieldError(f"attributes.{spec.name}", "This field is required.")]
        else:
            assert errors == []
    errors = assert_agree(vertical, {**REALISTIC[slug], "shoe_size": 9})
    assert errors == [FieldError("attributes.shoe_size", "This vertical has no such attribute.")]
    # A key that is not a field name may be anything (an email, a name): it is not echoed.
    errors = assert_agree(vertical, {**REALISTIC[slug], f"{MARKER}@example.com": 1})
    assert [e.field for e in errors] == ["attributes"]
    assert MARKER not in errors[0].message


@pytest.mark.parametrize("data", [None, [], "text", 3, True, [{"vehicle_year": 2019}]])
def test_attributes_must_be_an_object(data: Any) -> None:
    vertical = _vertical("auto-insurance")
    cleaned, errors = validate_attributes(vertical, data)
    assert cleaned == {}
    assert [e.field for e in errors] == ["attributes"]
    assert not validator_for(vertical).is_valid(data)


def test_types_are_strict() -> None:
    auto = _vertical("auto-insurance")
    loan = _vertical("personal-loan")
    base = REALISTIC["auto-insurance"]
    # A whole float is still not an integer to the server (JSON Schema would allow it).
    for year in (2019.0, True, "2019"):
        _, errors = validate_attributes(auto, {**base, "vehicle_year": year})
        assert [e.field for e in errors] == ["attributes.vehicle_year"]
    income = REALISTIC["personal-loan"]
    for good in (58000, 58000.75):
        assert validate_attributes(loan, {**income, "annual_income": good})[1] == []
    for bad in (math.nan, math.inf, -math.inf, True):
        _, errors = validate_attributes(loan, {**income, "annual_income": bad})
        assert [e.field for e in errors] == ["attributes.annual_income"]
    _, errors = validate_attributes(loan, {**income, "annual_income": math.inf})
    assert errors[0].message == "Must be a finite number."


def test_bounds_and_messages() -> None:
    auto = _vertical("auto-insurance")
    base = REALISTIC["auto-insurance"]
    assert validate_attributes(auto, {**base, "vehicle_year": 1981})[1] == []
    assert validate_attributes(auto, {**base, "vehicle_year": 1980})[1] == [
        FieldError("attributes.vehicle_year", "Must be at least 1981.")
    ]
    assert validate_attributes(auto, {**base, "vehicle_year": 10**40})[1] == [
        FieldError("attributes.vehicle_year", "Must be at most 2028.")
    ]
    _, errors = validate_attributes(auto, {**base, "driving_record": "speeding"})
    assert errors == [
        FieldError(
            "attributes.driving_record",
            "Must be one of: clean, minor_violations, major_violations, dui.",
        )
    ]


def test_free_text_is_stripped_and_blank_optional_text_left_out() -> None:
    services = _vertical("home-services")
    base = REALISTIC["home-services"]
    cleaned, errors = validate_attributes(services, {**base, "project_description": "  Roof \n"})
    assert errors == [
        FieldError("attributes.project_description", "Must not contain control characters.")
    ]
    cleaned, errors = validate_attributes(services, {**base, "project_description": "  Roof  "})
    assert (cleaned["project_description"], errors) == ("Roof", [])
    # Length is measured after stripping: padding a form adds is not held against the consumer.
    padded = " " * 10 + "x" * 500 + " " * 10
    cleaned, errors = validate_attributes(services, {**base, "project_description": padded})
    assert (len(cleaned["project_description"]), errors) == (500, [])
    cleaned, errors = validate_attributes(services, {**base, "project_description": "   "})
    assert errors == []
    assert "project_description" not in cleaned
    assert validator_for(services).is_valid({**base, "project_description": "   "})


def test_a_blank_required_text_field_is_missing() -> None:
    raw = _definition(fields=[_text_field(required=True)])
    vertical = registry.parse_vertical(raw, "pets.json")
    for blank in ("", "   ", "\u3000"):
        errors = assert_agree(vertical, {"pet_name": blank})
        assert errors == [FieldError("attributes.pet_name", "This field is required.")]
    assert assert_agree(vertical, {"pet_name": " Rex "}) == []


# --- privacy properties of the shipped definitions ------------------------------------------


@pytest.mark.parametrize("slug", SLUGS)
def test_previews_hold_nothing_identifying_or_protected(slug: str) -> None:
    vertical = _vertical(slug)
    previewed = [f for f in vertical.fields if f.preview]
    assert previewed, "buyers need some facts to price a lead"
    for spec in previewed:
        assert spec.category not in ("identifiers", "protected_characteristics"), spec.name
        # Free text could hold a name or phone number.
        assert spec.type != "string" or spec.enum is not None, spec.name
    for spec in vertical.fields:
        if spec.name in ("gender", "marital_status", "veteran"):
            assert (spec.category, spec.preview) == ("protected_characteristics", False)
        assert spec.personal == (spec.category is not None)
        assert spec.category is None or spec.category in PI_CATEGORIES
        assert spec.name not in registry.RESERVED_FIELD_NAMES


@pytest.mark.parametrize("slug", SLUGS)
def test_pi_categories_cover_contact_consent_and_fields(slug: str) -> None:
    vertical = _vertical(slug)
    categories = vertical.pi_categories
    assert list(categories) == sorted(set(categories))
    assert set(categories) <= set(PI_CATEGORIES)
    assert {"identifiers", "personal_records", "protected_characteristics"} <= set(categories)
    assert "internet_activity" in categories
    assert {f.category for f in vertical.fields if f.personal} <= set(categories)


def test_employment_status_counts_as_professional_information() -> None:
    """Seed 003 files employment status under "Professional or employment-related
    information"."""
    for slug in ("mortgage", "personal-loan"):
        assert "professional_information" in _vertical(slug).pi_categories
    assert "professional_information" not in _vertical("auto-insurance").pi_categories


@pytest.mark.parametrize("slug", SLUGS)
def test_consent_text_names_the_seller_and_the_terms(slug: str) -> None:
    vertical = _vertical(slug)
    text = vertical.consent_text_for("Quote{Hound} & Co")
    assert "Quote{Hound} & Co" in text
    assert "{seller}" not in text
    lowered = text.lower()
    for needle in (
        "leadmarket",
        "phone",
        "text message",
        "email",
        "not a condition of any purchase",
        "withdraw",
        "stop",
        "unsubscribe",
    ):
        assert needle in lowered, needle
    assert vertical.name.lower().split()[0] in lowered


# --- malformed definitions fail loudly ------------------------------------------------------


def _text_field(*, required: bool = False) -> dict[str, Any]:
    return {
        "name": "pet_name",
        "label": "Pet's name",
        "type": "string",
        "required": required,
        "max_length": 40,
        "personal": False,
        "preview": False,
    }


def _definition(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "slug": "pets",
        "name": "Pet insurance",
        "description": "Insurance for cats and dogs.",
        "consent_text": "I agree that {seller} and Leadmarket buyers may contact me.",
        "fields": [
            {
                "name": "species",
                "label": "Species",
                "type": "string",
                "required": True,
                "enum": ["cat", "dog"],
                "labels": {"cat": "Cat", "dog": "Dog"},
                "personal": True,
                "category": "commercial_information",
                "preview": True,
            },
            {
                "name": "owner_age_band",
                "label": "Your age",
                "type": "string",
                "enum": ["under_40", "40_plus"],
                "labels": {"under_40": "Under 40", "40_plus": "40 or older"},
                "personal": True,
                "category": "protected_characteristics",
                "preview": False,
            },
            {"name": "pet_age", "label": "Pet's age", "type": "integer", "minimum": 0,
             "maximum": 40},
        ],
    }  # fmt: skip
    raw.update(overrides)
    return raw


def _write(directory: Path, raw: Any, name: str = "pets.json") -> Path:
    path = directory / name
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw), encoding="utf-8")
    return path


def test_adding_a_vertical_is_adding_a_file(tmp_path: Path) -> None:
    _write(tmp_path, _definition())
    (tmp_path / "README.txt").write_text("not a definition")
    [vertical] = load_verticals(tmp_path)
    assert vertical.slug == "pets"
    assert [f.name for f in vertical.fields] == ["species", "owner_age_band", "pet_age"]
    assert vertical.field("pet_age") == FieldSpec(
        name="pet_age",
        label="Pet's age",
        type="integer",
        required=False,
        enum=None,
        enum_labels={},
        minimum=0,
        maximum=40,
        max_length=None,
        personal=False,
        category=None,
        preview=False,
        help=None,
    )
    assert vertical.field("nope") is None
    assert vertical.pi_categories == (
        "commercial_information",
        "identifiers",
        "internet_activity",
        "personal_records",
        "protected_characteristics",
    )
    assert validate_attributes(vertical, {"species": "cat", "pet_age": 3}) == (
        {"species": "cat", "pet_age": 3},
        [],
    )


def _field_change(index: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    """A change to one field; a value of DELETE removes the key."""

    def apply(raw: dict[str, Any]) -> None:
        raw["fields"][index].update(changes)

    return apply


DELETE = object()

MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "unknown type": (_field_change(2, type="date"), "unknown type 'date'"),
    "personal field without category": (
        _field_change(0, category=DELETE),
        "a personal field needs a 'category'",
    ),
    "unknown category": (_field_change(0, category="health"), "needs a 'category'"),
    "preview of a protected characteristic": (
        _field_change(1, preview=True),
        "protected_characteristics field may not appear in a buyer's preview",
    ),
    "preview of free text": (
        lambda raw: raw["fields"].append({**_text_field(), "preview": True}),
        "free-text field may not appear",
    ),
    "duplicate field names": (
        lambda raw: raw["fields"].append(dict(raw["fields"][0])),
        "field 'species' is declared twice",
    ),
    "consent text without {seller}": (
        lambda raw: raw.update(consent_text="I agree that buyers may contact me."),
        "{seller} placeholder",
    ),
    "misspelt placeholder": (
        lambda raw: raw.update(consent_text="I agree that {seller} and {Buyer} may call."),
        "braces other than",
    ),
    "unknown key (typo)": (_field_change(2, requried=True), "unknown keys ['requried']"),
    "contact field in attributes": (_field_change(2, name="email"), "contact block"),
    "enum without labels": (_field_change(0, labels=DELETE), "'labels' must give a label"),
    "enum on a number": (_field_change(2, enum=["1"]), "'enum' is only for string fields"),
    "free text without max_length": (
        lambda raw: raw["fields"].append({**_text_field(), "max_length": DELETE}),
        "need 'max_length'",
    ),
    "minimum above maximum": (_field_change(2, minimum=50), "greater than 'maximum'"),
    "required is not a boolean": (_field_change(2, required="yes"), "'required' must be true"),
    "fields is not a list": (lambda raw: raw.update(fields={}), "'fields' must be a list"),
    "slug does not match the file": (lambda raw: raw.update(slug="cats"), "named cats.json"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_definition_fails_loudly_naming_its_file(tmp_path: Path, case: str) -> None:
    mutate, expected = MALFORMED[case]
    raw = copy.deepcopy(_definition())
    mutate(raw)
    for spec in raw["fields"]:
        for key in [k for k, v in spec.items() if v is DELETE]:
            del spec[key]
    _write(tmp_path, _definition(slug="birds"), "birds.json")
    _write(tmp_path, raw)
    with pytest.raises(DefinitionError) as caught:
        load_verticals(tmp_path)
    assert "pets.json" in str(caught.value)
    assert expected in str(caught.value)


@pytest.mark.parametrize("content", ["{not json", "[]", '"pets"'])
def test_a_file_that_is_not_a_definition_fails_loudly(tmp_path: Path, content: str) -> None:
    _write(tmp_path, content)
    with pytest.raises(DefinitionError, match=r"pets\.json"):
        load_verticals(tmp_path)


# --- properties -----------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
JSON_LIKE = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def attribute_objects(draw: st.DrawFn) -> tuple[Vertical, dict[Any, Any]]:
    """Objects that use the vertical's own field names (so the interesting paths run), with
    arbitrary JSON-like values, and sometimes stray keys."""
    vertical = draw(st.sampled_from(VERTICALS))
    names = [f.name for f in vertical.fields]
    data = draw(st.dictionaries(st.sampled_from(names), JSON_LIKE, max_size=len(names)))
    extra = draw(st.dictionaries(st.text(max_size=12) | st.integers(), JSON_LIKE, max_size=2))
    return vertical, {**data, **extra}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(case=attribute_objects(), anything=JSON_LIKE)
def test_validation_never_raises_and_answers_in_field_errors(
    case: tuple[Vertical, dict[Any, Any]], anything: Any
) -> None:
    vertical, data = case
    for candidate in (data, anything):
        cleaned, errors = validate_attributes(vertical, candidate)
        assert all(isinstance(e, FieldError) for e in errors)
        assert all(e.field == "attributes" or e.field.startswith("attributes.") for e in errors)
        if not errors:
            # What the server accepts and stores is valid by the published schema.
            assert set(cleaned) <= {f.name for f in vertical.fields}
            assert validator_for(vertical).is_valid(cleaned)


def _plausible_value(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Values near the field's rules, valid or not, excluding the two documented places where
    the server is stricter than JSON Schema can say (whole floats for integers, padded text
    over the length limit)."""
    low = int(spec.minimum) if spec.minimum is not None else -100
    high = int(spec.maximum) if spec.maximum is not None else 100
    options: list[st.SearchStrategy[Any]] = [
        st.none(),
        st.booleans(),
        st.integers(min_value=low - 3, max_value=high + 3),
        st.floats(min_value=low - 3, max_value=high + 3).filter(lambda x: not x.is_integer()),
        st.text(max_size=20),
        st.text(max_size=80).map(str.strip),
        st.lists(st.integers(), max_size=2),
    ]
    if spec.enum is not None:
        options.append(st.sampled_from(spec.enum))
    return st.one_of(options)


@st.composite
def near_valid_objects(draw: st.DrawFn) -> tuple[Vertical, dict[str, Any]]:
    vertical = draw(st.sampled_from(VERTICALS))
    data: dict[str, Any] = {}
    for spec in vertical.fields:
        if draw(st.integers(0, 5)) > 0:
            data[spec.name] = draw(_plausible_value(spec))
    return vertical, data


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(case=near_valid_objects())
def test_schema_and_server_agree_on_near_valid_input(case: tuple[Vertical, dict[str, Any]]) -> None:
    vertical, data = case
    assert_agree(vertical, data)


def _vertical(slug: str) -> Vertical:
    vertical = get_vertical(slug)
    assert vertical is not None
    return vertical


def _field(vertical: Vertical, name: str) -> FieldSpec:
    spec = vertical.field(name)
    assert spec is not None
    return spec
