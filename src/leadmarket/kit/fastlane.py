"""The fast lane: a few hot API endpoints answered in plain ASGI, before FastAPI's routing and
dependency solving (promise M1: a ping is priced in a few milliseconds, thousands a second).

For ``POST /api/v1/ping`` FastAPI's own machinery (routing past the other routes, the dependency
graph, the request and response models, the exception middleware) cost more CPU than the ping
itself. :class:`FastLane` is a pure-ASGI middleware holding a table ``(method, path) → handler``;
a request whose method and exact path are in the table is answered by its handler, anything else
goes on to the application unchanged.

**Contract of a handler** (``async def handler(request: LaneRequest) -> LaneResponse``):

* It runs inside the application's pure-ASGI middleware (request id and access log, the NUL
  check, the body cap, security headers): install the lane innermost, just outside the router.
  Starlette's exception middleware and FastAPI's dependencies do *not* run: the handler
  authenticates itself, with the same function as the route's guard (for example
  :func:`leadmarket.accounts.auth.rechecked_principal`), and owns its transactions.
* ``request`` is a Starlette :class:`~starlette.requests.Request` whose body has been read
  already (``request.raw_body``); ``request.app`` is the application.
  :meth:`LaneRequest.json_payload` and :meth:`LaneRequest.validate` parse and validate it
  exactly as FastAPI would for a route declaring the same model as its body: the same
  content-type rule, the same errors, in the same order (malformed JSON before the guard,
  the model after it).
* It returns a :class:`LaneResponse` (``LaneResponse.of_model`` for a pydantic answer) or
  raises: a :class:`~leadmarket.kit.errors.DomainError` becomes its problem JSON, a
  :class:`BodyInvalid` the 422 (or registered) problem FastAPI's handler would send, anything
  else is logged like the application's own handler does (type and place, never the message)
  and answered with the same 500 problem.
* The route stays declared in FastAPI too (same path, same models, same guard), so OpenAPI
  documents it and the access matrix tests it; both call the same service function.

A body too large still ends in the body cap's 413 (its exception passes through the lane), and
a client that goes away before its body is complete gets no answer."""

from __future__ import annotations

import email.message
import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leadmarket.kit.errors import (
    PROBLEM_MEDIA_TYPE,
    DomainError,
    domain_problem,
    problem_document,
    unexpected_problem,
    validation_problem,
)
from leadmarket.kit.schemas import RequestModel

M = TypeVar("M", bound=BaseModel)
_JSON = b"application/json"


class _NoBody:
    """What :meth:`LaneRequest.json_payload` returns for an empty body (JSON ``null`` is None)."""


NO_BODY = _NoBody()


