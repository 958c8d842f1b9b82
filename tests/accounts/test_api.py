"""The accounts API against a real database: registration (A1), sign-in and its throttle,
remembered sessions and step-up (A2), sign-out and session revocation (A3), API keys, email
verification, password reset and account closure (A5)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.models import ApiKey, User, UserSession
from tests.fixtures.accounts import (
    PASSWORD,
    bearer,
    link_token,
    login,
    mails_to,
    member,
    register,
    signed_in,
)

NEW_PASSWORD = "copper-lantern-meadow-77"


async def count_users(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(User)) or 0)


# Registration ------------------------------------------------------------------------------


async def test_register_creates_member_and_sends_verification_link(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    body = member("seller", email="Ana.Silva@Example.COM")
    response = await client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 201
    out = response.json()
    assert out["username"] == body["username"] and out["role"] == "seller" and out["id"]
    assert "password" not in response.text
    user = await session.get(User, out["id"])
    assert user is not None
    assert user.email == "ana.silva@example.com"
    assert user.phone == "+14155550123"
    assert user.password_hash.startswith("$argon2id$")
    (mail,) = await mails_to(session, "ana.silva@example.com")
    assert link_token(mail, "/verify-email")


@pytest.mark.parametrize("field", ["email", "username"])
async def test_duplicate_email_or_username_is_409_naming_the_field(
    client: httpx.AsyncClient, session: AsyncSession, field: str
) -> None:
    first = await register(client)
    before = await count_users(session)
    clash = first[field].upper() if field == "username" else first[field].title()
    response = await client.post("/api/v1/auth/register", json=member(**{field: clash}))
    assert response.status_code == 409
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["status"] == 409 and problem["type"].endswith("/conflict")
    assert [e["field"] for e in problem["errors"]] == [field]
    assert await count_users(session) == before


@pytest.mark.parametrize(
    "password", ["password123", "qwertyuiop", "short1!", "aaaaaaaaaaaa", "AnaSilva"]
)
async def test_weak_or_common_password_is_422_saying_why(
    client: httpx.AsyncClient, session: AsyncSession, password: str
) -> None:
    before = await count_users(session)
    response = await client.post("/api/v1/auth/register", json=member(password=password))
    assert response.status_code == 422
    problem = response.json()
    assert problem["errors"][0]["field"] == "password"
    assert len(problem["errors"][0]["message"]) > 10
    assert await count_users(session) == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"phone": "+1555"}, "phone"),
        ({"phone": "+1 202 000 0000"}, "phone"),
        ({"username": "a"}, "username"),
        ({"username": "admin"}, "username"),
        ({"username": "has space"}, "username"),
        ({"role": "admin"}, "role"),
        ({"name": "   "}, "name"),
        ({"name": 42}, "name"),
        ({"address": {"country": "USA"}}, "address.country"),
        ({"address": "1 Main St"}, "address"),
        ({"unexpected": "x"}, "unexpected"),
        ({"email": None}, "email"),
        ({"name": "Ana\u0000Silva"}, "name"),
        ({"username": "ana\u0000"}, "username"),
        ({"address": {"city": "Fres\u0000no"}}, "address.city"),
        ({"address": {"country": "ZZ"}}, "address.country"),  # no such country
        ({"address": {"region": "ZZ"}}, "address.region"),  # no such state
        ({"address": {"region": "CA", "postal_code": "abc"}}, "address.postal_code"),
        ({"address": {"region": "CA", "postal_code": "10001"}}, "address.postal_code"),  # NY's
        ({"address": {"country": "CA", "region": "TX"}}, "address.region"),
    ],
)
async def test_malformed_registration_names_the_field_and_writes_nothing(
    client: httpx.AsyncClient, session: AsyncSession, change: dict[str, object], field: str
) -> None:
    before = await count_users(session)
    response = await client.post("/api/v1/auth/register", json=member(**change))
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]
    assert await count_users(session) == before


async def test_missing_fields_are_all_named(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/auth/register", json={})
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert {"email", "username", "password", "role", "name"} <= fields


@pytest.mark.parametrize(
    "content",
    [b"{", b"[]", b"null", b'"text"', '{"email": "\udc80"}'.encode("utf-8", "surrogatepass")],
)
async def test_body_that_is_not_a_json_object_is_422(
    client: httpx.AsyncClient, content: bytes
) -> None:
    response = await client.post(
        "/api/v1/auth/register", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_oversized_body_is_413(client: httpx.AsyncClient, session: AsyncSession) -> None:
    before = await count_users(session)
    response = await client.post("/api/v1/auth/register", json=member(name="x" * 2_000_000))
    assert response.status_code == 413
    assert response.json()["type"].endswith("/payload-too-large")
    assert await count_users(session) == before


# Sign-in, throttle, sign-out ---------------------------------------------------------------


async def test_login_by_email_or_username(client: httpx.AsyncClient) -> None:
    account = await register(client)
    for name in (account["email"].upper(), account["username"].upper()):
        response = await client.post(
            "/api/v1/auth/login", json={"login": name, "password": PASSWORD, "remember": False}
        )
        assert response.status_code == 200
        out = response.json()
        assert out["remembered"] is False and out["token"] and out["expires_at"]


async def test_wrong_password_and_unknown_login_look_the_same(client: httpx.AsyncClient) -> None:
    account = await register(client)
    wrong = await client.post(
        "/api/v1/auth/login", json={"login": account["username"], "password": "nope-nope-nope"}
    )
    unknown = await client.post(
        "/api/v1/auth/login", json={"login": "nobody_here", "password": "nope-nope-nope"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"]


async def test_login_is_throttled_per_account_with_retry_after(
    client: httpx.AsyncClient, settings: object
) -> None:
    account = await register(client)
    for _ in range(5):
        response = await client.post(
            "/api/v1/auth/login", json={"login": account["username"], "password": "wrong-guess-1"}
        )
        assert response.status_code == 401
    # Even the right password is refused while the account is throttled.
    response = await client.post(
        "/api/v1/auth/login", json={"login": account["username"], "password": PASSWORD}
    )
    assert response.status_code == 429
    assert response.json()["type"].endswith("/too-many-requests")
    assert 1 <= int(response.headers["retry-after"]) <= 15 * 60


async def test_login_is_throttled_per_ip(app: object, client: httpx.AsyncClient) -> None:
    account = await register(client)
    for i in range(30):
        response = await client.post(
            "/api/v1/auth/login", json={"login": f"guess_{i}", "password": "wrong-guess-1"}
        )
        assert response.status_code == 401
    response = await client.post(
        "/api/v1/auth/login", json={"login": account["username"], "password": PASSWORD}
    )
    assert response.status_code == 429
    # Another address is not affected.
    other = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("198.51.100.7", 1)),  # type: ignore[arg-type]
        base_url="https://testserver",
    )
    async with other:
        ok = await other.post(
            "/api/v1/auth/login", json={"login": account["username"], "password": PASSWORD}
        )
    assert ok.status_code == 200


async def test_logout_kills_the_token_at_once(client: httpx.AsyncClient) -> None:
    _, auth = await signed_in(client)
    assert (await client.get("/api/v1/me", headers=auth)).status_code == 200
    assert (await client.post("/api/v1/auth/logout", headers=auth)).status_code == 204
    response = await client.get("/api/v1/me", headers=auth)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_no_credentials_or_bad_scheme_is_401(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/me")).status_code == 401
    bad = await client.get("/api/v1/me", headers={"Authorization": "Basic abc"})
    assert bad.status_code == 401
    forged = await client.get("/api/v1/me", headers=bearer("lms_forged"))
    assert forged.status_code == 401


async def test_only_a_hash_of_the_session_token_is_stored(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, auth = await signed_in(client)
    token = auth["Authorization"].split()[1]
    stored = (await session.scalars(select(UserSession.token_hash))).all()
    assert token not in stored and len(stored) >= 1


# Remembered sessions and step-up (A2) ------------------------------------------------------


async def test_remembered_session_may_view_but_not_change_without_reauth(
    client: httpx.AsyncClient,
) -> None:
    account, auth = await signed_in(client, remember=True)
    assert (await client.get("/api/v1/me", headers=auth)).status_code == 200
    assert (await client.get("/api/v1/me/sessions", headers=auth)).status_code == 200

    refused = [
        await client.patch("/api/v1/me", json={"name": "Ana S."}, headers=auth),
        await client.post(
            "/api/v1/me/password",
            json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
            headers=auth,
        ),
        await client.patch("/api/v1/me", json={"username": "renamed_ana"}, headers=auth),
        await client.post("/api/v1/api-keys", json={"name": "crm"}, headers=auth),
        await client.delete("/api/v1/me", headers=auth),
    ]
    for response in refused:
        assert response.status_code == 403
        assert response.json()["type"].endswith("/reauth-required")

    wrong = await client.post("/api/v1/auth/reauth", json={"password": "wrong"}, headers=auth)
    assert wrong.status_code == 401
    ok = await client.post("/api/v1/auth/reauth", json={"password": PASSWORD}, headers=auth)
    assert ok.status_code == 200 and ok.json()["reauth_until"]

    changed = await client.patch("/api/v1/me", json={"name": "Ana S."}, headers=auth)
    assert changed.status_code == 200 and changed.json()["name"] == "Ana S."
    password = await client.post(
        "/api/v1/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=auth,
    )
    assert password.status_code == 204
    await login(client, account["username"], NEW_PASSWORD)


async def test_reauth_expires(client: httpx.AsyncClient, session: AsyncSession) -> None:
    import datetime as dt

    _, auth = await signed_in(client, remember=True)
    assert (
        await client.post("/api/v1/auth/reauth", json={"password": PASSWORD}, headers=auth)
    ).status_code == 200
    # Eleven minutes later (moved in the database, the only clock the service trusts).
    for user_session in (await session.scalars(select(UserSession))).all():
        if user_session.reauth_until is not None:
            user_session.reauth_until -= dt.timedelta(minutes=11)
    await session.commit()
    response = await client.patch("/api/v1/me", json={"name": "Later"}, headers=auth)
    assert response.status_code == 403


async def test_normal_session_may_change_account(client: httpx.AsyncClient) -> None:
    _, auth = await signed_in(client)
    response = await client.patch(
        "/api/v1/me",
        json={"phone": "+1 (212) 555-0175", "address": {"city": "Albany", "region": "NY"}},
        headers=auth,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["phone"] == "+12125550175"
    assert body["address"]["city"] == "Albany"


async def test_patch_me_validates_and_refuses_taken_username(client: httpx.AsyncClient) -> None:
    other = await register(client)
    _, auth = await signed_in(client)
    bad = await client.patch("/api/v1/me", json={"phone": "12"}, headers=auth)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "phone"
    empty = await client.patch("/api/v1/me", json={"name": None}, headers=auth)
    assert empty.status_code == 422
    taken = await client.patch("/api/v1/me", json={"username": other["username"]}, headers=auth)
    assert taken.status_code == 409


async def test_changing_email_needs_verifying_again_and_warns_the_old_address(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, auth = await signed_in(client)
    response = await client.patch("/api/v1/me", json={"email": "new.ana@example.com"}, headers=auth)
    assert response.status_code == 200
    assert response.json()["email_verified"] is False
    old = await mails_to(session, account["email"])
    assert any(m.template == "accounts/email_changed" for m in old)
    (new,) = await mails_to(session, "new.ana@example.com")
    assert link_token(new, "/verify-email")


# Sessions (A3) -----------------------------------------------------------------------------


async def test_sessions_are_listed_and_revocable(client: httpx.AsyncClient) -> None:
    account, auth = await signed_in(client)
    other_auth = bearer(await login(client, account["username"]))
    listed = (await client.get("/api/v1/me/sessions", headers=auth)).json()["items"]
    assert len(listed) == 2
    assert sum(1 for s in listed if s["current"]) == 1
    other_id = next(s["id"] for s in listed if not s["current"])
    response = await client.delete(f"/api/v1/me/sessions/{other_id}", headers=auth)
    assert response.status_code == 204
    assert (await client.get("/api/v1/me", headers=other_auth)).status_code == 401
    assert (await client.delete(f"/api/v1/me/sessions/{other_id}", headers=auth)).status_code == 404


async def test_cannot_revoke_someone_elses_session(client: httpx.AsyncClient) -> None:
    _, auth = await signed_in(client)
    _, victim = await signed_in(client)
    victim_sessions = (await client.get("/api/v1/me/sessions", headers=victim)).json()["items"]
    response = await client.delete(f"/api/v1/me/sessions/{victim_sessions[0]['id']}", headers=auth)
    assert response.status_code == 404
    assert (await client.get("/api/v1/me", headers=victim)).status_code == 200


async def test_password_change_signs_out_other_sessions(client: httpx.AsyncClient) -> None:
    account, auth = await signed_in(client)
    other = bearer(await login(client, account["username"]))
    response = await client.post(
        "/api/v1/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=auth,
    )
    assert response.status_code == 204
    assert (await client.get("/api/v1/me", headers=other)).status_code == 401
    assert (await client.get("/api/v1/me", headers=auth)).status_code == 200
    refused = await client.post(
        "/api/v1/auth/login", json={"login": account["username"], "password": PASSWORD}
    )
    assert refused.status_code == 401


async def test_password_change_checks_current_and_strength(client: httpx.AsyncClient) -> None:
    _, auth = await signed_in(client)
    wrong = await client.post(
        "/api/v1/me/password",
        json={"current_password": "not-it-at-all", "new_password": NEW_PASSWORD},
        headers=auth,
    )
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"] == "current_password"
    weak = await client.post(
        "/api/v1/me/password",
        json={"current_password": PASSWORD, "new_password": "password1"},
        headers=auth,
    )
    assert weak.status_code == 422 and weak.json()["errors"][0]["field"] == "new_password"


# API keys ----------------------------------------------------------------------------------


async def test_api_key_is_shown_once_works_and_is_revocable(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, auth = await signed_in(client, "seller")
    created = await client.post("/api/v1/api-keys", json={"name": "CRM sync"}, headers=auth)
    assert created.status_code == 201
    key = created.json()["key"]
    assert key.startswith(created.json()["prefix"])
    stored = await session.scalar(select(ApiKey).where(ApiKey.id == created.json()["id"]))
    assert stored is not None and key not in (stored.key_hash, stored.prefix)

    listed = (await client.get("/api/v1/api-keys", headers=auth)).json()["items"]
    assert key not in str(listed) and listed[0]["prefix"] == created.json()["prefix"]

    me = await client.get("/api/v1/me", headers=bearer(key))
    assert me.status_code == 200
    # Integrations may not manage the account.
    assert (
        await client.patch("/api/v1/me", json={"name": "x y"}, headers=bearer(key))
    ).status_code == 403
    assert (
        await client.post("/api/v1/api-keys", json={"name": "more"}, headers=bearer(key))
    ).status_code == 403

    revoked = await client.delete(f"/api/v1/api-keys/{created.json()['id']}", headers=auth)
    assert revoked.status_code == 204
    assert (await client.get("/api/v1/me", headers=bearer(key))).status_code == 401


async def test_api_key_name_is_validated(client: httpx.AsyncClient) -> None:
    _, auth = await signed_in(client)
    response = await client.post("/api/v1/api-keys", json={"name": ""}, headers=auth)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "name"


# Email verification and password reset -----------------------------------------------------


async def test_email_verification_link(client: httpx.AsyncClient, session: AsyncSession) -> None:
    account, auth = await signed_in(client)
    assert (await client.get("/api/v1/me", headers=auth)).json()["email_verified"] is False
    (mail,) = await mails_to(session, account["email"])
    token = link_token(mail, "/verify-email")
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    bad = await client.post("/api/v1/auth/verify-email", json={"token": tampered})
    assert bad.status_code == 400 and bad.json()["type"].endswith("/invalid-link")
    ok = await client.post("/api/v1/auth/verify-email", json={"token": token})
    assert ok.status_code == 200
    assert (await client.get("/api/v1/me", headers=auth)).json()["email_verified"] is True


async def test_password_reset_by_emailed_link(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, auth = await signed_in(client)
    unknown = await client.post("/api/v1/auth/password-reset", json={"email": "nobody@example.com"})
    known = await client.post("/api/v1/auth/password-reset", json={"email": account["email"]})
    assert unknown.status_code == known.status_code == 202
    assert unknown.json() == known.json()
    assert await mails_to(session, "nobody@example.com") == []
    reset_mail = next(
        m
        for m in await mails_to(session, account["email"])
        if m.template == "accounts/password_reset"
    )
    token = link_token(reset_mail, "/reset-password")
    weak = await client.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": "abc"}
    )
    assert weak.status_code == 422
    done = await client.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": NEW_PASSWORD}
    )
    assert done.status_code == 204
    # Sessions are signed out, the link works once, and the new password is the one.
    assert (await client.get("/api/v1/me", headers=auth)).status_code == 401
    again = await client.post(
        "/api/v1/auth/password-reset/confirm",
        json={"token": token, "new_password": "x" + NEW_PASSWORD},
    )
    assert again.status_code == 400
    await login(client, account["email"], NEW_PASSWORD)


# Closing the account (A5) ------------------------------------------------------------------


async def test_closing_the_account_erases_personal_data(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    account, auth = await signed_in(client)
    key = (await client.post("/api/v1/api-keys", json={"name": "k"}, headers=auth)).json()["key"]
    response = await client.delete("/api/v1/me", headers=auth)
    assert response.status_code == 204
    user = await session.get(User, account["id"])
    assert user is not None
    await session.refresh(user)
    assert user.status == "closed"
    assert (user.name, user.phone, user.address) == (None, None, None)
    assert account["email"] not in user.email
    assert (await client.get("/api/v1/me", headers=auth)).status_code == 401
    assert (await client.get("/api/v1/me", headers=bearer(key))).status_code == 401
    refused = await client.post(
        "/api/v1/auth/login", json={"login": account["username"], "password": PASSWORD}
    )
    assert refused.status_code == 401
    # The email address is free again.
    await register(client, email=account["email"])


async def test_closing_needs_a_recent_password(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, auth = await signed_in(client)
    for user_session in (await session.scalars(select(UserSession))).all():
        user_session.reauth_until = None
    await session.commit()
    response = await client.delete("/api/v1/me", headers=auth)
    assert response.status_code == 403
    assert response.json()["type"].endswith("/reauth-required")


# Public profile ----------------------------------------------------------------------------


async def test_public_profile_shows_no_personal_data(client: httpx.AsyncClient) -> None:
    account = await register(client, "seller")
    response = await client.get(f"/api/v1/members/{account['username'].upper()}")
    assert response.status_code == 200
    body = response.json()
    assert body["username"] == account["username"] and body["role"] == "seller"
    assert body["rating_count"] == 0 and body["rating_average"] is None
    for secret in (account["email"], account["name"], account["phone"], "Main St"):
        assert secret not in response.text
    assert (await client.get("/api/v1/members/nobody_at_all")).status_code == 404


@pytest.mark.parametrize(
    "path", ["/api/v1/members/ana%00silva", "/api/v1/admin/audit?cursor=%00", "/signin?next=%00"]
)
async def test_nul_in_the_address_is_a_clear_400(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 400
    assert "NUL" in response.json()["detail"]


async def test_nul_in_a_login_name_is_refused_not_a_crash(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/login", json={"login": "ana\u0000", "password": "whatever-it-is"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "login"


async def test_an_address_is_checked_against_its_country_and_normalized(
    client: httpx.AsyncClient,
) -> None:
    _, auth = await signed_in(client)
    address = {"country": "ca", "region": "on", "postal_code": "m5v3l9", "city": "Toronto"}
    response = await client.patch("/api/v1/me", json={"address": address}, headers=auth)
    assert response.status_code == 200, response.text
    kept = response.json()["address"]
    assert (kept["country"], kept["region"], kept["postal_code"]) == ("CA", "ON", "M5V 3L9")
    # Where the platform knows no codes, region and postal code are taken as written.
    abroad = {"country": "FR", "region": "Île-de-France", "postal_code": "75001"}
    response = await client.patch("/api/v1/me", json={"address": abroad}, headers=auth)
    assert response.status_code == 200, response.text
    assert response.json()["address"]["region"] == "Île-de-France"


async def test_an_address_stored_before_the_checks_still_reads(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    user, auth = await signed_in(client)
    stored = await session.get(User, user["id"])
    assert stored is not None
    stored.address = {"country": "ZZ", "region": "ZZ", "postal_code": "abc"}
    await session.commit()
    response = await client.get("/api/v1/me", headers=auth)
    assert response.status_code == 200, response.text
    assert response.json()["address"]["postal_code"] == "abc"
