"""Least privilege, route by route (A4, S1): every route of the app, API and pages, called by
every role, must answer as the table below declares.

* ``allowed``: the role passes the route's guard. With placeholder ids it gets 200, 404, 422, …
  (or a password prompt, A2), never 401, 403 or the sign-in page.
* ``forbidden``: a signed-in role the route is not for gets 403 (problem JSON or the 403 page).
* ``needs login``: a visitor gets 401 (API) or a 303 to ``/signin`` (pages).

**A route that is not in the table fails this test.** Adding a route means adding one line to
:data:`ACCESS` saying who may call it. Think least privilege: personal data is for admins with
a reason, buyers of the lead, the member themselves; support staff see previews only; a privacy
officer works inside verified rights requests.

One app, one database, the members created once; each call gets a fresh session minted directly
in the database (so a route that signs out or revokes cannot disturb the next call), whose CSRF
token also satisfies the visitors' double-submit check, so every page POST reaches its guard."""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.routing import Mount, Route

from leadmarket.accounts.auth import SESSION_COOKIE
from leadmarket.accounts.views import PageRoute
from leadmarket.config import Settings
from leadmarket.kit.crypto import token_digest
from leadmarket.kit.csrf import CSRF_COOKIE, DoubleSubmit
from leadmarket.kit.db import utcnow
from leadmarket.models import Role, UserSession
from tests.fixtures.ledger import make_member

ANONYMOUS = "anonymous"
ROLES = (ANONYMOUS, *(r.value for r in (Role.BUYER, Role.SELLER, Role.SUPPORT,
                                        Role.PRIVACY_OFFICER, Role.ADMIN)))  # fmt: skip
Access = frozenset[str]


def only(*roles: Role) -> Access:
    return frozenset(r.value for r in roles)


ANYONE: Access = frozenset(ROLES)
MEMBERS: Access = frozenset(ROLES) - {ANONYMOUS}
BUYERS = only(Role.BUYER)
SELLERS = only(Role.SELLER)
ADMINS = only(Role.ADMIN)
TRADERS = only(Role.BUYER, Role.SELLER)
AUDITORS = only(Role.ADMIN, Role.PRIVACY_OFFICER)  # the audit log holds ids, never data
# The privacy officer's queue: requests with the requester masked; data only inside a request.
OFFICERS = only(Role.ADMIN, Role.PRIVACY_OFFICER)
# A rights request's own token is its credential: with no bearer at all the answer is 401; any
# other bearer (a member's session here) passes the guard and finds no request (404).
REQUEST_TOKEN_HOLDERS = MEMBERS

