"""Member messages over the API (docs/api.md "Buying"): the thread of an order for its two
parties, sending to the other party, and reporting a message as spam. Rules live in
:mod:`leadmarket.messages.service`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Request, status
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.auth import Principal, requires
from leadmarket.accounts.policy import Action
from leadmarket.config import settings_of
from leadmarket.kit.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from leadmarket.kit.routing import TransactionalRoute, get_session
from leadmarket.messages import service
from leadmarket.messages.schemas import MessageIn, MessageOut, ReportOut, SpamReportIn
from leadmarket.models import Role

router = APIRouter(prefix="/api/v1", route_class=TransactionalRoute, tags=["messages"])
Session = Annotated[AsyncSession, Depends(get_session)]
Id = Annotated[str, Path(max_length=40)]
PARTIES = (Role.BUYER, Role.SELLER)


def message_out(view: service.MessageView) -> MessageOut:
    m = view.message
    return MessageOut(
        id=m.id,
        order_id=m.order_id,
        sender=view.sender,
        recipient=view.recipient,
        mine=view.mine,
        body=m.body,
        created_at=m.created_at,
        read_at=m.read_at,
    )


@router.get(
    "/orders/{order_id}/messages",
    summary="The order's messages, oldest first (its buyer and seller only); reading marks "
    "yours read",
    responses={404: {"description": "No such order, or you are not one of its two parties"}},
)
async def list_messages(
    order_id: Id,
    session: Session,
    principal: Principal = Depends(requires(Action.VIEW_ORDERS, *PARTIES)),
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[MessageOut]:
    _, views = await service.thread(
        session, principal.user, order_id, after_id=decode_cursor(cursor), limit=limit
    )
    more = len(views) > limit
    views = views[:limit]
    return Page(
        items=[message_out(v) for v in views],
        next_cursor=encode_cursor(views[-1].message.id) if more and views else None,
    )


@router.post(
    "/orders/{order_id}/messages",
    status_code=status.HTTP_201_CREATED,
    summary="Send a message to the order's other party (M4)",
    responses={
        403: {"description": "The same text in too many threads (…/bulk-messaging)"},
        404: {"description": "No such order, or you are not one of its two parties"},
        409: {"description": "The other party's account is not active (…/counterpart-inactive)"},
        422: {"description": "Empty, too long, or control characters"},
        429: {"description": "Hourly or daily message cap reached; see Retry-After"},
    },
)
async def send_message(
    order_id: Id,
    body: MessageIn,
    request: Request,
    session: Session,
    principal: Principal = Depends(requires(Action.SEND_MESSAGE, *PARTIES)),
) -> MessageOut:
    try:
        view = await service.send_message(
            session,
            settings_of(request),
            order_id=order_id,
            sender=principal.user,
            body=body.body,
        )
    except service.BulkMessagingRefused:
        await session.commit()  # the fraud signal stands although the message is refused
        raise
    return message_out(view)


@router.post(
    "/messages/{message_id}/spam-report",
    status_code=status.HTTP_201_CREATED,
    summary="Report a message you received as spam; it goes to the fraud review",
    responses={
        404: {"description": "No such message, or you are not its recipient"},
        409: {"description": "Reported already (…/already-reported)"},
        429: {"description": "Daily report cap reached"},
    },
)
async def report_spam(
    message_id: Id,
    request: Request,
    session: Session,
    body: Annotated[SpamReportIn | None, Body()] = None,
    principal: Principal = Depends(requires(Action.SEND_MESSAGE, *PARTIES)),
) -> ReportOut:
    signal = await service.report_spam(
        session,
        settings_of(request),
        message_id=message_id,
        reporter=principal.user,
        note=body.details if body else None,
    )
    return ReportOut(
        id=signal.id,
        subject_type="message",
        subject_id=message_id,
        reason="spam",
        created_at=signal.created_at,
    )
