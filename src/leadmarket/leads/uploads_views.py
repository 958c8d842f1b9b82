"""The seller's upload pages: the form to upload a CSV file of leads (with a template per
vertical), the list of their uploads, and the per-row report of each.

Thin like ``uploads_api``: the same service functions, and the conventions of the account pages
(:class:`PageRoute`, the member guards, errors beside their field, 303 after a POST). One
difference: the upload form is multipart and its file may be large, so its body is read as it
streams in, never parsed whole by Starlette (which would spool the file, in the clear, to a
temporary file). The guard of that POST therefore checks the Origin header before the body is
read, and the handler checks the form's CSRF token, before anything is stored."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from leadmarket.accounts.auth import Principal, authenticate, check_allowed
from leadmarket.accounts.policy import Action
from leadmarket.accounts.views import PageRoute, Viewer, member_page, render_page, visitor_page
from leadmarket.config import settings_of
from leadmarket.kit.csrf import CSRF_FIELD, CsrfFailed, check_origin, trusted_origins
from leadmarket.kit.errors import Forbidden, NotFound, Unauthenticated, ValidationFailed
from leadmarket.kit.pagination import decode_cursor, encode_cursor
from leadmarket.kit.routing import get_session, guard
from leadmarket.leads import uploads
from leadmarket.leads.views import sale_rule_in_words
from leadmarket.models import Role, UploadRowStatus, UploadStatus
from leadmarket.verticals.registry import all_verticals, get_vertical

Session = Annotated[AsyncSession, Depends(get_session)]
UPLOADS = "/seller/uploads"
UPLOADS_PER_PAGE = 25
ROWS_PER_PAGE = 50
ROW_FILTERS = ("rejected", "accepted", "all")

router = APIRouter(route_class=PageRoute, include_in_schema=False)

# The form's fields and what the page calls them (the error summary names each).
FIELD_LABELS = {
    "file": "CSV file",
    "vertical": "Kind of service",
    "mode": "Sale",
    "reserve_cents": "Reserve price",
    "buy_now_cents": "Buy-now price",
    "price_cents": "Fixed price",
    "duration_minutes": "Auction length",
    "exclusive": "Exclusive",
    "max_buyers": "Buyers per lead",
    "currency": "Currency",
    "sale": "Sale terms",
}


def _refuse_non_sellers(principal: Principal) -> None:
    if principal.user.role != Role.SELLER.value:
        raise Forbidden("Only sellers upload leads.")


def seller_page(action: Action) -> Callable[..., Awaitable[Principal]]:
    """:func:`member_page`, for sellers only."""
    member = member_page(action)

    @guard
    async def dependency(principal: Principal = Depends(member)) -> Principal:
        _refuse_non_sellers(principal)
        return principal

    dependency.__name__ = f"seller_page_{action.value}"
    return dependency


@guard
async def seller_upload_post(request: Request, session: Session) -> Principal:
    """Guard of the upload POST: what :func:`member_page` does, except that the CSRF token,
    which sits in the multipart body, is checked by the handler once the body is read. The
    Origin header is checked here, before a byte of the body is read."""
    request.state.return_path = UPLOADS
    principal = await authenticate(request, session)
    if principal is None or principal.session is None or principal.session.kind != "web":
        raise Unauthenticated()
    request.state.viewer = Viewer.of(principal)
    check_origin(request, trusted_origins(request, settings_of(request)))
    check_allowed(principal, Action.SELL_LEADS, (Role.SELLER,))
    return principal


def _check_csrf(principal: Principal, fields: Mapping[str, str]) -> None:
    expected = principal.session.csrf_token if principal.session else None
    submitted = fields.get(CSRF_FIELD, "")
    if not expected or not submitted:
        raise CsrfFailed()
    if not hmac.compare_digest(submitted.encode(), expected.encode()):
        raise CsrfFailed()


def _errors_of(exc: ValidationFailed) -> dict[str, str]:
    errors: dict[str, str] = {}
    for error in exc.errors:
        field = error.field if error.field in FIELD_LABELS else "form"
        errors.setdefault(field, sale_rule_in_words(error.message))
    return errors or {"form": exc.detail}


async def _uploads_page(
    request: Request,
    session: AsyncSession,
    principal: Principal,
    *,
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    cursor = request.query_params.get("before")
    before_id = decode_cursor(cursor) if cursor and len(cursor) <= 200 else None
    items = await uploads.list_own_uploads(
        session, principal.user, limit=UPLOADS_PER_PAGE, before_id=before_id
    )
    more = len(items) > UPLOADS_PER_PAGE
    items = items[:UPLOADS_PER_PAGE]
    return render_page(
        request,
        "leads/uploads/index.html",
        {
            "verticals": all_verticals(),
            "vertical_names": {v.slug: v.name for v in all_verticals()},
            "vertical_options": [("", "Choose one"), *((v.slug, v.name) for v in all_verticals())],
            "uploads": items,
            "older": encode_cursor(items[-1].id) if more and items else None,
            "values": {"mode": "auction", "exclusive": "true", "currency": "USD", **(values or {})},
            "errors": dict(errors or {}),
            "labels": FIELD_LABELS,
            "max_upload_mib": settings_of(request).max_upload_bytes // (1024 * 1024),
            "max_rows": uploads.MAX_DATA_ROWS,
        },
        status_code=status_code,
    )


@router.get(UPLOADS)
async def uploads_page(
    request: Request,
    session: Session,
    principal: Principal = Depends(seller_page(Action.VIEW_DASHBOARD)),
) -> Response:
    return await _uploads_page(request, session, principal)


@router.post(UPLOADS)
async def upload_leads(
    request: Request,
    session: Session,
    principal: Principal = Depends(seller_upload_post),
) -> Response:
    # As in the API: no transaction stays open while the file arrives.
    await session.commit()
    settings = settings_of(request)
    with uploads.open_spool(settings) as spool:
        typed: dict[str, str] = {}
        try:
            form = await uploads.receive_form(
                request.stream(),
                request.headers.get("content-type", ""),
                spool,
                text_fields=(CSRF_FIELD, *uploads.FORM_FIELDS),
            )
            # Before anything is stored, and before anything typed is shown again.
            _check_csrf(principal, form.fields)
            typed = {name: form.fields.get(name, "").strip() for name in uploads.FORM_FIELDS}
            terms = uploads.read_upload_form(form, spool)
        except ValidationFailed as exc:
            # Showing the form again changes nothing, so it needs no token.
            return await _uploads_page(
                request, session, principal, values=typed, errors=_errors_of(exc), status_code=422
            )
        upload = await uploads.create_upload(
            session, settings, seller=principal.user, terms=terms, form=form, spool=spool
        )
    return RedirectResponse(f"{UPLOADS}/{upload.id}", status_code=303)


@router.get(UPLOADS + "/template/{vertical}.csv")
async def upload_template(
    vertical: Annotated[str, Path(max_length=40)],
    _: Principal | None = Depends(visitor_page()),
) -> Response:
    found = get_vertical(vertical)
    if found is None:
        raise NotFound("No such vertical.")
    return Response(
        uploads.template_csv(found),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="leads-{found.slug}.csv"'},
    )


@router.get(UPLOADS + "/{upload_id}")
async def upload_report(
    request: Request,
    upload_id: Annotated[str, Path(max_length=40)],
    session: Session,
    principal: Principal = Depends(seller_page(Action.VIEW_DASHBOARD)),
) -> Response:
    upload = await uploads.get_own_upload(session, principal.user, upload_id)
    shown = request.query_params.get("rows", "rejected")
    if shown not in ROW_FILTERS:
        shown = "rejected"
    after = request.query_params.get("after", "")
    after_line = int(after) if after.isdigit() and len(after) < 10 else None
    rows = await uploads.list_rows(
        session,
        upload,
        status=None if shown == "all" else UploadRowStatus(shown),
        limit=ROWS_PER_PAGE,
        after_line=after_line,
    )
    more = len(rows) > ROWS_PER_PAGE
    rows = rows[:ROWS_PER_PAGE]
    vertical = get_vertical(upload.vertical)
    in_progress = upload.status in (UploadStatus.QUEUED, UploadStatus.PROCESSING)
    response = render_page(
        request,
        "leads/uploads/report.html",
        {
            "upload": upload,
            "vertical_name": vertical.name if vertical else upload.vertical,
            "rows": rows,
            "column_of": uploads.column_of,
            "shown": shown,
            "next_after": rows[-1].line if more and rows else None,
            "first_page": after_line is None,
            "in_progress": in_progress,
        },
    )
    if in_progress:
        # No script needed: the browser reloads the report until the file is processed.
        response.headers["Refresh"] = "5"
    return response