# "METHOD /path" -> who may call it. Keep one line per route.
ACCESS: dict[str, Access] = {
    "DELETE /api/v1/api-keys/{key_id}": MEMBERS,
    "DELETE /api/v1/campaigns/{campaign_id}": BUYERS,
    "DELETE /api/v1/leads/{lead_id}": MEMBERS,
    "DELETE /api/v1/me": MEMBERS,
    "DELETE /api/v1/me/sessions/{session_id}": MEMBERS,
    "DELETE /api/v1/me/webhook": BUYERS,
    "GET /": ANYONE,
    "GET /account": MEMBERS,
    "GET /account/api-keys": MEMBERS,
    "GET /account/reauth": MEMBERS,
    "GET /account/sessions": MEMBERS,
    "GET /admin/feedback": ADMINS,
    "GET /admin/legal-requests": ADMINS,
    "GET /admin/legal-requests/new": ADMINS,
    "GET /admin/legal-requests/{request_id}": ADMINS,
    "GET /api/v1/admin/audit": AUDITORS,
    "GET /api/v1/admin/audit/verify": AUDITORS,
    "GET /api/v1/admin/feedback/reports": ADMINS,
    "GET /api/v1/admin/leads/{lead_id}/personal-data": ADMINS,
    "GET /api/v1/admin/legal-requests": ADMINS,
    "GET /api/v1/admin/legal-requests/{request_id}": ADMINS,
    "GET /api/v1/admin/legal-requests/{request_id}/document": ADMINS,
    "GET /api/v1/admin/legal-requests/{request_id}/production": ADMINS,
    "GET /api/v1/admin/members/{username}": ADMINS,
    "GET /api/v1/api-keys": MEMBERS,
    "GET /api/v1/campaigns": BUYERS,
    "GET /api/v1/campaigns/{campaign_id}": BUYERS,
    "GET /api/v1/consents/{certificate}": ANYONE,
    "GET /api/v1/lead-uploads": SELLERS,
    "GET /api/v1/lead-uploads/{upload_id}": SELLERS,
    "GET /api/v1/lead-uploads/{upload_id}/report.csv": SELLERS,
    "GET /api/v1/lead-uploads/{upload_id}/rows": SELLERS,
    "GET /api/v1/leads": MEMBERS,
    "GET /api/v1/leads/{lead_id}": MEMBERS,
    "GET /api/v1/leads/{lead_id}/auction": MEMBERS,
    "GET /api/v1/leads/{lead_id}/auction/events": MEMBERS,
    "GET /api/v1/me": MEMBERS,
    "GET /api/v1/me/lead-quality": SELLERS,
    "GET /api/v1/me/sessions": MEMBERS,
    "GET /api/v1/me/webhook": BUYERS,
    "GET /api/v1/members/{username}": ANYONE,
    "GET /api/v1/members/{username}/feedback": ANYONE,
    "GET /api/v1/orders": TRADERS,
    "GET /api/v1/orders/{order_id}": TRADERS,
    "GET /api/v1/orders/{order_id}/deliveries": BUYERS,
    "GET /api/v1/orders/{order_id}/feedback": TRADERS,
    "GET /api/v1/pings": SELLERS,
    "GET /api/v1/verticals": ANYONE,
    "GET /api/v1/verticals/{slug}": ANYONE,
    "GET /api/v1/wallet": BUYERS,
    "GET /api/v1/wallet/entries": TRADERS,
    "GET /auctions/{lead_id}": MEMBERS,
    "GET /buyer/campaigns": BUYERS,
    "GET /buyer/campaigns/new": BUYERS,
    "GET /buyer/campaigns/{campaign_id}": BUYERS,
    "GET /consents/{certificate}": ANYONE,
    "GET /docs": ANYONE,
    "GET /docs/oauth2-redirect": ANYONE,
    "GET /forgot-password": ANYONE,
    "GET /forms/{vertical_slug}": ANYONE,
    "GET /healthz": ANYONE,
    "GET /market": BUYERS,
    "GET /market/leads/{lead_id}": BUYERS,
    "GET /members/{username}": ANYONE,
    "GET /openapi.json": ANYONE,
    "GET /orders": BUYERS,
    "GET /orders/{order_id}": BUYERS,
    "GET /orders/{order_id}/feedback": TRADERS,
    "GET /problems/{slug}": ANYONE,
    "GET /readyz": ANYONE,
    "GET /redoc": ANYONE,
    "GET /reset-password": ANYONE,
    "GET /seller/forms": SELLERS,
    "GET /seller/leads": SELLERS,
    "GET /seller/leads/new": SELLERS,
    "GET /seller/pings": SELLERS,
    "GET /seller/sales": SELLERS,
    "GET /seller/uploads": SELLERS,
    "GET /seller/uploads/template/{vertical}.csv": ANYONE,
    "GET /seller/uploads/{upload_id}": SELLERS,
    "GET /signin": ANYONE,
    "GET /signup": ANYONE,
    "GET /static": ANYONE,
    "GET /unsubscribe/{token}": ANYONE,
    "GET /verify-email": ANYONE,
    "GET /wallet": BUYERS,
    "GET /webhook": BUYERS,
    "PATCH /api/v1/campaigns/{campaign_id}": BUYERS,
    "PATCH /api/v1/feedback/{feedback_id}": TRADERS,
    "PATCH /api/v1/leads/{lead_id}": MEMBERS,
    "PATCH /api/v1/me": MEMBERS,
    "POST /account/api-keys": MEMBERS,
    "POST /account/api-keys/{key_id}/revoke": MEMBERS,
    "POST /account/close": MEMBERS,
    "POST /account/password": MEMBERS,
    "POST /account/profile": MEMBERS,
    "POST /account/reauth": MEMBERS,
    "POST /account/sessions/{session_id}/revoke": MEMBERS,
    "POST /account/verification-email": MEMBERS,
    "POST /admin/feedback/reports/{report_id}/dismiss": ADMINS,
    "POST /admin/feedback/{feedback_id}/hide": ADMINS,
    "POST /admin/legal-requests": ADMINS,
    "POST /admin/legal-requests/{request_id}/production": ADMINS,
    "POST /admin/legal-requests/{request_id}/reject": ADMINS,
    "POST /admin/legal-requests/{request_id}/verify": ADMINS,
    "POST /api/v1/admin/feedback/reports/{report_id}/dismiss": ADMINS,
    "POST /api/v1/admin/feedback/{feedback_id}/hide": ADMINS,
    "POST /api/v1/admin/legal-requests": ADMINS,
    "POST /api/v1/admin/legal-requests/{request_id}/production": ADMINS,
    "POST /api/v1/admin/legal-requests/{request_id}/reject": ADMINS,
    "POST /api/v1/admin/legal-requests/{request_id}/verify": ADMINS,
    "POST /api/v1/api-keys": MEMBERS,
    "POST /api/v1/auth/login": ANYONE,
    "POST /api/v1/auth/logout": MEMBERS,
    "POST /api/v1/auth/password-reset": ANYONE,
    "POST /api/v1/auth/password-reset/confirm": ANYONE,
    "POST /api/v1/auth/reauth": MEMBERS,
    "POST /api/v1/auth/register": ANYONE,
    "POST /api/v1/auth/verify-email": ANYONE,
    "POST /api/v1/campaigns": BUYERS,
    "POST /api/v1/consents/{certificate}/withdrawal": ANYONE,
    "POST /api/v1/feedback/{feedback_id}/reply": TRADERS,
    "POST /api/v1/feedback/{feedback_id}/reports": TRADERS,  # = POST /api/v1/reports
    "POST /api/v1/lead-uploads": SELLERS,
    "POST /api/v1/leads": SELLERS,
    "POST /api/v1/leads/{lead_id}/bids": BUYERS,
    "POST /api/v1/leads/{lead_id}/purchase": BUYERS,
    "POST /api/v1/me/password": MEMBERS,
    "POST /api/v1/me/verification-email": MEMBERS,
    "POST /api/v1/orders/{order_id}/deliveries/{delivery_id}/replay": BUYERS,
    "POST /api/v1/orders/{order_id}/feedback": TRADERS,
    "POST /api/v1/ping": SELLERS,
    "POST /api/v1/post": SELLERS,
    "POST /api/v1/wallet/deposits": BUYERS,
    "POST /auctions/{lead_id}/bids": MEMBERS,
    "POST /buyer/campaigns/new": BUYERS,
    "POST /buyer/campaigns/{campaign_id}": BUYERS,
    "POST /buyer/campaigns/{campaign_id}/active": BUYERS,
    "POST /buyer/campaigns/{campaign_id}/delete": BUYERS,
    "POST /consents/{certificate}": ANYONE,
    "POST /feedback/{feedback_id}/edit": TRADERS,
    "POST /feedback/{feedback_id}/reply": TRADERS,
    "POST /feedback/{feedback_id}/report": TRADERS,
    "POST /forgot-password": ANYONE,
    "POST /forms/{vertical_slug}": ANYONE,
    "POST /market/leads/{lead_id}/purchase": BUYERS,
    "POST /orders/{order_id}/deliveries/{delivery_id}/replay": BUYERS,
    "POST /orders/{order_id}/feedback": TRADERS,
    "POST /reset-password": ANYONE,
    "POST /seller/leads/new": SELLERS,
    "POST /seller/uploads": SELLERS,
    "POST /signin": ANYONE,
    "POST /signout": ANYONE,
    "POST /signup": ANYONE,
    "POST /unsubscribe/{token}": ANYONE,
    "POST /wallet/deposits": BUYERS,
    "POST /webhook": BUYERS,
    "PUT /api/v1/me/webhook": BUYERS,
    # Consumer rights requests: no account needed (the request token guards each one).
    "GET /api/v1/privacy/requests/{request_id}": REQUEST_TOKEN_HOLDERS,
    "GET /api/v1/privacy/requests/{request_id}/report.csv": REQUEST_TOKEN_HOLDERS,
    "GET /api/v1/privacy/requests/{request_id}/report.json": REQUEST_TOKEN_HOLDERS,
    "GET /privacy": ANYONE,
    "GET /privacy/requests/{request_id}": ANYONE,
    "GET /privacy/requests/{request_id}/report.csv": ANYONE,
    "GET /privacy/requests/{request_id}/report.json": ANYONE,
    "GET /privacy/requests/{request_id}/verify": ANYONE,
    "POST /api/v1/privacy/requests": ANYONE,
    "POST /api/v1/privacy/requests/{request_id}/verify": ANYONE,
    "POST /privacy/requests": ANYONE,
    "POST /privacy/requests/{request_id}/token": ANYONE,
    "POST /privacy/requests/{request_id}/verify": ANYONE,
    # The privacy officer's queue.
    "GET /api/v1/admin/privacy/metrics": OFFICERS,
    "GET /api/v1/admin/privacy/requests": OFFICERS,
    "GET /privacy/queue": OFFICERS,
    "GET /privacy/queue/{request_id}": OFFICERS,
    "GET /privacy/queue/{request_id}/proof": OFFICERS,
    "GET /privacy/queue/{request_id}/proof/document": OFFICERS,
    "POST /api/v1/admin/privacy/requests/{request_id}/deny": OFFICERS,
    "POST /api/v1/admin/privacy/requests/{request_id}/extend": OFFICERS,
    "POST /api/v1/admin/privacy/requests/{request_id}/proof": OFFICERS,
    "POST /privacy/queue/{request_id}/deny": OFFICERS,
    "POST /privacy/queue/{request_id}/extend": OFFICERS,
    "POST /privacy/queue/{request_id}/proof": OFFICERS,
    # Communication preferences and the privacy notice.
    "GET /account/preferences": MEMBERS,
    "POST /account/preferences": MEMBERS,
    "GET /api/v1/me/preferences": MEMBERS,
    "PUT /api/v1/me/preferences": MEMBERS,
    "GET /api/v1/privacy/notice": ANYONE,
    "GET /api/v1/privacy/notices": ANYONE,
    "GET /api/v1/privacy/notices/{version}": ANYONE,
    "GET /privacy/notice": ANYONE,
    "GET /privacy/notice/{version}": ANYONE,
    "GET /admin/privacy/notices": ADMINS,
    "POST /admin/privacy/notices": ADMINS,
    "POST /api/v1/admin/privacy/notices": ADMINS,
    # The retention monitor (L4): deadlines and lateness, no personal data.
    "GET /admin/retention": OFFICERS,
    "GET /api/v1/admin/retention": OFFICERS,
    # After the sale (issue 6): the order's parties, and admins who decide (final, audited).
    "GET /api/v1/returns/reasons": MEMBERS,
    "GET /api/v1/orders/{order_id}/after-sale": only(Role.BUYER, Role.SELLER, Role.ADMIN),
    "POST /api/v1/orders/{order_id}/cancel": BUYERS,
    "POST /api/v1/orders/{order_id}/returns": BUYERS,
    "POST /api/v1/orders/{order_id}/claims": TRADERS,
    "GET /api/v1/returns": only(Role.BUYER, Role.SELLER, Role.ADMIN),
    "GET /api/v1/returns/{return_id}": only(Role.BUYER, Role.SELLER, Role.ADMIN),
    "POST /api/v1/returns/{return_id}/decision": SELLERS,
    "POST /api/v1/returns/{return_id}/dispute": BUYERS,
    "POST /api/v1/returns/{return_id}/evidence": TRADERS,
    "GET /api/v1/returns/{return_id}/evidence/{evidence_id}": only(
        Role.BUYER, Role.SELLER, Role.ADMIN
    ),
    "GET /api/v1/claims": only(Role.BUYER, Role.SELLER, Role.ADMIN),
    "POST /api/v1/admin/returns/{return_id}/decision": ADMINS,
    "GET /api/v1/admin/disputes": ADMINS,
    "POST /api/v1/admin/disputes/{dispute_id}/decision": ADMINS,
    "POST /api/v1/admin/claims/{claim_id}/decision": ADMINS,
    "PUT /api/v1/admin/trusted-buyers/{username}": ADMINS,
    "DELETE /api/v1/admin/trusted-buyers/{username}": ADMINS,
    "GET /api/v1/payouts": SELLERS,
    "POST /api/v1/payouts": SELLERS,
    "POST /orders/{order_id}/cancel": BUYERS,
    "POST /orders/{order_id}/returns": BUYERS,
    "POST /orders/{order_id}/dispute": BUYERS,
    "POST /orders/{order_id}/claims": BUYERS,
    "GET /seller/sales/{order_id}": SELLERS,
    "POST /seller/sales/{order_id}/decision": SELLERS,
    "POST /seller/sales/{order_id}/claims": SELLERS,
    "GET /seller/payouts": SELLERS,
    "POST /seller/payouts": SELLERS,
    "GET /admin/after-sale": ADMINS,
    "POST /admin/after-sale/returns/{return_id}": ADMINS,
    "POST /admin/after-sale/disputes/{dispute_id}": ADMINS,
    "POST /admin/after-sale/claims/{claim_id}": ADMINS,
    # Member messages (M4): the two parties of an order; staff have no threads.
    "GET /api/v1/orders/{order_id}/messages": TRADERS,
    "POST /api/v1/orders/{order_id}/messages": TRADERS,
    "POST /api/v1/messages/{message_id}/spam-report": TRADERS,
    "GET /orders/{order_id}/messages": TRADERS,
    "POST /orders/{order_id}/messages": TRADERS,
    "POST /orders/{order_id}/messages/{message_id}/spam-report": TRADERS,
    "POST /orders/{order_id}/report": TRADERS,
    # Fraud (M6): members report; the review queue shows who reported whom: admins only.
    "POST /api/v1/reports": TRADERS,
    "GET /api/v1/admin/fraud/cases": ADMINS,
    "GET /api/v1/admin/fraud/cases/{case_id}": ADMINS,
    "POST /api/v1/admin/fraud/cases/{case_id}/actions": ADMINS,
    "GET /admin/fraud": ADMINS,
    "GET /admin/fraud/{case_id}": ADMINS,
    "POST /admin/fraud/{case_id}/actions": ADMINS,
}

