"""The privacy officer's side of rights requests: extension, denial, an agent's proof, the
queue (overdue first), the yearly metrics, the 24-month purge, and the pages (P4, P5, A4).

The ``consumer_data`` functions are fakes here (see ``tests/fixtures/privacy_requests.py``);
``test_rights_end_to_end.py`` runs the real ones."""

from __future__ import annotations

import base64
import datetime as dt
import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database
from leadmarket.kit.keyring import new_data_key
from leadmarket.models import AuditEvent, PrivacyRequest, PrivacyRequestEvent, User
from leadmarket.privacy.requests import sweep_requests, yearly_metrics
from tests.fixtures.accounts import PASSWORD, signed_in
from tests.fixtures.privacy_requests import (
    FakeConsumerData,
    bearer,
    code_mailed_to,
    mails,
    run_jobs,
    submit,
)

KNOWN = "ana.silva@example.com"


@pytest.fixture
def fake(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> FakeConsumerData:
    """Stand-ins for consumer_data (built on another branch) that record their calls."""
    stand_in = FakeConsumerData(app.state.leads_kit)
    stand_in.install(monkeypatch)
    return stand_in


async def _officer(
    client: httpx.AsyncClient, session: AsyncSession, role: str = "privacy_officer"
) -> dict[str, str]:
    account, auth = await signed_in(client)
    user = await session.get(User, account["id"])
    assert user is not None
    user.role = role
    await session.commit()
    return auth


async def _status(client: httpx.AsyncClient, created: dict[str, Any]) -> dict[str, Any]:
    response = await client.get(
        f"/api/v1/privacy/requests/{created['id']}", headers=bearer(created["token"])
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _verify(
    client: httpx.AsyncClient, session: AsyncSession, created: dict[str, Any]
) -> None:
    code = await code_mailed_to(session, KNOWN)
    response = await client.post(
        f"/api/v1/privacy/requests/{created['id']}/verify", json={"code": code}
    )
    assert response.status_code == 200, response.text


async def _agent_request(client: httpx.AsyncClient, **proof: Any) -> dict[str, Any]:
    """A know request about KNOWN made by an authorized agent with a written declaration."""
    response = await submit(
        client,
        type="know",
        email=KNOWN,
        on_behalf="agent",
        agent_name="Carla Agent",
        proof_text="Signed permission from Ana Silva attached.",
        **proof,
    )
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_officer_routes_admit_privacy_officers_and_admins_only(
    client: httpx.AsyncClient, session: AsyncSession, fake: FakeConsumerData
) -> None:
    _, buyer = await signed_in(client)
    support = await _officer(client, session, "support")
    officer = await _officer(client, session)
    admin = await _officer(client, session, "admin")
    for path in ("/api/v1/admin/privacy/requests", "/api/v1/admin/privacy/metrics?year=2026"):
        assert (await client.get(path)).status_code == 401
        assert (await client.get(path, headers=buyer)).status_code == 403
        assert (await client.get(path, headers=support)).status_code == 403
        assert (await client.get(path, headers=officer)).status_code == 200
        assert (await client.get(path, headers=admin)).status_code == 200


async def test_extension_once_to_90_days_with_its_reason_emailed(
    client: httpx.AsyncClient, session: AsyncSession, fake: FakeConsumerData
) -> None:
    """P5: one extension, to 90 days after receipt, with a written reason sent to the
    consumer."""
    officer = await _officer(client, session)
    created = (await submit(client, type="delete", email=KNOWN)).json()
    path = f"/api/v1/admin/privacy/requests/{created['id']}/extend"
    assert (await client.post(path, json={"reason": "short"}, headers=officer)).status_code == 422
    reason = "Three buyers must confirm the deletion of their copies."
    response = await client.post(path, json={"reason": reason}, headers=officer)
    assert response.status_code == 200, response.text
    status = await _status(client, created)
    received = dt.datetime.fromisoformat(status["received_at"])
    assert dt.datetime.fromisoformat(status["extended_until"]) - received == dt.timedelta(days=90)
    assert status["extension_reason"] == reason
    (mail,) = await mails(session, KNOWN, "privacy.request_extended")
    assert reason in mail.text_body
    again = await client.post(path, json={"reason": reason + " Again."}, headers=officer)
    assert again.status_code == 409
    assert again.json()["type"] == "/problems/privacy-extension-refused"
    assert len(await mails(session, KNOWN, "privacy.request_extended")) == 1
    opened = await session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.subject_id == created["id"], AuditEvent.action == "pii.read")
    )
    assert opened == 1, "opening the sealed address to write to the consumer is recorded"


