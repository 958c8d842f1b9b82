"""The lead upload API: sellers send a CSV file of leads for one vertical, with sale terms for the
whole file, then follow its processing and read the per-row report. The rules live in
:mod:`leadmarket.leads.uploads`; the pages (``uploads_views``) call the same functions."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, status
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.auth import Principal, requires
from leadmarket.accounts.policy import Action
from leadmarket.config import settings_of
from leadmarket.kit.db import Database
from leadmarket.kit.errors import FieldError, ValidationFailed
from leadmarket.kit.idempotency import (
    check_key,
    previous_answer,
    remember_answer,
    request_fingerprint,
)
from leadmarket.kit.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from leadmarket.kit.routing import TransactionalRoute, get_database, get_session
from leadmarket.leads import uploads
from leadmarket.models import LeadUpload, LeadUploadRow, Role, UploadRowStatus

router = APIRouter(prefix="/api/v1", route_class=TransactionalRoute, tags=["lead uploads"])
Session = Annotated[AsyncSession, Depends(get_session)]
UploadId = Annotated[str, Path(max_length=40)]


class RowErrorOut(BaseModel):
    field: str = Field(description="As the API names it, e.g. contact.phone; row: the row")
    column: str | None = Field(description="The CSV column it comes from, if one")
    message: str


class UploadOut(BaseModel):
    id: str
    status: str
    vertical: str
    filename: str
    size_bytes: int
    sale: dict[str, Any]
    rows_total: int | None
    rows_accepted: int
    rows_rejected: int
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    error: str | None


class UploadRowOut(BaseModel):
    line: int
    status: str
    lead_id: str | None
    errors: list[RowErrorOut]


def upload_out(upload: LeadUpload) -> UploadOut:
    return UploadOut(
        id=upload.id,
        status=upload.status,
        vertical=upload.vertical,
        filename=upload.filename,
        size_bytes=upload.size_bytes,
        sale=dict(upload.sale_terms),
        rows_total=upload.rows_total,
        rows_accepted=upload.rows_accepted,
        rows_rejected=upload.rows_rejected,
        created_at=upload.created_at,
        started_at=upload.started_at,
        finished_at=upload.finished_at,
        error=upload.error,
    )


def row_out(row: LeadUploadRow) -> UploadRowOut:
    return UploadRowOut(
        line=row.line,
        status=row.status,
        lead_id=row.lead_id,
        errors=[
            RowErrorOut(
                field=e["field"], column=uploads.column_of(e["field"]), message=e["message"]
            )
            for e in row.errors
        ],
    )


_SALE_SCHEMA: dict[str, Any] = {
    "mode": {"type": "string", "enum": ["auction", "fixed"]},
    "reserve_cents": {"type": "integer", "minimum": 0},
    "buy_now_cents": {"type": "integer", "minimum": 1},
    "price_cents": {"type": "integer", "minimum": 1, "description": "Fixed-price sales."},
    "duration_minutes": {"type": "integer", "minimum": 5, "maximum": 10080},
    "exclusive": {"type": "boolean", "default": True},
    "max_buyers": {"type": "integer", "minimum": 1, "maximum": 4},
    "currency": {"type": "string", "enum": ["USD", "CAD"], "default": "USD"},
}
_MULTIPART_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "vertical", "mode"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The CSV file (UTF-8). Its columns: "
                            "GET /seller/uploads/template/{vertical}.csv.",
                        },
                        "vertical": {"type": "string", "maxLength": 40},
                        **_SALE_SCHEMA,
                    },
                }
            }
        },
    }
}


@router.post(
    "/lead-uploads",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=UploadOut,
    summary="Upload a CSV file of leads (sellers); processed in the background",
    openapi_extra=_MULTIPART_BODY,
    responses={
        202: {"description": "Stored sealed and queued; follow it at GET /lead-uploads/{id}"},
        409: {"description": "Idempotency-Key reused with another request"},
        413: {"description": "The file is larger than the upload limit"},
        415: {"description": "Not a multipart/form-data body"},
        422: {"description": "A form field is wrong, or the file is empty or not a CSV file"},
    },
)
async def upload_leads(
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.SELL_LEADS, Role.SELLER)),
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Any:
    key = check_key(idempotency_key)
    # The body may take a while to arrive: end the authentication's transaction first, so that
    # no lock is held (SQLite's write lock, above all) while the client is sending.
    await session.commit()
    settings = settings_of(request)
    with uploads.open_spool(settings) as spool:
        form = await uploads.receive_form(
            request.stream(),
            request.headers.get("content-type", ""),
            spool,
            text_fields=uploads.FORM_FIELDS,
        )
        terms = uploads.read_upload_form(form, spool)
        fingerprint = request_fingerprint(
            {
                "fields": form.fields,
                "filename": form.filename,
                "file_sha256": spool.sha256,
                "file_size": spool.size,
            }
        )
        if key is not None:
            earlier = await previous_answer(session, principal.user.id, key, fingerprint)
            if earlier is not None:
                return JSONResponse(earlier.response, status_code=earlier.status_code)
        upload = await uploads.create_upload(
            session, settings, seller=principal.user, terms=terms, form=form, spool=spool
        )
    out = upload_out(upload).model_dump(mode="json")
    if key is not None:
        await remember_answer(session, principal.user.id, key, fingerprint, 202, out)
    return JSONResponse(
        out, status_code=202, headers={"Location": f"/api/v1/lead-uploads/{upload.id}"}
    )


@router.get("/lead-uploads", summary="Your lead uploads, newest first")
async def list_uploads(
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_DASHBOARD, Role.SELLER)),
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[UploadOut]:
    rows = await uploads.list_own_uploads(
        session, principal.user, limit=limit, before_id=decode_cursor(cursor)
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[upload_out(upload) for upload in rows],
        next_cursor=encode_cursor(rows[-1].id) if more and rows else None,
    )


@router.get(
    "/lead-uploads/{upload_id}",
    summary="One upload: status (queued, processing, done, failed) and counts",
)
async def get_upload(
    upload_id: UploadId,
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_DASHBOARD, Role.SELLER)),
) -> UploadOut:
    return upload_out(await uploads.get_own_upload(session, principal.user, upload_id))


def _line_cursor(cursor: str | None) -> int | None:
    text = decode_cursor(cursor)
    if text is None:
        return None
    if not text.isdigit():
        raise ValidationFailed(
            "The cursor is not one this service gave out.",
            errors=[FieldError("cursor", "Unknown cursor; start again without it.")],
        )
    return int(text)


@router.get(
    "/lead-uploads/{upload_id}/rows",
    summary="The per-row report: line, outcome, lead id, each field's message",
)
async def list_upload_rows(
    upload_id: UploadId,
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_DASHBOARD, Role.SELLER)),
    status_filter: Annotated[
        UploadRowStatus | None, Query(alias="status", description="accepted or rejected")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[UploadRowOut]:
    upload = await uploads.get_own_upload(session, principal.user, upload_id)
    rows = await uploads.list_rows(
        session, upload, status=status_filter, limit=limit, after_line=_line_cursor(cursor)
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[row_out(row) for row in rows],
        next_cursor=encode_cursor(str(rows[-1].line)) if more and rows else None,
    )


async def report_csv_lines(db: Database, upload_id: str) -> AsyncIterator[str]:
    """The report as CSV text, page by page. Each page is read in a short transaction of its
    own: the request's session is closed before the body is sent, and no transaction may stay
    open while a slow client downloads (on SQLite it would hold the write lock)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(uploads.REPORT_COLUMNS)
    yield buffer.getvalue()
    after = 0
    while True:
        async with db.transaction() as session:
            rows = await uploads.report_page(session, upload_id, after_line=after)
        if not rows:
            return
        buffer.seek(0)
        buffer.truncate()
        writer.writerows(uploads.report_line(row) for row in rows)
        yield buffer.getvalue()
        after = rows[-1].line


@router.get(
    "/lead-uploads/{upload_id}/report.csv",
    summary="The per-row report as CSV: line, status, lead_id, errors",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
async def upload_report_csv(
    request: Request,
    upload_id: UploadId,
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_DASHBOARD, Role.SELLER)),
) -> StreamingResponse:
    upload = await uploads.get_own_upload(session, principal.user, upload_id)
    return StreamingResponse(
        report_csv_lines(get_database(request), upload.id),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{upload.id}-report.csv"',
            "Cache-Control": "no-store",
        },
    )
