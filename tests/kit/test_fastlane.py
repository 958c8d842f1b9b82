"""The fast lane on its own (``kit.fastlane``): only the exact method and path of a handler are
taken, everything else reaches the application unchanged; refusals are problem JSON with their
headers; a client that leaves before its body is complete gets no answer."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message

from leadmarket.kit.db import Database, make_engine
from leadmarket.kit.errors import TooManyRequests
from leadmarket.kit.fastlane import BodyInvalid, FastLane, LaneRequest, LaneResponse
from leadmarket.kit.schemas import RequestModel


async def echo(request: LaneRequest) -> LaneResponse:
    payload = request.json_payload()
    if payload == {"slow": True}:
        raise TooManyRequests("Slow down.", retry_after=7)
    if payload == {"database": "down"}:
        # A real refused connection: nothing listens on port 1.
        engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/postgres")
        try:
            async with Database(engine).transaction() as session:
                await session.execute(text("SELECT 1"))
        finally:
            await engine.dispose()
    if payload == {"bug": True}:
        raise RuntimeError("a bug")
    return LaneResponse(201, b'{"seen":' + request.raw_body + b"}")


async def behind(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"app {request.method} {request.url.path}")


def lane_app() -> Starlette:
    app = Starlette(routes=[Route("/echo", behind, methods=["GET", "POST"]), Route("/x", behind)])
    app.add_middleware(FastLane, routes={("POST", "/echo"): echo})
    return app


async def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=lane_app())
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        return await client.request(method, path, **kwargs)


async def test_only_the_exact_method_and_path_take_the_lane() -> None:
    taken = await call("POST", "/echo", json={"a": 1})
    assert (taken.status_code, taken.json()) == (201, {"seen": {"a": 1}})
    assert taken.headers["content-type"] == "application/json"
    assert (await call("GET", "/echo")).text == "app GET /echo"
    assert (await call("POST", "/echo/")).status_code != 201
    assert (await call("GET", "/x")).text == "app GET /x"


async def test_a_database_that_cannot_be_reached_is_a_503_and_a_bug_a_500() -> None:
    down = await call("POST", "/echo", json={"database": "down"})
    assert down.status_code == 503
    assert down.headers["retry-after"]
    assert down.json()["type"].endswith("/database-unavailable")
    bug = await call("POST", "/echo", json={"bug": True})
    assert bug.status_code == 500
    assert bug.headers["content-type"] == "application/problem+json"
    assert "a bug" not in bug.text


async def test_a_refusal_is_its_problem_with_its_headers() -> None:
    refused = await call("POST", "/echo", json={"slow": True})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "7"
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json() == {
        "type": "/problems/too-many-requests",
        "title": "Too many requests",
        "status": 429,
        "detail": "Slow down.",
        "instance": "/echo",
        "retry_after": 7,
    }


async def test_malformed_json_names_where_it_broke() -> None:
    refused = await call(
        "POST", "/echo", content=b'{"a": ', headers={"content-type": "application/json"}
    )
    assert refused.status_code == 422
    assert refused.json()["errors"] == [{"field": "6", "message": "The body is not valid JSON."}]


async def test_a_body_in_pieces_is_read_whole_and_a_client_gone_is_not_answered() -> None:
    app = lane_app()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/echo",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
    }

    async def run(messages: list[Message]) -> list[Message]:
        sent: list[Message] = []

        async def receive() -> Message:
            return messages.pop(0)

        async def send(message: Message) -> None:
            sent.append(message)

        await app({**scope, "headers": list(scope["headers"])}, receive, send)
        return sent

    whole = await run(
        [
            {"type": "http.request", "body": b'{"a":', "more_body": True},
            {"type": "http.request", "body": b"2}", "more_body": False},
        ]
    )
    assert whole[0]["status"] == 201 and whole[1]["body"] == b'{"seen":{"a":2}}'
    gone = await run(
        [{"type": "http.request", "body": b'{"a":', "more_body": True}, {"type": "http.disconnect"}]
    )
    assert gone == []


class Ask(RequestModel):
    name: str
    count: int = 0
    extra: dict[str, Any] = {}


def lane_request(body: bytes, content_type: bytes | None = b"application/json") -> LaneRequest:
    headers = [(b"content-type", content_type)] if content_type is not None else []
    return LaneRequest({"type": "http", "method": "POST", "path": "/", "headers": headers}, body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "a", "count": 2}',
        b' {"name": "\\u00e9", "extra": {"x": [1, 2.5, null, true], "x": 3}}\n',
        b'{"name": "a", "count": 3.0, "extra": {"big": 123456789012345678901234567890}}',
        b'{"name": "a", "count": "4", "extra": {"inf": 1e400, "nan": NaN}}',
    ],
)
def test_a_plainly_valid_body_is_what_json_and_the_model_make_of_it(body: bytes) -> None:
    plain = lane_request(body).plainly_valid(Ask)
    assert plain is not None
    assert repr(plain) == repr(Ask.model_validate(json.loads(body)))


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"name": "a\\u0000"}', b"application/json"),  # the model's NUL check must see it
        (b'{"name": "a", "extra": {"k": "\\u0000"}}', b"application/json"),
        ('{"name": "a"}'.encode("utf-16"), b"application/json"),
        (b'\xef\xbb\xbf{"name": "a"}', b"application/json"),  # json.loads reads a BOM
        (b'{"name": "\\ud800"}', b"application/json"),  # and lone surrogates
        (b'{"name": "a"}', b"application/json; charset=utf-8"),
        (b'{"name": "a"}', b"text/plain"),
        (b'{"name": "a"}', None),
        (b'{"name": "a", "other": 1}', b"application/json"),
        (b'{"name": "a\tb"}', b"application/json"),
        (b'{"name": "a"} x', b"application/json"),
        (b"", b"application/json"),
    ],
)
def test_anything_else_is_left_to_the_slow_path(body: bytes, content_type: bytes | None) -> None:
    assert lane_request(body, content_type).plainly_valid(Ask) is None


def test_the_nul_check_still_refuses_through_validate() -> None:
    request = lane_request(b'{"name": "a\\u0000b"}')
    with pytest.raises(BodyInvalid) as refused:
        request.validate(Ask, request.json_payload())
    assert [e["loc"] for e in refused.value.errors] == [("body", "name")]
    request = lane_request(b'{"name": "ab", "count": "x"}')
    with pytest.raises(BodyInvalid) as refused:
        request.validate(Ask, request.json_payload())
    assert [e["loc"] for e in refused.value.errors] == [("body", "count")]
