"""CSV upload of leads with a per-row report (issue 3).

A seller uploads one CSV file for one vertical, with sale terms for the whole file. Every data
row ends up accepted (with its lead id) or rejected (with its line and each field's message);
nothing is dropped silently. Each row becomes the same :class:`LeadIn` the API takes and goes
through :func:`leads.intake.write_leads`, so every rule (children, duplicates, including
duplicates within the file, validation, quality) is exactly the API's.

Storage. The file holds personal data, so it is never kept in the clear, not even briefly on
disk: the request body is parsed as it streams in, and the file part is cut into chunks of
:data:`CHUNK_BYTES`, each sealed (AES-256-GCM) with a data key of the upload's own, into an
anonymous temporary file; the chunks then go to ``lead_upload_chunks`` and the data key,
wrapped by the master key, to the upload row. When processing ends, done or failed, the chunks
and the wrapped key are deleted. The report keeps only line numbers, outcomes, lead ids, field
names and messages, never a value from the file.

Processing is the durable job :data:`PROCESS_UPLOAD_JOB` (payload: the upload id only), enqueued
in the transaction that stores the upload. It works in steps, each one job and one transaction
that also enqueues the next step:

1. *Scan* the whole file once, :data:`STEP_BYTES` of it per step: the header must name the
   columns (:func:`template_columns`), the text must be UTF-8, and there must be between 1 and
   :data:`MAX_DATA_ROWS` data rows. Any of these wrong and the upload fails at once with a
   message, nothing imported. (Choice for broken encodings: the whole upload fails with "the
   file is not UTF-8 text (byte offset N)", rather than importing the rows before the break.)
2. *Import* at most :data:`BATCH_ROWS` rows per step (fewer if the step reaches
   :data:`STEP_BYTES` of text, a third of the job lease, or on SQLite, where the step holds the
   one write lock, :data:`SQLITE_STEP_SECONDS`), each row in a SAVEPOINT so a bad row cannot
   undo the others. The byte offset and line of the next row are stored on the upload in the
   same transaction as the step's leads and report rows, so a crash mid-step redoes exactly
   that step: no duplicates.

Reading never holds the file in memory: chunks are opened one at a time under an
``io.TextIOWrapper`` (UTF-8, ``newline=""``, strict errors) read by :mod:`csv`. Line numbers
are the file's physical lines, counting the header as line 1; a row whose quoted field spans
lines is reported at the line where it starts. Blank lines are not data rows and are skipped.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
import struct
import tempfile
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session as SyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import (
    DomainError,
    FieldError,
    NotFound,
    ValidationFailed,
    validation_errors,
)
from leadmarket.kit.ids import new_id
from leadmarket.kit.jobs import enqueue
from leadmarket.kit.keyring import Keyring, WrappedKey, new_data_key, open_sealed, seal
from leadmarket.kit.logs import mask_personal_data
from leadmarket.leads.intake import (
    DuplicateLead,
    LeadsKit,
    PreparedLead,
    Submission,
    prepare_lead,
    write_leads,
)
from leadmarket.leads.schemas import MINOR_ERROR, LeadIn, SaleIn
from leadmarket.models import (
    LeadUpload,
    LeadUploadChunk,
    LeadUploadRow,
    UploadRowStatus,
    UploadStatus,
    User,
    UserStatus,
)
from leadmarket.verticals.registry import FieldSpec, Vertical, get_vertical, validate_attributes

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

PROCESS_UPLOAD_JOB = "lead_upload.process"
MAX_DATA_ROWS = 100_000
# Plaintext bytes per sealed chunk (the last chunk of a file may be shorter).
CHUNK_BYTES = 256 * 1024
# Per import step: rows, and text read (a step must also end well within the job's lease).
BATCH_ROWS = 500
STEP_BYTES = 4 * 1024 * 1024
SQLITE_STEP_SECONDS = 2.0
MINOR_MESSAGE = "consumer under 14: nothing stored"
FILE_FIELD = "file"
SALE_FIELDS = (
    "mode",
    "reserve_cents",
    "buy_now_cents",
    "price_cents",
    "duration_minutes",
    "exclusive",
    "max_buyers",
    "currency",
)
FORM_FIELDS = ("vertical", *SALE_FIELDS)
_CENTS_FIELDS = ("reserve_cents", "buy_now_cents", "price_cents")
_WHOLE_CENTS = re.compile(r"^\d{1,12}$", re.ASCII)

CONTACT_COLUMNS = (
    "first_name",
    "last_name",
    "email",
    "phone",
    "birth_date",
    "street",
    "city",
    "region",
    "postal_code",
    "country",
)
CONSENT_COLUMNS = (
    "consent_text",
    "consent_page_url",
    "consent_ip",
    "consent_user_agent",
    "consent_given_at",
)
BASE_COLUMNS = CONTACT_COLUMNS + CONSENT_COLUMNS
# Left out, the country is the API's default (US).
OPTIONAL_BASE_COLUMNS = frozenset({"country"})
_ADDRESS_COLUMNS = ("street", "city", "region", "postal_code", "country")
_CONSENT_KEYS = {
    "consent_text": "disclosure_text",
    "consent_page_url": "page_url",
    "consent_ip": "ip",
    "consent_user_agent": "user_agent",
    "consent_given_at": "given_at",
}

_MAX_TEXT_FIELD_BYTES = 2000
_MAX_TEXT_FIELDS = 30
_MAX_MESSAGE_CHARS = 300
_ERROR_MAX_CHARS = 500
_SNIFF_BYTES = 8192
_BOM = codecs.BOM_UTF8
_LENGTH = struct.Struct(">I")
_INTEGER = re.compile(r"[+-]?\d{1,18}")
_TRUE = frozenset({"true", "yes", "y", "1"})
_FALSE = frozenset({"false", "no", "n", "0"})
# A header cell is only repeated back in a message if it looks like a column name: a file
# without a header has a consumer's data on its first line.
_SHOWABLE_COLUMN = re.compile(r"[a-z][a-z0-9 _.()/-]{0,39}")
_LONG_NUMBER = re.compile(r"\d{3}")


# Errors ------------------------------------------------------------------------------------


class UnsupportedUpload(DomainError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"
    explanation = "Send the lead file as multipart/form-data, with the file in the `file` field."


class MalformedUpload(DomainError):
    status = 400
    slug = "malformed-upload"
    title = "Malformed upload"
    explanation = "The multipart/form-data body could not be read; send the form again."


# Columns -----------------------------------------------------------------------------------


def template_columns(vertical: Vertical) -> list[str]:
    """Every column a file for ``vertical`` may have, in the template's order."""
    return [*BASE_COLUMNS, *(spec.name for spec in vertical.fields)]


