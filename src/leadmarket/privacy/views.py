"""The privacy center (``/privacy``, no account: make a request, enter its code, follow it and
download the answer) and the privacy officer's queue (``/privacy/queue``: requests by due date,
overdue first, each with its event log and the officer's actions; the yearly metrics).

Thin like ``api.py``: forms are parsed into the API's schemas and handed to
:mod:`leadmarket.privacy.requests`. The request's token, which the API sends as a bearer token,
lives in the browser as an HttpOnly cookie scoped to that one request's pages. The officer sees
the requester's contact only masked; an agent's proof is opened on its own page, and that read
is recorded in the audit log."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from leadmarket.accounts.auth import Principal
from leadmarket.accounts.policy import Action
from leadmarket.accounts.views import PageRoute, member_page, render_page, see_other, visitor_page
from leadmarket.config import Settings, settings_of
from leadmarket.kit.csrf import double_submit
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import (
    DomainError,
    Forbidden,
    TooManyRequests,
    ValidationFailed,
    validation_errors,
)
from leadmarket.kit.http import client_ip
from leadmarket.kit.routing import get_session, guard
from leadmarket.kit.templating import errors_by_field, form_text
from leadmarket.models import PrivacyRequest, Role
from leadmarket.models.privacy import OPEN_STATUSES, DenialReason, RequestStatus, RequestType
from leadmarket.privacy import requests
from leadmarket.privacy.api import report_download
from leadmarket.privacy.preferences import gpc_requested
from leadmarket.privacy.schemas import (
    MAX_DETAILS_CHARS,
    MAX_PROOF_DOCUMENT_BYTES,
    PROOF_CONTENT_TYPES,
    DenyIn,
    ExtendIn,
    PrivacyRequestIn,
    VerifyIn,
)

Session = Annotated[AsyncSession, Depends(get_session)]
RequestId = Annotated[str, Path(max_length=40)]
TOKEN_COOKIE = "lm_privacy_request"
CENTER = "/privacy"
QUEUE = "/privacy/queue"
OFFICER_ROLES = (Role.ADMIN.value, Role.PRIVACY_OFFICER.value)

FORM_FIELDS = (
    "type",
    "email",
    "phone",
    "name",
    "postal_code",
    "birth_date",
    "details",
    "on_behalf",
    "agent_name",
    "proof_text",
)
TYPE_CHOICES = (
    (
        "know",
        "Know what we hold",
        "The categories of personal information we collected, where "
        "from, why, and to whom we sold or disclosed them, for the last 12 months.",
    ),
    (
        "access",
        "Get a copy",
        "The same, plus the specific pieces of information, to download "
        "as JSON or CSV. Give two of name, postal code and birth date so we can be sure it is you.",
    ),
    (
        "delete",
        "Delete",
        "We erase your information everywhere it is still held and tell "
        "every buyer who received it; anything the law makes us keep is listed with the reason.",
    ),
    ("correct", "Correct", "We fix the information and tell every buyer who received it."),
    (
        "opt_out",
        "Opt out of sale and sharing",
        "Your information leaves the market and new leads about you are refused.",
    ),
)
STATUS_TEXT = {
    "identity_unverified": "Waiting for the code we sent",
    "pending": "Verified; waiting to be answered",
    "in_progress": "Being answered",
    "fulfilled": "Answered",
    "partially_fulfilled": "Answered in part",
    "denied": "Denied",
    "expired": "Expired (not verified in time)",
}
NOTICES = {
    "extended": "The request was extended; the consumer was emailed the reason.",
    "denied": "The request was denied; the consumer was told.",
    "proof-accepted": "The proof was accepted.",
    "proof-rejected": "The proof was rejected and the request denied.",
}

router = APIRouter(route_class=PageRoute, include_in_schema=False)


def _visitor_page(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    csrf = double_submit(request)
    issued = csrf.issue(request)
    response = render_page(
        request,
        template,
        {**context, "csrf_token": issued.field_value, "gpc": gpc_requested(request.headers)},
        status_code=status_code,
        headers=headers,
    )
    csrf.attach(response, issued)
    return response


def _set_token(response: Response, settings: Settings, request_id: str, token: str) -> None:
    response.set_cookie(
        TOKEN_COOKIE,
        token,
        max_age=int(dt.timedelta(days=120).total_seconds()),
        path=f"/privacy/requests/{request_id}",
        secure=settings.cookie_secure,
        httponly=True,
        samesite="strict",
    )


# The privacy center ----------------------------------------------------------------------------


def _center(
    request: Request,
    *,
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return _visitor_page(
        request,
        "privacy/center.html",
        {
            "values": values or {"on_behalf": "self"},
            "errors": errors or {},
            "types": TYPE_CHOICES,
            "max_proof_kib": MAX_PROOF_DOCUMENT_BYTES // 1024,
        },
        status_code=status_code,
        headers=headers,
    )


@router.get("/privacy")
async def privacy_center(
    request: Request, _: Principal | None = Depends(visitor_page())
) -> Response:
    return _center(request)


# The page's own wording: the API's messages speak of JSON objects, which the form has none of.
CORRECTION_FORMAT = (
    "To correct, write one correction per line as field: correct value, "
    "for example name: Ana Silva."
)


def _corrections(text: str) -> tuple[dict[str, str] | None, str | None]:
    """The correction form's lines, ``field: new value``, as the API's object."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        field, colon, value = line.partition(":")
        if not colon or not field.strip() or not value.strip():
            return None, CORRECTION_FORMAT
        found[field.strip()] = value.strip()
    return (found or None), None


