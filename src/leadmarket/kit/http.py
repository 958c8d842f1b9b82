"""ASGI middleware: request ids and access logs, the request body cap, and security headers.
Written as plain ASGI (not BaseHTTPMiddleware) so streaming and background tasks are untouched."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leadmarket.kit.errors import PROBLEM_BASE, PROBLEM_MEDIA_TYPE
from leadmarket.kit.ids import new_id

access_log = logging.getLogger("leadmarket.access")


class RequestLogMiddleware:
    """Gives each request an id (echoed as ``X-Request-Id``) and logs one line per request with
    the route *template*, never the raw path or query string, which may carry tokens."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_id("req")
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            access_log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "route": getattr(route, "path", None) or "(unmatched)",
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )


class NulInAddressMiddleware:
    """Refuses a path or query string carrying a NUL character (``%00``) with a 400 problem:
    no database column can hold one, and no legitimate address needs it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope.get("path", "")
            or b"%00" in scope.get("query_string", b"")
            or b"%00" in scope.get("raw_path", b"")
        ):
            await send_problem(
                send,
                status=400,
                slug="bad-request",
                title="Bad request",
                detail="The address contains a NUL character.",
                instance="",
            )
            return
        await self.app(scope, receive, send)


async def send_problem(
    send: Send,
    *,
    status: int,
    slug: str,
    title: str,
    detail: str,
    instance: str,
    close_connection: bool = False,
) -> None:
    """Answer with a problem document from inside middleware, before any router runs."""
    body = json.dumps(
        {
            "type": PROBLEM_BASE + slug,
            "title": title,
            "status": status,
            "detail": detail,
            "instance": instance,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                # The unread rest of a refused body would otherwise be read as the next request.
                *([(b"connection", b"close")] if close_connection else []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with a 413 problem, whether announced by Content-Length
    or discovered while streaming (chunked uploads)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        *,
        upload_paths: tuple[str, ...] = (),
        max_upload_bytes: int = 0,
    ) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        # File uploads (CSV of leads) may be larger than any JSON body.
        self.upload_paths = upload_paths
        self.max_upload_bytes = max(max_upload_bytes, max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = (
            self.max_upload_bytes
            if self.upload_paths and path.startswith(self.upload_paths)
            else self.default_max_bytes
        )
        await self._limited(scope, receive, send, limit)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_large = int(value) > limit
                except ValueError:
                    too_large = False
                if too_large:
                    await self._refuse(scope, send, limit)
                    return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await self._refuse(scope, send, limit)

    async def _refuse(self, scope: Scope, send: Send, limit: int) -> None:
        await send_problem(
            send,
            status=413,
            slug="payload-too-large",
            title="Request body too large",
            detail=f"Request bodies here are limited to {limit} bytes.",
            instance=scope.get("path", ""),
            close_connection=True,
        )


# Swagger UI at /docs loads its script and styles from a CDN; everything else is same-origin.
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
_DOCS_CSP = (
    "default-src 'self'; img-src 'self' data: https://fastapi.tiangolo.com; "
    "style-src 'self' https://cdn.jsdelivr.net; script-src 'self' 'unsafe-inline' "
    "https://cdn.jsdelivr.net; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)


# The hosted consumer forms are made to be embedded in sellers' own sites (an iframe).
EMBEDDABLE_PATH_PREFIX = "/forms/"
_EMBEDDABLE_CSP = _CSP.replace("frame-ancestors 'none'", "frame-ancestors *")


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        embeddable = path.startswith(EMBEDDABLE_PATH_PREFIX)
        if path in ("/docs", "/redoc"):
            csp = _DOCS_CSP
        elif embeddable:
            csp = _EMBEDDABLE_CSP
        else:
            csp = _CSP
        https = _is_https(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra: list[tuple[bytes, bytes]] = [
                    (b"content-security-policy", csp.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    *([] if embeddable else [(b"x-frame-options", b"DENY")]),
                    (b"referrer-policy", b"same-origin"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
                ]
                if https:
                    extra.append(
                        (b"strict-transport-security", b"max-age=63072000; includeSubDomains")
                    )
                headers.extend(h for h in extra if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _is_https(scope: Scope) -> bool:
    if scope.get("scheme") == "https":
        return True
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    return any(n == b"x-forwarded-proto" and v == b"https" for n, v in headers)


def client_ip(scope_or_request: Any, *, trust_proxy: bool) -> str:
    """The caller's address: the first X-Forwarded-For hop when behind a trusted proxy."""
    scope: Scope = getattr(scope_or_request, "scope", scope_or_request)
    if trust_proxy:
        for name, value in scope.get("headers", []):
            if name == b"x-forwarded-for":
                first_hop: str = value.decode("latin-1").split(",")[0].strip()
                return first_hop
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
