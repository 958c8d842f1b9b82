"""Mail backends: where a composed message goes. Both are idempotent per mail: the Message-ID
is derived from the mail's id, so a retried send is recognisable (and the file backend simply
rewrites the same file)."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.policy
import os
import smtplib
import ssl
import tempfile
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from leadmarket.config import Settings

# RFC 5322's hard line limit instead of the 78-character soft one: folding a long header that
# has no spaces (List-Unsubscribe's URL) would otherwise turn it into an RFC 2047 encoded word,
# which mail clients do not read as a link.
MESSAGE_POLICY = email.policy.SMTP.clone(max_line_length=998)


@dataclass(frozen=True)
class OutgoingMessage:
    mail_id: str
    created_at: dt.datetime
    message: EmailMessage


class MailBackend(Protocol):
    # The outside company the message is handed to (P2: a disclosure to a service provider),
    # or None when it stays on this machine.
    service_provider: str | None

    async def send(self, outgoing: OutgoingMessage) -> None: ...


class FileMailBackend:
    """Writes one RFC 5322 ``.eml`` file per message (development, demos and tests: a person or
    a test reads the mail from the folder). Files appear whole: written aside, then renamed."""

    service_provider: str | None = None  # files on this machine: nobody else gets them

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, outgoing: OutgoingMessage) -> Path:
        stamp = outgoing.created_at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return self.directory / f"{stamp}-{outgoing.mail_id}.eml"

    async def send(self, outgoing: OutgoingMessage) -> None:
        await asyncio.to_thread(self._write, outgoing)

    def _write(self, outgoing: OutgoingMessage) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = outgoing.message.as_bytes(policy=outgoing.message.policy.clone(linesep="\r\n"))
        write_whole_file(self.path_for(outgoing), data)


def write_whole_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader never sees part of it: written aside (a
    dot-prefixed ``.tmp`` file, which a reader globbing the real suffix skips), synced, then
    renamed over ``path``."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class SmtpMailBackend:
    """Hands messages to an SMTP relay. smtplib blocks, so each send runs in a thread. A relay
    that accepted a message but whose answer was lost gets it again on retry, with the same
    Message-ID, which is how receiving systems recognise the duplicate."""

    def __init__(self, settings: Settings) -> None:
        self.host = settings.smtp_host
        self.port = settings.smtp_port
        self.username = settings.smtp_username
        self.password = settings.smtp_password
        self.starttls = settings.smtp_starttls
        self.timeout = settings.smtp_timeout_seconds
        self.service_provider: str | None = f"SMTP relay {self.host}"

    async def send(self, outgoing: OutgoingMessage) -> None:
        await asyncio.to_thread(self._send, outgoing.message)

    def _send(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            smtp.ehlo()
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self.username:
                password = self.password.get_secret_value() if self.password else ""
                smtp.login(self.username, password)
            smtp.send_message(message)


def make_mail_backend(settings: Settings) -> MailBackend:
    if settings.mail_backend == "smtp":
        return SmtpMailBackend(settings)
    return FileMailBackend(settings.mail_path)
