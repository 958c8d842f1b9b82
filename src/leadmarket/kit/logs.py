"""Structured logs. Code logs ids and outcomes, never names, emails or phones; as a second line
of defence the formatter masks anything in a record that looks like an email or a phone."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Any

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


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
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
