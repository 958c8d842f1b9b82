"""Reference data for checking a lead's address, phone and email, and for fraud signals.

The tables live in ``data/`` as plain files so that they can be reviewed and updated without
touching code; each is read once. They answer "is this consistent?" questions: a ZIP code in
the state given, a Canadian postal code in the province given, an area code of the region, a
throwaway email provider. Where the tables cannot tell (an unassigned or military ZIP prefix, a
non-geographic area code) they say so with ``None`` or an empty set, and callers must treat that
as "unknown", never as a mismatch."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

US_STATES: dict[str, str] = {
    "AL": "Alabama", "AK": "Alaska", "AZ": "Arizona", "AR": "Arkansas", "CA": "California",
    "CO": "Colorado", "CT": "Connecticut", "DE": "Delaware", "DC": "District of Columbia",
    "FL": "Florida", "GA": "Georgia", "HI": "Hawaii", "ID": "Idaho", "IL": "Illinois",
    "IN": "Indiana", "IA": "Iowa", "KS": "Kansas", "KY": "Kentucky", "LA": "Louisiana",
    "ME": "Maine", "MD": "Maryland", "MA": "Massachusetts", "MI": "Michigan",
    "MN": "Minnesota", "MS": "Mississippi", "MO": "Missouri", "MT": "Montana",
    "NE": "Nebraska", "NV": "Nevada", "NH": "New Hampshire", "NJ": "New Jersey",
    "NM": "New Mexico", "NY": "New York", "NC": "North Carolina", "ND": "North Dakota",
    "OH": "Ohio", "OK": "Oklahoma", "OR": "Oregon", "PA": "Pennsylvania",
    "RI": "Rhode Island", "SC": "South Carolina", "SD": "South Dakota", "TN": "Tennessee",
    "TX": "Texas", "UT": "Utah", "VT": "Vermont", "VA": "Virginia", "WA": "Washington",
    "WV": "West Virginia", "WI": "Wisconsin", "WY": "Wyoming",
    # Territories with USPS addresses and NANP numbers.
    "PR": "Puerto Rico", "VI": "U.S. Virgin Islands", "GU": "Guam", "AS": "American Samoa",
    "MP": "Northern Mariana Islands",
}  # fmt: skip

CA_PROVINCES: dict[str, str] = {
    "AB": "Alberta", "BC": "British Columbia", "MB": "Manitoba", "NB": "New Brunswick",
    "NL": "Newfoundland and Labrador", "NS": "Nova Scotia", "NT": "Northwest Territories",
    "NU": "Nunavut", "ON": "Ontario", "PE": "Prince Edward Island", "QC": "Quebec",
    "SK": "Saskatchewan", "YT": "Yukon",
}  # fmt: skip

_REGIONS = {"US": US_STATES, "CA": CA_PROVINCES}

# Canada Post assigns the first letter of a postal code (the postal district) by province;
# Northwest Territories and Nunavut share X.
_CA_DISTRICTS: dict[str, frozenset[str]] = {
    "A": frozenset({"NL"}),
    "B": frozenset({"NS"}),
    "C": frozenset({"PE"}),
    "E": frozenset({"NB"}),
    "G": frozenset({"QC"}),
    "H": frozenset({"QC"}),
    "J": frozenset({"QC"}),
    "K": frozenset({"ON"}),
    "L": frozenset({"ON"}),
    "M": frozenset({"ON"}),
    "N": frozenset({"ON"}),
    "P": frozenset({"ON"}),
    "R": frozenset({"MB"}),
    "S": frozenset({"SK"}),
    "T": frozenset({"AB"}),
    "V": frozenset({"BC"}),
    "X": frozenset({"NT", "NU"}),
    "Y": frozenset({"YT"}),
}
# D, F, I, O, Q and U are never used (they are misread by sorting machines); W and Z never
# start a code.
_CA_LETTER = "[ABCEGHJ-NPRSTV-Z]"
_CA_POSTAL = re.compile(rf"^([ABCEGHJ-NPRSTVXY]\d{_CA_LETTER})(\d{_CA_LETTER}\d)$", re.ASCII)
_US_ZIP = re.compile(r"^(\d{5})(?:[-\s]?(\d{4}))?$", re.ASCII)
_AREA_CODE = re.compile(r"^[2-9]\d\d$", re.ASCII)
# No ZIP code has ever started with 000 to 004.
_FIRST_ZIP3 = 5

_DATA = "leadmarket.leads"


def _data_text(name: str) -> str:
    return resources.files(_DATA).joinpath("data", name).read_text(encoding="utf-8")


def region_name(country: str, region: str) -> str | None:
    """The name of a US state or territory, or Canadian province or territory, from its
    two-letter code; ``None`` if the code is not one."""
    regions = _REGIONS.get(country.strip().upper())
    if regions is None:
        return None
    return regions.get(region.strip().upper())


@cache
def _zip_tables() -> tuple[dict[int, str], dict[str, tuple[str, ...]]]:
    """ZIP3 prefix -> state, and the ZIP codes that do not follow their prefix (the post
    office's state first, then states it also delivers to; empty for a freely associated
    state)."""
    raw: dict[str, Any] = json.loads(_data_text("zip3_ranges.json"))
    by_prefix: dict[int, str] = {}
    for first, last, state in raw["ranges"]:
        if state not in US_STATES:
            raise ValueError(f"zip3_ranges.json: unknown state {state!r}")
        for prefix in range(int(first), int(last) + 1):
            if prefix in by_prefix:
                raise ValueError(f"zip3_ranges.json: prefix {prefix:03d} listed twice")
            by_prefix[prefix] = state
    exceptions: dict[str, tuple[str, ...]] = {}
    for zip5, states in raw["zip5"].items():
        if not all(state in US_STATES for state in states):
            raise ValueError(f"zip3_ranges.json: unknown state for {zip5}")
        exceptions[zip5] = tuple(states)
    return by_prefix, exceptions


def state_for_zip(zip5: str) -> str | None:
    """The state or territory a five-digit ZIP code belongs to, from its three-digit prefix
    (USPS sectional centers). ``None`` for prefixes that are unassigned, military (AA, AE, AP)
    or outside the US states and territories, and for anything that is not five digits."""
    if len(zip5) != 5 or not zip5.isascii() or not zip5.isdigit():
        return None
    by_prefix, exceptions = _zip_tables()
    if zip5 in exceptions:
        states = exceptions[zip5]
        return states[0] if states else None
    return by_prefix.get(int(zip5[:3]))


def _states_for_zip(zip5: str) -> tuple[str, ...]:
    """Every state a ZIP code (five digits) delivers to: a few rural ZIP codes straddle a state
    line, and an address on either side is genuine. (A tuple of one or a few: every ping and
    lead checks its ZIP code, and building a set each time cost more than the look-ups.)"""
    by_prefix, exceptions = _zip_tables()
    states = exceptions.get(zip5)
    if states is not None:
        return states
    state = by_prefix.get(int(zip5[:3]))
    return (state,) if state else ()


def check_postal_code(country: str, region: str, postal_code: str) -> tuple[str | None, str | None]:
    """Check a postal code's format and that it belongs to the region; return
    ``(normalized postal code, None)`` or ``(None, error message)``.

    US: ``12345`` or ZIP+4 (normalized ``12345-6789``). Canada: ``A1A 1A1`` (normalized to
    uppercase with one space). A region that is not a known code is not judged here (the
    caller names that error on the region field), and neither is a ZIP code whose prefix the
    tables do not know. Messages never repeat the submitted values."""
    country = country.strip().upper()
    region = region.strip().upper()
    code = postal_code.strip().upper()
    if country == "US":
        match = _US_ZIP.match(code)
        if match is None:
            return None, "Enter a 5-digit ZIP code, or ZIP+4 as 12345-6789."
        zip5, plus4 = match.groups()
        if int(zip5[:3]) < _FIRST_ZIP3:
            return None, "This ZIP code does not exist."
        states = _states_for_zip(zip5)
        if region in US_STATES and states and region not in states:
            return None, "This ZIP code is not in the state given."
        return (f"{zip5}-{plus4}" if plus4 else zip5), None
    if country == "CA":
        # People type "m5v3l9", "M5V 3L9" and "M5V  3L9" alike; spacing carries no meaning.
        match = _CA_POSTAL.match("".join(code.split()))
        if match is None:
            return None, "Enter a Canadian postal code such as A1A 1A1."
        fsa, ldu = match.groups()
        if region in CA_PROVINCES and region not in _CA_DISTRICTS[fsa[0]]:
            return None, "This postal code is not in the province given."
        return f"{fsa} {ldu}", None
    return None, "Only addresses in the United States and Canada are accepted."


@cache
def _area_codes() -> dict[str, frozenset[str]]:
    raw: dict[str, Any] = json.loads(_data_text("area_codes.json"))
    owners: dict[str, set[str]] = {}
    for region, codes in raw["regions"].items():
        if region not in US_STATES and region not in CA_PROVINCES:
            raise ValueError(f"area_codes.json: unknown region {region!r}")
        for code in codes:
            if not _AREA_CODE.match(code):
                raise ValueError(f"area_codes.json: {code!r} is not an area code")
            owners.setdefault(code, set()).add(region)
    return {code: frozenset(regions) for code, regions in owners.items()}


def regions_for_area_code(area_code: str) -> frozenset[str]:
    """The US states and territories or Canadian provinces and territories a NANP area code
    serves (several where a code is shared: 902 and 782 for Nova Scotia and Prince Edward
    Island, 867 for the three territories). Empty for non-geographic codes (toll-free 8XX,
    500, 900, ...) and for anything that is not an area code."""
    return _area_codes().get(area_code.strip(), frozenset())


@cache
def _disposable_domains() -> frozenset[str]:
    domains: set[str] = set()
    for line in _data_text("disposable_domains.txt").splitlines():
        domain = line.split("#", 1)[0].strip().lower()
        if domain:
            domains.add(domain)
    return frozenset(domains)


def is_disposable_email_domain(domain: str) -> bool:
    """Whether an email domain belongs to a throwaway-inbox provider, subdomains included
    (``x.mailinator.com`` counts as ``mailinator.com``)."""
    name = domain.strip().rstrip(".").lower()
    if not name:
        return False
    # Internationalized names compare in their ASCII (punycode) form, as the list is written.
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    listed = _disposable_domains()
    labels = name.split(".")
    return any(".".join(labels[i:]) in listed for i in range(len(labels) - 1))
