"""Errors that carry their own meaning, rendered as RFC 9457 problem details.

Every domain error subclasses :class:`DomainError` with an HTTP status and a problem ``type``.
The handlers installed by :func:`install_error_handlers` turn these, FastAPI's validation errors
and Starlette's HTTP errors into ``application/problem+json`` (or a small HTML page for browsers).
``type`` is a relative URI, ``/problems/<slug>``, which the service documents at that address."""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response

log = logging.getLogger("leadmarket.errors")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "/problems/"

# slug -> (title, explanation) for the /problems/<slug> documentation pages.
PROBLEM_TYPES: dict[str, tuple[str, str]] = {}


def problem_type(slug: str, title: str, explanation: str) -> str:
    PROBLEM_TYPES.setdefault(slug, (title, explanation))
    return PROBLEM_BASE + slug


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class DomainError(Exception):
    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"
    explanation: ClassVar[str] = "The request cannot be processed as sent."

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        problem_type(cls.slug, cls.title, cls.explanation)

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors or []
        self.headers = headers or {}
        self.extra = extra or {}

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug


problem_type(DomainError.slug, DomainError.title, DomainError.explanation)


class NotFound(DomainError):
    status = 404
    slug = "not-found"
    title = "Not found"
    explanation = "Nothing exists at this address, or you may not know that it does."


class Conflict(DomainError):
    status = 409
    slug = "conflict"
    title = "Conflict"
    explanation = "The request conflicts with the current state, for example a duplicate."


class Unauthenticated(DomainError):
    status = 401
    slug = "unauthenticated"
    title = "Authentication required"
    explanation = "Send a valid session token or API key as `Authorization: Bearer <token>`."

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="leadmarket"')


