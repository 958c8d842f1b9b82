"""Text messages (SMS): a minimal outbox and backend, used where the consumer gave a phone
number instead of an email address (the one-time code of a rights request, P4).

There is no SMS provider yet: the only backend, ``file``, writes one ``.txt`` file per message
under ``settings.sms_dir`` (``LEADMARKET_SMS_DIR``, default ``var/sms``) for a person or a test
to read, like the mail file backend. A provider is one more class with ``send``.

A message is sent by a durable job enqueued in the caller's transaction. The job payload must
not carry personal data in the clear (logs and the jobs table are read by operators), so the
number and the text travel sealed under a fresh key wrapped by the master keyring; the finished
job row, and with it the sealed copy, is purged with the other finished jobs."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import utcnow
from leadmarket.kit.ids import new_id
from leadmarket.kit.jobs import enqueue
from leadmarket.kit.keyring import WrappedKey, new_data_key, open_sealed, seal
from leadmarket.notifications.mail import write_whole_file

SEND_TEXT_JOB = "sms.send"
_MAX_BODY = 640  # four concatenated SMS segments


@dataclass(frozen=True)
class OutgoingText:
    message_id: str
    created_at: dt.datetime
    to: str  # E.164
    body: str
    template: str


class SmsBackend(Protocol):
    async def send(self, message: OutgoingText) -> None: ...


class FileSmsBackend:
    """One file per message, named by its id (a retried send rewrites the same file), written
    aside and renamed so a reader never sees half a message."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, message: OutgoingText) -> Path:
        stamp = message.created_at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return self.directory / f"{stamp}-{message.message_id}.txt"

    async def send(self, message: OutgoingText) -> None:
        await asyncio.to_thread(self._write, message)

    def _write(self, message: OutgoingText) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = (
            f"To: {message.to}\nTemplate: {message.template}\n"
            f"Date: {message.created_at.astimezone(dt.UTC).isoformat()}\n\n{message.body}\n"
        ).encode()
        write_whole_file(self.path_for(message), data)


def make_sms_backend(settings: Settings) -> SmsBackend:
    return FileSmsBackend(settings.sms_path)


def _context(message_id: str) -> bytes:
    return f"sms|{message_id}".encode()


async def queue_text_message(
    session: AsyncSession, settings: Settings, *, to: str, body: str, template: str
) -> str:
    """Queue a text message to ``to`` (E.164) in the caller's transaction; returns its id."""
    body = body.strip()[:_MAX_BODY]
    message_id = new_id("sms")
    key = new_data_key()
    wrapped = settings.keyring().wrap(key, message_id)
    sealed = seal(key, json.dumps({"to": to, "body": body}).encode(), _context(message_id))
    await enqueue(
        session,
        SEND_TEXT_JOB,
        {
            "message_id": message_id,
            "template": template,
            "created_at": utcnow().isoformat(),
            "key_version": wrapped.version,
            "wrapped_key": base64.b64encode(wrapped.wrapped).decode(),
            "sealed": base64.b64encode(sealed).decode(),
        },
    )
    return message_id


def open_text_message(settings: Settings, payload: dict[str, object]) -> OutgoingText:
    message_id = str(payload["message_id"])
    key = settings.keyring().unwrap(
        WrappedKey(int(str(payload["key_version"])), base64.b64decode(str(payload["wrapped_key"]))),
        message_id,
    )
    data = json.loads(
        open_sealed(key, base64.b64decode(str(payload["sealed"])), _context(message_id))
    )
    return OutgoingText(
        message_id=message_id,
        created_at=dt.datetime.fromisoformat(str(payload["created_at"])),
        to=str(data["to"]),
        body=str(data["body"]),
        template=str(payload["template"]),
    )