async def _proof_document(form: FormData) -> tuple[dict[str, str] | None, str | None]:
    upload = form.get("proof_document")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return None, None
    data = await upload.read(MAX_PROOF_DOCUMENT_BYTES + 1)
    if not data:
        return None, None
    content_type = (upload.content_type or "").split(";")[0].strip().lower()
    if content_type not in PROOF_CONTENT_TYPES:
        return None, "Upload a PDF, PNG, JPEG or plain text file."
    return {
        "filename": upload.filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1][:200],
        "content_type": content_type,
        "data_base64": base64.b64encode(data).decode(),
    }, None


@router.post("/privacy/requests")
async def submit_request(
    request: Request,
    session: Session,
    _: Principal | None = Depends(visitor_page(return_to=CENTER)),
) -> Response:
    settings = settings_of(request)
    form = await request.form()
    typed = {name: form_text(form, name).strip() for name in FORM_FIELDS}
    errors: dict[str, str] = {}
    payload: dict[str, Any] = {
        "type": typed["type"] or None,
        "on_behalf": typed["on_behalf"] or "self",
    }
    for name in ("email", "phone", "name", "postal_code", "birth_date", "agent_name", "proof_text"):
        if typed[name]:
            payload[name] = typed[name]
    if typed["details"]:
        if typed["type"] == RequestType.CORRECT.value:
            corrections, problem = _corrections(form_text(form, "details"))
            if problem:
                errors["details"] = problem
            payload["details"] = corrections
        else:
            payload["details"] = typed["details"]
            if len(typed["details"]) > MAX_DETAILS_CHARS:
                # Said here: the API's message for this field speaks of JSON objects.
                errors["details"] = f"Write at most {MAX_DETAILS_CHARS} characters."
    elif typed["type"] == RequestType.CORRECT.value:
        errors["details"] = CORRECTION_FORMAT
    # Said here too, so a form refused for another reason still names every missing part.
    if not typed["type"]:
        errors["type"] = "Choose what you would like us to do."
    if not typed["email"] and not typed["phone"]:
        errors["email"] = errors["phone"] = (
            "Give your email address or your phone number (or both)."
        )
    document, problem = await _proof_document(form)
    if problem:
        errors["proof_document"] = problem
    elif document is not None:
        payload["proof_document"] = document
    if payload["on_behalf"] == "self":
        # Fields of the agent's part of the form that stayed filled after switching back.
        for name in ("agent_name", "proof_text", "proof_document"):
            payload.pop(name, None)
    try:
        data = PrivacyRequestIn.model_validate(payload)
    except ValidationError as exc:
        found = {
            ("proof_document" if field.startswith("proof_document.") else field): message
            for field, message in errors_by_field(
                validation_errors([dict(e) for e in exc.errors()])
            ).items()
        }
        return _center(request, values=typed, errors={**found, **errors}, status_code=422)
    errors = {**errors_by_field(data.problems()), **errors}
    if errors:
        return _center(request, values=typed, errors=errors, status_code=422)
    try:
        row, token = await requests.submit_request(
            session,
            settings,
            request.app.state.leads_kit,
            data,
            client_ip=client_ip(request, trust_proxy=settings.trust_proxy_headers),
        )
    except ValidationFailed as exc:
        await session.rollback()
        return _center(request, values=typed, errors=errors_by_field(exc.errors), status_code=422)
    except TooManyRequests as exc:
        return _center(
            request,
            values=typed,
            errors={
                "form": "Too many requests from here or for this email or phone; "
                f"try again in {max(1, exc.retry_after // 60)} minutes."
            },
            status_code=429,
            headers=exc.headers,
        )
    response = _code_page(request, row, token=token, status_code=202)
    _set_token(response, settings, row.id, token)
    return response