PLACEHOLDER = "placeholder0"
# Paths that need a real-looking value instead of the placeholder.
EXAMPLE_PATHS = {"/static": "/static/site.css"}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    form: bool  # a page: sent as a form with the CSRF token, else as JSON

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    def url(self) -> str:
        if self.path in EXAMPLE_PATHS:
            return EXAMPLE_PATHS[self.path]
        return re.sub(r"\{[^}]+\}", PLACEHOLDER, self.path)


def _is_page(route: APIRoute) -> bool:
    return isinstance(route, PageRoute) or not route.include_in_schema


def endpoints(app: FastAPI) -> Iterator[Endpoint]:
    """Every method and path the app answers, through included routers (FastAPI keeps them
    nested) and mounts."""
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            for context in contexts():
                original = context.original_route
                for method in sorted(context.methods or ()):
                    yield Endpoint(method, context.path, _is_page(original))
        elif isinstance(route, APIRoute):
            for method in sorted(route.methods or ()):
                yield Endpoint(method, route.path, _is_page(route))
        elif isinstance(route, Route):
            for method in sorted((route.methods or set()) - {"HEAD"}):
                yield Endpoint(method, route.path, False)
        elif isinstance(route, Mount):
            yield Endpoint("GET", route.path, False)
        else:
            raise AssertionError(f"the matrix does not know how to list {route!r}")


