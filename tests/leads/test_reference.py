"""Reference data behind address validation and fraud signals: ZIP codes and postal codes in
the right state or province, area codes by region, and throwaway email providers.

The area-code table is checked against the geocoding data of the ``phonenumbers`` library, an
independent source that is updated with every NANP assignment."""

from __future__ import annotations

import phonenumbers
import pytest
from phonenumbers import geocoder

from leadmarket.leads import reference
from leadmarket.leads.reference import (
    CA_PROVINCES,
    US_STATES,
    check_postal_code,
    is_disposable_email_domain,
    region_name,
    regions_for_area_code,
    state_for_zip,
)

# (country, region, postal code as typed, normalized): the addresses the functional tests post.
CITIES = [
    ("US", "CA", "93650", "93650"),  # Fresno
    ("US", "NY", "10001", "10001"),  # New York
    ("US", "TX", "75201", "75201"),  # Dallas
    ("US", "FL", "33101", "33101"),  # Miami
    ("US", "IL", "60601", "60601"),  # Chicago
    ("US", "WA", "98101", "98101"),  # Seattle
    ("CA", "ON", "M5V 3L9", "M5V 3L9"),  # Toronto
    ("CA", "BC", "V6B 1A1", "V6B 1A1"),  # Vancouver
]


@pytest.mark.parametrize(("country", "region", "typed", "normalized"), CITIES)
def test_the_test_cities_are_valid(country: str, region: str, typed: str, normalized: str) -> None:
    assert check_postal_code(country, region, typed) == (normalized, None)
    assert region_name(country, region) is not None
    if country == "US":
        assert state_for_zip(typed) == region


@pytest.mark.parametrize(
    ("zip5", "state"),
    [
        ("00501", "NY"),  # Holtsville IRS
        ("00601", "PR"),
        ("00802", "VI"),
        ("00901", "PR"),
        ("01001", "MA"),
        ("02903", "RI"),
        ("03301", "NH"),
        ("03901", "ME"),
        ("05501", "MA"),  # Andover IRS, inside Vermont's range
        ("05601", "VT"),
        ("06103", "CT"),
        ("06390", "NY"),  # Fishers Island: a Connecticut prefix, a New York island
        ("07102", "NJ"),
        ("14201", "NY"),
        ("15213", "PA"),
        ("19901", "DE"),
        ("20001", "DC"),
        ("20101", "VA"),  # Dulles
        ("20601", "MD"),
        ("22201", "VA"),
        ("25301", "WV"),
        ("27601", "NC"),
        ("29201", "SC"),
        ("30303", "GA"),
        ("32801", "FL"),
        ("34102", "FL"),
        ("35203", "AL"),
        ("37203", "TN"),
        ("39201", "MS"),
        ("39901", "GA"),
        ("40202", "KY"),
        ("43215", "OH"),
        ("46204", "IN"),
        ("48226", "MI"),
        ("50309", "IA"),
        ("53202", "WI"),
        ("55401", "MN"),
        ("56901", "DC"),
        ("57104", "SD"),
        ("58102", "ND"),
        ("59601", "MT"),
        ("62701", "IL"),
        ("63101", "MO"),
        ("66101", "KS"),
        ("68102", "NE"),
        ("70112", "LA"),
        ("72201", "AR"),
        ("73102", "OK"),
        ("73301", "TX"),  # Austin IRS, inside Oklahoma's range
        ("77002", "TX"),
        ("79901", "TX"),
        ("80202", "CO"),
        ("82001", "WY"),
        ("83702", "ID"),
        ("84101", "UT"),
        ("85004", "AZ"),
        ("85138", "AZ"),
        ("87102", "NM"),
        ("88510", "TX"),  # El Paso
        ("89101", "NV"),
        ("90001", "CA"),
        ("96161", "CA"),
        ("96701", "HI"),
        ("96813", "HI"),
        ("96799", "AS"),
        ("96910", "GU"),
        ("96950", "MP"),
        ("97201", "OR"),
        ("97999", "OR"),
        ("98001", "WA"),
        ("99403", "WA"),
        ("99501", "AK"),
        ("99950", "AK"),
    ],
)
def test_state_for_zip(zip5: str, state: str) -> None:
    assert state_for_zip(zip5) == state


@pytest.mark.parametrize(
    "zip5",
    [
        "00000",  # never assigned
        "00401",
        "09001",  # military, Europe (AE)
        "34001",  # military, Americas (AA)
        "96201",  # military, Pacific (AP)
        "96940",  # Palau: a freely associated state, not a US state or territory
        "21301",  # unassigned prefix 213
        "9365",
        "936501",
        "abcde",
        "９３６５０",  # full-width digits are not a ZIP code
        "",
    ],
)
def test_state_for_zip_is_none_when_unknown(zip5: str) -> None:
    assert state_for_zip(zip5) is None


def test_every_state_and_territory_has_zip_codes() -> None:
    by_prefix, _ = reference._zip_tables()
    assert set(by_prefix.values()) | {"AS", "MP"} == set(US_STATES)


