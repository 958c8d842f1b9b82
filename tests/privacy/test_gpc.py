"""Global Privacy Control: a request with ``Sec-GPC: 1`` is an opt-out of sale and sharing.
Every page drawn for such a browser says "Opt-out request honored"; a signed-in member's opt-out
is stored with their preferences (and cannot be lifted while the browser still sends it); on
the consumer lead form, the consumer must direct the disclosure to one buyer themselves (else
nothing is stored), and the lead is then exclusive, its consent names only the seller and one
buyer, and the buyer is told not to resell it."""

from __future__ import annotations

import hashlib

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.kit.realtime import LocalBroker
from leadmarket.leads.views import gpc_consent_addendum
from leadmarket.marketplace.service import place_bid
from leadmarket.models import AuditEvent, CommunicationPreference, Consent, Lead, SaleVia, User
from leadmarket.orders.service import sell
from leadmarket.verticals.registry import get_vertical
from tests.fixtures.accounts import signed_in
from tests.fixtures.leads import lead_body
from tests.fixtures.ledger import fund
from tests.leads.test_views import USER_AGENT, consumer_answers, form_token_of, form_url
from tests.privacy.helpers import browser_member

GPC = {"Sec-GPC": "1", "Accept": "text/html"}
HONORED = "Opt-out request honored"


async def test_every_page_for_a_gpc_browser_says_the_opt_out_is_honored(
    client: httpx.AsyncClient,
) -> None:
    _, seller = await signed_in(client, "seller")
    seller_name = (await client.get("/api/v1/me", headers=seller)).json()["username"]
    for path in (
        "/",
        "/signin",
        "/signup",
        "/privacy/notice",
        "/no-such-page",
        form_url(seller_name),
    ):
        with_gpc = await client.get(path, headers=GPC)
        assert HONORED in with_gpc.text, path
        assert 'data-testid="gpc-honored"' in with_gpc.text, path
        without = await client.get(path, headers={"Accept": "text/html"})
        assert HONORED not in without.text, path
    for other_value in ("0", "", "true"):
        page = await client.get("/", headers={"Sec-GPC": other_value})
        assert HONORED not in page.text, other_value
    notice = await client.get("/privacy/notice", headers=GPC)
    assert 'data-testid="gpc-notice"' in notice.text


async def test_a_signed_in_members_gpc_is_stored_as_their_do_not_sell(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, headers = await signed_in(client)
    on = await client.put(
        "/api/v1/me/preferences", json={"personalized_ads": True}, headers=headers
    )
    assert on.json()["personalized_ads"] is True
    # The member's browser (or app) starts sending GPC: any signed-in request stores it.
    for _ in range(2):
        seen = await client.get("/api/v1/me/preferences", headers={**headers, "Sec-GPC": "1"})
        assert seen.status_code == 200
        body = seen.json()
        assert (body["do_not_sell"], body["do_not_sell_source"]) == (True, "gpc")
        assert body["personalized_ads"] is False
        assert body["global_privacy_control"] is True
    events = await session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(
            AuditEvent.action == "preferences.gpc_honoured",
            AuditEvent.subject_id == account["id"],
        )
    )
    assert events == 1, "stored once, not on every request"

    # While the browser sends GPC the opt-out cannot be lifted; without it, it can.
    refused = await client.put(
        "/api/v1/me/preferences", json={"do_not_sell": False}, headers={**headers, "Sec-GPC": "1"}
    )
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "do_not_sell"
    assert "Global Privacy Control" in refused.json()["errors"][0]["message"]
    lifted = await client.put(
        "/api/v1/me/preferences", json={"do_not_sell": False}, headers=headers
    )
    assert lifted.status_code == 200 and lifted.json()["do_not_sell"] is False


