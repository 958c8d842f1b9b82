"""The fast lane on its own (``kit.fastlane``): only the exact method and path of a handler are
taken, everything else reaches the application unchanged; refusals are problem JSON with their
headers; a client that leaves before its body is complete gets no answer."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message

from leadmarket.kit.errors import TooManyRequests
from leadmarket.kit.fastlane import FastLane, LaneRequest, LaneResponse


async def echo(request: LaneRequest) -> LaneResponse:
    payload = request.json_payload()
    if payload == {"slow": True}:
        raise TooManyRequests("Slow down.", retry_after=7)
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
