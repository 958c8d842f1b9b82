"""CSV uploads of leads: the upload itself, its file while it waits to be processed, and the
per-row report that outlives the file.

The file holds personal data, so it is kept only sealed: cut into chunks, each encrypted with
the upload's own data key, which is stored wrapped by the master key (as for a lead's vault).
Once the upload is processed, or has failed, the chunks and the wrapped key are deleted. The
report (:class:`LeadUploadRow`) keeps line numbers, outcomes, lead ids, field names and
messages only: never a value from the file."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from leadmarket.kit.db import Base, UTCDateTime, utcnow
from leadmarket.kit.ids import new_id


class UploadStatus(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


class UploadRowStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class LeadUpload(Base):
    __tablename__ = "lead_uploads"
    __table_args__ = (Index("ix_lead_uploads_seller_id_id", "seller_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("upl"))
    seller_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    vertical: Mapped[str] = mapped_column(String(40))
    filename: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(12), default=UploadStatus.QUEUED.value)
    # The sale terms every lead of the file gets (a SaleIn, as JSON): no personal data.
    sale_terms: Mapped[dict[str, Any]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    chunk_count: Mapped[int] = mapped_column(Integer)
    # Plaintext bytes in each chunk but the last.
    chunk_bytes: Mapped[int] = mapped_column(Integer)
    # The data key that seals the chunks, wrapped by the master key; None once the file is gone.
    key_version: Mapped[int | None] = mapped_column(Integer)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The header, as the column names Leadmarket knows, in the file's order.
    columns: Mapped[list[str] | None] = mapped_column(JSON)
    # Where the first data row starts (byte offset in the file, line number).
    data_offset: Mapped[int | None] = mapped_column(BigInteger)
    data_line: Mapped[int | None] = mapped_column(Integer)
    # Where the next step starts; moved forward in the same transaction as the step's work, so
    # a step that does not commit is simply done again.
    next_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    next_line: Mapped[int] = mapped_column(Integer, default=1)
    # First the whole file is read once (header, encoding, row count), then rows are imported.
    scanned: Mapped[bool] = mapped_column(Boolean, default=False)
    rows_counted: Mapped[int] = mapped_column(Integer, default=0)
    rows_total: Mapped[int | None] = mapped_column(Integer)
    rows_accepted: Mapped[int] = mapped_column(Integer, default=0)
    rows_rejected: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class LeadUploadChunk(Base):
    """One sealed piece of an uploaded file (AES-256-GCM, bound to the upload and its place)."""

    __tablename__ = "lead_upload_chunks"

    upload_id: Mapped[str] = mapped_column(
        ForeignKey("lead_uploads.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)


class LeadUploadRow(Base):
    """The outcome of one data row: accepted with its lead, or rejected with each field's
    message. Never a value from the file."""

    __tablename__ = "lead_upload_rows"
    __table_args__ = (
        Index("ix_lead_upload_rows_upload_id_status_line", "upload_id", "status", "line"),
    )

    upload_id: Mapped[str] = mapped_column(
        ForeignKey("lead_uploads.id", ondelete="CASCADE"), primary_key=True
    )
    line: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(10))
    lead_id: Mapped[str | None] = mapped_column(ForeignKey("leads.id", ondelete="SET NULL"))
    errors: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