def _missing_message(missing: list[str]) -> str:
    lines = "\n".join(f'    "{key}": ???,' for key in missing)
    return (
        f"{len(missing)} route(s) are not in ACCESS (tests/privacy/test_access_matrix.py). "
        "Add one line per route saying who may call it: ANYONE, MEMBERS, BUYERS, SELLERS, "
        "TRADERS, ADMINS, AUDITORS or only(Role.X, …). Least privilege (A4): personal data is "
        "for admins with a reason, the buyer of the lead and the member themselves; support "
        "staff see previews only; a privacy officer only inside a verified rights request.\n"
        + lines
    )


def test_every_route_is_declared(app: FastAPI) -> None:
    found = {e.key for e in endpoints(app)}
    missing = sorted(found - ACCESS.keys())
    assert not missing, _missing_message(missing)
    stale = sorted(ACCESS.keys() - found)
    assert not stale, f"ACCESS names routes the app no longer has; remove them: {stale}"


@dataclass
class Caller:
    role: str
    user_id: str | None


class SessionMint:
    """A fresh session for each call, written straight into the database: no password hashing,
    and a sign-out or revocation by one call cannot disturb the next."""

    def __init__(self, session: AsyncSession, settings: Settings) -> None:
        self.session = session
        self.csrf_cookie = secrets.token_urlsafe(24)
        # The same value is the web session's bound token and the visitors' double-submit
        # field, so a page POST passes whichever CSRF check its guard makes.
        double_submit = DoubleSubmit(settings.signing_key(), secure_cookie=True)
        self.csrf_field = double_submit._field_for(self.csrf_cookie)

    async def headers(self, caller: Caller, *, web: bool) -> dict[str, str]:
        cookies = {CSRF_COOKIE: self.csrf_cookie}
        headers: dict[str, str] = {}
        if caller.user_id is not None:
            token = "lms_" + secrets.token_urlsafe(32)
            now = utcnow()
            self.session.add(
                UserSession(
                    user_id=caller.user_id,
                    token_hash=token_digest(token),
                    kind="web" if web else "api",
                    remembered=False,
                    csrf_token=self.csrf_field if web else None,
                    created_at=now,
                    last_used_at=now,
                    expires_at=now + dt.timedelta(hours=1),
                    # No recent password: actions that need one (closing the account) stop at
                    # the password prompt instead of doing anything.
                    reauth_until=None,
                )
            )
            await self.session.commit()
            if web:
                cookies[SESSION_COOKIE] = token
            else:
                headers["Authorization"] = f"Bearer {token}"
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        return headers