@pytest.mark.parametrize(
    ("region", "zip5"),
    [("NY", "93650"), ("CA", "10001"), ("OK", "75201"), ("CT", "06390"), ("MA", "05601")],
)
def test_a_zip_code_in_another_state_is_refused(region: str, zip5: str) -> None:
    postal, error = check_postal_code("US", region, zip5)
    assert postal is None
    assert error == "This ZIP code is not in the state given."


@pytest.mark.parametrize(("region", "zip5"), [("KY", "42223"), ("TN", "42223"), ("IL", "63673")])
def test_a_zip_code_across_a_state_line_is_accepted_on_both_sides(region: str, zip5: str) -> None:
    assert check_postal_code("US", region, zip5) == (zip5, None)


@pytest.mark.parametrize(
    ("typed", "normalized"),
    [
        ("93650", "93650"),
        (" 93650 ", "93650"),
        ("93650-1234", "93650-1234"),
        ("936501234", "93650-1234"),
        ("93650 1234", "93650-1234"),
    ],
)
def test_us_postal_codes_are_normalized(typed: str, normalized: str) -> None:
    assert check_postal_code("us", "ca", typed) == (normalized, None)


@pytest.mark.parametrize(
    "typed", ["9365", "936500", "93650-123", "ABCDE", "93650--1234", "", "00000", "00123"]
)
def test_malformed_us_postal_codes_are_refused(typed: str) -> None:
    postal, error = check_postal_code("US", "CA", typed)
    assert postal is None
    assert error
    assert typed.strip() == "" or typed not in error


def test_an_unknown_region_or_prefix_is_not_judged_here() -> None:
    # The caller reports an unknown region on the region field; an unassigned prefix cannot be
    # placed, so it is not called a mismatch.
    assert check_postal_code("US", "ZZ", "93650") == ("93650", None)
    assert check_postal_code("US", "NY", "21301") == ("21301", None)


@pytest.mark.parametrize(
    ("region", "typed", "normalized"),
    [
        ("ON", "m5v3l9", "M5V 3L9"),
        ("ON", "K1A 0B1", "K1A 0B1"),  # Ottawa
        ("ON", "L5B 1M2", "L5B 1M2"),
        ("ON", "N2L 3G1", "N2L 3G1"),
        ("ON", "P3A 5N8", "P3A 5N8"),
        ("QC", "H2X 1Y4", "H2X 1Y4"),  # Montreal
        ("QC", "G1R 4P5", "G1R 4P5"),
        ("QC", "J8X 3X7", "J8X 3X7"),
        ("AB", "T2P 1J9", "T2P 1J9"),
        ("SK", "S4P 3Y2", "S4P 3Y2"),
        ("MB", "R3C 4T3", "R3C 4T3"),
        ("NB", "E1C 4M3", "E1C 4M3"),
        ("NS", "B3H 4R2", "B3H 4R2"),
        ("PE", "C1A 4P3", "C1A 4P3"),
        ("NL", "A1C 5M2", "A1C 5M2"),
        ("NT", "X1A 2L9", "X1A 2L9"),
        ("NU", "X0A 0H0", "X0A 0H0"),
        ("YT", "Y1A 2C6", "Y1A 2C6"),
        ("BC", " v6b 1a1 ", "V6B 1A1"),
        ("BC", "V6B  1A1", "V6B 1A1"),
    ],
)
def test_canadian_postal_codes(region: str, typed: str, normalized: str) -> None:
    assert check_postal_code("CA", region, typed) == (normalized, None)


@pytest.mark.parametrize(
    ("region", "typed"),
    [("QC", "M5V 3L9"), ("ON", "V6B 1A1"), ("BC", "T2P 1J9"), ("YT", "X1A 2L9")],
)
def test_a_canadian_postal_code_in_another_province_is_refused(region: str, typed: str) -> None:
    assert check_postal_code("CA", region, typed) == (
        None,
        "This postal code is not in the province given.",
    )


@pytest.mark.parametrize(
    "typed",
    [
        "M5V3L",
        "M5V 3L99",
        "5MV 3L9",
        "D5V 3L9",  # D is never used
        "W5V 3L9",  # W never starts a code
        "M5O 3L9",  # O is never used
        "M5V 3U9",
        "M5V-3L9",
        "93650",
    ],
)
def test_malformed_canadian_postal_codes_are_refused(typed: str) -> None:
    postal, error = check_postal_code("CA", "ON", typed)
    assert postal is None
    assert error == "Enter a Canadian postal code such as A1A 1A1."


def test_other_countries_are_refused() -> None:
    postal, error = check_postal_code("GB", "LND", "SW1A 1AA")
    assert postal is None
    assert error


def test_region_names() -> None:
    assert len(US_STATES) == 56  # 50 states, DC and 5 territories
    assert len(CA_PROVINCES) == 13
    assert region_name("US", "CA") == "California"
    assert region_name("us", " dc ") == "District of Columbia"
    assert region_name("US", "PR") == "Puerto Rico"
    assert region_name("CA", "QC") == "Quebec"
    assert region_name("CA", "CA") is None
    assert region_name("US", "ON") is None
    assert region_name("MX", "JA") is None


