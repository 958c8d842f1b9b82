"""The consumer rights API (``/api/v1/privacy/requests``, no account needed; P1–P6) and the
privacy officer's API (``/api/v1/admin/privacy/…``). Thin: each route authorizes, then calls
:mod:`leadmarket.privacy.requests`."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.auth import Principal, requires
from leadmarket.accounts.policy import Action
from leadmarket.config import Settings, settings_of
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import NotFound, Unauthenticated
from leadmarket.kit.http import client_ip
from leadmarket.kit.routing import TransactionalRoute, get_session, guard
from leadmarket.models import PrivacyRequest, Role
from leadmarket.privacy import consumer_data, requests
from leadmarket.privacy.schemas import (
    DenyIn,
    ExtendIn,
    MetricsOut,
    PrivacyRequestCreated,
    PrivacyRequestIn,
    PrivacyRequestStatusOut,
    ProofReviewIn,
    TypeMetrics,
    VerifyIn,
    VerifyOut,
)

Session = Annotated[AsyncSession, Depends(get_session)]
RequestId = Annotated[str, Path(max_length=40)]
OFFICERS = (Role.ADMIN, Role.PRIVACY_OFFICER)


@guard
async def anyone() -> None:
    """Guard of the consumer's routes: no account; the request's token or code is the proof."""


consumer = APIRouter(
    prefix="/api/v1/privacy",
    route_class=TransactionalRoute,
    dependencies=[Depends(anyone)],
    tags=["privacy"],
)
officer = APIRouter(
    prefix="/api/v1/admin/privacy", route_class=TransactionalRoute, tags=["privacy"]
)


def request_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "Send the token you got when you made the request as `Authorization: Bearer <token>`."
        )
    return token.strip()


Token = Annotated[str, Depends(request_token)]


class ReportNotAvailable(NotFound):
    slug = "privacy-report-not-available"
    title = "No report to download"
    explanation = (
        "Only know and access requests have a report, once answered, and only during its "
        "download period; the request's status says which applies."
    )


async def status_out(
    session: AsyncSession, settings: Settings, row: PrivacyRequest
) -> PrivacyRequestStatusOut:
    return PrivacyRequestStatusOut(
        id=row.id,
        type=row.type,
        status=row.status,
        received_at=row.received_at,
        due_at=row.due_at,
        extended_until=row.extended_until,
        extension_reason=row.extension_reason,
        denial_reason=row.denial_reason,
        decision_note=row.decision_note,
        closed_at=row.closed_at,
        report=await requests.answer_of(session, settings, row),
        report_available_until=row.report_available_until if row.report_sealed else None,
    )


@consumer.post(
    "/requests",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Make a privacy request (know, access, delete, correct, opt out); no account needed",
    description=(
        "A one-time code is sent to the email given (else by text message to the phone); "
        "confirm the request with it at `POST …/{id}/verify`. The answer is the same whether "
        "or not we hold data about you. Authorized agents and parents set `on_behalf` and "
        "give `agent_name` and a proof (`proof_text` and/or `proof_document`), which a privacy "
        "officer reviews."
    ),
    responses={422: {"description": "Invalid fields"}, 429: {"description": "Throttled"}},
)
async def submit(
    body: PrivacyRequestIn, request: Request, session: Session
) -> PrivacyRequestCreated:
    settings = settings_of(request)
    row, token = await requests.submit_request(
        session,
        settings,
        request.app.state.leads_kit,
        body,
        client_ip=client_ip(request, trust_proxy=settings.trust_proxy_headers),
    )
    return PrivacyRequestCreated(id=row.id, status=row.status, token=token)


@consumer.post(
    "/requests/{request_id}/verify",
    summary="Confirm a privacy request with the one-time code we sent",
    responses={
        404: {"description": "No such request"},
        409: {"description": "Already verified"},
        410: {"description": "Expired (code too old or too many wrong codes): submit again"},
        422: {"description": "Wrong code; `attempts_left` says how many tries remain"},
    },
)
async def verify(
    request_id: RequestId, body: VerifyIn, request: Request, session: Session
) -> VerifyOut:
    try:
        row = await requests.verify_request(session, settings_of(request), request_id, body.code)
    except (requests.VerificationCodeWrong, requests.VerificationExpired):
        await session.commit()  # the attempt (or the expiry) counts even though we refuse
        raise
    return VerifyOut(status=row.status)


@consumer.get(
    "/requests/{request_id}",
    summary="A privacy request's status and answer (with the request's token)",
    responses={401: {"description": "No token"}, 404: {"description": "Unknown id or token"}},
)
async def read(
    request_id: RequestId, token: Token, request: Request, session: Session
) -> PrivacyRequestStatusOut:
    row = await requests.request_by_token(session, request_id, token)
    return await status_out(session, settings_of(request), row)


async def _report(
    session: AsyncSession, settings: Settings, request_id: str, token: str
) -> dict[str, Any]:
    row = await requests.request_by_token(session, request_id, token)
    if row.report_sealed is None:
        raise ReportNotAvailable("This request has no report to download (now).")
    report = await requests.answer_of(session, settings, row)
    assert report is not None
    return report


def report_download(request_id: str, report: dict[str, Any], extension: str) -> Response:
    """The report as a file to save, ``json`` or ``csv`` (portable, P1); never cached. The
    consumer pages answer their downloads with it too."""
    if extension == "json":
        body = json.dumps(report, indent=2, sort_keys=True, default=str)
        media_type = "application/json"
    else:
        body = consumer_data.report_as_csv(report)
        media_type = "text/csv; charset=utf-8"
    return Response(
        body,
        media_type=media_type,
        headers={
            "Content-Disposition": f'attachment; filename="leadmarket-{request_id}.{extension}"',
            "Cache-Control": "no-store",
        },
    )


@consumer.get(
    "/requests/{request_id}/report.json",
    summary="Download the know/access report as JSON (portable, P1)",
    responses={401: {"description": "No token"}, 404: {"description": "No report"}},
)
async def report_json(
    request_id: RequestId, token: Token, request: Request, session: Session
) -> Response:
    report = await _report(session, settings_of(request), request_id, token)
    return report_download(request_id, report, "json")


@consumer.get(
    "/requests/{request_id}/report.csv",
    summary="Download the know/access report as CSV (section,key,value rows)",
    responses={401: {"description": "No token"}, 404: {"description": "No report"}},
)
async def report_csv(
    request_id: RequestId, token: Token, request: Request, session: Session
) -> Response:
    report = await _report(session, settings_of(request), request_id, token)
    return report_download(request_id, report, "csv")


# The privacy officer ---------------------------------------------------------------------------

OfficerPrincipal = Annotated[Principal, Depends(requires(Action.ADMINISTER, *OFFICERS))]
OFFICER_ONLY: dict[int | str, dict[str, Any]] = {
    401: {"description": "Not signed in"},
    403: {"description": "Not a privacy officer or an admin"},
}
DECISION: dict[int | str, dict[str, Any]] = {
    **OFFICER_ONLY,
    404: {"description": "No such request (…/privacy-request-not-found)"},
}


class QueueItem(PrivacyRequestStatusOut):
    contact_hint: str
    on_behalf: str
    proof_status: str
    overdue: bool


def queue_item(row: PrivacyRequest, now: dt.datetime) -> QueueItem:
    return QueueItem(
        id=row.id,
        type=row.type,
        status=row.status,
        received_at=row.received_at,
        due_at=row.due_at,
        extended_until=row.extended_until,
        extension_reason=row.extension_reason,
        denial_reason=row.denial_reason,
        decision_note=row.decision_note,
        closed_at=row.closed_at,
        contact_hint=row.contact_hint,
        on_behalf=row.on_behalf,
        proof_status=row.proof_status,
        overdue=requests.is_overdue(row, now),
    )


@officer.get(
    "/requests",
    summary="The privacy officer's queue: open requests by due date, overdue first",
    responses=OFFICER_ONLY,
)
async def queue(
    session: Session,
    _: OfficerPrincipal,
    status_filter: Annotated[
        str, Query(alias="status", pattern=r"^(open|all|[a-z_]{1,24})$")
    ] = "open",
    type_filter: Annotated[
        str | None, Query(alias="type", pattern=r"^(know|access|delete|correct|opt_out)$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> list[QueueItem]:
    now = utcnow()
    rows = await session.scalars(
        requests.queue_query(status=status_filter, type_=type_filter, now=now, limit=limit)
    )
    return [queue_item(row, now) for row in rows]


@officer.post(
    "/requests/{request_id}/extend",
    summary="Extend once to 90 days, with a reason",
    responses={
        **DECISION,
        409: {
            "description": "Already answered (…/privacy-request-closed) or already extended "
            "(…/privacy-extension-refused)"
        },
    },
)
async def extend(
    request_id: RequestId,
    body: ExtendIn,
    request: Request,
    session: Session,
    principal: OfficerPrincipal,
) -> QueueItem:
    row = await requests.extend_request(
        session, settings_of(request), request_id, officer_id=principal.user.id, reason=body.reason
    )
    return queue_item(row, utcnow())


@officer.post(
    "/requests/{request_id}/deny",
    summary="Deny an open request, with a reason",
    responses={**DECISION, 409: {"description": "Already answered (…/privacy-request-closed)"}},
)
async def deny(
    request_id: RequestId,
    body: DenyIn,
    request: Request,
    session: Session,
    principal: OfficerPrincipal,
) -> QueueItem:
    row = await requests.deny_request(
        session,
        settings_of(request),
        request_id,
        officer_id=principal.user.id,
        reason=body.reason,
        note=body.note,
    )
    return queue_item(row, utcnow())


@officer.post(
    "/requests/{request_id}/proof",
    summary="Accept or reject an agent's or parent's proof",
    responses={
        **DECISION,
        409: {"description": "No proof awaits review (…/privacy-proof-review-refused)"},
    },
)
async def proof(
    request_id: RequestId,
    body: ProofReviewIn,
    request: Request,
    session: Session,
    principal: OfficerPrincipal,
) -> QueueItem:
    row = await requests.review_proof(
        session,
        settings_of(request),
        request_id,
        officer_id=principal.user.id,
        accept=body.accept,
        note=body.note,
    )
    return queue_item(row, utcnow())


@officer.get(
    "/metrics",
    summary="Yearly metrics of rights requests per type (received, complied, denied, days)",
    responses=OFFICER_ONLY,
)
async def metrics(
    session: Session,
    _: OfficerPrincipal,
    year: Annotated[int, Query(ge=2000, le=2200)],
) -> MetricsOut:
    rows = await requests.yearly_metrics(session, year)
    return MetricsOut(year=year, types=[TypeMetrics(**row) for row in rows])
