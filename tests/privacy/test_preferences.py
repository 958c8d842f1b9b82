"""P7, P8, A2: a member's communication preferences through the API and the account page.
Marketing is off until the member opts in; a remembered session may turn things off but not on
(consent needs the password); bad input is a 422 naming the field, nothing changed; the mail
outbox obeys the stored preferences; personalised advertising is a stored, honoured opt-out."""

from __future__ import annotations

import re
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.models import AuditEvent, CommunicationPreference, MailTopic, OutboundMail
from leadmarket.notifications.service import queue_mail
from leadmarket.privacy.preferences import may_personalize_ads
from tests.fixtures.accounts import PASSWORD, bearer, login, register, signed_in
from tests.privacy.helpers import browser_member, csrf_of

URL = "/api/v1/me/preferences"
DEFAULTS = {
    "channels": {"email": True, "phone": False, "text": False, "post": False},
    "topics": {"member_messages": True, "newsletters": False, "promotions": False},
    "personalized_ads": False,
    "do_not_sell": False,
}


def chosen(body: dict[str, Any]) -> dict[str, Any]:
    return {key: body[key] for key in DEFAULTS}


async def test_marketing_and_personalised_ads_are_off_until_the_member_opts_in(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, headers = await signed_in(client, "seller")
    got = await client.get(URL, headers=headers)
    assert got.status_code == 200, got.text
    assert chosen(got.json()) == DEFAULTS
    assert got.json()["marketing_consent_at"] is None
    assert await may_personalize_ads(session, account["id"]) is False
    assert await may_personalize_ads(session, None) is False

    put = await client.put(
        URL,
        json={"topics": {"newsletters": True}, "channels": {"text": True}},
        headers=headers,
    )
    assert put.status_code == 200, put.text
    body = put.json()
    assert body["topics"] == {"member_messages": True, "newsletters": True, "promotions": False}
    assert body["channels"]["text"] is True and body["channels"]["email"] is True
    assert body["marketing_consent_at"] is not None
    again = await client.get(URL, headers=headers)
    assert chosen(again.json()) == chosen(body)
    event = await session.scalar(
        select(AuditEvent).where(
            AuditEvent.action == "preferences.updated", AuditEvent.subject_id == account["id"]
        )
    )
    assert event is not None


async def test_personalised_ads_are_honoured_and_do_not_sell_turns_them_off(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, headers = await signed_in(client)
    on = await client.put(URL, json={"personalized_ads": True}, headers=headers)
    assert on.status_code == 200 and on.json()["personalized_ads"] is True
    assert await may_personalize_ads(session, account["id"]) is True
    off = await client.put(URL, json={"do_not_sell": True}, headers=headers)
    assert off.json()["do_not_sell"] is True
    assert off.json()["do_not_sell_source"] == "member"
    assert off.json()["personalized_ads"] is False
    assert await may_personalize_ads(session, account["id"]) is False


async def test_a_remembered_session_may_narrow_but_widening_needs_the_password(
    client: httpx.AsyncClient,
) -> None:
    account = await register(client)
    headers = bearer(await login(client, account["username"], remember=True))
    narrowed = await client.put(
        URL, json={"topics": {"member_messages": False}, "do_not_sell": True}, headers=headers
    )
    assert narrowed.status_code == 200, narrowed.text
    assert narrowed.json()["topics"]["member_messages"] is False

    for widening in (
        {"topics": {"promotions": True}},
        {"channels": {"phone": True}},
        {"personalized_ads": True},
        {"do_not_sell": False},
        {"topics": {"member_messages": True}},
    ):
        refused = await client.put(URL, json=widening, headers=headers)
        assert refused.status_code == 403, widening
        assert refused.json()["type"] == "/problems/reauth-required"
    unchanged = await client.get(URL, headers=headers)
    assert unchanged.json()["topics"] == {
        "member_messages": False,
        "newsletters": False,
        "promotions": False,
    }
    assert unchanged.json()["do_not_sell"] is True

    reauth = await client.post("/api/v1/auth/reauth", json={"password": PASSWORD}, headers=headers)
    assert reauth.status_code == 200
    allowed = await client.put(URL, json={"topics": {"promotions": True}}, headers=headers)
    assert allowed.status_code == 200 and allowed.json()["topics"]["promotions"] is True


async def test_api_keys_cannot_change_preferences(client: httpx.AsyncClient) -> None:
    _, headers = await signed_in(client, "seller")
    key = await client.post("/api/v1/api-keys", json={"name": "crm"}, headers=headers)
    assert key.status_code == 201, key.text
    with_key = bearer(key.json()["key"])
    refused = await client.put(URL, json={"do_not_sell": True}, headers=with_key)
    assert refused.status_code == 403
    assert (await client.get(URL, headers=with_key)).status_code == 200


async def test_bad_preferences_are_422_naming_the_field_and_change_nothing(
    client: httpx.AsyncClient,
) -> None:
    _, headers = await signed_in(client)
    for body, field in (
        ({"channels": {"email": "yes"}}, "channels.email"),
        ({"topics": {"spam": True}}, "topics.spam"),
        ({"newsletters": True}, "newsletters"),
        ({"personalized_ads": 1}, "personalized_ads"),
    ):
        answer = await client.put(URL, json=body, headers=headers)
        assert answer.status_code == 422, body
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert field in [error["field"] for error in answer.json()["errors"]], answer.text
    not_json = await client.put(
        URL, content=b"{", headers={**headers, "content-type": "application/json"}
    )
    assert not_json.status_code == 422
    assert chosen((await client.get(URL, headers=headers)).json()) == DEFAULTS
    assert (await client.get(URL)).status_code == 401


async def test_the_outbox_obeys_the_stored_preferences(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    account, headers = await signed_in(client)
    address = account["email"]

    async def queued(topic: MailTopic) -> OutboundMail:
        return await queue_mail(
            session,
            settings,
            to=address,
            subject=f"About {topic.value}",
            text_body="Hello",
            template=f"test/{topic.value}",
            topic=topic,
        )

    # Defaults: no marketing (no consent), member messages yes, account mail always.
    assert (await queued(MailTopic.NEWSLETTERS)).suppressed_reason == "no-consent"
    assert (await queued(MailTopic.PROMOTIONS)).status == "suppressed"
    assert (await queued(MailTopic.MEMBER_MESSAGES)).status == "queued"
    assert (await queued(MailTopic.ACCOUNT)).status == "queued"

    await client.put(URL, json={"topics": {"newsletters": True}}, headers=headers)
    assert (await queued(MailTopic.NEWSLETTERS)).status == "queued"
    assert (await queued(MailTopic.PROMOTIONS)).suppressed_reason == "no-consent"

    await client.put(
        URL,
        json={"channels": {"email": False}, "topics": {"member_messages": False}},
        headers=headers,
    )
    assert (await queued(MailTopic.NEWSLETTERS)).suppressed_reason == "no-consent"
    assert (await queued(MailTopic.MEMBER_MESSAGES)).suppressed_reason == "preference"
    assert (await queued(MailTopic.ACCOUNT)).status == "queued"
    assert (await queued(MailTopic.LEGAL_NOTICE)).status == "queued"
    # Marketing to an address with no member behind it: nobody consented.
    stranger = await queue_mail(
        session,
        settings,
        to="nobody@example.com",
        subject="Hi",
        text_body="x",
        template="t",
        topic=MailTopic.PROMOTIONS,
    )
    assert stranger.suppressed_reason == "no-consent"


# The page ---------------------------------------------------------------------------------


def checked(html: str, name: str) -> bool:
    match = re.search(rf'<input[^>]*\bid="{name}"[^>]*>', html)
    assert match, f"no checkbox {name}"
    return " checked" in match.group(0)


def form_of(csrf: str, *on: str) -> dict[str, str]:
    return {"csrf_token": csrf, **{name: "yes" for name in on}}


async def test_the_preferences_page_round_trip(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, _ = await browser_member(client)
    page = await client.get("/account/preferences")
    assert page.status_code == 200
    for name in (
        "email",
        "phone",
        "text",
        "post",
        "member_messages",
        "newsletters",
        "promotions",
        "personalized_ads",
        "do_not_sell",
    ):
        assert f'<label for="{name}">' in page.text, name
    assert checked(page.text, "email") and not checked(page.text, "newsletters")
    csrf = csrf_of(page.text)

    saved = await client.post(
        "/account/preferences", data=form_of(csrf, "email", "text", "promotions", "do_not_sell")
    )
    assert saved.status_code == 303
    assert saved.headers["location"] == "/account/preferences?done=saved"
    shown = await client.get(saved.headers["location"])
    assert "Your preferences were saved." in shown.text
    assert checked(shown.text, "promotions") and checked(shown.text, "text")
    assert not checked(shown.text, "member_messages") and checked(shown.text, "do_not_sell")
    row = await session.get(CommunicationPreference, account["id"], populate_existing=True)
    assert row is not None and row.promotions and not row.member_messages

    tampered = await client.post(
        "/account/preferences", data={**form_of(csrf, "email"), "phone": "maybe"}
    )
    assert tampered.status_code == 422
    assert 'id="phone-error"' in tampered.text
    assert "Tick the box or leave it empty." in tampered.text
    row = await session.get(CommunicationPreference, account["id"], populate_existing=True)
    assert row is not None and row.promotions, "nothing changed"

    forged = await client.post("/account/preferences", data=form_of("wrong", "email"))
    assert forged.status_code == 403


async def test_a_remembered_browser_is_asked_for_the_password_only_to_opt_in(
    client: httpx.AsyncClient,
) -> None:
    await browser_member(client, remember=True)
    page = await client.get("/account/preferences")
    csrf = csrf_of(page.text)
    narrowed = await client.post("/account/preferences", data=form_of(csrf, "email"))
    assert narrowed.status_code == 303
    assert narrowed.headers["location"] == "/account/preferences?done=saved"
    widened = await client.post("/account/preferences", data=form_of(csrf, "email", "newsletters"))
    assert widened.status_code == 303
    assert widened.headers["location"].startswith("/account/reauth?next=")
    assert "%2Faccount%2Fpreferences" in widened.headers["location"]
