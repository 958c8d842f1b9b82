"""ASGI middleware: request ids and access logs, the request body cap, and security headers.
Written as plain ASGI (not BaseHTTPMiddleware) so streaming and background tasks are untouched."""

from __future__ import annotations

import json
from logging import INFO
from time import perf_counter
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leadmarket.kit.errors import PROBLEM_BASE, PROBLEM_MEDIA_TYPE
from leadmarket.kit.ids import new_request_id
from leadmarket.kit.logs import AccessLog

access_log = AccessLog("leadmarket.access")
# Where a request without Transfer-Encoding carries exactly its Content-Length (RFC 9112 6.3).
_FRAMED_VERSIONS = ("1.1", "1.0")


class HttpEdgeMiddleware:
    """The edge every HTTP request passes, in one pure-ASGI layer (one wrapper around ``send``
    and one around ``receive`` instead of one per concern, so each request pays once):

    * **request id and access log**: each request gets an id (echoed as ``X-Request-Id``) and
      one log line with the route *template*, never the raw path or query string, which may
      carry tokens;
    * **NUL refusal**: a path or query string carrying a NUL character (``%00``) is answered
      with a 400 problem: no database column can hold one, and no legitimate address needs it;
    * **body cap**: bodies over ``max_bytes`` (``max_upload_bytes`` under ``upload_paths``, for
      CSV files of leads) are refused with a 413 problem, whether announced by Content-Length
      or discovered while streaming (chunked uploads);
    * **security headers** on every response, its own refusals included; a header the
      response sets itself is left as it is."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        upload_paths: tuple[str, ...] = (),
        max_upload_bytes: int = 0,
    ) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.upload_paths = upload_paths
        self.max_upload_bytes = max(max_upload_bytes, max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = perf_counter()
        path: str = scope["path"]
        limit = (
            self.max_upload_bytes
            if self.upload_paths and path.startswith(self.upload_paths)
            else self.default_max_bytes
        )
        # One pass over the request headers: whether the body is framed by Content-Length
        # alone (and how long it says it is), and whether a proxy says the caller used HTTPS.
        https = scope.get("scheme") == "https"
        announced = -1  # no usable Content-Length
        framed = True  # no Transfer-Encoding: the body is exactly Content-Length bytes (or none)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    announced = max(announced, int(value))
                except ValueError:
                    framed = False
            elif name == b"transfer-encoding":
                framed = False
            elif name == b"x-forwarded-proto" and value == b"https":
                https = True
        security = _security_headers(path, https)
        id_header = (b"x-request-id", request_id.encode())
        status = 500
        response_started = False
        received = 0
        refused = False  # the body went over the cap and the 413 went out

        async def edge_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = message.get("headers")
                if not headers:
                    message["headers"] = [*security, id_header]
                elif _SECURITY_NAMES.isdisjoint(name.lower() for name, _ in headers):
                    message["headers"] = [*headers, *security, id_header]
                else:
                    present = {name.lower() for name, _ in headers}
                    message["headers"] = [
                        *headers,
                        *(h for h in security if h[0] not in present),
                        id_header,
                    ]
            await send(message)

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def app_send(message: Message) -> None:
            nonlocal refused
            if received > limit and not response_started:
                # The app caught the cap's exception while reading the body and answers
                # something else (FastAPI turns a body it cannot read into a 400): the answer
                # is the 413 all the same, and the app's own is dropped.
                refused = True
                await _refuse_body(edge_send, path, limit)
            if not refused:
                await edge_send(message)

        try:
            if (
                "\x00" in path
                or b"%00" in scope.get("query_string", b"")
                or b"%00" in scope.get("raw_path", b"")
            ):
                await send_problem(
                    edge_send,
                    status=400,
                    slug="bad-request",
                    title="Bad request",
                    detail="The address contains a NUL character.",
                    instance="",
                )
                return
            if announced > limit:
                await _refuse_body(edge_send, path, limit)
                return
            if framed and scope.get("http_version") in _FRAMED_VERSIONS:
                # HTTP/1.x: a request without Transfer-Encoding has exactly the body its
                # Content-Length announces (none without one), which is within the cap: nothing
                # to count, and the app's messages go out without the counting wrapper.
                await self.app(scope, receive, edge_send)
                return
            try:
                await self.app(scope, counting_receive, app_send)
            except _BodyTooLarge:
                if not response_started:
                    await _refuse_body(edge_send, path, limit)
        finally:
            if access_log.logger.isEnabledFor(INFO):
                route = scope.get("route")
                access_log.write(
                    request_id,
                    scope.get("method"),
                    getattr(route, "path", None) or "(unmatched)",
                    status,
                    round((perf_counter() - started) * 1000, 2),
                )


class _BodyTooLarge(Exception):
    pass


async def _refuse_body(send: Send, path: str, limit: int) -> None:
    await send_problem(
        send,
        status=413,
        slug="payload-too-large",
        title="Request body too large",
        detail=f"Request bodies here are limited to {limit} bytes.",
        instance=path,
        close_connection=True,
    )


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

SecurityHeaders = tuple[tuple[bytes, bytes], ...]


def _header_set(csp: str, *, embeddable: bool, https: bool) -> SecurityHeaders:
    return (
        (b"content-security-policy", csp.encode()),
        (b"x-content-type-options", b"nosniff"),
        *(() if embeddable else ((b"x-frame-options", b"DENY"),)),
        (b"referrer-policy", b"same-origin"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
        *(
            ((b"strict-transport-security", b"max-age=63072000; includeSubDomains"),)
            if https
            else ()
        ),
    )


# Built once: (page kind, https) -> the headers, in the order they are sent.
_SECURITY_HEADERS = {
    (kind, https): _header_set(csp, embeddable=kind == "embeddable", https=https)
    for kind, csp in (("docs", _DOCS_CSP), ("embeddable", _EMBEDDABLE_CSP), ("other", _CSP))
    for https in (False, True)
}


# The names of the security headers (a response's own header of one of these names is kept).
_SECURITY_NAMES = frozenset(name for headers in _SECURITY_HEADERS.values() for name, _ in headers)


def _security_headers(path: str, https: bool) -> SecurityHeaders:
    if path in ("/docs", "/redoc"):
        kind = "docs"
    elif path.startswith(EMBEDDABLE_PATH_PREFIX):
        kind = "embeddable"
    else:
        kind = "other"
    return _SECURITY_HEADERS[kind, https]


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
