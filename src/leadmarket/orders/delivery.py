"""The delivery of a sold lead to its buyer's webhook: the message is the order with the
contact, built from the vault when each attempt is made (never stored), by the buyer's right
to it (:data:`Purpose.BUYER_ORDER`), so a delivery after the destruction fails for good."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.leads.service import consent_withdrawn_at
from leadmarket.models import Order, User, WebhookDelivery
from leadmarket.orders.service import LEAD_DELIVERED, order_out
from leadmarket.webhooks.service import PayloadGone, payload_builder


@payload_builder(LEAD_DELIVERED)
async def lead_delivered_payload(
    session: AsyncSession, settings: Settings, delivery: WebhookDelivery
) -> dict[str, Any]:
    order = await session.get(Order, delivery.order_id)
    buyer = await session.get(User, delivery.buyer_id)
    if order is None or buyer is None or order.buyer_id != buyer.id:
        raise PayloadGone("The order no longer exists.")
    if await consent_withdrawn_at(session, order.lead_id) is not None:
        # L3: a delivery not yet made (queued, retrying or replayed) is not made any more.
        raise PayloadGone(
            "The consumer withdrew their consent (L3); the lead is no longer delivered."
        )
    out = await order_out(session, settings, order, buyer)
    if out.contact is None:
        raise PayloadGone(
            "The lead's personal data was destroyed (L4) or the order was cancelled; "
            "there is nothing to deliver."
        )
    return {"order": out.model_dump(mode="json")}
