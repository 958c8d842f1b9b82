"""The member-message API's bodies and answers (docs/api.md: ``POST …/messages`` takes
``{body}`` and answers 201)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field


class MessageIn(BaseModel):
    """A message to the order's other party. There is no recipient field: the order decides
    who receives it, so a message can never go to anyone else (M4)."""

    model_config = ConfigDict(extra="forbid")
    # The length limit is a setting, checked by the service (422 with the limit in the
    # message); this bound only stops absurd bodies before they are parsed further.
    body: str = Field(max_length=100_000, description="The text, up to message_max_chars.")


class MessageOut(BaseModel):
    id: str
    order_id: str
    sender: str = Field(description="The sender's username.")
    recipient: str = Field(description="The recipient's username.")
    mine: bool = Field(description="Whether the caller sent it.")
    body: str
    created_at: dt.datetime
    read_at: dt.datetime | None = Field(description="When the recipient first read it.")


class SpamReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    details: str | None = Field(default=None, max_length=2000)


class ReportOut(BaseModel):
    id: str
    subject_type: str
    subject_id: str
    reason: str
    created_at: dt.datetime
