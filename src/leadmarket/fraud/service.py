"""The admin's fraud review (promise M6): the queue of cases (one open case per member, with
its signals), and what an admin can do about one. Every action is kept on the case with the
admin's note and appended to the audit log (A4).

Actions:

* **dismiss**: nothing was wrong; the case closes.
* **warn**: the member is emailed a warning naming their username and the lead concerned; the
  case closes.
* **suspend**: the account is suspended (``UserStatus.SUSPENDED``): every session and API key
  is revoked at once and sign-in is refused; a seller's open leads are withdrawn (below), a
  buyer's campaigns are paused; the member is told why. The case closes.
* **ban**: the same, and the account is closed for good (``UserStatus.CLOSED``). The member's
  data is kept, not erased as on a member's own closure: the fraud exception (P3).
* **reinstate**: a suspended member becomes active again (sessions and keys stay revoked; they
  sign in again and make new keys).
* **withdraw_leads**: the seller's open leads leave the market without touching the account.
* **confirm_lead_fraud**: a lead of the member is confirmed fraudulent: withdrawn if still on
  sale, and every buyer of it is alerted (they can return it with the reason "fake or
  fraudulent identity" within the return window).

**Withdrawing a seller's open leads.** Each open lead of the seller is locked (``FOR UPDATE``,
in id order, the same lock order as a sale: lead, ledger, audit), set ``withdrawn`` (there is
no separate "suspended" state: a withdrawn lead never returns to the market) and given the
unsold lead's retention clock (L4). An auction is ended through the marketplace's own
:func:`~leadmarket.marketplace.service.end_auction` with the outcome ``withdrawn``: the leading
bid's hold is released through the ledger (held → wallet), every bid is lost, and the auction
page hears about it. Every bidder is told once, by the review, with the seller's username
(the leader also that their hold is released); the reason is kept on the case action and in
the audit log.

Alerts are told through the notification center (:mod:`leadmarket.notifications.notify`):
transactional mail (always sent, P7), and a text message for the urgent ones to a member who
chose texts. They name the member's username, the lead and the case, and the kinds of signals
the review looked at; never a consumer's data, never who reported, and never the admin's note
(it is kept on the case and in the audit log, and may name a reporter or quote a consumer)."""

from __future__ import annotations

import datetime as dt
import enum
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts import repository as accounts
from leadmarket.audit.service import Actor, record
from leadmarket.campaigns.service import bump_matching_version
from leadmarket.config import Settings
from leadmarket.fraud.signals import SignalKind
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import Conflict, FieldError, NotFound, ValidationFailed
from leadmarket.kit.ids import new_id
from leadmarket.kit.realtime import Broker
from leadmarket.ledger.service import hold_of
from leadmarket.marketplace.service import end_auction, lock_money_of
from leadmarket.models import (
    Auction,
    AuctionOutcome,
    Campaign,
    FraudCase,
    FraudCaseAction,
    FraudCaseStatus,
    FraudSignal,
    HoldStatus,
    Lead,
    LeadStatus,
    MemberMessage,
    Role,
    SaleMode,
    User,
    UserStatus,
)
from leadmarket.notifications import notify
from leadmarket.notifications.notify import Event

NOTE_MIN_CHARS = 5
NOTE_MAX_CHARS = 2000


class CaseAction(enum.StrEnum):
    DISMISS = "dismiss"
    WARN = "warn"
    SUSPEND = "suspend"
    BAN = "ban"
    REINSTATE = "reinstate"
    WITHDRAW_LEADS = "withdraw_leads"
    CONFIRM_LEAD_FRAUD = "confirm_lead_fraud"


# Actions that close the case, and the resolution they leave on it.
CLOSING_ACTIONS = {
    CaseAction.DISMISS: "dismissed",
    CaseAction.WARN: "warned",
    CaseAction.SUSPEND: "suspended",
    CaseAction.BAN: "banned",
}
# Actions that need the case open (the others act on the member whatever the case's state).
NEEDS_OPEN_CASE = frozenset(
    {CaseAction.DISMISS, CaseAction.WARN, CaseAction.SUSPEND, CaseAction.BAN,
     CaseAction.WITHDRAW_LEADS}
)  # fmt: skip


class CaseClosed(Conflict):
    slug = "fraud-case-closed"
    title = "This case is closed"
    explanation = (
        "The case was already decided. New signals about the member open a new case; a "
        "suspended member can still be reinstated and a lead confirmed fraudulent."
    )