def required_columns(vertical: Vertical) -> list[str]:
    return [
        *(name for name in BASE_COLUMNS if name not in OPTIONAL_BASE_COLUMNS),
        *(spec.name for spec in vertical.fields if spec.required),
    ]


def template_csv(vertical: Vertical) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(template_columns(vertical))
    return buffer.getvalue()


def _showable(name: str) -> bool:
    return bool(_SHOWABLE_COLUMN.fullmatch(name)) and not _LONG_NUMBER.search(name)


def _name_columns(names: Sequence[str]) -> str:
    shown = [name for name in names if _showable(name)]
    hidden = len(names) - len(shown)
    text = ", ".join(shown)
    if hidden:
        more = f"{hidden} more whose names are not shown" if shown else f"{hidden} not shown"
        text = f"{text} and {more}" if shown else more
    return text


def check_header(vertical: Vertical, cells: Sequence[str]) -> tuple[list[str], str | None]:
    """The header's column names (trimmed, lower case) and what is wrong with them, if
    anything. Nothing of a cell is repeated back unless it looks like a column name."""
    names = [cell.strip().lower() for cell in cells]
    known = set(template_columns(vertical))
    if not any(name in known for name in names):
        return names, (
            "The first line must name the columns, and it names none that Leadmarket knows. "
            f"Download the template for {vertical.name.lower()} to see them."
        )
    problems: list[str] = []
    missing = [name for name in required_columns(vertical) if name not in names]
    if missing:
        problems.append(f"Missing required columns: {', '.join(missing)}.")
    unknown = [name for name in names if name and name not in known]
    if unknown:
        problems.append(
            f"Unknown columns: {_name_columns(unknown)}. This file is for "
            f"{vertical.name.lower()}; the template lists the columns it may have."
        )
    if "" in names:
        problems.append("A column has no name in the first line.")
    repeated = sorted({name for name in names if name and names.count(name) > 1})
    if repeated:
        problems.append(f"Columns named twice: {_name_columns(repeated)}.")
    return names, " ".join(problems)[:_ERROR_MAX_CHARS] if problems else None


# The upload form ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadTerms:
    vertical: Vertical
    sale: SaleIn


def read_terms(fields: Mapping[str, str]) -> UploadTerms:
    """The vertical and the sale terms of an upload, from its form fields (the API's and the
    page's). Errors name the form fields; a rule across fields is named ``sale``."""
    errors: list[FieldError] = []
    slug = fields.get("vertical", "").strip()
    vertical = get_vertical(slug) if slug else None
    if not slug:
        errors.append(FieldError("vertical", "This field is required."))
    elif vertical is None:
        errors.append(FieldError("vertical", "No such vertical; GET /api/v1/verticals lists them."))
    sale_data = {name: fields[name].strip() for name in SALE_FIELDS if fields.get(name, "").strip()}
    # Amounts are whole cents. Read laxly, "15.00" would be 15 cents where the seller surely
    # meant $15.00: refuse anything but digits, and say what the field wants.
    for name in _CENTS_FIELDS:
        if name in sale_data and not _WHOLE_CENTS.match(sale_data[name]):
            errors.append(
                FieldError(name, "Whole cents, digits only: 1500 is $15.00, 1250 is $12.50.")
            )
            del sale_data[name]
    sale: SaleIn | None = None
    try:
        sale = SaleIn.model_validate(sale_data)
    except ValidationError as exc:
        for raw in exc.errors(include_input=False, include_url=False):
            if raw["loc"]:
                errors.extend(validation_errors([dict(raw)]))
            else:
                # A rule across the sale fields; its own message says which.
                message = str(raw["msg"]).removeprefix("Value error, ")
                field = "price_cents" if raw["type"] == "missing" else "sale"
                if not any(error.field == field for error in errors):
                    errors.append(FieldError(field, message))
    if errors:
        raise ValidationFailed(
            "; ".join(f"{e.field}: {e.message}" for e in errors[:5]), errors=errors
        )
    assert vertical is not None
    assert sale is not None
    return UploadTerms(vertical=vertical, sale=sale)


