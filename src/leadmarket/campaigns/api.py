"""The campaign API (docs/api.md "Buying"): buyers create, list, read, change, pause/resume
(``PATCH {"active": false|true}``) and delete their own campaigns. Another buyer's campaign is a
404, never a 403: its existence is not theirs to know."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts.auth import Principal, requires
from leadmarket.accounts.policy import Action
from leadmarket.campaigns import service
from leadmarket.campaigns.schemas import CampaignIn, CampaignOut, CampaignPatch
from leadmarket.config import settings_of
from leadmarket.kit.db import utcnow
from leadmarket.kit.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from leadmarket.kit.routing import TransactionalRoute, get_session
from leadmarket.models import Campaign, Role

router = APIRouter(prefix="/api/v1", route_class=TransactionalRoute, tags=["campaigns"])
Session = Annotated[AsyncSession, Depends(get_session)]
CampaignId = Annotated[str, Path(max_length=40)]
# Reading is part of the buyer's dashboard (A2); changing a campaign moves money later.
viewing = requires(Action.VIEW_DASHBOARD, Role.BUYER)
managing = requires(Action.MANAGE_CAMPAIGNS, Role.BUYER)


async def campaign_outs(session: AsyncSession, campaigns: list[Campaign]) -> list[CampaignOut]:
    counts = await service.delivered_counts(session, campaigns, utcnow())
    return [
        CampaignOut(
            id=c.id,
            name=c.name,
            vertical=c.vertical,
            filters=dict(c.filters),
            bid_cents=c.bid_cents,
            currency=c.currency,
            daily_cap=c.daily_cap,
            monthly_cap=c.monthly_cap,
            timezone=c.timezone,
            schedule=dict(c.schedule) if c.schedule is not None else None,
            budget_cents=c.budget_cents,
            spent_cents=c.spent_cents,
            exclusive_only=c.exclusive_only,
            active=c.active,
            webhook_url=c.webhook_url,
            ping_url=c.ping_url,
            delivered_today=counts[c.id][0],
            delivered_this_month=counts[c.id][1],
            created_at=c.created_at,
            updated_at=c.updated_at,
        )
        for c in campaigns
    ]


@router.get("/campaigns", summary="The buyer's campaigns, newest first")
async def list_campaigns(
    session: Session,
    principal: Principal = Depends(viewing),
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[CampaignOut]:
    rows = await service.list_campaigns(
        session, principal.user, limit=limit, before_id=decode_cursor(cursor)
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=await campaign_outs(session, rows),
        next_cursor=encode_cursor(rows[-1].id) if more and rows else None,
    )


@router.post(
    "/campaigns",
    status_code=status.HTTP_201_CREATED,
    summary="Create a campaign: filters are checked against the vertical's definition",
    responses={422: {"description": "A wrong field; `errors` names each one"}},
)
async def create_campaign(
    request: Request, body: CampaignIn, session: Session, principal: Principal = Depends(managing)
) -> CampaignOut:
    await service.check_campaign_endpoints(
        session, settings_of(request), principal.user, body.model_dump()
    )
    campaign = await service.create_campaign(session, principal.user, body)
    return (await campaign_outs(session, [campaign]))[0]


@router.get("/campaigns/{campaign_id}", summary="One of the buyer's campaigns")
async def get_campaign(
    campaign_id: CampaignId, session: Session, principal: Principal = Depends(viewing)
) -> CampaignOut:
    campaign = await service.get_campaign(session, principal.user, campaign_id)
    return (await campaign_outs(session, [campaign]))[0]


@router.patch(
    "/campaigns/{campaign_id}",
    summary='Change a campaign; {"active": false} pauses it, true resumes it',
    responses={422: {"description": "A wrong field; `errors` names each one"}},
)
async def patch_campaign(
    request: Request,
    campaign_id: CampaignId,
    body: CampaignPatch,
    session: Session,
    principal: Principal = Depends(managing),
) -> CampaignOut:
    changes = body.model_dump(exclude_unset=True)
    current = await service.get_campaign(session, principal.user, campaign_id)
    await service.check_campaign_endpoints(
        session, settings_of(request), principal.user, changes, current
    )
    campaign = await service.update_campaign(session, principal.user, campaign_id, changes)
    return (await campaign_outs(session, [campaign]))[0]


@router.delete(
    "/campaigns/{campaign_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a campaign: it stops bidding at once",
)
async def delete_campaign(
    campaign_id: CampaignId, session: Session, principal: Principal = Depends(managing)
) -> Response:
    await service.delete_campaign(session, principal.user, campaign_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
