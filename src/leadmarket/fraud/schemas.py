"""Bodies and answers of the fraud API: members' reports (docs/api.md ``POST /api/v1/reports``)
and the admin's review queue."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from leadmarket.fraud.reports import ReportReason, SubjectType
from leadmarket.fraud.service import CaseAction


class ReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject_type: SubjectType
    subject_id: str = Field(
        min_length=1,
        max_length=64,
        description="A lead id, a member's username, a message id (or a feedback id).",
    )
    reason: ReportReason
    details: str | None = Field(default=None, max_length=2000, description="What happened.")


class MemberOut(BaseModel):
    id: str
    username: str
    role: str
    status: str


class CaseSummaryOut(BaseModel):
    id: str
    member: MemberOut
    status: str
    resolution: str | None
    signal_count: int = Field(description="Every signal, counting repeats.")
    kinds: dict[str, int] = Field(description="Signals by kind, counting repeats.")
    opened_at: dt.datetime
    last_signal_at: dt.datetime | None
    closed_at: dt.datetime | None


class SignalOut(BaseModel):
    id: str
    kind: str
    source: str
    reason: str | None
    lead_id: str | None
    message_id: str | None
    message_body: str | None = Field(description="The reported message, to judge it.")
    reporter: str | None = Field(description="The reporting member's username.")
    details: dict[str, Any]
    occurrences: int
    created_at: dt.datetime
    last_seen_at: dt.datetime


class ActionOut(BaseModel):
    id: str
    action: str
    admin: str
    lead_id: str | None
    note: str
    effects: dict[str, Any]
    at: dt.datetime


class CaseOut(CaseSummaryOut):
    open_leads: int
    signals: list[SignalOut]
    actions: list[ActionOut]
    earlier_cases: list[str] = Field(description="Ids of the member's earlier cases.")


class ActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: CaseAction
    note: str = Field(max_length=2000, description="Why; kept on the case and in the audit log.")
    lead_id: str | None = Field(
        default=None,
        max_length=40,
        description="The lead concerned (required to confirm a lead fraudulent).",
    )
