"""Structured logs. Code logs ids and outcomes, never names, emails or phones; as a second line
of defence the formatter masks anything in a record that looks like an email or a phone."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import sys
from logging import INFO
from time import time_ns
from typing import Any, TextIO

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
# International numbers (+…) and North American ten-digit ones; dates and times do not match.
# The lookahead names the characters either kind may start with, so the scan skips every other
# position quickly (it matches exactly what the two alternatives match; about a third faster).
_PHONE = re.compile(r"(?=[(+\d])(?:\+\d[\d ().-]{6,18}\d|\(?\b\d{3}\)?[ .-]?\d{3}[ .-]\d{4}\b)")
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def mask_personal_data(text: str) -> str:
    # Every log line passes here (one per request at least): a line without "@" cannot hold an
    # email, and skipping that scan halves the cost of the usual line.
    if "@" in text:
        text = _EMAIL.sub("[email]", text)
    return _PHONE.sub("[phone]", text)


# Masked log values, kept for the short ones that come back line after line (events, routes,
# methods, levels): every request writes an access line, and scanning it cost more than the
# rest of the line together.
_MASKED: dict[str, str] = {}
_MASKED_MAX_ENTRIES = 4096
_MASKED_MAX_LENGTH = 64


def _masked(text: str) -> str:
    masked = _MASKED.get(text)
    if masked is None:
        masked = mask_personal_data(text)
        if len(text) <= _MASKED_MAX_LENGTH:
            if len(_MASKED) >= _MASKED_MAX_ENTRIES:
                _MASKED.clear()
            _MASKED[text] = masked
    return masked


_ENCODE = json.JSONEncoder(default=str).encode
_PLAIN = (int, float, bool, type(None))  # what JSON spells with digits, true/false or null

# Masked log values spelled in JSON, for the access lines' templates (same policy as _MASKED).
_MASKED_JSON: dict[str, str] = {}


def _json_text(text: str) -> str:
    """``_ENCODE(_masked(text))``, for the values of an access line. An ASCII identifier (a
    request id) is spelled as it is and not kept: it has neither "@" nor "+", all its characters
    are word characters, so the only word boundary a three-digit group could follow is its start,
    where an identifier has no digit; and JSON escapes none of its characters."""
    spelled = _MASKED_JSON.get(text)
    if spelled is None:
        if text.isascii() and text.isidentifier():
            return f'"{text}"'
        spelled = _ENCODE(_masked(text))
        if len(text) <= _MASKED_MAX_LENGTH:
            if len(_MASKED_JSON) >= _MASKED_MAX_ENTRIES:
                _MASKED_JSON.clear()
            _MASKED_JSON[text] = spelled
    return spelled


# Logger names spelled in JSON (not masked: the formatter writes record.name as it is).
_NAMES_JSON: dict[str, str] = {}


def _json_name(name: str) -> str:
    spelled = _NAMES_JSON.get(name)
    if spelled is None:
        spelled = _NAMES_JSON[name] = _ENCODE(name)
    return spelled


# The second an access line was written in, spelled once per second: (second, ISO 8601 text).
_SECOND: list[tuple[int, str]] = [(-1, "")]


def _iso_utc(micros: int) -> str:
    """``datetime.fromtimestamp(micros / 1e6, UTC).isoformat()``, its date and time of day
    spelled once per second (no fraction on the exact second, as ``isoformat`` writes it)."""
    second, fraction = divmod(micros, 1_000_000)
    cached = _SECOND[0]
    if cached[0] != second:
        # The tuple is replaced whole: another thread never sees one second's text with another.
        cached = (second, dt.datetime.fromtimestamp(second, dt.UTC).isoformat()[:-6])
        _SECOND[0] = cached
    return f"{cached[1]}.{fraction:06d}+00:00" if fraction else f"{cached[1]}+00:00"


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Each string value is masked on its own before the line is
    encoded (a mask cannot run across a quote, so this masks what masking the line masked; a
    number never looks like a phone, the patterns want a + or a separator); a value JSON has
    no spelling for goes through ``str`` and is masked too, and anything else (a nested
    structure) makes the formatter mask the whole encoded line instead."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _masked(record.getMessage()),
        }
        nested = False
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                if isinstance(value, str):
                    value = _masked(value)
                elif isinstance(value, (list, tuple, dict)):
                    nested = True
                elif not isinstance(value, _PLAIN):
                    value = _masked(str(value))
                entry[key] = value
        if nested:
            return mask_personal_data(_ENCODE(entry))
        return _ENCODE(entry)

    def access_line(self, micros: int, logger: str, fields: AccessFields) -> str:
        """The line :meth:`format` makes of :meth:`AccessLog.record`'s record, from a template:
        the same keys in the same order, each string masked on its own."""
        request_id, method, route, status, duration_ms = fields
        return (
            f'{{"at": "{_iso_utc(micros)}", "level": "info", "logger": {_json_name(logger)}, '
            f'"event": "{ACCESS_EVENT}", "request_id": {_json_text(request_id)}, '
            f'"method": {"null" if method is None else _json_text(method)}, '
            f'"route": {_json_text(route)}, "status": {status:d}, '
            f'"duration_ms": {duration_ms!r}}}'
        )


class TextFormatter(logging.Formatter):
    """``level logger: event key=value …``, each value masked on its own."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}" if isinstance(v, _PLAIN) else f"{k}={_masked(str(v))}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD_ATTRS and not k.startswith("_")
        )
        message = _masked(record.getMessage())
        return f"{record.levelname:<7} {record.name}: {message} {extras}".rstrip()

    def access_line(self, micros: int, logger: str, fields: AccessFields) -> str:
        """The line :meth:`format` makes of :meth:`AccessLog.record`'s record (no time in it)."""
        request_id, method, route, status, duration_ms = fields
        return (
            f"INFO    {logger}: {ACCESS_EVENT} request_id={_masked(request_id)} "
            f"method={method if method is None else _masked(method)} route={_masked(route)} "
            f"status={status:d} duration_ms={duration_ms!r}"
        )


class StreamLogHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs: a ``StreamHandler`` that also takes lines
    already made (:meth:`write_line`, the access log's) and writes those of one step of the
    event loop in one ``write`` and ``flush`` at the end of the step, instead of one each.
    A line still waiting goes out before any record the handler emits (the order stays), when
    the handler is flushed (``logging.shutdown`` flushes every handler at exit) and when the
    stream is replaced."""

    # A step of the loop writes at most this many lines at once (memory, and a crash's loss).
    max_pending = 256

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._scheduled: asyncio.AbstractEventLoop | None = None  # the loop that will write

    def write_line(self, line: str) -> None:
        lock = self.lock
        assert lock is not None  # Handler.__init__ made it
        with lock:
            self._pending.append(line)
            scheduled = self._scheduled
            if scheduled is None:
                # The first line of the step (asking for the running loop costs a getpid()).
                loop = asyncio._get_running_loop()
                if loop is not None:
                    self._scheduled = loop
                    loop.call_soon(self._write_pending)
                    return
            elif scheduled.is_running() and len(self._pending) < self.max_pending:
                return  # the loop writes them at the end of its step (this thread's or not)
            # No loop here, or the loop that was to write them stopped before its next step:
            # now, then.
            self._write_pending()

    def _write_pending(self) -> None:
        self.acquire()
        try:
            pending, self._pending = self._pending, []
            self._scheduled = None
            if pending:
                terminator = self.terminator
                self.stream.write(terminator.join(pending) + terminator)
                self.stream.flush()
        except Exception:
            # As StreamHandler.emit does when its stream fails: report it, drop the lines.
            self.handleError(logging.makeLogRecord({"msg": f"{len(pending)} pending lines"}))
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:
            self._write_pending()
        super().emit(record)

    def flush(self) -> None:
        if self._pending:
            self._write_pending()
        super().flush()


ACCESS_EVENT = "request"
# What an access line says: request id, method, route template, status, duration in ms.
AccessFields = tuple[str, str | None, str, int, float]


class AccessLog:
    """One INFO line per HTTP request on the logger ``name``: request id, method, route
    template, status and duration (never the raw path or query string, which may carry tokens).

    When the line would go to exactly one handler, :func:`configure_logging`'s, with one of the
    formatters above (the usual case), it is spelled from the formatter's template and written
    through :meth:`StreamLogHandler.write_line`: the same line as the logging module's, at a
    fraction of the price (a LogRecord, the handler lookup, the generic formatter and one write
    and flush per request took about 40% of the server CPU of a ``GET /healthz``, a quarter of
    it after this). Anything else attached on the way
    (another handler, a filter, a handler's level, another formatter) gets the standard path,
    a LogRecord handed to ``Logger.handle``; levels and ``logging.disable`` are respected
    either way."""

    __slots__ = ("logger",)

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def write(
        self, request_id: str, method: str | None, route: str, status: int, duration_ms: float
    ) -> None:
        logger = self.logger
        if not logger.isEnabledFor(INFO):
            return
        fields = (request_id, method, route, status, duration_ms)
        handler = _sole_handler(logger)
        if handler is not None:
            formatter = handler.formatter
            if type(formatter) is JsonFormatter or type(formatter) is TextFormatter:
                handler.write_line(formatter.access_line(time_ns() // 1000, logger.name, fields))
                return
        logger.handle(self.record(fields))

    def record(self, fields: AccessFields) -> logging.LogRecord:
        """The record of the standard path. It is made directly: ``Logger.info`` would also
        look up the caller's file and line, which no access line shows."""
        request_id, method, route, status, duration_ms = fields
        return self.logger.makeRecord(
            self.logger.name,
            INFO,
            __file__,
            0,
            ACCESS_EVENT,
            (),
            None,
            extra={
                "request_id": request_id,
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": duration_ms,
            },
        )


def _sole_handler(logger: logging.Logger) -> StreamLogHandler | None:
    """The handler a record of ``logger`` at INFO would reach if it is the only one, is a
    :class:`StreamLogHandler` (not a subclass) and neither it nor the logger filters records."""
    if logger.filters:
        return None
    found: logging.Handler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if found is not None:
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    if type(found) is StreamLogHandler and found.level <= INFO and not found.filters:
        return found
    return None


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = StreamLogHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Neither formatter writes the thread or the process, and every record paid to look them up
    # (one access line per request at least); the logging module's documented switches.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Drivers log SQL parameters at DEBUG, and parameters are personal data.
    for name in ("aiosqlite", "asyncpg", "sqlalchemy.engine", "sqlalchemy.pool"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # uvicorn's access log prints full URLs, query strings included; ours logs route templates.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