class ActionNotApplicable(Conflict):
    slug = "fraud-action-not-applicable"
    title = "This action does not apply to this member"
    explanation = (
        "Reinstating needs a suspended member; withdrawing leads needs a seller; staff "
        "accounts are not handled through the fraud queue. `detail` says which."
    )


# Reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseRow:
    case: FraudCase
    member: User
    kinds: dict[str, int]  # signals by kind, counting repeats
    last_signal_at: dt.datetime | None

    @property
    def signal_count(self) -> int:
        return sum(self.kinds.values())


async def list_cases(
    session: AsyncSession, *, status: str | None, limit: int, before_id: str | None = None
) -> list[CaseRow]:
    """Cases, newest first (``limit`` + 1), each with its member, its signal counts by kind and
    its latest signal (one grouped query for the page)."""
    query = (
        select(FraudCase, User)
        .join(User, User.id == FraudCase.subject_user_id)
        .order_by(FraudCase.id.desc())
        .limit(limit + 1)
    )
    if status is not None:
        query = query.where(FraudCase.status == status)
    if before_id is not None:
        query = query.where(FraudCase.id < before_id)
    rows = [(row[0], row[1]) for row in await session.execute(query)]
    kinds: dict[str, dict[str, int]] = defaultdict(dict)
    latest: dict[str, dt.datetime] = {}
    if rows:
        counted = await session.execute(
            select(
                FraudSignal.case_id,
                FraudSignal.kind,
                func.sum(FraudSignal.occurrences),
                func.max(FraudSignal.last_seen_at),
            )
            .where(FraudSignal.case_id.in_([c.id for c, _ in rows]))
            .group_by(FraudSignal.case_id, FraudSignal.kind)
        )
        for case_id, kind, total, last in counted:
            kinds[str(case_id)][str(kind)] = int(total or 0)
            if last is not None and (str(case_id) not in latest or last > latest[str(case_id)]):
                latest[str(case_id)] = last
    return [
        CaseRow(case, member, dict(sorted(kinds[case.id].items())), latest.get(case.id))
        for case, member in rows
    ]


@dataclass(frozen=True)
class SignalView:
    signal: FraudSignal
    reporter: str | None  # username
    message_body: str | None  # the reported message, for the admin to judge


@dataclass(frozen=True)
class ActionView:
    action: FraudCaseAction
    admin: str  # username


@dataclass
class CaseDetail:
    case: FraudCase
    member: User
    signals: list[SignalView]
    actions: list[ActionView]
    open_leads: int
    earlier_cases: list[FraudCase] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def signal_count(self) -> int:
        return sum(self.kinds.values())

    @property
    def last_signal_at(self) -> dt.datetime | None:
        return max((v.signal.last_seen_at for v in self.signals), default=None)


async def case_detail(session: AsyncSession, case_id: str, admin: User) -> CaseDetail:
    """One case with every signal (reporters by username, reported messages' text), the actions
    taken and the member's earlier cases. Opening it is audited: it can show what members
    wrote to each other."""
    case = await session.get(FraudCase, case_id)
    if case is None:
        raise NotFound("No such fraud case.")
    member = await session.get(User, case.subject_user_id)
    assert member is not None
    signals = list(
        await session.scalars(
            select(FraudSignal).where(FraudSignal.case_id == case.id).order_by(FraudSignal.id)
        )
    )
    user_ids = {s.reporter_id for s in signals if s.reporter_id}
    actions = list(
        await session.scalars(
            select(FraudCaseAction)
            .where(FraudCaseAction.case_id == case.id)
            .order_by(FraudCaseAction.id)
        )
    )
    user_ids |= {a.admin_id for a in actions}
    names = await accounts.usernames(session, user_ids)
    message_ids = {s.message_id for s in signals if s.message_id}
    bodies = {
        str(i): str(b)
        for i, b in await session.execute(
            select(MemberMessage.id, MemberMessage.body).where(
                MemberMessage.id.in_(message_ids or {""})
            )
        )
    }
    open_leads = await session.scalar(
        select(func.count()).where(
            Lead.seller_id == member.id, Lead.status == LeadStatus.OPEN.value
        )
    )
    earlier = list(
        await session.scalars(
            select(FraudCase)
            .where(FraudCase.subject_user_id == member.id, FraudCase.id != case.id)
            .order_by(FraudCase.id.desc())
            .limit(20)
        )
    )
    kinds: dict[str, int] = defaultdict(int)
    for s in signals:
        kinds[s.kind] += s.occurrences
    await record(
        session,
        actor=Actor("user", admin.id),
        action="fraud.case_viewed",
        subject_type="fraud_case",
        subject_id=case.id,
        details={"member_id": member.id},
    )
    return CaseDetail(
        case=case,
        member=member,
        signals=[
            SignalView(
                s,
                names.get(s.reporter_id or ""),
                bodies.get(s.message_id or "") if s.message_id else None,
            )
            for s in signals
        ],
        actions=[ActionView(a, names.get(a.admin_id, "")) for a in actions],
        open_leads=int(open_leads or 0),
        earlier_cases=earlier,
        kinds=dict(sorted(kinds.items())),
    )