def outcome(response: httpx.Response) -> str:
    status = response.status_code
    if status == 401:
        return "needs login"
    if status in (302, 303, 307) and response.headers.get("location", "").startswith("/signin"):
        return "needs login"
    if status == 403:
        kind = ""
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            kind = str(response.json().get("type", ""))
        # A password prompt (A2) means the role passed; a CSRF failure means the test is wrong.
        if kind.endswith("/reauth-required"):
            return "allowed"
        assert not kind.endswith("/csrf-failed"), response.text
        return "forbidden"
    if status >= 500:
        return f"server error {status}"
    return "allowed"


def expected(access: Access, role: str) -> str:
    if role in access:
        return "allowed"
    return "needs login" if role == ANONYMOUS else "forbidden"


async def test_every_route_answers_every_role_as_declared(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    callers = [Caller(ANONYMOUS, None)]
    for role in ROLES[1:]:
        member = await make_member(session, role)
        callers.append(Caller(role, member.id))
    await session.commit()
    mint = SessionMint(session, settings)

    wrong: list[str] = []
    for endpoint in sorted(endpoints(app), key=lambda e: e.key):
        access = ACCESS.get(endpoint.key)
        if access is None:
            continue  # reported by test_every_route_is_declared
        for caller in callers:
            client.cookies.clear()
            headers = await mint.headers(caller, web=endpoint.form)
            body: dict[str, object] = {}
            if endpoint.method in ("POST", "PUT", "PATCH"):
                if endpoint.form:
                    body["data"] = {"csrf_token": mint.csrf_field}
                else:
                    body["json"] = {}
            response = await client.request(
                endpoint.method,
                endpoint.url(),
                headers=headers,
                **body,  # type: ignore[arg-type]
            )
            got, want = outcome(response), expected(access, caller.role)
            if got != want:
                wrong.append(
                    f"{endpoint.key} as {caller.role}: {got} ({response.status_code}), "
                    f"declared {want}"
                )
    assert not wrong, (
        "Routes that do not answer as ACCESS declares. Fix the route's guard, or, if the "
        "table is wrong, the table:\n" + "\n".join(wrong)
    )
