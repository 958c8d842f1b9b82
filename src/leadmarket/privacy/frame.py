"""What every page's frame (``base.html``) says about privacy, whatever route drew it:

* **"Opt-out request honored"** for a browser that sends Global Privacy Control
  (``Sec-GPC: 1``): the signal is treated as an opt-out of sale and sharing (for a signed-in
  member it is also stored, see :func:`leadmarket.privacy.preferences.honour_gpc`);
* **the banner of a new privacy notice version** while it is announced (P12).

:class:`PrivacyFrameMiddleware` puts the banner on the request (pages only: the JSON API and
static files never pay for it); the template globals read it and the GPC header."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from leadmarket.kit.db import Database
from leadmarket.privacy.notices import BannerNotice, NoticeBanner
from leadmarket.privacy.preferences import gpc_requested

log = logging.getLogger("leadmarket.privacy")

_NOT_PAGES = ("/api/", "/static/", "/healthz", "/readyz")


class PrivacyFrameMiddleware:
    def __init__(self, app: ASGIApp, *, banner: NoticeBanner, db: Database) -> None:
        self.app = app
        self.banner = banner
        self.db = db

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not str(scope.get("path", "")).startswith(_NOT_PAGES):
            state: dict[str, Any] = scope.setdefault("state", {})
            try:
                state["notice_banner"] = await self.banner.current(self.db)
            except Exception:
                # A banner is not worth a failed page: the page's own error handling answers
                # if the database is really gone.
                log.warning("privacy notice banner unavailable", exc_info=True)
                state["notice_banner"] = None
        await self.app(scope, receive, send)


def gpc_honored(request: Request) -> bool:
    return gpc_requested(request.headers)


def notice_banner(request: Request) -> BannerNotice | None:
    value = request.scope.get("state", {}).get("notice_banner")
    return value if isinstance(value, BannerNotice) else None


def install_privacy_frame(app: FastAPI, banner: NoticeBanner, db: Database) -> None:
    app.state.notice_banner = banner
    env = app.state.templates.env
    env.globals["gpc_honored"] = gpc_honored
    env.globals["notice_banner"] = notice_banner
    app.add_middleware(PrivacyFrameMiddleware, banner=banner, db=db)