# Acting -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleasedHold:
    lead_id: str
    bid_id: str
    buyer_id: str
    amount_cents: int
    currency: str


@dataclass
class Withdrawal:
    lead_ids: list[str] = field(default_factory=list)
    released: list[ReleasedHold] = field(default_factory=list)
    auction_ids: list[str] = field(default_factory=list)  # ended with bids: bidders to tell


async def withdraw_open_leads(
    session: AsyncSession,
    settings: Settings,
    broker: Broker,
    seller_id: str,
    *,
    only_lead_id: str | None = None,
    now: dt.datetime,
) -> Withdrawal:
    """Take the seller's open leads (or just ``only_lead_id``) off the market: see the module
    docstring. Auctions end through the marketplace, their holds released through the ledger."""
    query = (
        select(Lead)
        .where(Lead.seller_id == seller_id, Lead.status == LeadStatus.OPEN.value)
        .order_by(Lead.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if only_lead_id is not None:
        query = query.where(Lead.id == only_lead_id)
    result = Withdrawal()
    leads = list(await session.scalars(query))
    # Their auctions' leaders' accounts, all at once in the ledger's order, before the holds
    # are released one by one (two buyers locked in opposite orders elsewhere would deadlock).
    await lock_money_of(session, ending=[lead for lead in leads if lead.auction_ends_at])
    for lead in leads:
        lead.status = LeadStatus.WITHDRAWN.value
        if lead.pii_expires_at is None:
            # Off the market for good: kept no longer than an unsold lead (L4).
            lead.pii_expires_at = now + dt.timedelta(hours=settings.pii_retention_hours)
        result.lead_ids.append(lead.id)
        if lead.sale_mode != SaleMode.AUCTION.value:
            continue
        auction = await session.get(Auction, lead.id, populate_existing=True)
        leader: ReleasedHold | None = None
        if auction is not None and auction.closed_at is None and auction.leader_bid_id:
            hold = await hold_of(session, auction.leader_bid_id)
            if hold is not None and hold.status == HoldStatus.HELD.value:
                leader = ReleasedHold(
                    lead.id, hold.reference, hold.buyer_id, hold.amount_cents, hold.currency
                )
        # The bidders are told by the review (naming the seller, M6), not by the end.
        ended = await end_auction(
            session, settings, broker, lead, AuctionOutcome.WITHDRAWN, now=now, tell=False
        )
        if ended is not None and ended.bid_count:
            result.auction_ids.append(lead.id)
        if leader is not None:
            result.released.append(leader)
    await session.flush()
    return result


def clean_admin_note(note: str) -> str:
    text = note.replace("\r\n", "\n").strip()
    if len(text) < NOTE_MIN_CHARS or len(text) > NOTE_MAX_CHARS:
        raise ValidationFailed(
            "Say why, in a few words: the note is kept on the case.",
            errors=[
                FieldError("note", f"Between {NOTE_MIN_CHARS} and {NOTE_MAX_CHARS} characters.")
            ],
        )
    return text


async def _lead_concerned(
    session: AsyncSession, case: FraudCase, lead_id: str | None
) -> str | None:
    """The lead a notice names: the one the admin chose, else the latest one among the
    case's signals."""
    if lead_id is not None:
        return lead_id
    found: str | None = await session.scalar(
        select(FraudSignal.lead_id)
        .where(FraudSignal.case_id == case.id, FraudSignal.lead_id.is_not(None))
        .order_by(FraudSignal.last_seen_at.desc(), FraudSignal.id.desc())
        .limit(1)
    )
    return found


async def _check_lead(session: AsyncSession, member: User, lead_id: str | None) -> None:
    if lead_id is None:
        return
    seller_id = await session.scalar(select(Lead.seller_id).where(Lead.id == lead_id))
    if seller_id != member.id:
        raise ValidationFailed(
            "That lead is not one of this member's.",
            errors=[FieldError("lead_id", "Name a lead the member posted.")],
        )


async def act_on_case(
    session: AsyncSession,
    settings: Settings,
    broker: Broker,
    *,
    case_id: str,
    admin: User,
    action: CaseAction,
    note: str,
    lead_id: str | None = None,
) -> FraudCaseAction:
    """Do ``action`` on the case (see the module docstring), keep it on the case and in the
    audit log, and alert whoever it touches. Raises NotFound, ValidationFailed,
    :class:`CaseClosed` or :class:`ActionNotApplicable`; then nothing is changed."""
    text = clean_admin_note(note)
    now = utcnow()
    subject_user_id = await session.scalar(
        select(FraudCase.subject_user_id).where(FraudCase.id == case_id)
    )
    if subject_user_id is None:
        raise NotFound("No such fraud case.")
    # Lock order (PostgreSQL): the member's row, their sessions and API keys, then the case,
    # then leads, ledger, audit. Signal writers may hold the member's row (a message's rate
    # check) or an API key row (intake) while they wait for the case's share lock, so those
    # are taken before the case. FOR NO KEY UPDATE: only the status changes, so rows being
    # inserted that refer to the member (an intake batch's leads) are not waited for.
    member = await session.scalar(
        select(User)
        .where(User.id == subject_user_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    assert member is not None
    if member.role not in (Role.BUYER.value, Role.SELLER.value):
        raise ActionNotApplicable("Staff accounts are not handled through the fraud queue.")
    revoked = 0
    if action in (CaseAction.SUSPEND, CaseAction.BAN):
        # Rolled back with everything else if the action is refused below.
        revoked = await accounts.revoke_sessions(session, member.id, now)
        await accounts.revoke_api_keys(session, member.id, now)
    case = await session.scalar(
        select(FraudCase)
        .where(FraudCase.id == case_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert case is not None
    if action in NEEDS_OPEN_CASE and case.status != FraudCaseStatus.OPEN.value:
        raise CaseClosed(f"This case was closed ({case.resolution}).")
    await _check_lead(session, member, lead_id)
    if action is CaseAction.CONFIRM_LEAD_FRAUD and lead_id is None:
        raise ValidationFailed(
            "Name the lead confirmed fraudulent.",
            errors=[FieldError("lead_id", "Required for this action.")],
        )
    effects: dict[str, Any] = {}
    concerned = await _lead_concerned(session, case, lead_id)

    if action is CaseAction.REINSTATE:
        if member.status != UserStatus.SUSPENDED.value:
            raise ActionNotApplicable(f"The member is {member.status}, not suspended.")
        member.status = UserStatus.ACTIVE.value
        await notify.notify_fraud_action(
            session, settings, Event.ACCOUNT_REINSTATED, member=member, case_id=case.id
        )
    elif action is CaseAction.WITHDRAW_LEADS:
        if member.role != Role.SELLER.value:
            raise ActionNotApplicable("Only sellers have leads to withdraw.")
        withdrawal = await withdraw_open_leads(session, settings, broker, member.id, now=now)
        effects.update(_effects_of(withdrawal))
        await notify.notify_fraud_action(
            session,
            settings,
            Event.LEADS_WITHDRAWN,
            member=member,
            case_id=case.id,
            lead_ids=withdrawal.lead_ids,
        )
        await _tell_bidders(session, settings, member, withdrawal)
    elif action is CaseAction.CONFIRM_LEAD_FRAUD:
        assert lead_id is not None
        withdrawal = await withdraw_open_leads(
            session, settings, broker, member.id, only_lead_id=lead_id, now=now
        )
        effects.update(_effects_of(withdrawal))
        await _tell_bidders(session, settings, member, withdrawal)
        alerted = await notify.notify_fraud_alert(
            session, settings, lead_id=lead_id, seller=member, now=now
        )
        effects["buyers_alerted"] = [order_id for order_id, _ in alerted]
    elif action is CaseAction.WARN:
        await notify.notify_fraud_action(
            session,
            settings,
            Event.FRAUD_WARNING,
            member=member,
            case_id=case.id,
            lead_id=concerned,
            grounds=await _grounds(session, case),
        )
    elif action in (CaseAction.SUSPEND, CaseAction.BAN):
        if action is CaseAction.BAN and member.status == UserStatus.CLOSED.value:
            raise ActionNotApplicable("The account is closed already.")
        effects["sessions_revoked"] = revoked
        effects.update(await _stop_member(session, settings, broker, member, action, now))
        await notify.notify_fraud_action(
            session,
            settings,
            Event.ACCOUNT_SUSPENDED if action is CaseAction.SUSPEND else Event.ACCOUNT_CLOSED,
            member=member,
            case_id=case.id,
            lead_id=concerned,
            grounds=await _grounds(session, case),
        )

    if action in CLOSING_ACTIONS:
        case.status = FraudCaseStatus.CLOSED.value
        case.open_key = None
        case.resolution = CLOSING_ACTIONS[action]
        case.closed_at = now
        case.closed_by = admin.id
    taken = FraudCaseAction(
        id=new_id("fra"),
        case_id=case.id,
        action=action.value,
        admin_id=admin.id,
        lead_id=lead_id or (concerned if action is CaseAction.WARN else None),
        note=text,
        effects=effects,
        at=now,
    )
    session.add(taken)
    await session.flush()
    await record(
        session,
        actor=Actor("user", admin.id),
        action=f"fraud.{action.value}",
        subject_type="user",
        subject_id=member.id,
        reason=text,
        details={"case_id": case.id, "lead_id": taken.lead_id, **effects},
    )
    return taken


def _effects_of(withdrawal: Withdrawal) -> dict[str, Any]:
    return {
        "leads_withdrawn": withdrawal.lead_ids,
        "holds_released": [r.bid_id for r in withdrawal.released],
    }


async def _stop_member(
    session: AsyncSession,
    settings: Settings,
    broker: Broker,
    member: User,
    action: CaseAction,
    now: dt.datetime,
) -> dict[str, Any]:
    """Suspend or close the account (every request checks the status; the sessions and API
    keys were revoked already, see :func:`act_on_case`), then take the seller's leads off the
    market or pause the buyer's campaigns."""
    if action is CaseAction.BAN:
        member.status = UserStatus.CLOSED.value
        member.closed_at = now
    else:
        member.status = UserStatus.SUSPENDED.value
    effects: dict[str, Any] = {}
    if member.role == Role.SELLER.value:
        withdrawal = await withdraw_open_leads(session, settings, broker, member.id, now=now)
        effects.update(_effects_of(withdrawal))
        await _tell_bidders(session, settings, member, withdrawal)
    else:
        paused = await session.execute(
            update(Campaign)
            .where(Campaign.buyer_id == member.id, Campaign.active.is_(True))
            .values(active=False)
            .execution_options(synchronize_session=False)
        )
        count = int(getattr(paused, "rowcount", 0) or 0)
        if count:
            await bump_matching_version(session)
        effects["campaigns_paused"] = count
    return effects


# Alerts: told through the notification center (transactional: they always go out, P7) ----

# What a notice says the review looked at: the kinds of signals in the case, in the platform's
# words (never who reported, never what anyone wrote).
GROUND_LABELS: dict[str, str] = {
    SignalKind.COMPLAINT.value: "complaints from members",
    SignalKind.SPAM_REPORT.value: "messages reported as spam",
    SignalKind.BULK_MESSAGING.value: "the same message sent into many order threads",
    SignalKind.LOW_QUALITY_LEAD.value: "leads below the quality threshold",
    SignalKind.VELOCITY.value: "leads posted unusually fast or repeatedly",
    SignalKind.FRAUD_RETURN.value: "returns approved for a fake or fraudulent identity",
    SignalKind.MANY_FRAUD_RETURNS.value: "many such returns in a short time",
}


async def _grounds(session: AsyncSession, case: FraudCase) -> list[str]:
    kinds = set(
        await session.scalars(
            select(FraudSignal.kind).where(FraudSignal.case_id == case.id).distinct()
        )
    )
    return [label for kind, label in GROUND_LABELS.items() if kind in kinds]


async def _tell_bidders(
    session: AsyncSession, settings: Settings, seller: User, withdrawal: Withdrawal
) -> None:
    """Every bidder of each withdrawn auction learns that it is over, why, and (the leader)
    that their hold is released: one notice each (the auction's end tells nobody else)."""
    released: dict[str, dict[str, int]] = defaultdict(dict)
    for hold in withdrawal.released:
        released[hold.lead_id][hold.buyer_id] = hold.amount_cents
    for lead_id in withdrawal.auction_ids:
        lead = await session.get(Lead, lead_id)
        assert lead is not None
        await notify.notify_auction_withdrawn(
            session, settings, lead=lead, seller=seller, released=released[lead_id]
        )