def _code_page(
    request: Request,
    row: PrivacyRequest,
    *,
    token: str | None = None,
    errors: Mapping[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    return _visitor_page(
        request,
        "privacy/code.html",
        {
            "request_id": row.id,
            "channel": row.channel,
            "minutes": settings_of(request).privacy_code_minutes,
            "token": token,
            "errors": errors or {},
        },
        status_code=status_code,
    )


@router.get("/privacy/requests/{request_id}/verify")
async def code_form(
    request: Request,
    request_id: RequestId,
    session: Session,
    _: Principal | None = Depends(visitor_page()),
) -> Response:
    row = await session.get(PrivacyRequest, request_id)
    if row is None:
        raise requests.PrivacyRequestNotFound()
    if row.status != RequestStatus.IDENTITY_UNVERIFIED.value:
        return see_other(f"/privacy/requests/{request_id}")
    return _code_page(request, row)


@router.post("/privacy/requests/{request_id}/verify")
async def verify(
    request: Request,
    request_id: RequestId,
    session: Session,
    _: Principal | None = Depends(visitor_page()),
) -> Response:
    form = await request.form()
    row = await session.get(PrivacyRequest, request_id)
    if row is None:
        raise requests.PrivacyRequestNotFound()
    try:
        body = VerifyIn.model_validate({"code": form_text(form, "code")})
    except ValidationError as exc:
        found = errors_by_field(validation_errors([dict(e) for e in exc.errors()]))
        return _code_page(request, row, errors=found, status_code=422)
    try:
        await requests.verify_request(session, settings_of(request), request_id, body.code)
    except requests.VerificationCodeWrong as exc:
        await session.commit()
        return _code_page(request, row, errors=errors_by_field(exc.errors), status_code=422)
    except requests.VerificationExpired as exc:
        await session.commit()
        return render_page(
            request, "privacy/expired.html", {"message": exc.detail}, status_code=410
        )
    except requests.AlreadyVerified:
        # A second tab or a double submit: the status page tells where the request stands.
        return see_other(f"/privacy/requests/{request_id}")
    return see_other(f"/privacy/requests/{request_id}")


async def _by_cookie(
    request: Request, session: AsyncSession, request_id: str
) -> PrivacyRequest | None:
    token = request.cookies.get(TOKEN_COOKIE, "")
    if not token or len(token) > 200:
        return None
    try:
        return await requests.request_by_token(session, request_id, token)
    except requests.PrivacyRequestNotFound:
        return None


@router.get("/privacy/requests/{request_id}")
async def status_page(
    request: Request,
    request_id: RequestId,
    session: Session,
    _: Principal | None = Depends(visitor_page()),
) -> Response:
    row = await _by_cookie(request, session, request_id)
    if row is None:
        return _visitor_page(
            request, "privacy/token.html", {"request_id": request_id, "errors": {}}
        )
    answer = await requests.answer_of(session, settings_of(request), row)
    return render_page(
        request,
        "privacy/status.html",
        {
            "row": row,
            "status_text": STATUS_TEXT.get(row.status, row.status),
            "answer": answer,
            "answer_json": json.dumps(answer, indent=2, sort_keys=True, default=str)
            if answer is not None
            else None,
            "has_report": row.report_sealed is not None,
            "gpc": gpc_requested(request.headers),
        },
    )


@router.post("/privacy/requests/{request_id}/token")
async def open_with_token(
    request: Request,
    request_id: RequestId,
    session: Session,
    _: Principal | None = Depends(visitor_page()),
) -> Response:
    form = await request.form()
    token = form_text(form, "token").strip()
    try:
        if not token or len(token) > 200:
            raise requests.PrivacyRequestNotFound()
        await requests.request_by_token(session, request_id, token)
    except requests.PrivacyRequestNotFound:
        return _visitor_page(
            request,
            "privacy/token.html",
            {
                "request_id": request_id,
                "errors": {"token": "This is not the token of this request."},
            },
            status_code=404,
        )
    response = see_other(f"/privacy/requests/{request_id}")
    _set_token(response, settings_of(request), request_id, token)
    return response


async def _report_by_cookie(
    request: Request, session: AsyncSession, request_id: str
) -> dict[str, Any]:
    row = await _by_cookie(request, session, request_id)
    if row is None or row.report_sealed is None:
        raise requests.PrivacyRequestNotFound("No report to download here.")
    report = await requests.answer_of(session, settings_of(request), row)
    assert report is not None
    return report


@router.get("/privacy/requests/{request_id}/report.json")
async def download_json(
    request: Request,
    request_id: RequestId,
    session: Session,
    _: Principal | None = Depends(visitor_page()),
) -> Response:
    report = await _report_by_cookie(request, session, request_id)
    return report_download(request_id, report, "json")


@router.get("/privacy/requests/{request_id}/report.csv")
async def download_csv(
    request: Request,
    request_id: RequestId,
    session: Session,
    _: Principal | None = Depends(visitor_page()),
) -> Response:
    report = await _report_by_cookie(request, session, request_id)
    return report_download(request_id, report, "csv")


# The privacy officer's queue ---------------------------------------------------------------------


def officer_page(*, return_to: str | None = None) -> Callable[..., Awaitable[Principal]]:
    member = member_page(Action.ADMINISTER, return_to=return_to)

    @guard
    async def dependency(principal: Principal = Depends(member)) -> Principal:
        if principal.user.role not in OFFICER_ROLES:
            raise Forbidden("Only privacy officers and admins see the privacy queue.")
        return principal

    return dependency


def _year(text: str | None, now: dt.datetime) -> int:
    if text and text.isdigit() and 2000 <= int(text) <= 2200:
        return int(text)
    return now.year


@router.get("/privacy/queue")
async def queue_page(
    request: Request, session: Session, _: Principal = Depends(officer_page())
) -> Response:
    now = utcnow()
    status = request.query_params.get("status", "open")
    if status not in ("open", "all") and status not in {s.value for s in RequestStatus}:
        status = "open"
    type_ = request.query_params.get("type") or None
    if type_ not in {t.value for t in RequestType}:
        type_ = None
    year = _year(request.query_params.get("year"), now)
    rows = list(
        await session.scalars(requests.queue_query(status=status, type_=type_, now=now, limit=200))
    )
    return render_page(
        request,
        "privacy/queue.html",
        {
            "rows": [
                {
                    "row": row,
                    "due": requests.effective_due(row),
                    "overdue": requests.is_overdue(row, now),
                }
                for row in rows
            ],
            "status": status,
            "type": type_ or "",
            "statuses": [s.value for s in RequestStatus],
            "types": [t.value for t in RequestType],
            "year": year,
            "metrics": await requests.yearly_metrics(session, year),
            "notice": NOTICES.get(request.query_params.get("done", "")),
        },
    )


async def _detail(
    request: Request,
    session: AsyncSession,
    request_id: str,
    *,
    errors: Mapping[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    row = await session.get(PrivacyRequest, request_id)
    if row is None:
        raise requests.PrivacyRequestNotFound()
    now = utcnow()
    return render_page(
        request,
        "privacy/detail.html",
        {
            "row": row,
            "due": requests.effective_due(row),
            "overdue": requests.is_overdue(row, now),
            "open": row.status in {s.value for s in OPEN_STATUSES},
            "events": await requests.request_events(session, request_id),
            "denial_reasons": [r.value for r in DenialReason],
            "errors": errors or {},
            "notice": NOTICES.get(request.query_params.get("done", "")),
        },
        status_code=status_code,
    )


@router.get("/privacy/queue/{request_id}")
async def detail_page(
    request: Request,
    request_id: RequestId,
    session: Session,
    _: Principal = Depends(officer_page()),
) -> Response:
    return await _detail(request, session, request_id)


async def _officer_action(
    request: Request,
    session: AsyncSession,
    request_id: str,
    action: Callable[[], Awaitable[object]],
    done: str,
) -> Response:
    try:
        await action()
    except ValidationError as exc:
        await session.rollback()
        found = errors_by_field(validation_errors([dict(e) for e in exc.errors()]))
        return await _detail(request, session, request_id, errors=found, status_code=422)
    except DomainError as exc:
        if exc.status >= 500 or exc.status in (401, 403, 404):
            raise
        await session.rollback()
        return await _detail(
            request, session, request_id, errors={"form": exc.detail}, status_code=exc.status
        )
    return see_other(f"{QUEUE}/{request_id}?done={done}")


@router.post("/privacy/queue/{request_id}/extend")
async def extend(
    request: Request,
    request_id: RequestId,
    session: Session,
    principal: Principal = Depends(officer_page()),
) -> Response:
    form = await request.form()

    async def act() -> object:
        body = ExtendIn.model_validate({"reason": form_text(form, "reason")})
        return await requests.extend_request(
            session,
            settings_of(request),
            request_id,
            officer_id=principal.user.id,
            reason=body.reason,
        )

    return await _officer_action(request, session, request_id, act, "extended")


@router.post("/privacy/queue/{request_id}/deny")
async def deny(
    request: Request,
    request_id: RequestId,
    session: Session,
    principal: Principal = Depends(officer_page()),
) -> Response:
    form = await request.form()

    async def act() -> object:
        body = DenyIn.model_validate(
            {"reason": form_text(form, "reason") or "other", "note": form_text(form, "note")}
        )
        return await requests.deny_request(
            session,
            settings_of(request),
            request_id,
            officer_id=principal.user.id,
            reason=body.reason,
            note=body.note,
        )

    return await _officer_action(request, session, request_id, act, "denied")


@router.post("/privacy/queue/{request_id}/proof")
async def review_proof(
    request: Request,
    request_id: RequestId,
    session: Session,
    principal: Principal = Depends(officer_page()),
) -> Response:
    form = await request.form()
    accept = form_text(form, "decision") == "accept"

    async def act() -> object:
        return await requests.review_proof(
            session,
            settings_of(request),
            request_id,
            officer_id=principal.user.id,
            accept=accept,
            note=form_text(form, "note").strip()[:1000] or None,
        )

    return await _officer_action(
        request, session, request_id, act, "proof-accepted" if accept else "proof-rejected"
    )


@router.get("/privacy/queue/{request_id}/proof")
async def proof_page(
    request: Request,
    request_id: RequestId,
    session: Session,
    principal: Principal = Depends(officer_page()),
) -> Response:
    proof = await requests.read_proof(
        session, settings_of(request), request_id, officer_id=principal.user.id
    )
    return render_page(request, "privacy/proof.html", {"request_id": request_id, "proof": proof})


@router.get("/privacy/queue/{request_id}/proof/document")
async def proof_document(
    request: Request,
    request_id: RequestId,
    session: Session,
    principal: Principal = Depends(officer_page()),
) -> Response:
    proof = await requests.read_proof(
        session, settings_of(request), request_id, officer_id=principal.user.id
    )
    if proof.document is None or proof.content_type not in PROOF_CONTENT_TYPES:
        raise requests.PrivacyRequestNotFound("This request has no proof document.")
    safe_name = "".join(c for c in (proof.filename or "proof") if c.isalnum() or c in "._-")
    return Response(
        proof.document,
        media_type=proof.content_type,
        headers={
            "Content-Disposition": f'attachment; filename="{safe_name or "proof"}"',
            "Cache-Control": "no-store",
        },
    )