async def test_an_overdue_request_cannot_be_extended_after_the_fact(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    """P5 (CCPA 1798.130(a)(2)): the extension is told within the first 45 days; an officer
    cannot turn an overdue request into one due in 90 days."""
    officer = await _officer(client, session)
    late = await _make_request(
        session, settings, received=dt.datetime.now(dt.UTC) - dt.timedelta(days=46)
    )
    await session.commit()
    response = await client.post(
        f"/api/v1/admin/privacy/requests/{late.id}/extend",
        json={"reason": "Three buyers must confirm the deletion of their copies."},
        headers=officer,
    )
    assert response.status_code == 409, response.text
    assert response.json()["type"] == "/problems/privacy-extension-refused"
    assert "within the first 45 days" in response.json()["detail"]
    await session.refresh(late)
    assert late.extended_until is None and late.extension_reason is None


async def test_an_officer_denies_with_a_reason_and_a_closed_request_cannot_change(
    client: httpx.AsyncClient, session: AsyncSession, fake: FakeConsumerData
) -> None:
    officer = await _officer(client, session)
    created = (await submit(client, type="know", email=KNOWN)).json()
    path = f"/api/v1/admin/privacy/requests/{created['id']}"
    response = await client.post(
        path + "/deny",
        json={"reason": "exception_applies", "note": "A court order requires we keep it."},
        headers=officer,
    )
    assert response.status_code == 200
    status = await _status(client, created)
    assert status["status"] == "denied" and status["denial_reason"] == "exception_applies"
    assert len(await mails(session, KNOWN, "privacy.request_answered")) == 1
    later = await client.post(
        path + "/extend", json={"reason": "Too late for this."}, headers=officer
    )
    assert later.status_code == 409
    code = await code_mailed_to(session, KNOWN)
    verify = await client.post(
        f"/api/v1/privacy/requests/{created['id']}/verify", json={"code": code}
    )
    assert verify.status_code == 409


async def test_an_agent_request_waits_for_the_officer_to_accept_the_proof(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    fake: FakeConsumerData,
) -> None:
    """P4: an authorized agent submits with proof; the consumer confirms the code; nothing is
    answered until a privacy officer accepted the proof, whose reading is recorded."""
    fake.hold(email=KNOWN)
    officer = await _officer(client, session)
    document = base64.b64encode(b"%PDF-1.4 signed permission").decode()
    created = await _agent_request(
        client,
        proof_document={
            "filename": "permission.pdf",
            "content_type": "application/pdf",
            "data_base64": document,
        },
    )
    await _verify(client, session, created)
    await run_jobs(db, settings)
    assert (await _status(client, created))["status"] == "pending"
    assert fake.called("build_report") == []

    queue = (await client.get("/api/v1/admin/privacy/requests", headers=officer)).json()
    (item,) = [i for i in queue if i["id"] == created["id"]]
    assert item["proof_status"] == "awaiting_review" and item["on_behalf"] == "agent"
    assert item["contact_hint"] == "a…@e….com"

    response = await client.post(
        f"/api/v1/admin/privacy/requests/{created['id']}/proof",
        json={"accept": True, "note": "Signature matches."},
        headers=officer,
    )
    assert response.status_code == 200
    await run_jobs(db, settings)
    assert (await _status(client, created))["status"] == "fulfilled"
    again = await client.post(
        f"/api/v1/admin/privacy/requests/{created['id']}/proof",
        json={"accept": False},
        headers=officer,
    )
    assert again.status_code == 409


async def test_the_first_request_counts_first_even_while_it_waits_for_the_proof(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    fake: FakeConsumerData,
) -> None:
    """P5: twice in 12 months means the first two received. An agent's request waiting for
    the officer came first; the consumer's own two later requests do not use up its turn: the
    first of them is answered, the second (the third received) is refused."""
    fake.hold(email=KNOWN)
    fake.matching = 2
    officer = await _officer(client, session)
    agents = await _agent_request(client)
    await _verify(client, session, agents)
    own = []
    for _ in range(2):
        created = (await submit(client, type="know", email=KNOWN)).json()
        await _verify(client, session, created)
        await run_jobs(db, settings)
        own.append(created)
    accepted = await client.post(
        f"/api/v1/admin/privacy/requests/{agents['id']}/proof",
        json={"accept": True},
        headers=officer,
    )
    assert accepted.status_code == 200, accepted.text
    await run_jobs(db, settings)

    assert (await _status(client, agents))["status"] == "fulfilled"
    assert (await _status(client, own[0]))["status"] == "fulfilled"
    third = await _status(client, own[1])
    assert (third["status"], third["denial_reason"]) == ("denied", "too_many_requests")


async def test_a_rejected_proof_denies_the_request(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    fake: FakeConsumerData,
) -> None:
    fake.hold(email=KNOWN)
    officer = await _officer(client, session)
    created = (
        await submit(
            client,
            type="delete",
            email=KNOWN,
            on_behalf="parent",
            agent_name="Paula Parent",
            proof_text="I am her mother, see birth certificate.",
        )
    ).json()
    response = await client.post(
        f"/api/v1/admin/privacy/requests/{created['id']}/proof",
        json={"accept": False, "note": "No document showing parenthood."},
        headers=officer,
    )
    assert response.status_code == 200
    await _verify_expecting(client, session, created, 409)
    await run_jobs(db, settings)
    status = await _status(client, created)
    assert status["status"] == "denied" and status["denial_reason"] == "agent_not_authorized"
    assert fake.called("erase_consumer") == []


async def _verify_expecting(
    client: httpx.AsyncClient, session: AsyncSession, created: dict[str, Any], code: int
) -> None:
    mailed = await code_mailed_to(session, KNOWN)
    response = await client.post(
        f"/api/v1/privacy/requests/{created['id']}/verify", json={"code": mailed}
    )
    assert response.status_code == code


async def _make_request(
    session: AsyncSession,
    settings: Settings,
    *,
    received: dt.datetime,
    type_: str = "know",
    status: str = "pending",
    closed: dt.datetime | None = None,
    denial: str | None = None,
    extended: bool = False,
) -> PrivacyRequest:
    """A request row as the service would leave it, at a chosen date (queue, metrics, purge)."""
    from leadmarket.kit.ids import new_id
    from leadmarket.privacy.requests import add_months

    request_id = new_id("prq")
    wrapped = settings.keyring().wrap(new_data_key(), request_id)
    row = PrivacyRequest(
        id=request_id,
        type=type_,
        status=status,
        denial_reason=denial,
        received_at=received,
        confirm_by=received + dt.timedelta(days=14),
        confirmed_at=received,
        due_at=received + dt.timedelta(days=45),
        extended_until=received + dt.timedelta(days=90) if extended else None,
        extension_reason="More time." if extended else None,
        closed_at=closed,
        purge_after=add_months(received, settings.privacy_request_retention_months),
        token_hash=new_id("tok"),
        key_version=wrapped.version,
        wrapped_key=wrapped.wrapped,
        email_digest="d" * 64,
        contact_hint="a…@e….com",
        channel="email",
        attempts_left=5,
        on_behalf="self",
        proof_status="not_needed",
    )
    session.add(row)
    session.add(
        PrivacyRequestEvent(
            request_id=row.id, at=received, actor_type="requester", action="submitted"
        )
    )
    await session.flush()
    return row


async def test_the_queue_lists_open_requests_by_due_date_overdue_first(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, fake: FakeConsumerData
) -> None:
    officer = await _officer(client, session)
    now = dt.datetime.now(dt.UTC)
    fresh = await _make_request(session, settings, received=now - dt.timedelta(days=1))
    overdue = await _make_request(session, settings, received=now - dt.timedelta(days=50))
    # Received earlier than `overdue`, but extended to 90 days: due later, not overdue.
    extended = await _make_request(
        session, settings, received=now - dt.timedelta(days=60), extended=True
    )
    answered = await _make_request(
        session,
        settings,
        received=now - dt.timedelta(days=80),
        status="fulfilled",
        closed=now - dt.timedelta(days=70),
    )
    deletion = await _make_request(
        session, settings, received=now - dt.timedelta(days=2), type_="delete"
    )
    await session.commit()

    open_queue = (await client.get("/api/v1/admin/privacy/requests", headers=officer)).json()
    assert [i["id"] for i in open_queue] == [overdue.id, extended.id, deletion.id, fresh.id]
    assert [i["overdue"] for i in open_queue] == [True, False, False, False]
    everything = (
        await client.get("/api/v1/admin/privacy/requests?status=all", headers=officer)
    ).json()
    assert [i["id"] for i in everything][-1] == answered.id, "answered ones come last"
    deletes = (
        await client.get("/api/v1/admin/privacy/requests?type=delete", headers=officer)
    ).json()
    assert [i["id"] for i in deletes] == [deletion.id]
    assert (
        await client.get("/api/v1/admin/privacy/requests?type=nonsense", headers=officer)
    ).status_code == 422


async def test_yearly_metrics_per_type_from_the_request_records(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, fake: FakeConsumerData
) -> None:
    """P2/P5 context: received, complied with in whole or in part, denied by reason, and the
    median and mean days to respond, per type, for requests received in the year."""
    officer = await _officer(client, session)
    start = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    for days, status, denial in [
        (10, "fulfilled", None),
        (20, "fulfilled", None),
        (40, "partially_fulfilled", "insufficient_verification"),
        (5, "denied", "too_many_requests"),
    ]:
        await _make_request(
            session,
            settings,
            received=start,
            type_="access",
            status=status,
            closed=start + dt.timedelta(days=days),
            denial=denial,
        )
    await _make_request(
        session,
        settings,
        received=start,
        type_="delete",
        status="denied",
        closed=start + dt.timedelta(days=3),
        denial="no_match",
    )
    await _make_request(
        session, settings, received=start, type_="delete", status="expired", closed=start
    )
    await _make_request(
        session,
        settings,
        received=dt.datetime(2024, 12, 31, tzinfo=dt.UTC),
        type_="delete",
        status="fulfilled",
        closed=start,
    )
    await session.commit()

    body = (await client.get("/api/v1/admin/privacy/metrics?year=2025", headers=officer)).json()
    by_type = {m["type"]: m for m in body["types"]}
    access = by_type["access"]
    assert (access["received"], access["complied_in_whole"], access["complied_in_part"]) == (
        4,
        2,
        1,
    )
    assert access["denied"] == 1 and access["denied_by_reason"] == {"too_many_requests": 1}
    assert access["median_days_to_respond"] == 15.0
    assert access["mean_days_to_respond"] == 18.75
    delete = by_type["delete"]
    assert delete["received"] == 2 and delete["expired_unverified"] == 1
    assert delete["denied_by_reason"] == {"no_match": 1} and delete["median_days_to_respond"] == 3.0
    assert by_type["know"]["received"] == 0 and by_type["know"]["mean_days_to_respond"] is None
    assert await yearly_metrics(session, 2025) == body["types"]
    assert (await client.get("/api/v1/admin/privacy/metrics", headers=officer)).status_code == 422


async def test_the_sweep_expires_abandoned_requests_drops_old_reports_and_purges_after_24_months(
    session: AsyncSession,
    settings: Settings,
    client: httpx.AsyncClient,
    db: Database,
    fake: FakeConsumerData,
) -> None:
    now = dt.datetime.now(dt.UTC)
    old = await _make_request(
        session,
        settings,
        received=now - dt.timedelta(days=731),
        status="fulfilled",
        closed=now - dt.timedelta(days=700),
    )
    young = await _make_request(
        session,
        settings,
        received=now - dt.timedelta(days=700),
        status="fulfilled",
        closed=now - dt.timedelta(days=690),
    )
    await session.commit()
    fake.hold(email=KNOWN)
    created = (await submit(client, type="know", email=KNOWN)).json()
    abandoned = (await submit(client, type="delete", email="someone@example.com")).json()
    await _verify(client, session, created)
    await run_jobs(db, settings)
    await session.execute(
        update(PrivacyRequest)
        .where(PrivacyRequest.id == abandoned["id"])
        .values(code_expires_at=now - dt.timedelta(minutes=1))
    )
    await session.commit()

    result = await sweep_requests(session, settings, now=now)
    assert (result.expired, result.purged, result.reports_deleted) == (1, 1, 0)
    assert await session.get(PrivacyRequest, old.id) is None
    assert (
        await session.scalar(
            select(func.count())
            .select_from(PrivacyRequestEvent)
            .where(PrivacyRequestEvent.request_id == old.id)
        )
        == 0
    )
    assert await session.get(PrivacyRequest, young.id) is not None
    assert (await _status(client, abandoned))["status"] == "expired"

    # From the report's own deadline: the answer was closed after ``now``, by as long as the
    # jobs took (more than a second on a loaded machine).
    available_until = await session.scalar(
        select(PrivacyRequest.report_available_until).where(PrivacyRequest.id == created["id"])
    )
    assert available_until is not None
    assert available_until >= now + dt.timedelta(days=settings.privacy_report_days)
    later = available_until + dt.timedelta(seconds=1)
    result = await sweep_requests(session, settings, now=later)
    assert result.reports_deleted == 1
    await session.commit()
    status = await _status(client, created)
    assert status["status"] == "fulfilled"
    assert status["report"] == {"specific_pieces": False, "report_deleted_after_days": 30}
    report = await client.get(
        f"/api/v1/privacy/requests/{created['id']}/report.json", headers=bearer(created["token"])
    )
    assert report.status_code == 404


# Pages -------------------------------------------------------------------------------------


async def test_the_privacy_center_says_opt_out_honored_when_the_browser_sends_gpc(
    client: httpx.AsyncClient, fake: FakeConsumerData
) -> None:
    with_gpc = await client.get("/privacy", headers={"Sec-GPC": "1"})
    assert with_gpc.status_code == 200 and "Opt-out request honored" in with_gpc.text
    without = await client.get("/privacy")
    assert without.status_code == 200 and "Opt-out request honored" not in without.text
    assert "Your privacy rights" in without.text


async def _form(client: httpx.AsyncClient, path: str = "/privacy") -> str:
    page = await client.get(path)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


async def test_the_form_shows_each_error_beside_its_field_and_keeps_what_was_typed(
    client: httpx.AsyncClient, session: AsyncSession, fake: FakeConsumerData
) -> None:
    token = await _form(client)
    response = await client.post(
        "/privacy/requests",
        data={"csrf_token": token, "type": "correct", "name": "Ana Silva", "details": "no colon"},
    )
    assert response.status_code == 422
    assert 'id="email-error"' in response.text and 'id="details-error"' in response.text
    assert 'value="Ana Silva"' in response.text
    assert await session.scalar(select(PrivacyRequest.id)) is None
    no_csrf = await client.post("/privacy/requests", data={"type": "know", "email": KNOWN})
    assert no_csrf.status_code == 403


async def test_the_center_flow_without_a_browser(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    fake: FakeConsumerData,
) -> None:
    fake.hold(email=KNOWN)
    token = await _form(client)
    response = await client.post(
        "/privacy/requests", data={"csrf_token": token, "type": "know", "email": KNOWN}
    )
    assert response.status_code == 202
    request_id = re.search(r"(prq_[0-9A-Z]{26})", response.text)
    assert request_id is not None
    path = f"/privacy/requests/{request_id.group(1)}"
    shown = re.search(r'id="request-token">([^<]+)<', response.text)
    assert shown is not None
    wrong = await client.post(path + "/verify", data={"csrf_token": token, "code": "000000"})
    assert wrong.status_code in (200, 422) and 'id="code-error"' in wrong.text
    code = await code_mailed_to(session, KNOWN)
    verified = await client.post(path + "/verify", data={"csrf_token": token, "code": code})
    assert verified.status_code == 303 and verified.headers["location"] == path
    await run_jobs(db, settings)
    status = await client.get(path)
    assert status.status_code == 200 and 'data-status="fulfilled"' in status.text
    download = await client.get(path + "/report.json")
    assert download.status_code == 200 and "categories_collected" in download.text
    # Another browser, without the cookie, needs the token.
    client.cookies.clear()
    bare = await client.get(path)
    assert "Open your request" in bare.text and "categories_collected" not in bare.text
    assert (await client.get(path + "/report.json")).status_code == 404


async def test_the_officer_pages_show_the_queue_masked_and_act_on_a_request(
    client: httpx.AsyncClient, session: AsyncSession, fake: FakeConsumerData
) -> None:
    """A4: the officer sees the requester's email masked only; the detail page shows the
    event log; the extension form works; other members get a 403 page."""
    account, _ = await signed_in(client)
    user = await session.get(User, account["id"])
    assert user is not None
    user.role = "privacy_officer"
    await session.commit()
    created = (await submit(client, type="delete", email=KNOWN)).json()
    token = await _form(client, "/signin")
    signin = await client.post(
        "/signin", data={"csrf_token": token, "login": account["username"], "password": PASSWORD}
    )
    assert signin.status_code == 303

    queue = await client.get("/privacy/queue")
    assert queue.status_code == 200
    assert f'data-id="{created["id"]}"' in queue.text
    assert "a…@e….com" in queue.text and KNOWN not in queue.text
    assert 'id="metrics"' in queue.text
    detail = await client.get(f"/privacy/queue/{created['id']}")
    assert detail.status_code == 200 and KNOWN not in detail.text
    assert "receipt_confirmed" in detail.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', detail.text)
    assert csrf is not None
    refused = await client.post(
        f"/privacy/queue/{created['id']}/extend", data={"csrf_token": csrf.group(1), "reason": "x"}
    )
    assert refused.status_code == 422 and 'id="reason-error"' in refused.text
    extended = await client.post(
        f"/privacy/queue/{created['id']}/extend",
        data={"csrf_token": csrf.group(1), "reason": "We are waiting on two buyers."},
    )
    assert extended.status_code == 303
    after = await client.get(extended.headers["location"])
    assert "We are waiting on two buyers." in after.text and "extended" in after.text

    client.cookies.clear()
    other, _ = await signed_in(client)
    token = await _form(client, "/signin")
    await client.post(
        "/signin", data={"csrf_token": token, "login": other["username"], "password": PASSWORD}
    )
    assert (await client.get("/privacy/queue")).status_code == 403


async def test_master_key_rotation_rewraps_request_keys(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, fake: FakeConsumerData
) -> None:
    """Requests live 24 months, longer than a master key: rotation re-wraps their data keys,
    and counts their key versions as in use until then."""
    from leadmarket.kit.keyring import Keyring
    from leadmarket.privacy import requests as service

    created = (await submit(client, type="know", email=KNOWN)).json()
    old = settings.keyring()
    row = await session.get(PrivacyRequest, created["id"])
    assert row is not None
    assert await service.request_key_versions_in_use(session) == {old.current}
    new_version = old.current + 1
    new_key = new_data_key()
    both = Keyring({**{v: old._keys[v] for v in old.versions}, new_version: new_key}, new_version)
    assert await service.rewrap_request_keys(session, both) == 1
    assert row.key_version == new_version
    assert await service.request_key_versions_in_use(session) == {new_version}
    only_new = Keyring({new_version: new_key}, new_version)
    assert service._open(only_new, row, "email") == KNOWN
