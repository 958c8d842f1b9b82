"""Cross-cutting HTTP behaviour: health checks, problem details for every error, security
headers, deny-by-default authorization, and logs without personal data."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from leadmarket.kit.routing import include_guarded
from tests.fixtures.accounts import register


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"


async def test_openapi_and_docs_are_served(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "/api/v1/auth/register" in schema["paths"]
    assert (await client.get("/docs")).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/api/v1/nothing-here", 404), ("PUT", "/api/v1/auth/login", 405)],
)
async def test_errors_are_problem_json(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await client.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["type"].startswith("/problems/")
    assert problem["title"] and problem["detail"]


async def test_problem_types_are_documented(client: httpx.AsyncClient) -> None:
    response = await client.get("/problems/reauth-required")
    assert response.status_code == 200 and "password" in response.text.lower()
    assert (await client.get("/problems/no-such-problem")).status_code == 404


async def test_security_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["strict-transport-security"].startswith("max-age=")
    assert response.headers["x-request-id"].startswith("req_")


async def test_no_hsts_over_plain_http(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as plain:
        response = await plain.get("/healthz")
    assert "strict-transport-security" not in response.headers


def test_an_unguarded_route_stops_the_app_from_starting() -> None:
    app = FastAPI()
    router = APIRouter()

    @router.get("/open")
    async def open_route() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match="/open"):
        include_guarded(app, router)
    assert not any(getattr(r, "path", None) == "/open" for r in app.routes)


async def test_logs_carry_no_personal_data(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    from leadmarket.kit.logs import JsonFormatter, configure_logging

    configure_logging("DEBUG", "json")
    logging.getLogger().addHandler(caplog.handler)  # configure_logging replaced the handlers
    caplog.set_level(logging.DEBUG)
    account = await register(client, email="private.person@example.com", phone="+14155550199")
    await client.post(
        "/api/v1/auth/login", json={"login": account["email"], "password": "wrong-password-1"}
    )
    await client.post("/api/v1/auth/register", json={**account, "phone": "+1555"})
    formatter = JsonFormatter()
    text = "\n".join(formatter.format(r) for r in caplog.records)
    assert "request" in text
    for secret in ("private.person@example.com", "+14155550199", "Ana Silva", "wrong-password-1"):
        assert secret not in text


def test_formatter_masks_what_slips_through() -> None:
    from leadmarket.kit.logs import mask_personal_data

    assert (
        mask_personal_data("mail ana@example.com at +1 415 555 0123") == "mail [email] at [phone]"
    )


async def test_hosted_forms_may_be_embedded_and_nothing_else(client: httpx.AsyncClient) -> None:
    form = await client.get("/forms/auto-insurance")
    assert "frame-ancestors *" in form.headers["content-security-policy"]
    assert "x-frame-options" not in form.headers
    other = await client.get("/signin")
    assert "frame-ancestors 'none'" in other.headers["content-security-policy"]
    assert other.headers["x-frame-options"] == "DENY"


async def test_uploads_may_be_larger_than_other_bodies(client: httpx.AsyncClient) -> None:
    two_mib = b"x" * (2 * 1024 * 1024)
    normal = await client.post("/api/v1/auth/login", content=two_mib)
    assert normal.status_code == 413
    upload = await client.post("/api/v1/lead-uploads", content=two_mib)
    assert upload.status_code != 413


def test_a_nested_unguarded_route_is_found_too() -> None:
    app = FastAPI()
    outer, inner = APIRouter(), APIRouter()

    @inner.get("/hidden")
    async def hidden_route() -> dict[str, str]:
        return {}

    outer.include_router(inner)
    with pytest.raises(RuntimeError, match="/hidden"):
        include_guarded(app, outer)


# The edge middleware (kit.http.HttpEdgeMiddleware) -------------------------------------------

_SECURITY_HEADERS = ("content-security-policy", "x-content-type-options", "referrer-policy")


def _has_edge_headers(response: httpx.Response) -> bool:
    return response.headers["x-request-id"].startswith("req_") and all(
        name in response.headers for name in _SECURITY_HEADERS
    )


async def test_a_nul_in_the_address_is_refused_with_the_edge_headers(
    client: httpx.AsyncClient,
) -> None:
    for url in ("/api/v1/leads?x=%00", "/api/v1/le%00ads"):
        response = await client.get(url)
        assert response.status_code == 400, url
        assert response.json()["detail"] == "The address contains a NUL character."
        assert _has_edge_headers(response)


async def test_a_streamed_body_over_the_cap_is_refused(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 600_000  # 1.8 MB in all, announced by no Content-Length

    response = await client.post(
        "/api/v1/auth/login", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["instance"] == "/api/v1/auth/login"
    assert response.headers["connection"] == "close"
    assert _has_edge_headers(response)
    announced = await client.post("/api/v1/ping", content=b"{}" + b" " * 2_000_000)
    assert announced.status_code == 413 and _has_edge_headers(announced)


@pytest.mark.parametrize("http_version", ["1.1", "2"])
async def test_a_body_is_counted_unless_http_1_frames_it_within_the_cap(
    app: FastAPI, http_version: str
) -> None:
    """Over HTTP/1.x without Transfer-Encoding the server delivers exactly Content-Length bytes,
    so the edge does not count them; a body it cannot vouch for (HTTP/2, which has no
    Transfer-Encoding, here without a Content-Length) is counted and refused over the cap."""
    body = b"x" * 2_000_000
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": http_version,
        "method": "POST",
        "scheme": "https",
        "path": "/api/v1/auth/login",
        "raw_path": b"/api/v1/auth/login",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
        "client": ("203.0.113.10", 50000),
        "server": ("testserver", 443),
    }
    await app(scope, receive, send)
    status = sent[0]["status"]
    # HTTP/1.1 promised an empty body (no Content-Length): the app reads what the server gives.
    assert status == 413 if http_version == "2" else status != 413


async def test_every_answer_has_an_id_and_security_headers(client: httpx.AsyncClient) -> None:
    answers = [
        await client.get("/healthz"),
        await client.get("/api/v1/nothing-here"),
        await client.post("/api/v1/ping", json={}),  # the fast lane: 401, no key
        await client.get("/signin"),
    ]
    assert all(_has_edge_headers(r) for r in answers)
    ids = {r.headers["x-request-id"] for r in answers}
    assert len(ids) == len(answers)


async def test_a_header_the_response_sets_is_kept(client: httpx.AsyncClient) -> None:
    # The docs page brings its own scripts from a CDN: its policy, not the default one.
    docs = await client.get("/docs")
    assert docs.headers.get_list("content-security-policy") == [
        docs.headers["content-security-policy"]
    ]
    assert "cdn.jsdelivr.net" in docs.headers["content-security-policy"]


async def test_one_access_log_line_per_request_with_the_route_template(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="leadmarket.access")
    await client.get("/problems/reauth-required?token=secret-in-query")
    await client.post("/api/v1/ping?token=secret-in-query", json={})
    await client.get("/api/v1/le%00ads")
    lines = [r for r in caplog.records if r.name == "leadmarket.access"]
    assert [(r.method, r.route, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("GET", "/problems/{slug}", 200),
        ("POST", "/api/v1/ping", 401),
        ("GET", "(unmatched)", 400),
    ]
    ids = [r.request_id for r in lines]  # type: ignore[attr-defined]
    assert len(set(ids)) == 3 and all(i.startswith("req_") for i in ids)
    from leadmarket.kit.logs import JsonFormatter

    assert not any("secret-in-query" in JsonFormatter().format(r) for r in lines)


def test_the_phone_mask_matches_what_the_plain_pattern_matched() -> None:
    """The log formatter's phone pattern carries a lookahead for speed; it must mask exactly
    what the pattern without it masked."""
    import random
    import re

    from leadmarket.kit.logs import mask_personal_data

    plain = re.compile(r"\+\d[\d ().-]{6,18}\d|\(?\b\d{3}\)?[ .-]?\d{3}[ .-]\d{4}\b")
    email = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
    rng = random.Random(7)
    alphabet = "0123456789      ()+-.ax@_\"'"
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        expected = plain.sub("[phone]", email.sub("[email]", text))
        assert mask_personal_data(text) == expected, text
