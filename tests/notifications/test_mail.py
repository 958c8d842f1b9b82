"""Mail's promises: nothing is sent for a rolled-back change, every message carries a working
unsubscribe (P7), opting out stops marketing mail but not transactional mail, a forged link does
nothing, and the real backends deliver: .eml files on disk, SMTP to a loopback relay."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import email.policy
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.crypto import Signer
from leadmarket.kit.db import Database, utcnow
from leadmarket.kit.errors import NotFound, ValidationFailed, install_error_handlers
from leadmarket.kit.jobs import Worker
from leadmarket.kit.templating import install_templates
from leadmarket.models.job import Job, JobStatus
from leadmarket.models.mail import MailCategory, MailStatus, MailSuppression, OutboundMail
from leadmarket.notifications import views
from leadmarket.notifications.mail import FileMailBackend, OutgoingMessage
from leadmarket.notifications.service import (
    InvalidUnsubscribeLink,
    compose_message,
    queue_mail,
    unsubscribe,
    unsubscribe_token,
)
from leadmarket.tasks import JobServices, build_registry, build_services, run_worker

ADDRESS = "ana.silva" + "@example.com"


def make_worker(db: Database, settings: Settings) -> Worker[JobServices]:
    return Worker(db, build_registry(), build_services(settings), settings)


async def queue_committed(
    db: Database,
    settings: Settings,
    *,
    to: str = ADDRESS,
    category: MailCategory = MailCategory.TRANSACTIONAL,
    subject: str = "Your receipt",
) -> OutboundMail:
    async with db.transaction() as session:
        return await queue_mail(
            session,
            settings,
            to=to,
            subject=subject,
            text_body="Thank you for your purchase.",
            template="orders/receipt",
            category=category,
        )


async def load_mail(db: Database, mail_id: str) -> OutboundMail:
    async with db.transaction() as session:
        mail = await session.get(OutboundMail, mail_id)
        assert mail is not None
        return mail


def written_mail(settings: Settings) -> list[EmailMessage]:
    files = sorted(settings.mail_path.glob("*.eml")) if settings.mail_path.exists() else []
    return [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default) for path in files
    ]


def unsubscribe_link(message: EmailMessage) -> str:
    match = re.fullmatch(r"<(.+)>", str(message["List-Unsubscribe"]))
    assert match is not None
    return match.group(1)


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


async def test_mail_queued_in_a_rolled_back_transaction_is_never_sent(
    committed_db: Database, settings: Settings
) -> None:
    async def queue_then_fail() -> None:
        async with committed_db.transaction() as session:
            await queue_mail(
                session,
                settings,
                to=ADDRESS,
                subject="Welcome",
                text_body="Hello",
                template="accounts/welcome",
            )
            raise RuntimeError("registration failed")

    with pytest.raises(RuntimeError):
        await queue_then_fail()

    assert await make_worker(committed_db, settings).run_once() == 0
    assert written_mail(settings) == []
    async with committed_db.transaction() as session:
        assert await session.scalar(select(func.count()).select_from(OutboundMail)) == 0


async def test_committed_mail_is_written_once_with_a_working_unsubscribe_link(
    committed_db: Database, settings: Settings
) -> None:
    mail = await queue_committed(committed_db, settings)
    async with committed_db.transaction() as session:
        job = (await session.scalars(select(Job))).one()
    assert job.payload == {"mail_id": mail.id}, "the job carries the id, not the address"

    worker = make_worker(committed_db, settings)
    assert await worker.run_once() == 1
    assert await worker.run_once() == 0

    [message] = written_mail(settings)
    [path] = settings.mail_path.glob("*.eml")
    assert path.name.endswith(f"-{mail.id}.eml")
    assert not list(settings.mail_path.glob(".*.tmp")), "no half-written file is left behind"
    assert message["To"] == ADDRESS
    assert message["Subject"] == "Your receipt"
    link = unsubscribe_link(message)
    assert link.startswith(f"{settings.base_url}/unsubscribe/")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    body = text_of(message)
    assert body.startswith("Thank you for your purchase.")
    assert link in body

    sent = await load_mail(committed_db, mail.id)
    assert sent.status == MailStatus.SENT
    assert sent.sent_at is not None
    assert sent.message_id == message["Message-ID"]
    assert mail.id in str(message["Message-ID"])


async def opted_in_member(db: Database, address: str = ADDRESS) -> str:
    """A member who agreed to marketing mail (P7: without it, none is sent)."""
    from leadmarket.models import CommunicationPreference, User

    async with db.transaction() as session:
        user = User(
            email=address,
            username="ana_silva",
            username_key="ana_silva",
            role="buyer",
            password_hash="x",
        )
        session.add(user)
        await session.flush()
        session.add(
            CommunicationPreference(
                user_id=user.id, newsletters=True, promotions=True, updated_at=utcnow()
            )
        )
        return user.id


async def test_unsubscribing_stops_marketing_mail_but_not_transactional_mail(
    committed_db: Database, settings: Settings
) -> None:
    await opted_in_member(committed_db)
    worker = make_worker(committed_db, settings)
    await queue_committed(committed_db, settings, category=MailCategory.MARKETING)
    assert await worker.run_once() == 1
    [newsletter] = written_mail(settings)
    token = unsubscribe_link(newsletter).rsplit("/", 1)[1]
    waiting = await queue_committed(committed_db, settings, category=MailCategory.MARKETING)

    for already in (False, True):  # a second click changes nothing, and says so
        async with committed_db.transaction() as session:
            outcome = await unsubscribe(session, settings, token)
            assert (outcome.category, outcome.already) == (MailCategory.MARKETING, already)
    async with committed_db.transaction() as session:
        suppressions = (await session.scalars(select(MailSuppression))).all()
    assert len(suppressions) == 1
    assert "ana" not in suppressions[0].address_hash, "the opt-out list keeps no address"

    assert await worker.run_once() == 1
    assert (await load_mail(committed_db, waiting.id)).status == MailStatus.SUPPRESSED

    # The same address, written differently, is still the same person.
    promo = await queue_committed(
        committed_db, settings, to=" Ana.Silva@Example.COM", category=MailCategory.MARKETING
    )
    assert promo.status == MailStatus.SUPPRESSED
    receipt = await queue_committed(committed_db, settings, subject="Your order")
    assert await worker.run_once() == 1

    assert (await load_mail(committed_db, receipt.id)).status == MailStatus.SENT
    assert [m["Subject"] for m in written_mail(settings)] == ["Your receipt", "Your order"]


async def test_forged_or_expired_unsubscribe_links_are_refused(
    session: AsyncSession, settings: Settings
) -> None:
    token = unsubscribe_token(settings, ADDRESS)
    data, mac = token.split(".")
    signer = Signer(settings.signing_key())
    good_claims = {"a": "0" * 64, "c": "marketing"}
    refused = [
        data[:-2] + ("AA" if data[-2:] != "AA" else "BB") + "." + mac,  # altered payload
        token[:-3],  # cut short
        "",
        "é" + token,  # not even ASCII
        signer.sign("unsubscribe", good_claims, ttl_seconds=-1),  # expired
        signer.sign("verify-email", good_claims, ttl_seconds=60),  # minted for another purpose
        signer.sign("unsubscribe", {"a": "0" * 64, "c": "transactional"}, ttl_seconds=60),
        Signer(b"someone else's key").sign("unsubscribe", good_claims, ttl_seconds=60),
    ]
    for bad in refused:
        with pytest.raises(InvalidUnsubscribeLink) as caught:
            await unsubscribe(session, settings, bad)
        assert isinstance(caught.value, NotFound)
    assert await session.scalar(select(func.count()).select_from(MailSuppression)) == 0


async def test_queue_mail_refuses_header_injection(
    session: AsyncSession, settings: Settings
) -> None:
    bad_calls = [
        {"to": ADDRESS, "subject": "Hi\r\nBcc: everyone@example.com"},
        {"to": f"{ADDRESS}, other@example.com", "subject": "Hi"},
        {"to": "not-an-address", "subject": "Hi"},
    ]
    for call in bad_calls:
        with pytest.raises(ValidationFailed):
            await queue_mail(session, settings, text_body="x", template="t", **call)
    assert await session.scalar(select(func.count()).select_from(OutboundMail)) == 0


async def test_file_backend_rewrites_the_same_file_for_a_retried_send(
    tmp_path: Path, settings: Settings
) -> None:
    mail = OutboundMail(
        id="mail_01TESTRETRY",
        to_address=ADDRESS,
        subject="Hi",
        text_body="Hello",
        category=MailCategory.TRANSACTIONAL.value,
        template="t",
    )
    outgoing = OutgoingMessage(mail.id, utcnow(), compose_message(settings, mail))
    backend = FileMailBackend(tmp_path / "out")
    await backend.send(outgoing)
    await backend.send(outgoing)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [backend.path_for(outgoing).name]


@dataclass
class ReceivedMail:
    sender: str
    recipients: list[str]
    data: bytes


@dataclass
class LoopbackSmtpServer:
    """Just enough SMTP (RFC 5321) for smtplib: EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT."""

    received: list[ReceivedMail] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    got_mail: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(*lines: str) -> None:
            writer.write("".join(line + "\r\n" for line in lines).encode())
            await writer.drain()

        sender, recipients = "", []
        await reply("220 loopback ESMTP")
        while line := await reader.readline():
            command = line.decode().rstrip("\r\n")
            verb = command.split(" ", 1)[0].upper()
            address = re.search(r"<([^>]*)>", command)
            if verb == "EHLO":
                await reply("250-loopback", "250 AUTH PLAIN")
            elif verb == "AUTH":
                _, user, password = base64.b64decode(command.split()[2]).split(b"\0")
                self.logins.append((user.decode(), password.decode()))
                await reply("235 2.7.0 Authenticated")
            elif verb == "MAIL" and address:
                sender, recipients = address.group(1), []
                await reply("250 2.1.0 OK")
            elif verb == "RCPT" and address:
                recipients.append(address.group(1))
                await reply("250 2.1.5 OK")
            elif verb == "DATA":
                await reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                while (data_line := await reader.readline()) != b".\r\n":
                    lines.append(data_line[1:] if data_line.startswith(b".") else data_line)
                self.received.append(ReceivedMail(sender, recipients, b"".join(lines)))
                self.got_mail.set()
                await reply("250 2.0.0 Queued")
            elif verb == "QUIT":
                await reply("221 2.0.0 Bye")
                break
            else:
                await reply("250 OK" if verb in ("RSET", "NOOP") else "502 5.5.2 Not here")
        writer.close()


@pytest.fixture
async def smtp_server() -> AsyncIterator[tuple[LoopbackSmtpServer, int]]:
    relay = LoopbackSmtpServer()
    server = await asyncio.start_server(relay.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield relay, port


async def test_smtp_backend_delivers_to_the_relay_with_login(
    committed_db: Database, settings: Settings, smtp_server: tuple[LoopbackSmtpServer, int]
) -> None:
    relay, port = smtp_server
    smtp_settings = settings.model_copy(
        update={
            "mail_backend": "smtp",
            "smtp_port": port,
            "smtp_username": "relay-user",
            "smtp_password": SecretStr("relay-pass"),
        }
    )
    mail = await queue_committed(committed_db, smtp_settings)
    assert await make_worker(committed_db, smtp_settings).run_once() == 1

    [delivered] = relay.received
    assert relay.logins == [("relay-user", "relay-pass")]
    assert delivered.recipients == [ADDRESS]
    assert delivered.sender == "no-reply@leadmarket.test"
    message = email.message_from_bytes(delivered.data, policy=email.policy.default)
    assert unsubscribe_link(message) in text_of(message)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    sent = await load_mail(committed_db, mail.id)
    assert sent.status == MailStatus.SENT
    assert sent.message_id == message["Message-ID"]
    assert written_mail(settings) == [], "the SMTP backend writes no files"


async def test_mail_that_cannot_be_sent_is_marked_failed_without_leaking_the_address(
    committed_db: Database, settings: Settings
) -> None:
    with socket.socket() as probe:  # a port on which nothing listens
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    unreachable = settings.model_copy(
        update={"mail_backend": "smtp", "smtp_port": closed_port, "job_max_attempts": 1}
    )
    mail = await queue_committed(committed_db, unreachable)
    assert await make_worker(committed_db, unreachable).run_once() == 1

    failed = await load_mail(committed_db, mail.id)
    assert (failed.status, failed.attempts) == (MailStatus.FAILED, 1)
    async with committed_db.transaction() as session:
        job = (await session.scalars(select(Job))).one()
    assert job.status == JobStatus.DEAD
    assert job.last_error is not None
    assert ADDRESS not in job.last_error


async def test_run_worker_sends_queued_mail_until_stopped(
    committed_db: Database, settings: Settings, smtp_server: tuple[LoopbackSmtpServer, int]
) -> None:
    relay, port = smtp_server
    worker_settings = settings.model_copy(
        update={"mail_backend": "smtp", "smtp_port": port, "job_poll_seconds": 0.05}
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(worker_settings, concurrency=2, stop=stop))
    mail = await queue_committed(committed_db, worker_settings)
    async with asyncio.timeout(20):
        await relay.got_mail.wait()
    stop.set()
    await worker

    assert [m.recipients for m in relay.received] == [[ADDRESS]]
    assert (await load_mail(committed_db, mail.id)).status == MailStatus.SENT


def test_registry_has_the_mail_job_and_the_job_purge() -> None:
    assert {"mail.send", "jobs.purge_finished"} <= set(build_registry().kinds)


@pytest.fixture
def unsubscribe_app(settings: Settings, db: Database) -> FastAPI:
    app = FastAPI()
    app.state.settings = settings
    app.state.db = db
    install_error_handlers(app)
    install_templates(app)
    app.include_router(views.router)
    return app


async def test_unsubscribe_routes_confirm_on_get_and_act_on_one_click_post(
    unsubscribe_app: FastAPI, session: AsyncSession, settings: Settings
) -> None:
    for route in views.router.routes:
        assert isinstance(route, APIRoute)
        assert any(d.call is views.anyone for d in route.dependant.dependencies), route.path
    token = unsubscribe_token(settings, ADDRESS)
    transport = httpx.ASGITransport(app=unsubscribe_app)
    async with httpx.AsyncClient(transport=transport, base_url=settings.base_url) as client:
        page = await client.get(f"/unsubscribe/{token}")
        assert page.status_code == 200
        assert '<form method="post"' in page.text
        assert await session.scalar(select(func.count()).select_from(MailSuppression)) == 0

        for status in ("unsubscribed", "already_unsubscribed"):
            one_click = await client.post(
                f"/unsubscribe/{token}",
                content="List-Unsubscribe=One-Click",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert one_click.status_code == 200
            assert one_click.json()["status"] == status
            assert one_click.json()["category"] == "marketing"

        confirmed = await client.post(f"/unsubscribe/{token}", headers={"Accept": "text/html"})
        assert confirmed.status_code == 200
        assert "You are already unsubscribed" in confirmed.text

        for method in ("GET", "POST"):
            forged = await client.request(method, f"/unsubscribe/{token[:-4]}")
            assert forged.status_code == 404
            assert forged.json()["type"] == "/problems/unsubscribe-link-invalid"

    assert await session.scalar(select(func.count()).select_from(MailSuppression)) == 1


async def test_old_mail_is_purged_after_the_retention_period(
    session: AsyncSession, settings: Settings
) -> None:
    from leadmarket.notifications.service import purge_old_mail

    old_sent = await queue_mail(
        session, settings, to="old@example.com", subject="s", text_body="b", template="t"
    )
    old_queued = await queue_mail(
        session, settings, to="stuck@example.com", subject="s", text_body="b", template="t"
    )
    recent = await queue_mail(
        session, settings, to="new@example.com", subject="s", text_body="b", template="t"
    )
    long_ago = utcnow() - dt.timedelta(days=settings.mail_retention_days + 1)
    old_sent.status, old_sent.created_at = MailStatus.SENT.value, long_ago
    old_queued.created_at = long_ago
    recent.status = MailStatus.SENT.value
    await session.flush()

    assert await purge_old_mail(session, settings, now=utcnow()) == 1
    left = set(await session.scalars(select(OutboundMail.id)))
    assert old_sent.id not in left
    assert old_queued.id in left  # unsent mail is never deleted
    assert recent.id in left