class Forbidden(DomainError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"
    explanation = "Your role or credentials do not allow this action."


class ReauthRequired(DomainError):
    status = 403
    slug = "reauth-required"
    title = "Password required"
    explanation = (
        "A remembered ('stay signed in') session may only do what promise A2 lists. Re-enter "
        "your password with POST /api/v1/auth/reauth; that unlocks sensitive actions for a "
        "few minutes."
    )


class ValidationFailed(DomainError):
    status = 422
    slug = "validation-error"
    title = "Invalid request"
    explanation = "One or more fields are wrong; `errors` names each field and what is wrong."


class PayloadTooLarge(DomainError):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"
    explanation = "The request body exceeds the service's limit."


class TooManyRequests(DomainError):
    status = 429
    slug = "too-many-requests"
    title = "Too many requests"
    explanation = "Slow down; retry after the number of seconds in the Retry-After header."

    def __init__(self, detail: str | None = None, *, retry_after: int, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.retry_after = max(1, retry_after)
        self.headers["Retry-After"] = str(self.retry_after)
        self.extra["retry_after"] = self.retry_after


_HTTP_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("validation-error", "Invalid request"),
    429: ("too-many-requests", "Too many requests"),
    500: ("internal-error", "Internal error"),
    503: ("unavailable", "Service unavailable"),
}
for _slug, _title in _HTTP_SLUGS.values():
    problem_type(_slug, _title, _title + ".")


def _wants_html(request: Request) -> bool:
    if request.url.path.startswith(("/api/", "/healthz", "/readyz", "/openapi")):
        return False
    return "text/html" in request.headers.get("accept", "")


def problem_document(
    *,
    status: int,
    slug: str,
    title: str,
    detail: str,
    instance: str,
    errors: list[FieldError] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The problem's JSON body: what :func:`problem_response` sends, and what ASGI code that runs
    before the router (``kit.fastlane``) renders itself."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    if errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    if extra:
        body.update(extra)
    return body


def problem_response(
    request: Request,
    *,
    status: int,
    slug: str,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    body = problem_document(
        status=status,
        slug=slug,
        title=title,
        detail=detail,
        instance=request.url.path,
        errors=errors,
        extra=extra,
    )
    if _wants_html(request):
        renderer = getattr(request.app.state, "render_error_page", None)
        if renderer is not None:
            page: Response = renderer(request, body)
            page.headers.update(headers or {})
            return page
        return HTMLResponse(f"<h1>{title}</h1>", status_code=status, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def _message(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        return "The body is not valid JSON."
    if error.get("type") == "missing" and error.get("msg") == "Field required":
        return "This field is required."
    message = str(error.get("msg", "Invalid value."))
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    return message


def _is_branch_tag(part: object) -> bool:
    """Pydantic names the branch of a union or a wrapped validator in an error's location
    (``function-after[…]``, ``lax-or-strict[…]``); field names never hold brackets."""
    return isinstance(part, str) and ("[" in part or part.startswith(("function-", "str-")))


def validation_errors(raw: list[dict[str, Any]]) -> list[FieldError]:
    """Pydantic's errors as field/message pairs, one per field (what the branches of a union
    each said is joined in one message). The offending input is never echoed back: it may be
    personal data."""
    messages: dict[str, list[str]] = {}
    for error in raw:
        field = _field_name([p for p in error.get("loc", ()) if not _is_branch_tag(p)])
        message = _message(error)
        if message not in messages.setdefault(field, []):
            messages[field].append(message)
    return [FieldError(field, " ".join(found)) for field, found in messages.items()]


# Pydantic error types that mean more than "invalid field": a validator raises
# PydanticCustomError(<type>, …) and the answer is the registered problem instead of the
# generic validation error (for example a consumer under 14 → /problems/minor).
_VALIDATION_PROBLEMS: dict[str, type[DomainError]] = {}


def register_validation_problem(error_type: str, problem: type[DomainError]) -> None:
    _VALIDATION_PROBLEMS[error_type] = problem


def domain_problem(exc: DomainError) -> dict[str, Any]:
    """The problem answering ``exc`` (keyword arguments of :func:`problem_response`)."""
    return {
        "status": exc.status,
        "slug": exc.slug,
        "title": exc.title,
        "detail": exc.detail,
        "errors": exc.errors,
        "headers": exc.headers,
        "extra": exc.extra,
    }


def validation_problem(raw: list[dict[str, Any]]) -> dict[str, Any]:
    """The problem answering pydantic's ``raw`` errors of a request body (keyword arguments of
    :func:`problem_response` / :func:`problem_document`): a registered problem when a validator
    raised one, else the generic 422 naming every bad field."""
    for error in raw:
        problem = _VALIDATION_PROBLEMS.get(str(error.get("type")))
        if problem is not None:
            return {
                "status": problem.status,
                "slug": problem.slug,
                "title": problem.title,
                "detail": problem.explanation,
                "errors": validation_errors([e for e in raw if e.get("type") == error.get("type")]),
            }
    errors = validation_errors(raw)
    return {
        "status": 422,
        "slug": "validation-error",
        "title": "Invalid request",
        "detail": "; ".join(f"{e.field}: {e.message}" for e in errors[:5]),
        "errors": errors,
    }


# What an unexpected exception answers (after :func:`log_unexpected`).
UNEXPECTED_PROBLEM: dict[str, Any] = {
    "status": 500,
    "slug": "internal-error",
    "title": "Internal error",
    "detail": "Something went wrong on our side; nothing was saved.",
}


def log_unexpected(exc: BaseException, path: str) -> None:
    # The exception text may hold personal data: log its type and where, not its message.
    log.error(
        "unhandled error",
        extra={
            "error_type": type(exc).__name__,
            "path": path,
            "traceback": "".join(traceback.format_tb(exc.__traceback__)),
        },
    )


def unexpected_problem(exc: BaseException, path: str) -> dict[str, Any]:
    """The problem answering an exception no handler expected (keyword arguments of
    :func:`problem_response` / :func:`problem_document`): a database that cannot be used just
    now, or a conflict it kept losing, is a 503 with ``Retry-After`` (``kit.transient``);
    anything else is logged and is the 500 of :data:`UNEXPECTED_PROBLEM`."""
    from leadmarket.kit import transient

    if transient.is_unavailable(exc):
        transient.log_transient(exc, path, "unavailable")
        return domain_problem(transient.DatabaseUnavailable())
    if transient.is_lost_conflict(exc):
        transient.log_transient(exc, path, "busy")
        return domain_problem(transient.DatabaseBusy())
    log_unexpected(exc, path)
    return dict(UNEXPECTED_PROBLEM)


def install_error_handlers(app: FastAPI) -> None:
    async def on_domain_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DomainError)
        return problem_response(request, **domain_problem(exc))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return problem_response(request, **validation_problem(list(exc.errors())))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        slug, title = _HTTP_SLUGS.get(exc.status_code, ("http-error", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        return problem_response(
            request,
            status=exc.status_code,
            slug=slug,
            title=title,
            detail=detail,
            headers=dict(exc.headers or {}),
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        return problem_response(request, **unexpected_problem(exc, request.url.path))

    app.add_exception_handler(DomainError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem: `type` names the kind (see /problems/{type}); a 422 "
    "lists each bad field in `errors`; some problems add their own members.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "additionalProperties": True,
}


def problems_in_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Document every error answer as what it is: ``application/problem+json`` with the
    :data:`PROBLEM_SCHEMA` body. FastAPI's generated schema says a 422 is an
    ``application/json`` ``HTTPValidationError`` (``detail: [...]``), which no route sends, so
    clients generated from the schema (and schemathesis) were told the wrong contract."""
    problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for code, response in operation.get("responses", {}).items():
                if str(code)[:1] in ("4", "5"):
                    response["content"] = dict(problem)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components["Problem"] = PROBLEM_SCHEMA
    return schema


def document_problems(app: FastAPI) -> None:
    """Make ``app.openapi()`` describe error answers as problem details (built once)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problems_in_openapi(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
