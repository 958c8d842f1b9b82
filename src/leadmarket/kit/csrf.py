"""Cross-site request forgery defences for the server-rendered forms.

Every state-changing form carries a hidden ``csrf_token`` field that a page on another site cannot
know, and every POST whose ``Origin`` header names another site is refused outright.

* Forms shown to a signed-in member carry the token stored with their web session; the POST must
  send the same value (:func:`verify_bound_token`).
* Forms shown to someone not signed in (sign-up, sign-in, password reset) have no server-side
  session to bind to, so they use a *double-submit* token (:class:`DoubleSubmit`): a random value
  in the ``lm_csrf`` cookie (HttpOnly, SameSite=Strict) and, in the form, an HMAC of that value
  under a key derived from the service secret. Another site can neither read the cookie nor
  compute the HMAC, and cannot plant a cookie of its own that we would accept with its field.

A failed check raises :class:`CsrfFailed` (403) before anything is read from or written to the
database on the caller's behalf."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request
from starlette.responses import Response

from leadmarket.config import Settings, settings_of
from leadmarket.kit.crypto import derive_key, keyed_hash, random_token
from leadmarket.kit.errors import DomainError

CSRF_FIELD = "csrf_token"
CSRF_COOKIE = "lm_csrf"
# random_token(24) gives 32 URL-safe characters; anything else in the cookie was not set by us.
_COOKIE_VALUE = re.compile(r"^[A-Za-z0-9_-]{32}$")
_STATE_ATTR = "double_submit_csrf"


class CsrfFailed(DomainError):
    status = 403
    slug = "csrf-failed"
    title = "Your form expired"
    explanation = (
        "The form was sent without the token of the page that showed it, with a stale token, or "
        "from another site. Nothing was changed; open the form again and resend it."
    )

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or "Your form expired, please try again.")


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def trusted_origins(request: Request, settings: Settings) -> set[str]:
    """This host as the request reached it, and the public address from the settings (they
    differ behind a TLS-terminating proxy)."""
    return {_origin_of(str(request.url)), _origin_of(settings.base_url)}


def check_origin(request: Request, trusted: Iterable[str]) -> None:
    """Refuse a request whose ``Origin`` names another site. Browsers send Origin on every form
    POST; its absence (old browsers, non-browser clients) is left to the token check."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    # "null" is what a sandboxed frame, a file: page or a cross-site redirect chain sends.
    if origin.strip().lower() not in set(trusted):
        raise CsrfFailed()


async def submitted_token(request: Request) -> str:
    form = await request.form()
    value = form.get(CSRF_FIELD)
    return value if isinstance(value, str) else ""


def _same(submitted: str, expected: str) -> bool:
    # compare_digest on str refuses non-ASCII input with a TypeError; bytes never do.
    return hmac.compare_digest(submitted.encode(), expected.encode())


async def verify_bound_token(request: Request, expected: str | None, settings: Settings) -> None:
    """The check for forms of a signed-in member: the field must equal ``expected``, the token
    kept with their session."""
    check_origin(request, trusted_origins(request, settings))
    submitted = await submitted_token(request)
    if not expected or not submitted or not _same(submitted, expected):
        raise CsrfFailed()


@dataclass(frozen=True)
class IssuedToken:
    cookie_value: str
    field_value: str
    new_cookie: bool


class DoubleSubmit:
    """Double-submit tokens for forms shown to visitors who are not signed in."""

    def __init__(self, root_key: bytes, *, secure_cookie: bool) -> None:
        self._key = derive_key(root_key, "csrf:double-submit")
        self._secure_cookie = secure_cookie

    def _field_for(self, cookie_value: str) -> str:
        return keyed_hash(self._key, cookie_value)

    def issue(self, request: Request) -> IssuedToken:
        """The field for this visitor's cookie, minting the cookie if there is none yet, so a
        visitor with two forms open in two tabs can send either."""
        current = request.cookies.get(CSRF_COOKIE, "")
        if _COOKIE_VALUE.fullmatch(current):
            return IssuedToken(current, self._field_for(current), new_cookie=False)
        fresh = random_token(24)
        return IssuedToken(fresh, self._field_for(fresh), new_cookie=True)

    def attach(self, response: Response, issued: IssuedToken) -> None:
        if issued.new_cookie:
            # No Max-Age: a browser-session cookie, gone when the browser closes.
            response.set_cookie(
                CSRF_COOKIE,
                issued.cookie_value,
                path="/",
                httponly=True,
                secure=self._secure_cookie,
                samesite="strict",
            )

    async def verify(self, request: Request, trusted: Iterable[str]) -> None:
        check_origin(request, trusted)
        cookie_value = request.cookies.get(CSRF_COOKIE, "")
        submitted = await submitted_token(request)
        if not _COOKIE_VALUE.fullmatch(cookie_value) or not submitted:
            raise CsrfFailed()
        if not _same(submitted, self._field_for(cookie_value)):
            raise CsrfFailed()


def double_submit(request: Request) -> DoubleSubmit:
    """The app's :class:`DoubleSubmit`, built on first use from its settings (deriving the key
    once per process rather than once per request)."""
    existing: DoubleSubmit | None = getattr(request.app.state, _STATE_ATTR, None)
    if existing is not None:
        return existing
    settings = settings_of(request)
    created = DoubleSubmit(settings.signing_key(), secure_cookie=settings.cookie_secure)
    setattr(request.app.state, _STATE_ATTR, created)
    return created
