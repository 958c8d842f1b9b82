"""The account pages over a real HTTP stack and database: forms that are accessible, refuse bad
input beside the field and write nothing, CSRF on every POST, the session cookie, the redirect to
sign in, and the password page that a remembered session meets before a sensitive change (A2)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.models import ApiKey, AuditEvent, LoginFailure, OutboundMail, User, UserSession
from tests.fixtures.accounts import PASSWORD, link_token, mails_to, member, register

NEW_PASSWORD = "copper-lantern-meadow-77"


# Helpers ----------------------------------------------------------------------------------


class FormOutline(HTMLParser):
    """The parts of a page the accessibility checks look at."""

    def __init__(self) -> None:
        super().__init__()
        self.html_lang: str | None = None
        self.inputs: list[dict[str, str | None]] = []
        self.label_targets: set[str] = set()
        self.ids: set[str] = set()
        self.landmarks: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids.add(str(attributes["id"]))
        if tag == "html":
            self.html_lang = attributes.get("lang")
        elif tag in ("input", "select", "textarea") and attributes.get("type") != "hidden":
            self.inputs.append(attributes)
        elif tag == "label" and attributes.get("for"):
            self.label_targets.add(str(attributes["for"]))
        elif tag in ("header", "main", "nav", "footer"):
            self.landmarks.add(tag)
        elif tag == "a" and attributes.get("href"):
            self.links.append(str(attributes["href"]))


def outline(html: str) -> FormOutline:
    parser = FormOutline()
    parser.feed(html)
    return parser


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def input_tag(html: str, element_id: str) -> str:
    match = re.search(rf'<input[^>]*\bid="{re.escape(element_id)}"[^>]*>', html)
    assert match, f"no input #{element_id}"
    return match.group(0)


def set_cookie(response: httpx.Response, name: str) -> str:
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(f"{name}="):
            return header
    raise AssertionError(f"no Set-Cookie for {name}")


def signup_form(**overrides: str) -> dict[str, str]:
    body = member()
    form = {
        "email": body["email"],
        "username": body["username"],
        "password": PASSWORD,
        "role": "seller",
        "name": "Ana Silva",
        "phone": "+14155550123",
        "address.street": "1 Main St",
        "address.city": "Fresno",
        "address.region": "CA",
        "address.postal_code": "93650",
        "address.country": "US",
    }
    form.update(overrides)
    return form


async def count(session: AsyncSession, model: type[object]) -> int:
    return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def visitor_csrf(client: httpx.AsyncClient, path: str = "/signup") -> str:
    page = await client.get(path)
    assert page.status_code == 200
    return csrf_of(page.text)


async def sign_in(
    client: httpx.AsyncClient, login: str, password: str = PASSWORD, *, remember: bool = False
) -> httpx.Response:
    token = await visitor_csrf(client, "/signin")
    form = {"csrf_token": token, "login": login, "password": password}
    if remember:
        form["remember"] = "yes"
    return await client.post("/signin", data=form)


async def signed_in_member(
    client: httpx.AsyncClient, *, remember: bool = False
) -> tuple[dict[str, str], str]:
    """A registered member signed in through the page; returns the account and the CSRF token
    of their web session."""
    account = await register(client)
    response = await sign_in(client, account["username"], remember=remember)
    assert response.status_code == 303, response.text
    page = await client.get("/account")
    assert page.status_code == 200
    return account, csrf_of(page.text)


# Page structure and accessibility ---------------------------------------------------------


async def test_signup_page_has_a_label_for_every_input(client: httpx.AsyncClient) -> None:
    response = await client.get("/signup")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = outline(response.text)
    assert page.html_lang == "en"
    assert {"header", "main", "nav", "footer"} <= page.landmarks
    assert "#main" in page.links  # the skip link
    names = {str(i.get("name")) for i in page.inputs}
    assert {"email", "username", "password", "role", "name", "phone", "address.city"} <= names
    unlabelled = [i.get("name") for i in page.inputs if i.get("id") not in page.label_targets]
    assert unlabelled == []
    password = next(i for i in page.inputs if i.get("name") == "password")
    assert password.get("type") == "password" and password.get("autocomplete") == "new-password"
    # Every aria-describedby points at something that exists.
    for field in page.inputs:
        for target in (field.get("aria-describedby") or "").split():
            assert target in page.ids


@pytest.mark.parametrize("path", ["/", "/signin", "/signup", "/forgot-password"])
async def test_pages_carry_the_security_headers(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "style-src 'self'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    # The CSP forbids inline styles and scripts, so the pages must not rely on any.
    assert "style=" not in response.text and "<script" not in response.text


async def test_stylesheet_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/static/site.css")
    assert response.status_code == 200
    assert ":focus-visible" in response.text


async def test_home_links_to_sign_up_or_to_the_account(client: httpx.AsyncClient) -> None:
    anonymous = outline((await client.get("/")).text)
    assert "/signup" in anonymous.links and "/signin" in anonymous.links
    account, _ = await signed_in_member(client)
    home = await client.get("/")
    assert "/account" in outline(home.text).links
    assert account["username"] in home.text
    assert 'action="/signout"' in home.text


# Sign-up and verification (A1) ------------------------------------------------------------


async def test_bad_signup_shows_errors_beside_fields_and_writes_nothing(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    users, mails = await count(session, User), await count(session, OutboundMail)
    token = await visitor_csrf(client)
    form = signup_form(email="not-an-email", username="a", phone="+1555", name="   ")
    del form["role"]
    response = await client.post("/signup", data={**form, "csrf_token": token})
    assert response.status_code == 422
    html = response.text
    for field in ("email", "username", "phone", "name"):
        tag = input_tag(html, field)
        assert 'aria-invalid="true"' in tag
        assert f"{field}-error" in tag  # aria-describedby names the message
        assert f'id="{field}-error"' in html
    assert 'id="role-error"' in html
    assert "This field is required." in html
    assert "There is a problem" in html and "<title>Error:" in html
    # The values typed come back, except the password.
    assert 'value="not-an-email"' in input_tag(html, "email")
    assert 'value="Fresno"' in input_tag(html, "address-city")
    assert PASSWORD not in html
    assert await count(session, User) == users
    assert await count(session, OutboundMail) == mails


async def test_weak_password_is_refused_beside_the_password_field(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    users = await count(session, User)
    token = await visitor_csrf(client)
    response = await client.post(
        "/signup", data={**signup_form(password="password123"), "csrf_token": token}
    )
    assert response.status_code == 422
    assert 'aria-invalid="true"' in input_tag(response.text, "password")
    assert "password123" not in response.text
    assert await count(session, User) == users


async def test_taken_username_is_409_beside_the_field(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    first = await register(client)
    users = await count(session, User)
    token = await visitor_csrf(client)
    response = await client.post(
        "/signup",
        data={**signup_form(username=first["username"].upper()), "csrf_token": token},
    )
    assert response.status_code == 409
    assert 'aria-invalid="true"' in input_tag(response.text, "username")
    assert "This username is taken." in response.text
    assert await count(session, User) == users


async def test_signup_then_the_emailed_link_verifies_the_address(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    no_address = {f"address.{part}": "" for part in ("street", "city", "region", "postal_code")}
    form = signup_form(phone="", **no_address)
    token = await visitor_csrf(client)
    response = await client.post("/signup", data={**form, "csrf_token": token})
    assert response.status_code == 201
    assert "Check your email" in response.text
    user = await session.scalar(select(User).where(User.email == form["email"]))
    assert user is not None and user.role == "seller"
    # Empty optional inputs are stored as nothing, not as empty strings.
    assert user.phone is None and user.address is None
    assert user.email_verified_at is None
    (mail,) = await mails_to(session, form["email"])
    verify = await client.get(f"/verify-email?token={link_token(mail, '/verify-email')}")
    assert verify.status_code == 200
    assert "Email address confirmed" in verify.text
    await session.refresh(user)
    assert user.email_verified_at is not None


@pytest.mark.parametrize("query", ["", "?token=", "?token=forged.token", "?token=" + "x" * 3000])
async def test_bad_verification_link_is_a_clear_400_page(
    client: httpx.AsyncClient, query: str
) -> None:
    response = await client.get(f"/verify-email{query}")
    assert response.status_code == 400
    assert "invalid or has expired" in response.text


# CSRF -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "wrong", "other-cookie", "no-cookie", "cross-origin"])
async def test_signup_without_a_valid_csrf_token_is_403_and_writes_nothing(
    app: object, client: httpx.AsyncClient, session: AsyncSession, case: str
) -> None:
    users, mails = await count(session, User), await count(session, OutboundMail)
    token = await visitor_csrf(client)
    form = signup_form()
    headers: dict[str, str] = {}
    if case == "wrong":
        form["csrf_token"] = token[:-2] + ("00" if not token.endswith("00") else "11")
    elif case == "other-cookie":
        # A token minted for another visitor's cookie is worthless with ours.
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
            base_url="https://testserver",
        ) as other:
            form["csrf_token"] = await visitor_csrf(other)
    elif case == "no-cookie":
        form["csrf_token"] = token
        client.cookies.delete("lm_csrf")
    elif case == "cross-origin":
        form["csrf_token"] = token
        headers["origin"] = "https://evil.example"
    response = await client.post("/signup", data=form, headers=headers)
    assert response.status_code == 403
    assert "Your form expired, please try again" in response.text
    assert response.headers["content-type"].startswith("text/html")
    assert await count(session, User) == users
    assert await count(session, OutboundMail) == mails


async def test_same_origin_header_is_accepted(client: httpx.AsyncClient) -> None:
    token = await visitor_csrf(client)
    response = await client.post(
        "/signup",
        data={**signup_form(), "csrf_token": token},
        headers={"origin": "https://testserver"},
    )
    assert response.status_code == 201


@pytest.mark.parametrize("case", ["missing", "wrong", "anonymous-token", "cross-origin"])
async def test_signed_in_form_without_the_session_token_is_403_and_writes_nothing(
    client: httpx.AsyncClient, session: AsyncSession, case: str
) -> None:
    account, token = await signed_in_member(client)
    form = {"name": "Mallory Changed", "username": account["username"], "email": account["email"]}
    headers: dict[str, str] = {}
    if case == "wrong":
        form["csrf_token"] = "not-the-session-token"
    elif case == "anonymous-token":
        # The double-submit token of a visitor form does not stand in for the session's.
        page = (await client.get("/forgot-password")).text
        # The last token on the page is the form's; the first is the nav's sign-out button.
        form["csrf_token"] = re.findall(r'name="csrf_token" value="([^"]+)"', page)[-1]
        assert form["csrf_token"] != token
    elif case == "cross-origin":
        form["csrf_token"] = token
        headers["origin"] = "null"
    response = await client.post("/account/profile", data=form, headers=headers)
    assert response.status_code == 403
    assert "Your form expired, please try again" in response.text
    user = await session.scalar(select(User).where(User.username == account["username"]))
    assert user is not None and user.name == account["name"]


async def test_sign_out_needs_the_session_token(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, token = await signed_in_member(client)
    refused = await client.post("/signout", data={"csrf_token": "forged"})
    assert refused.status_code == 403
    assert (await client.get("/account")).status_code == 200  # still signed in
    response = await client.post("/signout", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["location"] == "/?done=signed-out"
    assert "Max-Age=0" in set_cookie(response, "lm_session")
    assert await count(session, UserSession) >= 1
    live = await session.scalar(
        select(func.count()).select_from(UserSession).where(UserSession.revoked_at.is_(None))
    )
    assert live == 0


# Sign-in, cookie, redirects ---------------------------------------------------------------


async def test_visitor_form_sets_a_strict_httponly_csrf_cookie(client: httpx.AsyncClient) -> None:
    response = await client.get("/signin")
    cookie = set_cookie(response, "lm_csrf")
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie
    assert "Max-Age" not in cookie
    # The same cookie serves the next form; it is not replaced on every page.
    again = await client.get("/signup")
    assert "lm_csrf=" not in (again.headers.get("set-cookie") or "")


@pytest.mark.parametrize("remember", [False, True])
async def test_sign_in_sets_an_httponly_secure_samesite_cookie(
    client: httpx.AsyncClient, session: AsyncSession, remember: bool
) -> None:
    account = await register(client)
    response = await sign_in(client, account["email"].upper(), remember=remember)
    assert response.status_code == 303
    assert response.headers["location"] == "/account"
    header = set_cookie(response, "lm_session")
    morsel = SimpleCookie(header)["lm_session"]
    assert morsel["httponly"] and morsel["secure"]
    assert morsel["samesite"].lower() == "lax" and morsel["path"] == "/"
    # Only a remembered session outlives the browser.
    if remember:
        assert 29 * 86400 < int(morsel["max-age"]) <= 30 * 86400
    else:
        assert morsel["max-age"] == "" and morsel["expires"] == ""
    stored = await session.scalar(
        select(UserSession).where(UserSession.user_id == account["id"], UserSession.kind == "web")
    )
    assert stored is not None and stored.remembered is remember and stored.csrf_token
    assert (await client.get("/account")).status_code == 200


async def test_wrong_password_shows_the_form_again_and_is_counted(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account = await register(client)
    failures = await count(session, LoginFailure)
    response = await sign_in(client, account["username"], "not-my-password")
    assert response.status_code == 401
    assert "The email, username or password is wrong." in response.text
    assert f'value="{account["username"]}"' in input_tag(response.text, "login")
    assert "not-my-password" not in response.text
    assert "lm_session=" not in (response.headers.get("set-cookie") or "")
    assert await count(session, LoginFailure) == failures + 2  # per account and per address


async def test_throttled_sign_in_says_how_long_to_wait(client: httpx.AsyncClient) -> None:
    account = await register(client)
    for _ in range(5):
        assert (await sign_in(client, account["username"], "wrong-guess-1")).status_code == 401
    response = await sign_in(client, account["username"])
    assert response.status_code == 429
    assert re.search(r"Try again in \d+ (seconds|minutes)\.", response.text)
    assert 1 <= int(response.headers["retry-after"]) <= 15 * 60


async def test_empty_sign_in_names_both_fields(client: httpx.AsyncClient) -> None:
    token = await visitor_csrf(client, "/signin")
    response = await client.post("/signin", data={"csrf_token": token, "login": ""})
    assert response.status_code == 422
    assert 'aria-invalid="true"' in input_tag(response.text, "login")
    assert 'aria-invalid="true"' in input_tag(response.text, "password")


@pytest.mark.parametrize(
    "path", ["/account", "/account/sessions", "/account/api-keys", "/account/reauth"]
)
async def test_protected_page_without_cookie_redirects_to_sign_in(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/signin"
    assert parse_qs(location.query)["next"] == [path]


async def test_protected_post_without_cookie_redirects_to_the_form_page(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/account/password", data={"csrf_token": "x"})
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?next=%2Faccount"


async def test_sign_in_returns_to_next_but_only_on_this_site(client: httpx.AsyncClient) -> None:
    account = await register(client)
    page = await client.get("/signin?next=/account/sessions")
    assert 'name="next" value="/account/sessions"' in page.text
    response = await client.post(
        "/signin",
        data={
            "csrf_token": csrf_of(page.text),
            "login": account["username"],
            "password": PASSWORD,
            "next": "/account/sessions",
        },
    )
    assert response.headers["location"] == "/account/sessions"
    for hostile in ("//evil.example/", "https://evil.example/", "/\\evil.example", "account"):
        client.cookies.delete("lm_session")
        response = await client.post(
            "/signin",
            data={
                "csrf_token": csrf_of(page.text),
                "login": account["username"],
                "password": PASSWORD,
                "next": hostile,
            },
        )
        assert response.headers["location"] == "/account", hostile


# Account page, step-up (A2), own data (A4, A5) ----------------------------------------------


async def test_account_page_shows_own_data_and_records_the_read(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, _ = await signed_in_member(client)
    response = await client.get("/account")
    assert response.status_code == 200
    for shown in (account["email"], account["name"], account["phone"], "Fresno"):
        assert shown in response.text
    assert "Send the confirmation link again" in response.text
    reads = await session.scalars(
        select(AuditEvent).where(
            AuditEvent.action == "pii.read", AuditEvent.subject_id == account["id"]
        )
    )
    assert any(event.reason == "self-service (web)" for event in reads)


async def test_remembered_session_is_sent_to_reauth_for_a_password_change(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, token = await signed_in_member(client, remember=True)
    change = {"csrf_token": token, "current_password": PASSWORD, "new_password": NEW_PASSWORD}
    response = await client.post("/account/password", data=change)
    assert response.status_code == 303
    assert response.headers["location"] == "/account/reauth?next=%2Faccount"
    user = await session.scalar(select(User).where(User.id == account["id"]))
    assert user is not None
    hash_before = user.password_hash

    reauth_page = await client.get(response.headers["location"])
    assert reauth_page.status_code == 200
    assert "Enter your password again" in reauth_page.text
    assert 'name="next" value="/account"' in reauth_page.text
    wrong = await client.post(
        "/account/reauth", data={"csrf_token": token, "password": "nope-nope", "next": "/account"}
    )
    assert wrong.status_code == 401
    assert 'aria-invalid="true"' in input_tag(wrong.text, "password")

    unlocked = await client.post(
        "/account/reauth", data={"csrf_token": token, "password": PASSWORD, "next": "/account"}
    )
    assert unlocked.status_code == 303 and unlocked.headers["location"] == "/account"
    done = await client.post("/account/password", data=change)
    assert done.status_code == 303 and done.headers["location"] == "/account?done=password"
    await session.refresh(user)
    assert user.password_hash != hash_before
    assert any(
        m.template == "accounts/password_changed" for m in await mails_to(session, user.email)
    )

    client.cookies.clear()
    assert (await sign_in(client, account["username"])).status_code == 401
    assert (await sign_in(client, account["username"], NEW_PASSWORD)).status_code == 303


async def test_wrong_current_password_is_shown_beside_the_field(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, token = await signed_in_member(client)
    response = await client.post(
        "/account/password",
        data={"csrf_token": token, "current_password": "wrong", "new_password": NEW_PASSWORD},
    )
    assert response.status_code == 422
    assert 'aria-invalid="true"' in input_tag(response.text, "password-current_password")
    assert NEW_PASSWORD not in response.text
    assert not await mails_to(session, account["email"]) or all(
        m.template != "accounts/password_changed" for m in await mails_to(session, account["email"])
    )


async def test_profile_update_refuses_bad_input_and_saves_good_input(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, token = await signed_in_member(client)
    page = await client.get("/account")
    assert f'value="{account["name"]}"' in input_tag(page.text, "profile-name")
    form = {
        "csrf_token": token,
        "username": account["username"],
        "email": account["email"],
        "name": "Ana Maria Silva",
        "phone": "+1555",
        "address.street": "1 Main St",
        "address.city": "Fresno",
        "address.region": "CA",
        "address.postal_code": "93650",
        "address.country": "US",
    }
    refused = await client.post("/account/profile", data=form)
    assert refused.status_code == 422
    assert 'aria-invalid="true"' in input_tag(refused.text, "profile-phone")
    assert 'value="Ana Maria Silva"' in input_tag(refused.text, "profile-name")
    user = await session.scalar(select(User).where(User.id == account["id"]))
    assert user is not None and user.name == "Ana Silva"

    saved = await client.post(
        "/account/profile", data={**form, "phone": "", "address.city": "Sacramento"}
    )
    assert saved.status_code == 303 and saved.headers["location"] == "/account?done=profile"
    await session.refresh(user)
    assert user.name == "Ana Maria Silva" and user.phone is None
    assert user.address is not None and user.address["city"] == "Sacramento"
    updated = await session.scalar(
        select(AuditEvent)
        .where(AuditEvent.action == "account.updated", AuditEvent.subject_id == user.id)
        .order_by(AuditEvent.seq.desc())
    )
    assert updated is not None and updated.fields == ["address", "name", "phone"]
    assert "Your details were saved." in (await client.get(saved.headers["location"])).text


async def test_closing_needs_the_confirmation_box_then_erases_the_account(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, token = await signed_in_member(client)
    unconfirmed = await client.post("/account/close", data={"csrf_token": token})
    assert unconfirmed.status_code == 422
    assert 'aria-invalid="true"' in input_tag(unconfirmed.text, "close-confirm")
    closed = await client.post("/account/close", data={"csrf_token": token, "confirm": "yes"})
    assert closed.status_code == 303 and closed.headers["location"] == "/?done=closed"
    user = await session.scalar(select(User).where(User.id == account["id"]))
    assert user is not None and user.status == "closed" and user.name is None
    assert (await client.get("/account")).status_code == 303


# Sessions (A3) and API keys ---------------------------------------------------------------


async def test_sessions_page_marks_this_browser_and_revoking_it_signs_out(
    client: httpx.AsyncClient,
) -> None:
    _, token = await signed_in_member(client)
    page = await client.get("/account/sessions")
    assert page.status_code == 200 and "this browser" in page.text
    action = re.search(r'action="(/account/sessions/[^"]+/revoke)"', page.text)
    assert action
    response = await client.post(action.group(1), data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["location"] == "/?done=signed-out"
    assert (await client.get("/account")).status_code == 303


async def test_revoking_another_session_from_a_remembered_one_needs_the_password(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, token = await signed_in_member(client, remember=True)
    other = await client.post(
        "/api/v1/auth/login", json={"login": account["username"], "password": PASSWORD}
    )
    other_id = other.json()["session_id"]
    response = await client.post(f"/account/sessions/{other_id}/revoke", data={"csrf_token": token})
    assert response.status_code == 303
    assert response.headers["location"] == "/account/reauth?next=%2Faccount%2Fsessions"
    target = await session.get(UserSession, other_id)
    assert target is not None and target.revoked_at is None


async def test_api_key_is_shown_once_and_can_be_revoked(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, token = await signed_in_member(client)
    empty_name = await client.post("/account/api-keys", data={"csrf_token": token, "name": " "})
    assert empty_name.status_code == 422
    assert 'aria-invalid="true"' in input_tag(empty_name.text, "name")
    created = await client.post("/account/api-keys", data={"csrf_token": token, "name": "crm"})
    assert created.status_code == 201
    key = re.search(r'value="(lmk_[^"]+)"', created.text)
    assert key
    listing = await client.get("/account/api-keys")
    assert key.group(1) not in listing.text
    stored = await session.scalar(select(ApiKey).where(ApiKey.name == "crm"))
    assert stored is not None and stored.prefix in listing.text
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {key.group(1)}"})
    assert me.status_code == 200
    revoked = await client.post(f"/account/api-keys/{stored.id}/revoke", data={"csrf_token": token})
    assert revoked.status_code == 303
    await session.refresh(stored)
    assert stored.revoked_at is not None


# Password reset and public profiles -------------------------------------------------------


async def test_forgot_password_answers_the_same_for_any_address(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account = await register(client)
    token = await visitor_csrf(client, "/forgot-password")
    known = await client.post(
        "/forgot-password", data={"csrf_token": token, "email": account["email"]}
    )
    unknown = await client.post(
        "/forgot-password", data={"csrf_token": token, "email": "nobody@example.com"}
    )
    assert known.status_code == unknown.status_code == 200
    assert "is on its way" in known.text and "is on its way" in unknown.text
    mail = next(
        m
        for m in await mails_to(session, account["email"])
        if m.template == "accounts/password_reset"
    )
    reset_token = link_token(mail, "/reset-password")
    form_page = await client.get(f"/reset-password?token={reset_token}")
    assert form_page.status_code == 200
    weak = await client.post(
        "/reset-password",
        data={"csrf_token": csrf_of(form_page.text), "token": reset_token, "new_password": "abc"},
    )
    assert weak.status_code == 422
    assert 'aria-invalid="true"' in input_tag(weak.text, "new_password")
    done = await client.post(
        "/reset-password",
        data={
            "csrf_token": csrf_of(form_page.text),
            "token": reset_token,
            "new_password": NEW_PASSWORD,
        },
    )
    assert done.status_code == 200 and "Your password was changed" in done.text
    reused = await client.post(
        "/reset-password",
        data={
            "csrf_token": csrf_of(form_page.text),
            "token": reset_token,
            "new_password": "another-fine-passphrase-9",
        },
    )
    assert reused.status_code == 400
    assert (await sign_in(client, account["username"], NEW_PASSWORD)).status_code == 303


async def test_public_profile_shows_no_personal_data(client: httpx.AsyncClient) -> None:
    account = await register(client)
    response = await client.get(f"/members/{account['username']}")
    assert response.status_code == 200
    assert account["username"] in response.text and "No feedback yet." in response.text
    for private in (account["email"], account["name"], account["phone"]):
        assert private not in response.text
    missing = await client.get("/members/nobody_at_all")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")


async def test_suspended_member_sees_public_pages_as_a_visitor_and_can_sign_out(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, _ = await signed_in_member(client)
    user = await session.scalar(select(User).where(User.id == account["id"]))
    assert user is not None
    user.status = "suspended"
    await session.flush()
    home = await client.get("/")
    assert home.status_code == 200 and "/signin" in outline(home.text).links
    assert (await client.get("/account")).status_code == 403
    response = await client.post("/signout", data={})
    assert response.status_code == 303
    assert "Max-Age=0" in set_cookie(response, "lm_session")


async def test_page_errors_are_html_whatever_the_accept_header(client: httpx.AsyncClient) -> None:
    response = await client.get("/members/nobody_here", headers={"accept": "application/json"})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "No member has this username." in response.text
