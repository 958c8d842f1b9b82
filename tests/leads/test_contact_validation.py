"""The consumer's email and phone are validated by shortcuts of email-validator and phonenumbers
(a remembered domain check; one walk of the NANPA regions for region, validity and line type).
Each must answer exactly what the libraries' own entry points answer, refusals and their
messages included: these tests hold them against those entry points on many inputs."""

from __future__ import annotations

import random

import phonenumbers
import pytest
from email_validator import EmailNotValidError, validate_email

from leadmarket.leads.schemas import (
    ConsumerPhone,
    _email_domain,
    normalize_consumer_email,
    normalize_consumer_phone,
)

LOCAL_PARTS = [
    "a", "Ana.Silva", "postmaster", "POSTMASTER", "Abuse", "x" * 64, "x" * 65, "a..b", ".a",
    "a.", "ünïcode", "e\u0301", '"quoted"', '"a b"', "a+tag", "a b", "", "a\u200bb", "ﬁ", "日本",
    "A_B-c", "a!#$%&'*+/=?^_`{|}~", "a\\b", "İ",
]  # fmt: skip
DOMAINS = [
    "gmail.com", "GMAIL.COM", "münchen.de", "xn--mnchen-3ya.de", "localhost", "example.invalid",
    "a.b", "-a.com", "a-.com", "a..com", ".com", "com", "gmail.com.", "[127.0.0.1]",
    "[IPv6:::1]", "x" * 63 + ".com", "x" * 64 + ".com", ("a" * 60 + ".") * 4 + "com", "日本.jp",
    "xn--zz.com", "sub.domain.co.uk", "a_b.com", "1.2.3.4", "ex ample.com", "", "gmail..com",
    "ﬁ.com",
]  # fmt: skip
OTHER_EMAILS = [
    "Bob <a@b.com>", "<a@b.com>", "a@b@c.com", "@b.com", "a@", "noat", "a@b.com ", " a@b.com",
    '"a@b"@c.com', "a" * 200 + "@" + "b" * 60 + ".com",
    "x" * 64 + "@" + ("y" * 62 + ".") * 3 + "com",
]  # fmt: skip


def _email_cases() -> list[str]:
    cases = [f"{local}@{domain}" for local in LOCAL_PARTS for domain in DOMAINS] + OTHER_EMAILS
    rng = random.Random(3)
    alphabet = 'aA.+_-@"\\ <>[]ü\u0301日1'
    for _ in range(2_000):
        local = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        cases.append(local + rng.choice(("@gmail.com", "@yahoo.com", "", "@x.y")))
    return cases


def _library_email(value: str) -> tuple[str, str]:
    try:
        return "ok", validate_email(value, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        return "refused", str(exc)


def _our_email(value: str) -> tuple[str, str]:
    try:
        return "ok", normalize_consumer_email(value)
    except ValueError as exc:
        return "refused", str(exc)


def test_the_email_shortcut_answers_as_validate_email_does() -> None:
    cases = _email_cases()
    _email_domain.cache_clear()
    for _ in range(2):  # the second round answers from the remembered domains
        differences = [c for c in cases if _our_email(c) != _library_email(c)]
        assert differences == []
    answers = [_library_email(c)[0] for c in cases]
    assert answers.count("ok") > 200 and answers.count("refused") > 500  # both sides tested
    assert _email_domain.cache_info().hits > 0


def _library_phone(value: str, country: str) -> tuple[str, object]:
    """The checks the consumer's phone went through before the shortcut, on the public API."""
    try:
        number = phonenumbers.parse(value, country)
    except phonenumbers.NumberParseException:
        return "refused", "Not a phone number."
    if not phonenumbers.is_valid_number(number):
        return "refused", "This phone number does not exist."
    if phonenumbers.region_code_for_number(number) not in ("US", "CA"):
        return "refused", "Use a United States or Canadian phone number."
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return "ok", (e164, phonenumbers.number_type(number), str(number.national_number)[:3])


def _our_phone(value: str, country: str) -> tuple[str, object]:
    try:
        phone = normalize_consumer_phone(value, country)
    except ValueError as exc:
        return "refused", str(exc)
    assert isinstance(phone, ConsumerPhone)
    return "ok", (str(phone), phone.line_type, phone.area_code)


PHONES = [
    "+14155550123", "(212) 555-0199", "416-555-0123", "+442071838750", "+33142685300",
    "12125550199", "+1 268 464 1234", "+1 800 555 0199", "+1 900 555 0123", "+1 500 555 0123",
    "911", "+1", "abc", "+1 555 555 5555", "+1 787 555 0123", "+52 55 1234 5678",
    "tel:+1-212-555-0123", "212 555 0123 ext 45", "001 212 555 0123", "+1 204 555 0123",
]  # fmt: skip


@pytest.mark.parametrize("country", ["US", "CA"])
def test_the_phone_shortcut_answers_as_phonenumbers_does(country: str) -> None:
    rng = random.Random(4)
    cases = list(PHONES)
    for _ in range(4_000):
        prefix = rng.choice(("", "+1", "1", "+", "+44", "+52", "011"))
        cases.append(prefix + str(rng.randint(200, 999)) + str(rng.randint(0, 9_999_999)).zfill(7))
    differences = [c for c in cases if _our_phone(c, country) != _library_phone(c, country)]
    assert differences == []
    answers = [_library_phone(c, country) for c in cases]
    kinds = {a[1][1] for a in answers if a[0] == "ok"}  # type: ignore[index]
    assert len(kinds) >= 3  # several line types, not only the common one
    assert sum(a[0] == "refused" for a in answers) > 500
    messages = {a[1] for a in answers if a[0] == "refused"}
    assert "Use a United States or Canadian phone number." in messages
