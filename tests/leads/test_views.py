"""The lead pages over a real HTTP stack and database: the hosted consumer form (L1) with its
consent evidence (L3), its refusals that write nothing — children above all (L2) — and its
cookie-free form token; the consent certificate page; and the seller pages, which show a
seller their own leads and never a consumer's contact details (L6)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from markupsafe import escape
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.leads.vault import IndexKind
from leadmarket.leads.views import ConsumerFormTokens
from leadmarket.models import Consent, ConsentText, Lead, LeadBlindIndex, LeadVault, User
from leadmarket.verticals.registry import all_verticals, get_vertical
from tests.fixtures.accounts import PASSWORD, bearer, login, register
from tests.fixtures.leads import lead_body, minor_birth_date

INTAKE_TABLES = (Lead, LeadVault, LeadBlindIndex, Consent, ConsentText)
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0 leadmarket-test"
EXPIRED = "This form expired, please submit again."


# Helpers ----------------------------------------------------------------------------------


class Outline(HTMLParser):
    """The controls, labels, ids and links of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.options: dict[str, list[tuple[str, str]]] = {}
        self.labels: dict[str, str] = {}
        self.legends: list[str] = []
        self.ids: set[str] = set()
        self.links: list[str] = []
        self._select: str | None = None
        self._text_of: tuple[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids.add(str(attributes["id"]))
        if tag in ("input", "select", "textarea") and attributes.get("type") != "hidden":
            self.controls.append(attributes)
        if tag == "select":
            self._select = str(attributes.get("name"))
            self.options[self._select] = []
        elif tag == "option" and self._select is not None:
            self._text_of = ("option", attributes.get("value"))
            self._text = []
        elif tag == "label" and attributes.get("for"):
            self._text_of = ("label", attributes["for"])
            self._text = []
        elif tag == "legend":
            self._text_of = ("legend", None)
            self._text = []
        elif tag == "a" and attributes.get("href"):
            self.links.append(str(attributes["href"]))

    def handle_data(self, data: str) -> None:
        if self._text_of is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._text_of is None or tag != self._text_of[0]:
            if tag == "select":
                self._select = None
            return
        text = " ".join("".join(self._text).split())
        kind, key = self._text_of
        if kind == "option" and self._select is not None:
            self.options[self._select].append((str(key), text))
        elif kind == "label":
            self.labels[str(key)] = text
        else:
            self.legends.append(text)
        self._text_of = None

    def control(self, name: str) -> dict[str, str | None]:
        for control in self.controls:
            if control.get("name") == name:
                return control
        raise AssertionError(f"no control named {name}")


def outline(html: str) -> Outline:
    parser = Outline()
    parser.feed(html)
    return parser


def form_token_of(html: str) -> str:
    match = re.search(r'name="form_token" value="([^"]+)"', html)
    assert match, "no form token on the page"
    return match.group(1)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def form_url(seller: str, vertical: str = "auto-insurance") -> str:
    return f"/forms/{vertical}?seller={seller}"


def consumer_answers(vertical: str = "auto-insurance", **overrides: str) -> dict[str, str]:
    """A valid consumer's answers as the form posts them, for a consumer no other test uses.
    Keyword names use ``__`` for the dots of the form's field names."""
    body = lead_body(vertical)
    contact, address = body["contact"], body["contact"]["address"]
    answers = {
        "contact.first_name": contact["first_name"],
        "contact.last_name": contact["last_name"],
        "contact.email": contact["email"],
        "contact.phone": contact["phone"],
        "contact.birth_date": contact["birth_date"],
        "contact.address.street": address["street"],
        "contact.address.city": address["city"],
        "contact.address.region": address["region"],
        "contact.address.postal_code": address["postal_code"],
        "contact.address.country": address["country"],
        "consent.agree": "yes",
    }
    for name, value in body["attributes"].items():
        text = ("yes" if value else "no") if isinstance(value, bool) else str(value)
        answers[f"attributes.{name}"] = text
    answers.update({key.replace("__", "."): value for key, value in overrides.items()})
    return answers


async def open_form(
    client: httpx.AsyncClient, seller: str, vertical: str = "auto-insurance", **headers: str
) -> str:
    response = await client.get(form_url(seller, vertical), headers=headers)
    assert response.status_code == 200, response.text
    return response.text


async def submit(
    client: httpx.AsyncClient,
    seller: str,
    answers: dict[str, str],
    *,
    vertical: str = "auto-insurance",
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    if token is None:
        token = form_token_of(await open_form(client, seller, vertical))
    return await client.post(
        form_url(seller, vertical),
        data={**answers, "form_token": token},
        headers={"User-Agent": USER_AGENT, **(headers or {})},
    )


async def row_counts(session: AsyncSession) -> dict[str, int]:
    return {
        table.__tablename__: int(await session.scalar(select(func.count()).select_from(table)) or 0)
        for table in INTAKE_TABLES
    }


def control_is_in_error(html: str, element_id: str) -> bool:
    """The control has its message beside it, named by aria-describedby, and is marked
    invalid."""
    match = re.search(rf'<(?:input|select|textarea)[^>]*\bid="{re.escape(element_id)}"[^>]*>', html)
    assert match, f"no control #{element_id}"
    tag = match.group(0)
    return (
        f'id="{element_id}-error"' in html
        and f"{element_id}-error" in tag
        and 'aria-invalid="true"' in tag
    )


async def sign_in(client: httpx.AsyncClient, login_name: str) -> None:
    page = await client.get("/signin")
    response = await client.post(
        "/signin",
        data={"csrf_token": csrf_of(page.text), "login": login_name, "password": PASSWORD},
    )
    assert response.status_code == 303, response.text


async def web_seller(client: httpx.AsyncClient) -> dict[str, Any]:
    account = await register(client, "seller")
    await sign_in(client, account["username"])
    return account


@pytest.fixture
async def seller(client: httpx.AsyncClient) -> dict[str, Any]:
    return await register(client, "seller")


# The form (L1) ----------------------------------------------------------------------------


@pytest.mark.parametrize("vertical", [v.slug for v in all_verticals()])
async def test_form_shows_every_field_of_the_vertical_and_the_consent_text(
    client: httpx.AsyncClient, seller: dict[str, Any], vertical: str
) -> None:
    definition = get_vertical(vertical)
    assert definition is not None
    html = await open_form(client, seller["username"], vertical)
    page = outline(html)
    assert definition.name in html
    assert str(escape(definition.description)) in html
    assert str(escape(definition.consent_text_for(seller["username"]))) in html

    for name in (
        "contact.first_name",
        "contact.last_name",
        "contact.email",
        "contact.phone",
        "contact.birth_date",
        "contact.address.street",
        "contact.address.city",
        "contact.address.region",
        "contact.address.postal_code",
        "contact.address.country",
        "consent.agree",
    ):
        page.control(name)
    regions = {value for value, _ in page.options["contact.address.region"]}
    assert {"CA", "NY", "ON", "QC"} <= regions
    assert [value for value, _ in page.options["contact.address.country"]] == ["US", "CA"]
    assert page.labels["consent-agree"] == "I agree"
    assert "consent-text" in str(page.control("consent.agree").get("aria-describedby"))

    for spec in definition.fields:
        name = f"attributes.{spec.name}"
        control = page.control(name)
        element_id = str(control.get("id"))
        if spec.type == "boolean":
            assert spec.label in " ".join(page.legends)
            kinds = {(c.get("type"), c.get("value")) for c in page.controls if c["name"] == name}
            assert kinds == {("radio", "yes"), ("radio", "no")}
        else:
            assert page.labels[element_id].startswith(spec.label)
        if spec.enum is not None:
            shown = dict(page.options[name])
            for code in spec.enum:
                assert shown[code] == spec.enum_labels[code]
        if spec.type in ("integer", "number"):
            assert control.get("type") == "number"
            if spec.minimum is not None:
                assert float(str(control.get("min"))) == spec.minimum
            if spec.maximum is not None:
                assert float(str(control.get("max"))) == spec.maximum
        if spec.type == "string" and spec.enum is None:
            assert control.get("maxlength") == str(spec.max_length)
        if spec.required:
            assert "required" in control
        elif spec.type != "boolean":
            assert "(optional)" in page.labels[element_id]
        if spec.help:
            assert str(escape(spec.help)) in html
            described = str(control.get("aria-describedby") or "")
            if spec.type != "boolean":  # a radio group's hint is on its fieldset
                assert f"{element_id}-hint" in described

    unlabelled = [
        c.get("name")
        for c in page.controls
        if c.get("type") != "radio" and c.get("id") not in page.labels
    ]
    assert unlabelled == []
    for control in page.controls:
        for target in str(control.get("aria-describedby") or "").split():
            assert target in page.ids


async def test_the_form_is_frameable_and_carries_the_security_headers(
    client: httpx.AsyncClient, seller: dict[str, Any]
) -> None:
    response = await client.get(form_url(seller["username"]))
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors *" in csp and "script-src 'self'" in csp
    assert "x-frame-options" not in response.headers
    assert response.headers["cache-control"] == "no-store"
    # The form works without cookies, so a browser blocking third-party cookies can send it.
    assert "set-cookie" not in response.headers
    assert "style=" not in response.text and "<script" not in response.text
    # Links out of the frame open a new tab: the rest of the site may not be framed.
    for tag in re.findall(r"<a [^>]*>", response.text):
        assert 'target="_blank"' in tag and 'rel="noopener"' in tag


# A valid request (L3) ---------------------------------------------------------------------


async def test_a_valid_request_becomes_one_lead_of_that_seller_with_its_evidence(
    client: httpx.AsyncClient, session: AsyncSession, seller: dict[str, Any], app: FastAPI
) -> None:
    other = await register(client, "seller")
    before = await row_counts(session)
    answers = consumer_answers()
    # A copy of the disclosure in the post is ignored: the evidence is what the page showed.
    answers["consent.disclosure_text"] = "I agree to nothing at all, whatever it says above."
    response = await submit(client, seller["username"], answers)
    assert response.status_code == 201, response.text
    assert "Thank you" in response.text and seller["username"] in response.text
    certificate = re.search(r"<code>(cert_[\w-]+)</code>", response.text)
    assert certificate, "the thank-you page shows no certificate"
    cert = certificate.group(1)
    assert f'href="/api/v1/consents/{cert}"' in response.text
    assert f'href="/consents/{cert}"' in response.text

    after = await row_counts(session)
    assert {name: after[name] - before[name] for name in after} == {
        "leads": 1,
        "lead_vaults": 1,
        "lead_blind_indexes": 3,
        "consents": 1,
        "consent_texts": after["consent_texts"] - before["consent_texts"],
    }
    leads = list(await session.scalars(select(Lead).where(Lead.seller_id == seller["id"])))
    assert len(leads) == 1
    assert not list(await session.scalars(select(Lead).where(Lead.seller_id == other["id"])))
    lead = leads[0]
    assert lead.source == "form"
    assert (lead.sale_mode, lead.duration_minutes, lead.exclusive, lead.reserve_cents) == (
        "auction",
        60,
        True,
        1000,
    )
    consent = await session.scalar(select(Consent).where(Consent.lead_id == lead.id))
    assert consent is not None and consent.certificate == cert
    vertical = get_vertical("auto-insurance")
    assert vertical is not None
    shown = vertical.consent_text_for(seller["username"])
    assert consent.text_sha256 == hashlib.sha256(shown.encode()).hexdigest()
    assert consent.page_url == "https://testserver/forms/auto-insurance"
    assert "?" not in consent.page_url
    kit = app.state.leads_kit
    assert consent.ip_digest == kit.indexer.digest(IndexKind.IP, "203.0.113.10")
    assert consent.user_agent_digest == hashlib.sha256(USER_AGENT.encode()).hexdigest()
    age = dt.datetime.now(dt.UTC) - consent.given_at
    assert dt.timedelta(0) <= age < dt.timedelta(minutes=1)

    verified = (await client.get(f"/api/v1/consents/{cert}")).json()
    assert verified["disclosure_text"] == shown and verified["status"] == "valid"


async def test_an_embedded_form_records_the_page_that_framed_it_without_its_query(
    client: httpx.AsyncClient, session: AsyncSession, seller: dict[str, Any]
) -> None:
    html = await open_form(
        client,
        seller["username"],
        **{
            "Sec-Fetch-Dest": "iframe",
            "Referer": "https://quotes.example.com/auto/compare?email=ana%40example.com#top",
        },
    )
    answers = consumer_answers()
    # What the POST's own Referer says is not evidence: only what the signed token recorded.
    response = await submit(
        client,
        seller["username"],
        answers,
        token=form_token_of(html),
        headers={"Referer": "https://elsewhere.example.net/"},
    )
    assert response.status_code == 201, response.text
    consent = await session.scalar(
        select(Consent).where(Consent.seller_id == seller["id"]).order_by(Consent.recorded_at)
    )
    assert consent is not None
    assert consent.page_url == "https://quotes.example.com/auto/compare"


async def test_a_referer_of_a_visit_is_not_an_embedding_page(
    client: httpx.AsyncClient, session: AsyncSession, seller: dict[str, Any]
) -> None:
    # A link from another site: the consumer agreed on our page, not on the linking one.
    html = await open_form(
        client, seller["username"], Referer="https://mail.example.org/inbox?id=7"
    )
    response = await submit(
        client, seller["username"], consumer_answers(), token=form_token_of(html)
    )
    assert response.status_code == 201, response.text
    consent = await session.scalar(select(Consent).where(Consent.seller_id == seller["id"]))
    assert consent is not None
    assert consent.page_url == "https://testserver/forms/auto-insurance"


# Bad input: shown again beside the field, nothing written ---------------------------------


@pytest.mark.parametrize(
    ("overrides", "element_id", "message"),
    [
        ({"contact__phone": "12345"}, "contact-phone", "does not exist"),
        ({"contact__phone": "+33 1 42 68 53 00"}, "contact-phone", "United States or Canad"),
        ({"contact__email": "ana-at-example"}, "contact-email", "@"),
        ({"contact__first_name": "  "}, "contact-first_name", "This field is required."),
        ({"contact__birth_date": "02/04/1980"}, "contact-birth_date", "year-month-day"),
        ({"contact__birth_date": "2999-01-01"}, "contact-birth_date", "in the future"),
        ({"contact__address__postal_code": "10001"}, "contact-address-postal_code", "not in"),
        ({"contact__address__region": ""}, "contact-address-region", "required"),
        ({"attributes__vehicle_year": "1900"}, "attributes-vehicle_year", "at least 1981"),
        ({"attributes__vehicle_year": "new"}, "attributes-vehicle_year", "whole number"),
        ({"attributes__vehicle_make": ""}, "attributes-vehicle_make", "required"),
        ({"attributes__vehicle_make": "yugo"}, "attributes-vehicle_make", "Must be one of"),
        ({"consent__agree": ""}, "consent-agree", "I agree"),
    ],
)
async def test_bad_input_is_shown_beside_its_field_and_nothing_is_written(
    client: httpx.AsyncClient,
    session: AsyncSession,
    seller: dict[str, Any],
    overrides: dict[str, str],
    element_id: str,
    message: str,
) -> None:
    before = await row_counts(session)
    answers = consumer_answers(**overrides)
    response = await submit(client, seller["username"], answers)
    assert response.status_code == 422, response.text
    html = response.text
    assert control_is_in_error(html, element_id)
    error = re.search(rf'<p class="field-error" id="{element_id}-error">(.*?)</p>', html, re.S)
    assert error and message in error.group(1)
    assert f'href="#{element_id}"' in html  # the error summary links to the field
    assert "<title>Error: " in html
    # What was typed comes back, so only the wrong answer needs typing again.
    assert f'value="{escape(answers["contact.last_name"])}"' in html
    assert f'value="{escape(answers["contact.address.street"])}"' in html
    assert await row_counts(session) == before


async def test_several_problems_are_reported_at_once(
    client: httpx.AsyncClient, session: AsyncSession, seller: dict[str, Any]
) -> None:
    answers = consumer_answers(
        contact__phone="12", attributes__vehicle_year="1900", consent__agree=""
    )
    response = await submit(client, seller["username"], answers)
    assert response.status_code == 422
    for element_id in ("contact-phone", "attributes-vehicle_year", "consent-agree"):
        assert control_is_in_error(response.text, element_id)


async def test_a_boolean_attribute_is_a_radio_group_with_its_error_beside_it(
    client: httpx.AsyncClient, session: AsyncSession, seller: dict[str, Any]
) -> None:
    before = await row_counts(session)
    answers = consumer_answers("health-insurance", attributes__smoker="")
    response = await submit(client, seller["username"], answers, vertical="health-insurance")
    assert response.status_code == 422
    assert re.search(
        r'<fieldset[^>]*id="attributes-smoker-group"[^>]*aria-describedby="[^"]*'
        r"attributes-smoker-error",
        response.text,
    )
    assert 'href="#attributes-smoker"' in response.text
    assert await row_counts(session) == before

    answers["attributes.smoker"] = "no"
    response = await submit(client, seller["username"], answers, vertical="health-insurance")
    assert response.status_code == 201, response.text
    lead = await session.scalar(select(Lead).where(Lead.seller_id == seller["id"]))
    assert lead is not None and lead.vertical == "health-insurance"


# Children (L2) ----------------------------------------------------------------------------


async def test_a_child_is_refused_and_nothing_of_the_request_is_stored_or_shown(
    client: httpx.AsyncClient, session: AsyncSession, seller: dict[str, Any]
) -> None:
    before = await row_counts(session)
    answers = consumer_answers(contact__birth_date=minor_birth_date(13))
    response = await submit(client, seller["username"], answers)
    assert response.status_code == 422
    assert "We cannot take requests for children under 14" in response.text
    assert await row_counts(session) == before
    for typed in (
        answers["contact.email"],
        answers["contact.phone"],
        answers["contact.last_name"],
        answers["contact.address.street"],
        answers["contact.birth_date"],
    ):
        assert typed not in response.text
        assert str(escape(typed)) not in response.text
    # An empty form to start again, with a fresh token.
    assert outline(response.text).control("contact.email").get("value") is None
    form_token_of(response.text)


async def test_a_child_is_refused_even_with_other_mistakes_or_an_expired_form(
    client: httpx.AsyncClient, session: AsyncSession, seller: dict[str, Any]
) -> None:
    before = await row_counts(session)
    answers = consumer_answers(
        contact__birth_date=minor_birth_date(10), contact__phone="12", consent__agree=""
    )
    response = await submit(client, seller["username"], answers)
    assert response.status_code == 422
    assert "children under 14" in response.text
    assert answers["contact.email"] not in response.text

    expired = await submit(client, seller["username"], answers, token="1.AA.forged")
    assert expired.status_code == 422
    assert "children under 14" in expired.text
    assert answers["contact.email"] not in expired.text
    assert await row_counts(session) == before


async def test_a_fourteen_year_old_is_taken(
    client: httpx.AsyncClient, session: AsyncSession, seller: dict[str, Any]
) -> None:
    answers = consumer_answers(contact__birth_date=minor_birth_date(14))
    response = await submit(client, seller["username"], answers)
    assert response.status_code == 201, response.text


# The form token (no cookies) and the Origin check -----------------------------------------


async def test_a_forged_expired_or_misdirected_form_token_stores_nothing(
    client: httpx.AsyncClient, session: AsyncSession, seller: dict[str, Any], settings: Settings
) -> None:
    other = await register(client, "seller")
    seller_user = await session.get(User, seller["id"])
    assert seller_user is not None
    tokens = ConsumerFormTokens(settings.signing_key())
    three_hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    other_html = await open_form(client, other["username"])
    bad_tokens = {
        "missing": "",
        "forged": "1700000000.AA.0123456789abcdef",
        "expired": tokens.issue(
            "auto-insurance", seller["id"], now=three_hours_ago, embedded_in=None
        ),
        "other seller": form_token_of(other_html),
        "other vertical": form_token_of(await open_form(client, seller["username"], "mortgage")),
        "other key": ConsumerFormTokens(b"another-secret").issue(
            "auto-insurance", seller["id"], now=dt.datetime.now(dt.UTC), embedded_in=None
        ),
    }
    before = await row_counts(session)
    for kind, token in bad_tokens.items():
        answers = consumer_answers()
        response = await submit(client, seller["username"], answers, token=token)
        assert response.status_code == 400, kind
        assert EXPIRED in response.text, kind
        # The answers are kept for sending again, with a fresh token that works.
        assert str(escape(answers["contact.email"])) in response.text, kind
        fresh = form_token_of(response.text)
        assert fresh != token
    assert await row_counts(session) == before

    response = await submit(client, seller["username"], consumer_answers(), token=fresh)
    assert response.status_code == 201, response.text


async def test_a_post_from_another_site_is_refused(
    client: httpx.AsyncClient, session: AsyncSession, seller: dict[str, Any]
) -> None:
    before = await row_counts(session)
    refused = await submit(
        client,
        seller["username"],
        consumer_answers(),
        headers={"Origin": "https://evil.example"},
    )
    assert refused.status_code == 403
    assert "x-frame-options" not in refused.headers  # the refusal shows inside the frame too
    sandboxed = await submit(
        client, seller["username"], consumer_answers(), headers={"Origin": "null"}
    )
    assert sandboxed.status_code == 403
    assert await row_counts(session) == before

    same_site = await submit(
        client,
        seller["username"],
        consumer_answers(),
        headers={"Origin": "https://testserver"},
    )
    assert same_site.status_code == 201, same_site.text


# Who the form is for ----------------------------------------------------------------------


async def test_an_unknown_seller_or_vertical_gets_a_clear_404(
    client: httpx.AsyncClient, session: AsyncSession, seller: dict[str, Any]
) -> None:
    buyer = await register(client, "buyer")
    for path in (
        "/forms/auto-insurance?seller=nobody_here",
        f"/forms/auto-insurance?seller={buyer['username']}",
        "/forms/auto-insurance",
        f"/forms/space-travel?seller={seller['username']}",
    ):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert "This form is not available" in response.text
        assert "x-frame-options" not in response.headers
    before = await row_counts(session)
    token = form_token_of(await open_form(client, seller["username"]))
    response = await client.post(
        "/forms/auto-insurance?seller=nobody_here",
        data={**consumer_answers(), "form_token": token},
        headers={"User-Agent": USER_AGENT},
    )
    assert response.status_code == 404
    assert await row_counts(session) == before


async def test_a_seller_names_match_whatever_their_case(
    client: httpx.AsyncClient, seller: dict[str, Any]
) -> None:
    response = await client.get(form_url(seller["username"].upper()))
    assert response.status_code == 200
    # The consent text names the seller as registered.
    assert seller["username"] in response.text


async def test_a_repeated_request_gets_a_friendly_answer_and_stores_nothing_more(
    client: httpx.AsyncClient, session: AsyncSession, seller: dict[str, Any]
) -> None:
    answers = consumer_answers()
    first = await submit(client, seller["username"], answers)
    assert first.status_code == 201
    before = await row_counts(session)
    again = await submit(client, seller["username"], answers)
    assert again.status_code == 409
    assert "We already have your request" in again.text
    assert "duplicate_of" not in again.text and "lead_" not in again.text
    assert await row_counts(session) == before


# The consent certificate page (L3) --------------------------------------------------------


async def test_the_certificate_page_shows_the_evidence_and_lets_the_consumer_withdraw(
    client: httpx.AsyncClient, session: AsyncSession, seller: dict[str, Any]
) -> None:
    answers = consumer_answers()
    response = await submit(client, seller["username"], answers)
    cert = re.search(r"<code>(cert_[\w-]+)</code>", response.text)
    assert cert
    page = await client.get(f"/consents/{cert.group(1)}")
    assert page.status_code == 200
    vertical = get_vertical("auto-insurance")
    assert vertical is not None
    assert str(escape(vertical.consent_text_for(seller["username"]))) in page.text
    assert "valid" in page.text and "https://testserver/forms/auto-insurance" in page.text
    assert answers["contact.email"] not in page.text
    assert page.headers["x-frame-options"] == "DENY"

    wrong = await client.post(
        f"/consents/{cert.group(1)}",
        data={"csrf_token": csrf_of(page.text), "email": "someone.else@example.com"},
    )
    assert wrong.status_code == 404
    assert "was not given with that email address or phone" in wrong.text

    neither = await client.post(
        f"/consents/{cert.group(1)}", data={"csrf_token": csrf_of(page.text)}
    )
    assert neither.status_code == 422
    assert "email address or the phone number" in neither.text

    done = await client.post(
        f"/consents/{cert.group(1)}",
        data={"csrf_token": csrf_of(page.text), "phone": answers["contact.phone"]},
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"/consents/{cert.group(1)}?done=withdrawn"
    withdrawn = await client.get(done.headers["location"])
    assert "This consent is withdrawn" in withdrawn.text
    assert "badge--warn" in withdrawn.text
    lead = await session.scalar(select(Lead).where(Lead.seller_id == seller["id"]))
    assert lead is not None
    await session.refresh(lead)
    assert lead.status == "withdrawn"


async def test_the_withdrawal_needs_the_pages_csrf_token(
    client: httpx.AsyncClient, seller: dict[str, Any]
) -> None:
    answers = consumer_answers()
    response = await submit(client, seller["username"], answers)
    cert = re.search(r"<code>(cert_[\w-]+)</code>", response.text)
    assert cert
    refused = await client.post(
        f"/consents/{cert.group(1)}", data={"email": answers["contact.email"]}
    )
    assert refused.status_code == 403


# Seller pages (L6) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/seller/leads", "/seller/leads/new", "/seller/leads/new?vertical=mortgage", "/seller/forms"],
)
async def test_seller_pages_send_visitors_to_sign_in_and_refuse_buyers(
    client: httpx.AsyncClient, path: str
) -> None:
    anonymous = await client.get(path)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"].startswith("/signin?next=%2Fseller%2F")

    buyer = await register(client, "buyer")
    await sign_in(client, buyer["username"])
    refused = await client.get(path)
    assert refused.status_code == 403
    assert "These pages are for sellers" in refused.text
    assert refused.headers["x-frame-options"] == "DENY"


async def test_a_buyer_cannot_post_a_lead_through_the_page(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    buyer = await register(client, "buyer")
    await sign_in(client, buyer["username"])
    account = await client.get("/account")
    before = await row_counts(session)
    response = await client.post(
        "/seller/leads/new",
        data={"csrf_token": csrf_of(account.text), "vertical": "auto-insurance"},
    )
    assert response.status_code == 403
    assert await row_counts(session) == before


async def test_a_seller_sees_their_own_leads_and_no_consumers_contact_details(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    other = await register(client, "seller")
    other_body = lead_body()
    posted = await client.post(
        "/api/v1/leads",
        json=other_body,
        headers=bearer(await login(client, other["username"])),
    )
    assert posted.status_code == 201, posted.text

    account = await register(client, "seller")
    auth = bearer(await login(client, account["username"]))
    bodies = [lead_body(), lead_body("health-insurance")]
    bodies[1]["contact"]["email"] = "ana.disposable@mailinator.com"
    mine = []
    for body in bodies:
        response = await client.post("/api/v1/leads", json=body, headers=auth)
        assert response.status_code == 201, response.text
        mine.append(response.json()["id"])
    await sign_in(client, account["username"])

    page = await client.get("/seller/leads")
    assert page.status_code == 200
    html = page.text
    assert mine[0] in html and mine[1] in html
    assert posted.json()["id"] not in html
    assert html.index(mine[1]) < html.index(mine[0])  # newest first
    for body in (*bodies, other_body):
        contact = body["contact"]
        for secret in (
            contact["email"],
            contact["phone"],
            contact["last_name"],
            contact["address"]["street"],
            contact["birth_date"],
        ):
            assert secret not in html
    assert "Auto insurance" in html and "Health insurance" in html
    assert "Fresno, CA" in html and "ZIP 936…" in html
    assert "Auction, 60 min, reserve $15.00, buy now $40.00, exclusive" in html
    assert "The email address is a disposable one." in html
    assert "Disposable email address" in html  # the figures count it by reason
    stats = re.findall(r'<div class="stat"><dt>([^<]+)</dt><dd>([^<]+)</dd>', html)
    assert dict(stats)["Leads"] == "2"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert 'href="/seller/leads" aria-current="page"' in html  # the main navigation


async def test_the_lead_list_is_paged_newest_first(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("leadmarket.leads.views.LEADS_PER_PAGE", 2)
    account = await register(client, "seller")
    auth = bearer(await login(client, account["username"]))
    ids = []
    for _ in range(3):
        response = await client.post("/api/v1/leads", json=lead_body(), headers=auth)
        ids.append(response.json()["id"])
    await sign_in(client, account["username"])
    first = await client.get("/seller/leads")
    assert ids[2] in first.text and ids[1] in first.text and ids[0] not in first.text
    older = re.search(r'href="(/seller/leads\?cursor=[^"]+)">Older leads', first.text)
    assert older
    second = await client.get(older.group(1).replace("&amp;", "&"))
    assert ids[0] in second.text and ids[2] not in second.text
    assert "Older leads" not in second.text and "Newest leads" in second.text
    bad = await client.get("/seller/leads?cursor=__8")
    assert bad.status_code == 422


def manual_lead_form(vertical: str = "auto-insurance", **overrides: str) -> dict[str, str]:
    answers = consumer_answers(vertical)
    del answers["consent.agree"]
    given = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    answers.update(
        {
            "vertical": vertical,
            "consent.disclosure_text": "I agree that quotehound and its partners may call, text "
            "and email me about auto insurance.",
            "consent.page_url": "https://quotes.example.com/auto?email=ana@example.com",
            "consent.ip": "198.51.100.23",
            "consent.user_agent": "Mozilla/5.0 (Macintosh) Safari/17.0",
            "consent.given_at": given.strftime("%Y-%m-%dT%H:%M"),
            "sale.mode": "fixed",
            "sale.currency": "USD",
            "sale.price": "25.50",
            "sale.exclusive": "no",
            "sale.max_buyers": "3",
        }
    )
    answers.update({key.replace("__", "."): value for key, value in overrides.items()})
    return answers


async def test_a_seller_posts_a_lead_by_hand(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account = await web_seller(client)
    chooser = await client.get("/seller/leads/new")
    assert chooser.status_code == 200
    assert {v.slug for v in all_verticals()} == {
        value for value, _ in outline(chooser.text).options["vertical"]
    }
    form = await client.get("/seller/leads/new?vertical=auto-insurance")
    assert form.status_code == 200
    vertical = get_vertical("auto-insurance")
    assert vertical is not None
    # The disclosure starts as the standard text, naming this seller.
    assert str(escape(vertical.consent_text_for(account["username"]))) in form.text
    page = outline(form.text)
    for name in ("consent.page_url", "consent.ip", "consent.user_agent", "consent.given_at"):
        page.control(name)
    for name in ("sale.mode", "sale.reserve", "sale.buy_now", "sale.price", "sale.max_buyers"):
        page.control(name)

    answers = manual_lead_form()
    response = await client.post(
        "/seller/leads/new", data={**answers, "csrf_token": csrf_of(form.text)}
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/seller/leads?done=posted"
    lead = await session.scalar(select(Lead).where(Lead.seller_id == account["id"]))
    assert lead is not None
    assert lead.source == "manual"
    assert (lead.sale_mode, lead.price_cents, lead.exclusive, lead.max_buyers) == (
        "fixed",
        2550,
        False,
        3,
    )
    consent = await session.scalar(select(Consent).where(Consent.lead_id == lead.id))
    assert consent is not None
    assert consent.page_url == "https://quotes.example.com/auto"
    assert (
        consent.text_sha256
        == hashlib.sha256(answers["consent.disclosure_text"].encode()).hexdigest()
    )
    listing = await client.get(response.headers["location"])
    assert "Your lead was posted" in listing.text
    assert "Fixed price $25.50, shared by up to 3 buyers" in listing.text


@pytest.mark.parametrize(
    ("overrides", "element_id", "message"),
    [
        ({"sale__price": ""}, "sale", "A fixed-price sale needs the fixed price."),
        ({"sale__price": "twelve"}, "sale-price", "Enter an amount in dollars"),
        ({"sale__mode": ""}, "sale-mode", "required"),
        ({"sale__max_buyers": "9"}, "sale-max_buyers", "less than or equal to 4"),
        ({"consent__ip": "not-an-ip"}, "consent-ip", "IP"),
        ({"consent__page_url": "ftp://x"}, "consent-page_url", "http(s) address"),
        ({"consent__given_at": "yesterday"}, "consent-given_at", "date and time"),
        ({"consent__given_at": "2001-01-01T10:00"}, "consent-given_at", "older than 30 days"),
        ({"consent__disclosure_text": "ok"}, "consent-disclosure_text", "at least 20"),
        ({"contact__phone": "12345"}, "contact-phone", "does not exist"),
    ],
)
async def test_a_seller_form_with_bad_input_is_shown_again_and_stores_nothing(
    client: httpx.AsyncClient,
    session: AsyncSession,
    overrides: dict[str, str],
    element_id: str,
    message: str,
) -> None:
    await web_seller(client)
    form = await client.get("/seller/leads/new?vertical=auto-insurance")
    before = await row_counts(session)
    answers = manual_lead_form(**overrides)
    response = await client.post(
        "/seller/leads/new", data={**answers, "csrf_token": csrf_of(form.text)}
    )
    assert response.status_code == 422, response.text
    html = response.text
    error = re.search(rf'<p class="field-error" id="{element_id}-error">(.*?)</p>', html, re.S)
    assert error and message in error.group(1), html[html.find("error-summary") :][:800]
    assert f'href="#{element_id}"' in html
    assert f'value="{escape(answers["contact.last_name"])}"' in html
    assert await row_counts(session) == before


async def test_a_seller_form_about_a_child_stores_nothing_and_shows_nothing_back(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await web_seller(client)
    form = await client.get("/seller/leads/new?vertical=auto-insurance")
    before = await row_counts(session)
    answers = manual_lead_form(contact__birth_date=minor_birth_date(12))
    response = await client.post(
        "/seller/leads/new", data={**answers, "csrf_token": csrf_of(form.text)}
    )
    assert response.status_code == 422
    assert "We cannot take leads about children under 14" in response.text
    for typed in ("contact.email", "contact.phone", "contact.last_name", "contact.birth_date"):
        assert answers[typed] not in response.text
    assert await row_counts(session) == before


async def test_a_seller_posting_a_duplicate_gets_a_plain_answer(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await web_seller(client)
    form = await client.get("/seller/leads/new?vertical=auto-insurance")
    token = csrf_of(form.text)
    answers = manual_lead_form()
    first = await client.post("/seller/leads/new", data={**answers, "csrf_token": token})
    assert first.status_code == 303
    before = await row_counts(session)
    again = await client.post("/seller/leads/new", data={**answers, "csrf_token": token})
    assert again.status_code == 409
    assert "We already have this consumer" in again.text
    assert await row_counts(session) == before


async def test_posting_by_hand_needs_the_sessions_csrf_token(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await web_seller(client)
    before = await row_counts(session)
    response = await client.post("/seller/leads/new", data=manual_lead_form())
    assert response.status_code == 403
    assert await row_counts(session) == before


async def test_an_unknown_vertical_on_the_seller_form_is_refused_plainly(
    client: httpx.AsyncClient,
) -> None:
    await web_seller(client)
    response = await client.get("/seller/leads/new?vertical=space-travel")
    assert response.status_code == 404
    assert control_is_in_error(response.text, "vertical")


async def test_the_hosted_forms_page_gives_each_forms_address_and_an_escaped_snippet(
    client: httpx.AsyncClient,
) -> None:
    account = await web_seller(client)
    response = await client.get("/seller/forms")
    assert response.status_code == 200
    html = response.text
    for vertical in all_verticals():
        url = f"https://testserver/forms/{vertical.slug}?seller={account['username']}"
        assert f'href="{url}"' in html
        # The snippet is text to copy, not markup the page runs.
        assert (
            f"&lt;iframe src=&#34;{url}&#34; title=&#34;{vertical.name} request form&#34;" in html
        )
    assert "<iframe" not in html
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