class BodyInvalid(Exception):
    """The request body is not what the handler's model wants: pydantic's errors, located
    under ``body`` as FastAPI locates them."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid request body")
        self.errors = errors


class LaneRequest(Request):
    """A request whose body was read before the handler ran."""

    def __init__(self, scope: Scope, body: bytes) -> None:
        super().__init__(scope)
        self._body = body  # what Request.body() returns from now on
        self.raw_body = body

    def _header(self, name: bytes) -> bytes | None:
        for key, value in self.scope["headers"]:
            if key == name:
                return bytes(value)
        return None

    def json_payload(self) -> Any:
        """The body as FastAPI reads a JSON body: parsed when the content type is JSON
        (``application/json`` or ``…+json``), left as bytes otherwise (which then fails the
        model); :data:`NO_BODY` for an empty body. Raises :class:`BodyInvalid` for malformed
        JSON."""
        body = self.raw_body
        if not body:
            return NO_BODY
        content_type = self._header(b"content-type")
        if content_type is None:
            return body
        if content_type != _JSON:
            message = email.message.Message()
            message["content-type"] = content_type.decode("latin-1")
            subtype = message.get_content_subtype()
            if message.get_content_maintype() != "application" or not (
                subtype == "json" or subtype.endswith("+json")
            ):
                return body
        try:
            return json.loads(body)
        except json.JSONDecodeError as exc:
            raise BodyInvalid(
                [{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error"}]
            ) from exc
        except UnicodeDecodeError as exc:  # FastAPI's answer to a body it cannot decode
            raise DomainError("There was an error parsing the body") from exc

    @staticmethod
    def header_errors(name: str, value: str | None, *, max_length: int) -> list[dict[str, Any]]:
        """The errors FastAPI reports for an optional header declared ``Header(max_length=…)``
        (none when it is absent or short enough), located under ``header`` as FastAPI does.
        The handler raises them with the body's, headers first, as FastAPI does."""
        if value is None or len(value) <= max_length:
            return []
        return [
            {
                "type": "string_too_long",
                "loc": ("header", name),
                "msg": f"String should have at most {max_length} characters",
                "input": value,
                "ctx": {"max_length": max_length},
            }
        ]

    def plainly_valid(self, model: type[M]) -> M | None:
        """The body as ``model`` when it plainly is one: sent as ``application/json``, and
        valid as parsed straight from the bytes by pydantic (one pass in Rust, less than half
        the cost of ``json.loads`` and validating the result). None otherwise, and then
        :meth:`json_payload` and :meth:`validate` find the refusal as FastAPI would.

        A body this accepts is one ``json.loads`` reads to the same values (pydantic's parser
        refuses what ``json`` alone accepts: a byte-order mark, lone surrogates, UTF-16), so
        the model comes out the same, and the handler may authenticate after it: FastAPI's
        order (malformed JSON, the guard, the model) only matters for a refusal."""
        body = self.raw_body
        if not body or self._header(b"content-type") != _JSON or not _nul_free(body, model):
            return None
        try:
            checked: M = _without_nul_check(model).model_validate_json(body)
        except ValueError:  # ValidationError, or anything else the parser minds
            return None
        return checked

    def validate(self, model: type[M], payload: Any) -> M:
        """``payload`` (from :meth:`json_payload`) as ``model``, or :class:`BodyInvalid`."""
        if payload is NO_BODY:
            raise BodyInvalid([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
        if _nul_free(self.raw_body, model):
            # The model's NUL check, a Python call walking each field's value, was most of the
            # cost of validating a ping; here it would pass every field unchanged. Any failure
            # is validated again by the model itself, so the errors are exactly its own.
            try:
                checked: M = _without_nul_check(model).model_validate(payload, from_attributes=True)
                return checked
            except ValidationError:
                pass
        try:
            # from_attributes as FastAPI validates a body: the same message for a non-object.
            return model.model_validate(payload, from_attributes=True)
        except ValidationError as exc:
            raise BodyInvalid(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
            ) from exc


def _nul_free(body: bytes, model: type[BaseModel]) -> bool:
    """Whether ``model`` is a :class:`RequestModel` and no text of ``body`` can hold a NUL: no
    NUL byte, so it is UTF-8 JSON (UTF-16 or 32 would have some), and no ``\\u0000`` escape.
    Its NUL check would then pass every field unchanged."""
    return b"\x00" not in body and b"\\u0000" not in body and issubclass(model, RequestModel)


@functools.cache
def _without_nul_check(model: type[M]) -> type[M]:
    """``model`` without :class:`RequestModel`'s NUL check of its own fields (nested request
    models keep theirs): for bodies that cannot hold a NUL. A subclass, so what it validates
    is a ``model``."""

    def no_check(cls: type[M], value: Any, info: Any) -> Any:
        return value

    twin = type(
        model.__name__,
        (model,),
        {"__module__": model.__module__, "_no_nul_characters": classmethod(no_check)},
    )
    return cast(type[M], twin)


@dataclass
class LaneResponse:
    status: int
    body: bytes
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_model(cls, answer: BaseModel, status: int = 200) -> LaneResponse:
        """``answer`` as FastAPI sends a route's response model."""
        return cls(status, answer.model_dump_json().encode())

    @classmethod
    def of_json(cls, answer: Any, status: int = 200) -> LaneResponse:
        """``answer`` (plain JSON values) as Starlette's ``JSONResponse`` renders it."""
        body = json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return cls(status, body.encode())


Handler = Callable[[LaneRequest], Awaitable[LaneResponse]]


@dataclass(frozen=True)
class LaneRoute:
    """What the access log reads from ``scope["route"]``: the route template."""

    path: str


class FastLane:
    def __init__(self, app: ASGIApp, routes: Mapping[tuple[str, str], Handler]) -> None:
        self.app = app
        self.routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = (
            self.routes.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        )
        if handler is None:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client went away
        path: str = scope["path"]
        scope["route"] = LaneRoute(path)
        try:
            response = await handler(LaneRequest(scope, body))
        except DomainError as exc:
            response = _problem(path, **domain_problem(exc))
        except BodyInvalid as exc:
            response = _problem(path, **validation_problem(exc.errors))
        except Exception as exc:  # a 503 if the database cannot be used just now, else a 500
            response = _problem(path, **unexpected_problem(exc, path))
        headers = [
            (b"content-type", response.media_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in response.headers.items()),
        ]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _problem(path: str, *, headers: dict[str, str] | None = None, **fields: Any) -> LaneResponse:
    body = problem_document(instance=path, **fields)
    rendered = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return LaneResponse(fields["status"], rendered, PROBLEM_MEDIA_TYPE, dict(headers or {}))