@pytest.mark.parametrize(
    ("area_code", "regions"),
    [
        ("415", {"CA"}),
        ("559", {"CA"}),
        ("212", {"NY"}),
        ("646", {"NY"}),
        ("214", {"TX"}),
        ("305", {"FL"}),
        ("312", {"IL"}),
        ("206", {"WA"}),
        ("416", {"ON"}),
        ("647", {"ON"}),
        ("604", {"BC"}),
        ("514", {"QC"}),
        ("202", {"DC"}),
        ("787", {"PR"}),
        ("902", {"NS", "PE"}),
        ("867", {"NT", "NU", "YT"}),
    ],
)
def test_area_codes(area_code: str, regions: set[str]) -> None:
    assert regions_for_area_code(area_code) == regions


@pytest.mark.parametrize(
    "area_code", ["800", "888", "877", "833", "500", "900", "600", "911", "555", "123", "", "4155"]
)
def test_non_geographic_area_codes_have_no_region(area_code: str) -> None:
    assert regions_for_area_code(area_code) == frozenset()


def test_every_state_province_and_territory_has_area_codes() -> None:
    served = {region for regions in reference._area_codes().values() for region in regions}
    assert served == set(US_STATES) | set(CA_PROVINCES)


# phonenumbers' English geocoder names a region by full name, "City, ST", or both sides of a
# shared code joined by "/"; these are its spellings that differ from ours.
_GEOCODER_NAMES = {
    "washington state": "WA",
    "washington d.c.": "DC",
    "british colombia": "BC",
    "newfoundland": "NL",
    "yukon": "YT",
}


def _geocoded_regions(description: str) -> set[str] | None:
    """Our region codes for a geocoder description; None if it names a place outside the US
    and Canada (the Caribbean members of the NANP) or only the country."""
    names = {name.lower(): code for code, name in {**US_STATES, **CA_PROVINCES}.items()}
    names.update(_GEOCODER_NAMES)
    regions: set[str] = set()
    for part in description.split("/"):
        place = part.strip()
        suffix = place.rsplit(", ", 1)[-1]
        if ", " in place and (suffix in US_STATES or suffix in CA_PROVINCES):
            regions.add(suffix)
        elif place.lower() in names:
            regions.add(names[place.lower()])
        else:
            return None
    return regions


def test_area_codes_agree_with_the_phonenumbers_geocoder() -> None:
    """Every area code the geocoder places in a US state or territory or a Canadian province
    is in our table with the same regions. Our table may be ahead of the library (announced
    overlays), never behind it or in disagreement."""
    disagreements = []
    for npa in range(200, 1000):
        placed: set[str] = set()
        for exchange in ("234", "201", "312", "456", "678", "789", "890", "920"):
            number = phonenumbers.parse(f"+1{npa}{exchange}4567")
            if not phonenumbers.is_valid_number(number):
                continue
            regions = _geocoded_regions(geocoder.description_for_number(number, "en") or "")
            if regions:
                placed |= regions
        if placed and placed != regions_for_area_code(str(npa)):
            disagreements.append((npa, sorted(placed), sorted(regions_for_area_code(str(npa)))))
    assert disagreements == []


@pytest.mark.parametrize(
    "domain",
    [
        "mailinator.com",
        "guerrillamail.com",
        "guerrillamail.net",
        "guerrillamail.org",
        "10minutemail.com",
        "temp-mail.org",
        "yopmail.com",
        "trashmail.com",
        "trashmail.de",
        "sharklasers.com",
        "getnada.com",
        "dispostable.com",
        "maildrop.cc",
        "throwawaymail.com",
        "MAILINATOR.COM",
        "mailinator.com.",
        " yopmail.com ",
        "eu.mailinator.com",  # subdomains count
        "a.b.sharklasers.com",
    ],
)
def test_disposable_email_domains(domain: str) -> None:
    assert is_disposable_email_domain(domain)


@pytest.mark.parametrize(
    "domain",
    [
        "gmail.com",
        "yahoo.com",
        "outlook.com",
        "icloud.com",
        "privaterelay.appleid.com",  # a relay to a real inbox, not a throwaway
        "duck.com",
        "example.com",
        "notmailinator.com",  # a suffix match must be on a label boundary
        "mailinator.com.evil.example",
        "com",
        "",
        ".",
        "a..b",
        "bücher.example",
    ],
)
def test_real_email_domains_are_not_disposable(domain: str) -> None:
    assert not is_disposable_email_domain(domain)


def test_the_disposable_list_is_large_sorted_and_clean() -> None:
    lines = [
        line.strip()
        for line in reference._data_text("disposable_domains.txt").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(lines) >= 150
    assert lines == sorted(set(lines)), "keep the list sorted and without duplicates"
    assert all(line == line.lower() and "." in line and " " not in line for line in lines)
