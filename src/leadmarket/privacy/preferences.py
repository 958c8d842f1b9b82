"""A member's communication preferences (P7, P8), their opt-out of sale and sharing (P9) and
Global Privacy Control.

* **Channels** (email, phone, text, post) and **topics** (member messages, newsletters,
  promotions) are stored per member; :func:`leadmarket.notifications.service.queue_mail`
  reads them for every message that is not transactional. Marketing is off until the member
  opts in (P7: consent first).
* **Personalised advertising** is a stored preference, off by default, and
  :func:`may_personalize_ads` is the one place that answers whether it is allowed. Honestly:
  nothing in Leadmarket personalises advertising today (there are no ads, no trackers, no
  profiles); the answer exists so that anything that ever does must ask it.
* **Do not sell or share**: a member's own choice, or their browser's Global Privacy Control
  (``Sec-GPC: 1``), which is stored the first time a signed-in request carries it
  (:func:`honour_gpc`) and cannot be undone while the browser still sends it.
* **Who may change what** (promise A2): narrowing is always allowed, even to a remembered
  session; widening is consent and needs the password (:data:`Action.GIVE_CONSENT`), decided by
  :func:`widens`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.audit.service import Actor, record
from leadmarket.config import Settings
from leadmarket.kit.db import insert_ignoring_conflicts, utcnow
from leadmarket.kit.errors import FieldError, ValidationFailed
from leadmarket.models import CommunicationPreference, User
from leadmarket.models.preferences import PREFERENCE_DEFAULTS
from leadmarket.notifications.service import resubscribe

CHANNELS = ("email", "phone", "text", "post")
TOPICS = ("member_messages", "newsletters", "promotions")
MARKETING_TOPICS = ("newsletters", "promotions")
GPC_HEADER = "sec-gpc"


def gpc_requested(headers: Any) -> bool:
    """The request carries Global Privacy Control (``Sec-GPC: 1``, the spec's only value)."""
    value = headers.get(GPC_HEADER)
    return isinstance(value, str) and value.strip() == "1"


# Schemas ------------------------------------------------------------------------------------


class ChannelsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: StrictBool | None = None
    phone: StrictBool | None = None
    text: StrictBool | None = None
    post: StrictBool | None = None


class TopicsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    member_messages: StrictBool | None = None
    newsletters: StrictBool | None = None
    promotions: StrictBool | None = None


class PreferencesIn(BaseModel):
    """Any subset of the preferences; what is left out keeps its value."""

    model_config = ConfigDict(extra="forbid")
    channels: ChannelsIn | None = None
    topics: TopicsIn | None = None
    personalized_ads: StrictBool | None = None
    do_not_sell: StrictBool | None = None

    def flat(self) -> dict[str, bool]:
        changes: dict[str, bool] = {}
        for group in (self.channels, self.topics):
            if group is not None:
                changes.update({k: v for k, v in group.model_dump().items() if v is not None})
        if self.personalized_ads is not None:
            changes["personalized_ads"] = self.personalized_ads
        if self.do_not_sell is not None:
            changes["do_not_sell"] = self.do_not_sell
        return changes


class ChannelsOut(BaseModel):
    email: bool
    phone: bool
    text: bool
    post: bool


class TopicsOut(BaseModel):
    member_messages: bool
    newsletters: bool = Field(description="Marketing: only with consent; off by default.")
    promotions: bool = Field(description="Marketing: only with consent; off by default.")


class PreferencesOut(BaseModel):
    channels: ChannelsOut
    topics: TopicsOut
    personalized_ads: bool = Field(
        description="Personalised advertising allowed. Off by default; nothing personalises "
        "advertising today."
    )
    do_not_sell: bool = Field(description="Opted out of the sale and sharing of personal data.")
    do_not_sell_source: str | None = Field(description="member, gpc, or null")
    global_privacy_control: bool = Field(
        description="This request carried Sec-GPC: 1 (then do_not_sell cannot be turned off)."
    )
    marketing_consent_at: dt.datetime | None
    updated_at: dt.datetime | None


# Reading ------------------------------------------------------------------------------------


async def stored_preferences(session: AsyncSession, user_id: str) -> dict[str, bool]:
    row = await session.get(CommunicationPreference, user_id)
    if row is None:
        return dict(PREFERENCE_DEFAULTS)
    return {name: bool(getattr(row, name)) for name in PREFERENCE_DEFAULTS}


async def preferences_out(
    session: AsyncSession, user_id: str, *, gpc: bool = False
) -> PreferencesOut:
    row = await session.get(CommunicationPreference, user_id)
    values = await stored_preferences(session, user_id)
    return PreferencesOut(
        channels=ChannelsOut(**{name: values[name] for name in CHANNELS}),
        topics=TopicsOut(**{name: values[name] for name in TOPICS}),
        personalized_ads=values["personalized_ads"],
        do_not_sell=values["do_not_sell"],
        do_not_sell_source=row.do_not_sell_source if row is not None else None,
        global_privacy_control=gpc,
        marketing_consent_at=row.marketing_consent_at if row is not None else None,
        updated_at=row.updated_at if row is not None else None,
    )


async def may_personalize_ads(session: AsyncSession, user_id: str | None) -> bool:
    """Whether advertising may be personalised for this member (P8): only if they allowed it
    and did not opt out of sale and sharing (which covers cross-context advertising). Never
    for a visitor, about whom nothing is known or kept."""
    if user_id is None:
        return False
    values = await stored_preferences(session, user_id)
    return values["personalized_ads"] and not values["do_not_sell"]


# Changing -----------------------------------------------------------------------------------


def widens(current: dict[str, bool], changes: dict[str, bool]) -> list[str]:
    """The changes that grant something (consent): a channel, topic or personalised
    advertising turned on, or do-not-sell turned off."""
    granted = []
    for name, value in changes.items():
        if name == "do_not_sell":
            if current[name] and not value:
                granted.append(name)
        elif value and not current[name]:
            granted.append(name)
    return granted


async def _row_for_update(session: AsyncSession, user_id: str) -> CommunicationPreference:
    """The member's row, created with the defaults if missing (a racing creation is harmless),
    and locked for the change."""
    await session.execute(
        insert_ignoring_conflicts(
            session, CommunicationPreference, index_elements=[CommunicationPreference.user_id]
        ).values(user_id=user_id, updated_at=utcnow(), **PREFERENCE_DEFAULTS)
    )
    row = await session.get(
        CommunicationPreference, user_id, with_for_update=True, populate_existing=True
    )
    assert row is not None
    return row


async def update_preferences(
    session: AsyncSession,
    settings: Settings,
    user: User,
    data: PreferencesIn,
    *,
    gpc: bool,
    actor: Actor,
) -> PreferencesOut:
    """Apply the member's changes (the caller has checked that any widening is allowed).
    Opting in to a marketing topic records the consent's time and takes the address off the
    unsubscribe list. Refuses (422, nothing changed) to lift do-not-sell from a browser that
    sends Global Privacy Control."""
    changes = data.flat()
    if gpc and changes.get("do_not_sell") is False:
        message = (
            "Your browser sends Global Privacy Control, which we honour as an opt-out of sale "
            "and sharing; turn it off in your browser first."
        )
        raise ValidationFailed(message, errors=[FieldError("do_not_sell", message)])
    row = await _row_for_update(session, user.id)
    current = {name: bool(getattr(row, name)) for name in PREFERENCE_DEFAULTS}
    changed = sorted(name for name, value in changes.items() if current[name] != value)
    if not changed:
        return await preferences_out(session, user.id, gpc=gpc)
    now = utcnow()
    for name in changed:
        setattr(row, name, changes[name])
    if "do_not_sell" in changed:
        row.do_not_sell_source = "member" if row.do_not_sell else None
    if row.do_not_sell:
        # Cross-context advertising is "sharing": opting out of it ends personalisation too.
        row.personalized_ads = False
    opted_in = [t for t in MARKETING_TOPICS if t in changed and changes[t]]
    if opted_in:
        row.marketing_consent_at = now
        await resubscribe(session, settings, user.email)
    row.updated_at = now
    await session.flush()
    await record(
        session,
        actor=actor,
        action="preferences.updated",
        subject_type="user",
        subject_id=user.id,
        details={name: bool(getattr(row, name)) for name in changed},
    )
    return await preferences_out(session, user.id, gpc=gpc)


async def honour_gpc(session: AsyncSession, user_id: str) -> bool:
    """A signed-in request carried ``Sec-GPC: 1``: store it as the member's opt-out of sale and
    sharing (and of personalised advertising). True if this changed anything. One read when
    it is already stored, so it costs nothing on later requests."""
    current = await session.get(CommunicationPreference, user_id)
    if current is not None and current.do_not_sell and not current.personalized_ads:
        return False
    row = await _row_for_update(session, user_id)
    if row.do_not_sell and not row.personalized_ads:
        return False
    if not row.do_not_sell:
        row.do_not_sell = True
        row.do_not_sell_source = "gpc"
    row.personalized_ads = False
    row.updated_at = utcnow()
    await session.flush()
    await record(
        session,
        actor=Actor("user", user_id),
        action="preferences.gpc_honoured",
        subject_type="user",
        subject_id=user_id,
    )
    return True