# Receiving the file ------------------------------------------------------------------------


def _chunk_context(upload_id: str, seq: int) -> bytes:
    return f"lead-upload|{upload_id}|{seq}".encode()


class SealedSpool:
    """Takes the uploaded file as it streams in and keeps it only sealed: every
    :data:`CHUNK_BYTES` of plaintext is encrypted with the upload's data key and appended to an
    anonymous temporary file (removed when closed). Holds at most one chunk in the clear."""

    def __init__(self, directory: Path, upload_id: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.upload_id = upload_id
        self.chunk_bytes = CHUNK_BYTES
        self.data_key = new_data_key()
        self.size = 0
        self.chunk_count = 0
        self.head = b""
        self._sha256 = hashlib.sha256()
        self._buffer = bytearray()
        self._file: IO[bytes] = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self._sha256.update(data)
        if len(self.head) < _SNIFF_BYTES:
            self.head += data[: _SNIFF_BYTES - len(self.head)]
        self._buffer += data
        while len(self._buffer) >= self.chunk_bytes:
            self._seal(bytes(self._buffer[: self.chunk_bytes]))
            del self._buffer[: self.chunk_bytes]

    def finish(self) -> None:
        if self._buffer:
            self._seal(bytes(self._buffer))
            self._buffer.clear()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def _seal(self, plaintext: bytes) -> None:
        sealed = seal(self.data_key, plaintext, _chunk_context(self.upload_id, self.chunk_count))
        self._file.write(_LENGTH.pack(len(sealed)))
        self._file.write(sealed)
        self.chunk_count += 1

    def sealed_chunks(self) -> Iterator[tuple[int, bytes]]:
        self._file.flush()
        self._file.seek(0)
        for seq in range(self.chunk_count):
            (length,) = _LENGTH.unpack(self._file.read(_LENGTH.size))
            yield seq, self._file.read(length)

    def close(self) -> None:
        self._buffer.clear()
        self._file.close()

    def __enter__(self) -> SealedSpool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def open_spool(settings: Settings) -> SealedSpool:
    return SealedSpool(settings.var_dir / "tmp", new_id("upl"))


@dataclass
class ReceivedForm:
    fields: dict[str, str]
    filename: str | None


def _clean_filename(raw: bytes) -> str:
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        name = raw.decode("latin-1")
    # Browsers send a base name; some old ones the whole path.
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    return name[:255]


@dataclass
class _Part:
    name: str = ""
    is_file: bool = False
    text: bytearray = field(default_factory=bytearray)


class _FormReceiver:
    """Callbacks of python-multipart's streaming parser: small text fields are kept, the file
    part goes straight into the :class:`SealedSpool`."""

    def __init__(self, spool: SealedSpool, text_fields: frozenset[str]) -> None:
        self.spool = spool
        self.text_fields = text_fields
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.ended = False
        self._part = _Part()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    def _on_part_begin(self) -> None:
        self._part = _Part()
        self._disposition = b""

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("latin-1")
        self._part.name = name
        if b"filename" in options:
            if name != FILE_FIELD:
                raise ValidationFailed(
                    "Unexpected file.",
                    errors=[FieldError(FILE_FIELD, "Send one file, in the field named file.")],
                )
            if self.filename is not None:
                raise ValidationFailed(
                    "More than one file.",
                    errors=[FieldError(FILE_FIELD, "Send one file per upload.")],
                )
            self._part.is_file = True
            self.filename = _clean_filename(options[b"filename"])
            return
        if name == FILE_FIELD:
            raise ValidationFailed(
                "The file field holds no file.",
                errors=[FieldError(FILE_FIELD, "Choose a CSV file to upload.")],
            )
        if name not in self.text_fields:
            shown = name if _showable(name) else "(unnamed)"
            raise ValidationFailed(
                f"Unknown field {shown}.",
                errors=[FieldError(shown, "This form has no such field.")],
            )
        if len(self.fields) >= _MAX_TEXT_FIELDS:
            raise ValidationFailed("Too many fields.")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part.is_file:
            self.spool.write(data[start:end])
            return
        self._part.text += data[start:end]
        if len(self._part.text) > _MAX_TEXT_FIELD_BYTES:
            raise ValidationFailed(
                "A form field is too long.",
                errors=[FieldError(self._part.name, "Too long.")],
            )

    def _on_part_end(self) -> None:
        if self._part.is_file:
            return
        try:
            value = self._part.text.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationFailed(
                "A form field is not UTF-8 text.",
                errors=[FieldError(self._part.name, "Not UTF-8 text.")],
            ) from None
        if "\x00" in value:
            raise ValidationFailed(
                "A form field holds a NUL character.",
                errors=[FieldError(self._part.name, "Text may not contain the NUL character.")],
            )
        self.fields[self._part.name] = value

    def _on_end(self) -> None:
        self.ended = True


async def receive_form(
    stream: AsyncIterator[bytes],
    content_type: str,
    spool: SealedSpool,
    *,
    text_fields: Sequence[str],
) -> ReceivedForm:
    """Read a multipart/form-data body as it arrives: the text fields named in
    ``text_fields`` are returned, the file goes sealed into ``spool``. Nothing of the body is
    ever held whole in memory or written to disk in the clear."""
    media_type, params = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise UnsupportedUpload(
            "Send the file as multipart/form-data (a form with enctype=multipart/form-data)."
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise MalformedUpload("The multipart/form-data body has no boundary.")
    receiver = _FormReceiver(spool, frozenset(text_fields))
    try:
        parser = MultipartParser(boundary, receiver.callbacks())
        async for data in stream:
            parser.write(data)
        parser.finalize()
    except FormParserError:
        raise MalformedUpload("The multipart/form-data body is malformed.") from None
    if not receiver.ended:
        raise MalformedUpload("The body ended before the end of the form.")
    spool.finish()
    return ReceivedForm(fields=receiver.fields, filename=receiver.filename)


def _looks_binary(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\xd0\xcf\x11\xe0"):
        return (
            "This is a spreadsheet workbook, not a CSV file. Save it as 'CSV UTF-8 (comma "
            "delimited)' and upload that."
        )
    if b"\x00" in head:
        return "This is not a CSV text file (it holds binary data). Upload a CSV file."
    return None


def check_file(form: ReceivedForm, spool: SealedSpool) -> None:
    """Refuse at once what cannot be a CSV file: no file, an empty one, a binary one."""
    problem: str | None = None
    if not form.filename and spool.size == 0:
        # No file part, or a form sent without a file chosen (an empty part, no name).
        problem = "Choose a CSV file to upload."
    elif spool.size == 0:
        problem = "The file is empty."
    else:
        problem = _looks_binary(spool.head)
    if problem is not None:
        raise ValidationFailed(problem, errors=[FieldError(FILE_FIELD, problem)])


def read_upload_form(form: ReceivedForm, spool: SealedSpool) -> UploadTerms:
    """The terms of an upload, checked together with its file, so that every mistake in the
    form is named at once."""
    errors: list[FieldError] = []
    terms: UploadTerms | None = None
    try:
        terms = read_terms(form.fields)
    except ValidationFailed as exc:
        errors += exc.errors
    try:
        check_file(form, spool)
    except ValidationFailed as exc:
        errors += exc.errors
    if errors:
        raise ValidationFailed(
            "; ".join(f"{e.field}: {e.message}" for e in errors[:5]), errors=errors
        )
    assert terms is not None
    return terms


# Creating the upload -----------------------------------------------------------------------


async def create_upload(
    session: AsyncSession,
    settings: Settings,
    *,
    seller: User,
    terms: UploadTerms,
    form: ReceivedForm,
    spool: SealedSpool,
) -> LeadUpload:
    """Store the sealed file and the upload, and enqueue its processing, all in the caller's
    transaction."""
    check_file(form, spool)
    wrapped = settings.keyring().wrap(spool.data_key, spool.upload_id)
    upload = LeadUpload(
        id=spool.upload_id,
        seller_id=seller.id,
        vertical=terms.vertical.slug,
        filename=form.filename or "upload.csv",
        status=UploadStatus.QUEUED.value,
        sale_terms=terms.sale.model_dump(mode="json"),
        size_bytes=spool.size,
        chunk_count=spool.chunk_count,
        chunk_bytes=spool.chunk_bytes,
        key_version=wrapped.version,
        wrapped_key=wrapped.wrapped,
        next_offset=0,
        next_line=1,
        scanned=False,
        rows_counted=0,
        rows_accepted=0,
        rows_rejected=0,
        created_at=utcnow(),
    )
    session.add(upload)
    await session.flush()
    # Core inserts, one chunk at a time: the ORM would keep every chunk in the session.
    for seq, sealed in spool.sealed_chunks():
        await session.execute(
            insert(LeadUploadChunk).values(upload_id=upload.id, seq=seq, sealed=sealed)
        )
    await enqueue(
        session,
        PROCESS_UPLOAD_JOB,
        {"upload_id": upload.id},
        dedupe_key=f"{PROCESS_UPLOAD_JOB}:{upload.id}:start",
    )
    return upload


# Reading the sealed file -------------------------------------------------------------------


@dataclass(frozen=True)
class _StoredFile:
    """How to open an upload's chunks (within the job's transaction) and how they are cut."""

    open_chunk: Callable[[int], bytes]
    chunk_count: int
    chunk_bytes: int


class _PlaintextStream(io.RawIOBase):
    """The upload's plaintext from byte ``start`` on, opening one sealed chunk at a time."""

    def __init__(self, stored: _StoredFile, start: int) -> None:
        super().__init__()
        self._open_chunk = stored.open_chunk
        self._chunk_count = stored.chunk_count
        self._seq = start // stored.chunk_bytes
        self._skip = start % stored.chunk_bytes
        self._current = b""
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._position >= len(self._current):
            if self._seq >= self._chunk_count:
                return 0
            self._current = self._open_chunk(self._seq)
            self._seq += 1
            self._position, self._skip = self._skip, 0
        view = memoryview(buffer).cast("B")
        size = min(len(view), len(self._current) - self._position)
        view[:size] = self._current[self._position : self._position + size]
        self._position += size
        return size


@dataclass(frozen=True)
class Record:
    line: int  # the physical line the record starts on (the header is line 1)
    cells: list[str] | None  # None: the record is not valid CSV (see ``problem``)
    problem: str | None
    end_offset: int  # where the next record starts
    end_line: int


class NotUtf8(Exception):
    pass


class _CsvReader:
    """csv over an ``io.TextIOWrapper`` over the decrypted chunks, keeping the byte offset and
    line number where each record ends, so that reading can stop after any record and resume
    there in another job."""

    def __init__(self, stored: _StoredFile, offset: int, line: int) -> None:
        buffered = io.BufferedReader(_PlaintextStream(stored, offset), 65536)
        self.offset = offset
        self.line = line - 1  # lines read so far
        if offset == 0 and buffered.peek(len(_BOM))[: len(_BOM)] == _BOM:
            self.offset = len(_BOM)  # utf-8-sig drops it from the text
        self._text = io.TextIOWrapper(
            buffered,
            encoding="utf-8-sig" if offset == 0 else "utf-8",
            errors="strict",
            newline="",
        )

    def _lines(self) -> Iterator[str]:
        while True:
            try:
                text = self._text.readline()
            except UnicodeDecodeError as exc:
                raise NotUtf8() from exc
            if not text:
                return
            self.offset += len(text) if text.isascii() else len(text.encode("utf-8"))
            self.line += 1
            yield text

    def records(self) -> Iterator[Record]:
        """Every record from the starting point on; blank lines are skipped."""
        reader = csv.reader(self._lines(), strict=True)
        while True:
            start_line = self.line + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Record(start_line, None, f"Not valid CSV: {exc}.", self.offset, self.line)
                continue
            if not any(cell.strip() for cell in cells):
                continue
            yield Record(start_line, cells, None, self.offset, self.line)

    def close(self) -> None:
        self._text.close()


def _first_invalid_utf8_offset(stored: _StoredFile, start: int) -> int:
    """The byte offset of the first byte that is not UTF-8, reading from ``start`` (where
    decoding is known to be in step)."""
    stream = _PlaintextStream(stored, start)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    position = start
    while True:
        block = stream.read(stored.chunk_bytes)
        pending = len(decoder.getstate()[0])
        try:
            decoder.decode(block or b"", final=not block)
        except UnicodeDecodeError as exc:
            return position - pending + exc.start
        if not block:
            return position
        position += len(block)


def _stored_file(sync_session: SyncSession, upload: LeadUpload, data_key: bytes) -> _StoredFile:
    upload_id = upload.id

    def open_chunk(seq: int) -> bytes:
        sealed = sync_session.execute(
            select(LeadUploadChunk.sealed).where(
                LeadUploadChunk.upload_id == upload_id, LeadUploadChunk.seq == seq
            )
        ).scalar_one()
        return open_sealed(data_key, sealed, _chunk_context(upload_id, seq))

    return _StoredFile(open_chunk, upload.chunk_count, upload.chunk_bytes)


def _data_key(settings: Settings, upload: LeadUpload) -> bytes:
    assert upload.key_version is not None
    assert upload.wrapped_key is not None
    return settings.keyring().unwrap(WrappedKey(upload.key_version, upload.wrapped_key), upload.id)


# Processing --------------------------------------------------------------------------------


@dataclass
class _ScanResult:
    columns: list[str] | None = None
    data_offset: int = 0
    data_line: int = 0
    rows: int = 0
    end_offset: int = 0
    end_line: int = 0
    at_end: bool = False
    error: str | None = None


@dataclass
class _Batch:
    records: list[Record]
    at_end: bool


async def process_upload_step(session: AsyncSession, settings: Settings, upload_id: str) -> None:
    """One step of an upload's processing, in the job's transaction; enqueues the next step
    unless the upload is finished. Safe to run again after a crash: a step that did not
    commit left nothing behind, and the upload row says where to go on."""
    upload = await session.get(LeadUpload, upload_id, with_for_update=True)
    if upload is None or upload.status in (UploadStatus.DONE, UploadStatus.FAILED):
        return
    if upload.status == UploadStatus.QUEUED:
        upload.status = UploadStatus.PROCESSING.value
        upload.started_at = utcnow()
    vertical = get_vertical(upload.vertical)
    if vertical is None:
        await _fail(session, upload, "This vertical is no longer offered.")
        return
    if not upload.scanned:
        await _scan_step(session, settings, upload, vertical)
        phase = "scan"
    else:
        await _import_step(session, settings, upload, vertical)
        phase = "import"
    if upload.status == UploadStatus.PROCESSING:
        await enqueue(
            session,
            PROCESS_UPLOAD_JOB,
            {"upload_id": upload.id},
            dedupe_key=f"{PROCESS_UPLOAD_JOB}:{upload.id}:{phase}:{upload.next_offset}",
        )


async def _scan_step(
    session: AsyncSession, settings: Settings, upload: LeadUpload, vertical: Vertical
) -> None:
    data_key = _data_key(settings, upload)
    start_offset, start_line = upload.next_offset, upload.next_line
    need_header = upload.columns is None

    def scan(sync_session: SyncSession) -> _ScanResult:
        stored = _stored_file(sync_session, upload, data_key)
        reader = _CsvReader(stored, start_offset, start_line)
        result = _ScanResult()
        try:
            records = reader.records()
            if need_header:
                header = next(records, None)
                if header is None or header.cells is None:
                    result.error = (
                        "The first line must name the columns; download the template for "
                        f"{vertical.name.lower()} to see them."
                    )
                    return result
                result.columns, result.error = check_header(vertical, header.cells)
                if result.error:
                    return result
                result.data_offset, result.data_line = header.end_offset, header.end_line + 1
            for record in records:
                result.rows += 1
                if upload.rows_counted + result.rows > MAX_DATA_ROWS:
                    result.error = (
                        f"The file has more than {MAX_DATA_ROWS:,} data rows; split it into "
                        "files of at most that many rows."
                    )
                    return result
                if reader.offset - start_offset >= STEP_BYTES:
                    result.end_offset, result.end_line = record.end_offset, record.end_line + 1
                    return result
            result.at_end = True
            return result
        except NotUtf8:
            offset = _first_invalid_utf8_offset(stored, start_offset)
            result.error = (
                f"The file is not UTF-8 text (byte offset {offset}). Save it as "
                "'CSV UTF-8' and upload it again."
            )
            return result
        finally:
            reader.close()

    result = await session.run_sync(scan)
    if result.error is not None:
        await _fail(session, upload, result.error)
        return
    if need_header:
        upload.columns = result.columns
        upload.data_offset, upload.data_line = result.data_offset, result.data_line
    upload.rows_counted += result.rows
    if not result.at_end:
        upload.next_offset, upload.next_line = result.end_offset, result.end_line
        return
    if upload.rows_counted == 0:
        await _fail(session, upload, "The file has a header but no data rows.")
        return
    assert upload.data_offset is not None
    assert upload.data_line is not None
    upload.scanned = True
    upload.rows_total = upload.rows_counted
    upload.next_offset, upload.next_line = upload.data_offset, upload.data_line


async def _import_step(
    session: AsyncSession, settings: Settings, upload: LeadUpload, vertical: Vertical
) -> None:
    seller = await session.get(User, upload.seller_id)
    if seller is None or seller.status != UserStatus.ACTIVE:
        await _fail(session, upload, "The seller's account is no longer active.")
        return
    data_key = _data_key(settings, upload)
    start_offset, start_line = upload.next_offset, upload.next_line

    def read_batch(sync_session: SyncSession) -> _Batch:
        reader = _CsvReader(_stored_file(sync_session, upload, data_key), start_offset, start_line)
        records: list[Record] = []
        try:
            for record in reader.records():
                records.append(record)
                if len(records) >= BATCH_ROWS or reader.offset - start_offset >= STEP_BYTES:
                    return _Batch(records, at_end=False)
            return _Batch(records, at_end=True)
        finally:
            reader.close()

    batch = await session.run_sync(read_batch)
    kit = LeadsKit(settings)
    assert upload.columns is not None
    columns = list(upload.columns)
    # A step must end well within the job's lease; the first row always goes through. On
    # SQLite every other writer waits for the step's transaction, so it is kept short there.
    budget = settings.job_lease_seconds / 3
    if session.get_bind().dialect.name == "sqlite":
        budget = min(budget, SQLITE_STEP_SECONDS)
    deadline = time.monotonic() + budget
    # Each row is checked and sealed on its own; the accepted ones are then written together,
    # each still judged alone (duplicates, also within the file, and quality).
    checked: list[tuple[Record, PreparedLead | None, list[FieldError]]] = []
    for record in batch.records:
        if checked and time.monotonic() > deadline:
            break
        checked.append((record, *_check_row(kit, seller, upload, vertical, columns, record)))
    prepared = [p for _, p, _ in checked if p is not None]
    outcomes = iter(await write_leads(session, kit, [Submission(p) for p in prepared]))
    report: list[dict[str, Any]] = []
    for record, lead, errors in checked:
        lead_id = None
        if lead is not None:
            outcome = next(outcomes)
            if isinstance(outcome, DuplicateLead):
                errors = [FieldError("contact", f"Duplicate: {outcome.detail}")]
            elif isinstance(outcome, DomainError):
                errors = outcome.errors or [FieldError("row", outcome.detail)]
            else:
                lead_id = lead.id
        report.append(
            {
                "upload_id": upload.id,
                "line": record.line,
                "status": (UploadRowStatus.ACCEPTED if lead_id else UploadRowStatus.REJECTED).value,
                "lead_id": lead_id,
                "errors": [{"field": e.field, "message": _safe_message(e.message)} for e in errors],
            }
        )
    done = len(checked)
    if report:
        await session.execute(insert(LeadUploadRow), report)
    accepted = sum(1 for row in report if row["lead_id"])
    upload.rows_accepted += accepted
    upload.rows_rejected += len(report) - accepted
    if done:
        last = batch.records[done - 1]
        upload.next_offset, upload.next_line = last.end_offset, last.end_line + 1
    if batch.at_end and done == len(batch.records):
        await _finish(session, upload, UploadStatus.DONE, None)


def _safe_message(message: str) -> str:
    return mask_personal_data(message)[:_MAX_MESSAGE_CHARS]


def _check_row(
    kit: LeadsKit,
    seller: User,
    upload: LeadUpload,
    vertical: Vertical,
    columns: list[str],
    record: Record,
) -> tuple[PreparedLead | None, list[FieldError]]:
    """A row as a lead ready to write, or every mistake in it."""
    if record.cells is None:
        return None, [FieldError("row", record.problem or "Not valid CSV.")]
    if len(record.cells) != len(columns):
        return None, [
            FieldError(
                "row",
                f"This row has {len(record.cells)} cells; the header names {len(columns)} columns.",
            )
        ]
    values = {name: cell.strip() for name, cell in zip(columns, record.cells, strict=True)}
    payload = _lead_payload(vertical, values, upload.sale_terms)
    try:
        data = LeadIn.model_validate(payload)
    except ValidationError as exc:
        raw = [dict(e) for e in exc.errors(include_input=False, include_url=False)]
        if any(e.get("type") == MINOR_ERROR for e in raw):
            # L2: the row is refused whole; not even its other mistakes are recorded.
            return None, [FieldError("contact.birth_date", MINOR_MESSAGE)]
        errors = validation_errors(raw)
        # The API would check the attributes next; the seller gets every mistake at once.
        return None, errors + validate_attributes(vertical, payload["attributes"])[1]
    try:
        prepared = prepare_lead(
            kit, seller_id=seller.id, seller_username=seller.username, data=data, source="csv"
        )
    except DomainError as exc:
        return None, exc.errors or [FieldError("row", exc.detail)]
    return prepared, []


def _attribute_value(spec: FieldSpec, text: str) -> Any:
    """A cell as the JSON value the API would have received; a cell that is not of the
    attribute's type stays text, so that the vertical's own check names the problem."""
    if spec.type == "integer" and _INTEGER.fullmatch(text):
        return int(text)
    if spec.type == "number":
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if _INTEGER.fullmatch(text) else number
    if spec.type == "boolean":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
    return text


def _lead_payload(
    vertical: Vertical, values: Mapping[str, str], sale_terms: Mapping[str, Any]
) -> dict[str, Any]:
    """The row as the API's lead body. An empty cell is a missing field."""

    def present(names: Sequence[str], rename: Mapping[str, str] | None = None) -> dict[str, Any]:
        return {(rename or {}).get(name, name): values[name] for name in names if values.get(name)}

    contact = present(("first_name", "last_name", "email", "phone", "birth_date"))
    contact["address"] = present(_ADDRESS_COLUMNS)
    attributes = {
        spec.name: _attribute_value(spec, values[spec.name])
        for spec in vertical.fields
        if values.get(spec.name)
    }
    return {
        "vertical": vertical.slug,
        "contact": contact,
        "attributes": attributes,
        "consent": present(CONSENT_COLUMNS, _CONSENT_KEYS),
        "sale": dict(sale_terms),
    }


async def _forget_file(session: AsyncSession, upload: LeadUpload) -> None:
    """The file is gone for good: its chunks, and the key without which any copy of them
    (a backup, a dead row not yet vacuumed) can never be opened again."""
    await session.execute(delete(LeadUploadChunk).where(LeadUploadChunk.upload_id == upload.id))
    upload.wrapped_key = None
    upload.key_version = None


async def _finish(
    session: AsyncSession, upload: LeadUpload, status: UploadStatus, error: str | None
) -> None:
    await _forget_file(session, upload)
    upload.status = status.value
    upload.error = error[:_ERROR_MAX_CHARS] if error else None
    upload.finished_at = utcnow()


async def _fail(session: AsyncSession, upload: LeadUpload, error: str) -> None:
    await _finish(session, upload, UploadStatus.FAILED, error)


async def give_up_upload(session: AsyncSession, upload_id: str) -> None:
    """The processing job failed for good (it kept failing, or never finished within its
    lease): the upload fails, with the rows done so far kept in its report."""
    upload = await session.get(LeadUpload, upload_id, with_for_update=True)
    if upload is None or upload.status in (UploadStatus.DONE, UploadStatus.FAILED):
        return
    where = f" at line {upload.next_line}" if upload.scanned else ""
    await _fail(
        session,
        upload,
        f"Processing stopped{where} after repeated internal errors; the rows before it are in "
        "the report. Upload the remaining rows again.",
    )


# Master key rotation -----------------------------------------------------------------------


async def rewrap_upload_keys(
    session: AsyncSession, keyring: Keyring, *, batch_size: int = 100
) -> int:
    """Re-wrap the data keys of files still waiting to be processed under the current master
    key (``leadmarket keys rotate``), as :func:`leads.vault.rewrap_all` does for leads. An
    upload a worker holds right now is skipped and keeps its version in use."""
    done = 0
    while True:
        found = (
            await session.scalars(
                select(LeadUpload)
                .where(
                    LeadUpload.wrapped_key.is_not(None),
                    LeadUpload.key_version != keyring.current,
                )
                .limit(batch_size)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not found:
            return done
        for upload in found:
            assert upload.key_version is not None
            assert upload.wrapped_key is not None
            wrapped = keyring.rewrap(WrappedKey(upload.key_version, upload.wrapped_key), upload.id)
            upload.key_version, upload.wrapped_key = wrapped.version, wrapped.wrapped
        await session.flush()
        done += len(found)


async def upload_key_versions_in_use(session: AsyncSession) -> set[int]:
    """Master key versions that files waiting to be processed still need: not to be retired."""
    return set(
        await session.scalars(
            select(LeadUpload.key_version).where(LeadUpload.key_version.is_not(None)).distinct()
        )
    )


# Reading the outcome -----------------------------------------------------------------------


async def get_own_upload(session: AsyncSession, seller: User, upload_id: str) -> LeadUpload:
    upload = await session.get(LeadUpload, upload_id)
    if upload is None or upload.seller_id != seller.id:
        raise NotFound("No such upload.")
    return upload


async def list_own_uploads(
    session: AsyncSession, seller: User, *, limit: int, before_id: str | None = None
) -> list[LeadUpload]:
    """Newest first; one more than ``limit`` when there are more."""
    query = (
        select(LeadUpload)
        .where(LeadUpload.seller_id == seller.id)
        .order_by(LeadUpload.id.desc())
        .limit(limit + 1)
    )
    if before_id is not None:
        query = query.where(LeadUpload.id < before_id)
    return list(await session.scalars(query))


async def list_rows(
    session: AsyncSession,
    upload: LeadUpload,
    *,
    status: UploadRowStatus | None,
    limit: int,
    after_line: int | None = None,
) -> list[LeadUploadRow]:
    """In line order; one more than ``limit`` when there are more."""
    query = (
        select(LeadUploadRow)
        .where(LeadUploadRow.upload_id == upload.id)
        .order_by(LeadUploadRow.line)
        .limit(limit + 1)
    )
    if status is not None:
        query = query.where(LeadUploadRow.status == status.value)
    if after_line is not None:
        query = query.where(LeadUploadRow.line > after_line)
    return list(await session.scalars(query))


_COLUMN_OF_FIELD = {
    **{f"contact.{name}": name for name in ("first_name", "last_name", "email", "phone")},
    "contact.birth_date": "birth_date",
    **{f"contact.address.{name}": name for name in _ADDRESS_COLUMNS},
    **{f"consent.{key}": column for column, key in _CONSENT_KEYS.items()},
}


def column_of(field: str) -> str | None:
    """The CSV column an error's field (named as in the API) comes from, if one."""
    if field.startswith("attributes."):
        return field.removeprefix("attributes.")
    return _COLUMN_OF_FIELD.get(field)


REPORT_COLUMNS = ("line", "status", "lead_id", "errors")


def report_line(row: LeadUploadRow) -> list[str]:
    errors = "; ".join(f"{e['field']}: {e['message']}" for e in row.errors)
    return [str(row.line), row.status, row.lead_id or "", errors]


async def report_page(
    session: AsyncSession, upload_id: str, *, after_line: int, page_size: int = 1000
) -> list[LeadUploadRow]:
    return list(
        await session.scalars(
            select(LeadUploadRow)
            .where(LeadUploadRow.upload_id == upload_id, LeadUploadRow.line > after_line)
            .order_by(LeadUploadRow.line)
            .limit(page_size)
        )
    )
