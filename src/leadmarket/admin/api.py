"""Staff API: an admin reading personal data for a stated reason (recorded, A4), the audit log
and its integrity check.

Least privilege (A4): personal data is for admins, and only with a reason that goes into the
audit log. Support staff work from previews (``GET /api/v1/leads/{id}`` shows staff any lead's
preview, never its contact). A privacy officer has no general access: they see a consumer's data
only inside a verified rights request, through the privacy engine."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts import repository
from leadmarket.accounts.api import me_out
from leadmarket.accounts.auth import Principal, requires
from leadmarket.accounts.policy import Action
from leadmarket.accounts.schemas import MeOut
from leadmarket.audit.service import Actor, record, verify_chain
from leadmarket.config import settings_of
from leadmarket.kit.errors import FieldError, NotFound, ValidationFailed
from leadmarket.kit.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from leadmarket.kit.routing import TransactionalRoute, get_session
from leadmarket.leads.vault import Purpose, Reader, reveal_personal_data
from leadmarket.models import AuditEvent, Role

router = APIRouter(prefix="/api/v1/admin", route_class=TransactionalRoute, tags=["admin"])
Session = Annotated[AsyncSession, Depends(get_session)]

# Who may read personal data here (with a reason): admins only.
PERSONAL_DATA_READERS = (Role.ADMIN,)


def stated_reason(reason: str) -> str:
    """The reason as recorded; blank is no reason (422)."""
    stated = " ".join(reason.split())
    if len(stated) < 5:
        raise ValidationFailed(
            "Say why you need the personal data.",
            errors=[FieldError("query.reason", "At least 5 characters; it is recorded.")],
        )
    return stated


@router.get(
    "/members/{username}",
    summary="A member's account with personal data, for admins; the reason is required and "
    "recorded (A4)",
)
async def read_member(
    username: Annotated[str, Path(max_length=64)],
    reason: Annotated[str, Query(min_length=5, max_length=200, description="Why you need it.")],
    session: Session,
    principal: Principal = Depends(requires(Action.READ_MEMBER_DATA, *PERSONAL_DATA_READERS)),
) -> MeOut:
    stated = stated_reason(reason)
    user = await repository.user_by_username(session, username)
    if user is None:
        raise NotFound("No member has this username.")
    await record(
        session,
        actor=Actor("user", principal.user.id),
        action="pii.read",
        subject_type="user",
        subject_id=user.id,
        fields=["email", "name", "phone", "address"],
        reason=stated,
        details={"role": principal.user.role},
    )
    return me_out(user)


@router.get(
    "/leads/{lead_id}/personal-data",
    summary="A lead's decrypted personal data, for admins; the reason is required and recorded",
)
async def read_lead_personal_data(
    lead_id: Annotated[str, Path(max_length=40)],
    reason: Annotated[str, Query(min_length=5, max_length=200, description="Why you need it.")],
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.READ_MEMBER_DATA, *PERSONAL_DATA_READERS)),
) -> dict[str, Any]:
    return await reveal_personal_data(
        session,
        settings_of(request),
        lead_id,
        reader=Reader(principal.user.id, principal.user.role),
        purpose=Purpose.ADMIN_REVIEW,
        reason=stated_reason(reason),
    )


class AuditEventOut(BaseModel):
    seq: int
    at: dt.datetime
    actor_type: str
    actor_id: str | None
    action: str
    subject_type: str | None
    subject_id: str | None
    fields: list[str] | None
    reason: str | None
    details: dict[str, Any] | None
    entry_hash: str


@router.get("/audit", summary="The audit log, newest first")
async def list_audit(
    session: Session,
    limit: Limit = 50,
    cursor: Cursor = None,
    subject_id: Annotated[str | None, Query(max_length=40)] = None,
    _: Principal = Depends(requires(Action.ADMINISTER, Role.ADMIN, Role.PRIVACY_OFFICER)),
) -> Page[AuditEventOut]:
    query = select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(limit + 1)
    after = decode_cursor(cursor)
    if after is not None:
        if not after.isdigit():
            raise ValidationFailed("Bad cursor.", errors=[FieldError("cursor", "Unknown cursor.")])
        query = query.where(AuditEvent.seq < int(after))
    if subject_id is not None:
        query = query.where(AuditEvent.subject_id == subject_id)
    rows = list(await session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[AuditEventOut.model_validate(r, from_attributes=True) for r in rows],
        next_cursor=encode_cursor(str(rows[-1].seq)) if more and rows else None,
    )


class ChainOut(BaseModel):
    ok: bool
    checked: int
    problems: list[str]


@router.get("/audit/verify", summary="Check the audit log's hash chain")
async def verify_audit(
    session: Session,
    _: Principal = Depends(requires(Action.ADMINISTER, Role.ADMIN, Role.PRIVACY_OFFICER)),
) -> ChainOut:
    report = await verify_chain(session)
    return ChainOut(ok=report.ok, checked=report.checked, problems=report.problems)