async def test_a_gpc_browser_page_visit_stores_it_too(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, _ = await browser_member(client)
    page = await client.get("/account/preferences", headers=GPC)
    assert page.status_code == 200
    assert 'data-testid="gpc-preferences"' in page.text and HONORED in page.text
    row = await session.get(CommunicationPreference, account["id"], populate_existing=True)
    assert row is not None and row.do_not_sell and row.do_not_sell_source == "gpc"


async def test_the_consumer_form_with_gpc_sends_nothing_unless_the_consumer_directs_it(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    seller, _ = await signed_in(client, "seller")
    form = await client.get(form_url(seller["username"]), headers=GPC)
    assert form.status_code == 200
    assert 'data-testid="gpc-consent"' in form.text and 'name="consent.gpc_direct"' in form.text
    plain = await client.get(form_url(seller["username"]))
    assert "consent.gpc_direct" not in plain.text

    answers = consumer_answers()
    refused = await client.post(
        form_url(seller["username"]),
        data={**answers, "form_token": form_token_of(form.text)},
        headers={**GPC, "User-Agent": USER_AGENT},
    )
    assert refused.status_code == 422
    assert 'id="consent-gpc_direct-error"' in refused.text
    assert 'aria-invalid="true"' in refused.text
    stored = await session.scalar(
        select(func.count()).select_from(Lead).where(Lead.seller_id == seller["id"])
    )
    assert stored == 0, "nothing is stored without the consumer's direction"

    directed = await client.post(
        form_url(seller["username"]),
        data={**answers, "consent.gpc_direct": "yes", "form_token": form_token_of(refused.text)},
        headers={**GPC, "User-Agent": USER_AGENT},
    )
    assert directed.status_code == 201, directed.text
    lead = await session.scalar(select(Lead).where(Lead.seller_id == seller["id"]))
    assert lead is not None
    assert (lead.exclusive, lead.max_buyers) == (True, 1)
    consent = await session.scalar(select(Consent).where(Consent.lead_id == lead.id))
    assert consent is not None and consent.global_privacy_control is True
    assert consent.parties == [
        seller["username"],
        "one Leadmarket buyer of auto insurance leads (no resale or onward sharing)",
    ]
    vertical = get_vertical("auto-insurance")
    assert vertical is not None
    shown = f"{vertical.consent_text_for(seller['username'])}\n\n{gpc_consent_addendum(vertical)}"
    assert consent.text_sha256 == hashlib.sha256(shown.encode()).hexdigest()

    # The buyer who wins it is told it may not be resold or shared.
    _, buyer_headers = await signed_in(client, "buyer")
    buyer_id = (await client.get("/api/v1/me", headers=buyer_headers)).json()["id"]
    buyer = await session.get(User, buyer_id)
    assert buyer is not None
    await fund(session, buyer, 10_000)
    settings = client._transport.app.state.settings  # type: ignore[attr-defined]
    await place_bid(
        session, settings, LocalBroker(), lead_id=lead.id, buyer=buyer, amount_cents=1500
    )
    order = await sell(
        session, settings, lead_id=lead.id, buyer_id=buyer.id, price_cents=1500, via=SaleVia.AUCTION
    )
    out = await client.get(f"/api/v1/orders/{order.id}", headers=buyer_headers)
    assert out.json()["resale_prohibited"] is True
    assert out.json()["contact"] is not None


async def test_without_gpc_the_form_consent_is_unchanged(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    seller, _ = await signed_in(client, "seller")
    form = await client.get(form_url(seller["username"]))
    sent = await client.post(
        form_url(seller["username"]),
        data={**consumer_answers(), "form_token": form_token_of(form.text)},
        headers={"User-Agent": USER_AGENT},
    )
    assert sent.status_code == 201, sent.text
    consent = await session.scalar(select(Consent).where(Consent.seller_id == seller["id"]))
    assert consent is not None and consent.global_privacy_control is False
    assert consent.parties[1] == "Leadmarket buyers of auto insurance leads"


async def test_a_seller_posting_a_gpc_consent_through_the_api_gets_an_exclusive_lead(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, seller = await signed_in(client, "seller")
    body = lead_body(
        consent__global_privacy_control=True,
        sale={"mode": "fixed", "price_cents": 2000, "exclusive": False, "max_buyers": 3},
    )
    posted = await client.post("/api/v1/leads", json=body, headers=seller)
    assert posted.status_code == 201, posted.text
    lead = await session.get(Lead, posted.json()["id"])
    assert lead is not None and (lead.exclusive, lead.max_buyers) == (True, 1)
    certificate = await client.get(f"/api/v1/consents/{posted.json()['consent_certificate']}")
    assert "no resale" in certificate.json()["parties"][1]
