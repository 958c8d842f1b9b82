"""Consumer rights requests through the API: submission, verification by one-time code,
fulfilment as a job, and the answer (P1, P3–P6).

The ``consumer_data`` functions are fakes here (``fake`` below, see
``tests/fixtures/privacy_requests.py``): these tests check the lifecycle around them;
``test_rights_end_to_end.py`` runs the real ones."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database
from leadmarket.models import (
    AuditEvent,
    Job,
    OutboundMail,
    PrivacyRequest,
    PrivacyRequestEvent,
)
from leadmarket.privacy.consumer_data import KeptRecord
from leadmarket.privacy.requests import add_business_days
from tests.fixtures.privacy_requests import (
    FakeConsumerData,
    bearer,
    code_mailed_to,
    mails,
    run_jobs,
    submit,
)

KNOWN = "ana.silva@example.com"
UNKNOWN = "bruno.costa@example.com"


@pytest.fixture
def fake(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> FakeConsumerData:
    """Stand-ins for consumer_data (built on another branch) that record their calls."""
    stand_in = FakeConsumerData(app.state.leads_kit)
    stand_in.install(monkeypatch)
    return stand_in


async def _verified(
    client: httpx.AsyncClient, session: AsyncSession, **body: Any
) -> dict[str, Any]:
    response = await submit(client, **body)
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    code = await code_mailed_to(session, body["email"])
    verified = await client.post(
        f"/api/v1/privacy/requests/{created['id']}/verify", json={"code": code}
    )
    assert verified.status_code == 200, verified.text
    return created


async def _status(client: httpx.AsyncClient, created: dict[str, Any]) -> dict[str, Any]:
    response = await client.get(
        f"/api/v1/privacy/requests/{created['id']}", headers=bearer(created["token"])
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_ten_business_days_skip_weekends() -> None:
    friday = dt.datetime(2026, 11, 20, 9, tzinfo=dt.UTC)
    assert add_business_days(friday, 10) == dt.datetime(2026, 12, 4, 9, tzinfo=dt.UTC)
    saturday = friday + dt.timedelta(days=1)
    assert add_business_days(saturday, 1) == dt.datetime(2026, 11, 23, 9, tzinfo=dt.UTC)


# Validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"type": "know"}, {"email", "phone"}),
        ({"type": "know", "email": "not-an-email"}, {"email"}),
        ({"type": "know", "phone": "12"}, {"phone"}),
        ({"type": "sell_me", "email": KNOWN}, {"type"}),
        ({"type": "correct", "email": KNOWN}, {"details"}),
        ({"type": "correct", "email": KNOWN, "details": "my name is wrong"}, {"details"}),
        ({"type": "know", "email": KNOWN, "details": {"name": "x"}}, {"details"}),
        ({"type": "know", "email": KNOWN, "on_behalf": "agent"}, {"agent_name", "proof_text"}),
        ({"type": "know", "email": KNOWN, "agent_name": "Carla Agent"}, {"agent_name"}),
        ({"type": "know", "email": KNOWN, "birth_date": "2999-01-01"}, {"birth_date"}),
    ],
)
async def test_a_bad_request_is_a_422_naming_each_field_and_nothing_is_kept(
    client: httpx.AsyncClient,
    session: AsyncSession,
    fake: FakeConsumerData,
    body: dict[str, Any],
    fields: set[str],
) -> None:
    response = await submit(client, **body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert {e["field"] for e in response.json()["errors"]} == fields
    assert await session.scalar(select(PrivacyRequest.id)) is None
    assert await session.scalar(select(OutboundMail.id)) is None


# The whole lifecycle -------------------------------------------------------------------------


async def test_know_request_lifecycle_from_submission_to_downloadable_report(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    fake: FakeConsumerData,
) -> None:
    """P1, P4, P5: 202 with a token; receipt confirmed and code sent at once; the right code
    makes it pending; the job answers with the report, sealed, downloadable as JSON and CSV;
    the consumer is told the answer is ready without any personal data in the message."""
    fake.hold(email=KNOWN, leads=2)
    response = await submit(client, type="know", email=KNOWN, details="What do you have?")
    assert response.status_code == 202
    created = response.json()
    assert created["status"] == "identity_unverified"
    assert created["token"].startswith("prt_")

    row = await session.get(PrivacyRequest, created["id"])
    assert row is not None
    assert row.confirmed_at is not None and row.confirmed_at <= row.confirm_by
    # 10 business days: a weekday 12 to 14 calendar days after receipt.
    assert row.confirm_by.weekday() < 5
    assert 12 <= (row.confirm_by - row.received_at).days <= 14
    assert row.due_at - row.received_at == dt.timedelta(days=45)
    (code_mail,) = await mails(session, KNOWN, "privacy.request_code")
    assert "We will answer by" in code_mail.text_body
    assert fake.calls == [], "nothing is looked up about the consumer before verification"

    status = await _status(client, created)
    assert status["status"] == "identity_unverified" and status["report"] is None

    code = await code_mailed_to(session, KNOWN)
    verified = await client.post(
        f"/api/v1/privacy/requests/{created['id']}/verify", json={"code": code}
    )
    assert verified.status_code == 200 and verified.json() == {"status": "pending"}
    again = await client.post(
        f"/api/v1/privacy/requests/{created['id']}/verify", json={"code": code}
    )
    assert again.status_code == 409

    await run_jobs(db, settings)
    status = await _status(client, created)
    assert status["status"] == "fulfilled"
    assert status["report"]["categories_collected"] == ["identifiers", "contact details"]
    assert "pieces" not in status["report"], "know: categories only"
    (report_call,) = fake.called("build_report")
    assert report_call["include_pieces"] is False
    received = dt.datetime.fromisoformat(status["received_at"])
    assert received - report_call["since"] == dt.timedelta(days=365), "the 12 months before"

    await session.refresh(row)
    assert row.report_sealed is not None and b"identifiers" not in row.report_sealed
    assert row.report_available_until is not None

    as_json = await client.get(
        f"/api/v1/privacy/requests/{created['id']}/report.json", headers=bearer(created["token"])
    )
    assert as_json.status_code == 200
    assert "attachment" in as_json.headers["content-disposition"]
    assert json.loads(as_json.text)["sources"] == ["seller web forms"]
    as_csv = await client.get(
        f"/api/v1/privacy/requests/{created['id']}/report.csv", headers=bearer(created["token"])
    )
    assert as_csv.status_code == 200 and as_csv.text.startswith("section,key,value")
    assert as_csv.headers["content-type"].startswith("text/csv")

    (answered,) = await mails(session, KNOWN, "privacy.request_answered")
    assert created["id"] in answered.text_body
    assert "identifiers" not in answered.text_body and "Ana" not in answered.text_body
    reads = list(
        await session.scalars(
            select(AuditEvent).where(
                AuditEvent.subject_id == created["id"], AuditEvent.action == "privacy.report_read"
            )
        )
    )
    assert len(reads) == 3, "each opening of the sealed report is recorded"
    actions = [
        e.action
        for e in await session.scalars(
            select(PrivacyRequestEvent)
            .where(PrivacyRequestEvent.request_id == created["id"])
            .order_by(PrivacyRequestEvent.id)
        )
    ]
    assert actions == ["submitted", "receipt_confirmed", "verified", "started", "answered"]


async def test_the_status_needs_the_request_token(
    client: httpx.AsyncClient, fake: FakeConsumerData
) -> None:
    created = (await submit(client, type="know", email=KNOWN)).json()
    other = (await submit(client, type="know", email=UNKNOWN)).json()
    path = f"/api/v1/privacy/requests/{created['id']}"
    assert (await client.get(path)).status_code == 401
    assert (await client.get(path, headers={"Authorization": "Basic abc"})).status_code == 401
    assert (await client.get(path, headers=bearer(other["token"]))).status_code == 404
    assert (await client.get(path, headers=bearer("prt_guess"))).status_code == 404
    assert (await client.get(path + "/report.json")).status_code == 401
    assert (
        await client.get(path + "/report.json", headers=bearer(created["token"]))
    ).status_code == 404, "no report before the answer"
    assert (await client.get(path, headers=bearer(created["token"]))).status_code == 200


# Probing -----------------------------------------------------------------------------------

_VOLATILE = re.compile(
    r"prq_[0-9A-Z]{26}|prt_[A-Za-z0-9_-]+|\b\d{6}\b|[0-9a-f]{64}|"
    r"\d{4}-\d\d-\d\dT[\d:.+]+(Z)?|[A-Z][a-z]+ \d{1,2}, \d{4}"
)


def _scrub(text: str) -> str:
    return _VOLATILE.sub("<x>", text)


async def test_a_consumer_we_do_not_hold_gets_exactly_the_same_answers(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    fake: FakeConsumerData,
) -> None:
    """Issue 5 bad input: statuses, bodies, headers and mail are the same for a consumer we
    hold and one we do not, up to ids, tokens, codes and dates; "no match" appears only after
    the code proved control of the address."""
    fake.hold(email=KNOWN)
    answers: dict[str, list[tuple[int, str, str]]] = {}
    for address in (KNOWN, UNKNOWN):
        steps: list[tuple[int, str, str]] = []
        submitted = await submit(client, type="access", email=address, name="Ana Silva")
        steps.append(
            (submitted.status_code, submitted.headers["content-type"], _scrub(submitted.text))
        )
        created = submitted.json()
        wrong = await client.post(
            f"/api/v1/privacy/requests/{created['id']}/verify", json={"code": "000000"}
        )
        steps.append((wrong.status_code, wrong.headers["content-type"], _scrub(wrong.text)))
        status = await client.get(
            f"/api/v1/privacy/requests/{created['id']}", headers=bearer(created["token"])
        )
        steps.append((status.status_code, status.headers["content-type"], _scrub(status.text)))
        code = await code_mailed_to(session, address)
        verified = await client.post(
            f"/api/v1/privacy/requests/{created['id']}/verify", json={"code": code}
        )
        steps.append((verified.status_code, verified.headers["content-type"], verified.text))
        (mail,) = await mails(session, address, "privacy.request_code")
        steps.append((0, mail.subject, _scrub(mail.text_body)))
        answers[address] = steps
        answers.setdefault("ids", []).append((0, created["id"], created["token"]))
    assert answers[KNOWN] == answers[UNKNOWN]

    await run_jobs(db, settings)
    (known_id, known_token), (unknown_id, unknown_token) = [(i, t) for _, i, t in answers["ids"]]
    known = await _status(client, {"id": known_id, "token": known_token})
    unknown = await _status(client, {"id": unknown_id, "token": unknown_token})
    assert known["status"] in ("fulfilled", "partially_fulfilled")
    assert unknown["status"] == "denied" and unknown["denial_reason"] == "no_match"


# Wrong codes, expiry -----------------------------------------------------------------------


async def test_wrong_codes_are_counted_and_the_last_one_expires_the_request(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, fake: FakeConsumerData
) -> None:
    created = (await submit(client, type="delete", email=KNOWN)).json()
    path = f"/api/v1/privacy/requests/{created['id']}/verify"
    code = await code_mailed_to(session, KNOWN)
    wrong = "111111" if code != "111111" else "222222"
    for left in range(settings.privacy_code_attempts - 1, 0, -1):
        response = await client.post(path, json={"code": wrong})
        assert response.status_code == 422
        assert response.json()["type"] == "/problems/verification-code-wrong"
        assert response.json()["attempts_left"] == left
        assert response.json()["errors"][0]["field"] == "code"
    last = await client.post(path, json={"code": wrong})
    assert last.status_code == 410
    assert last.json()["type"] == "/problems/privacy-request-expired"
    assert "submit" in last.json()["detail"]
    after = await client.post(path, json={"code": code})
    assert after.status_code == 410, "the right code no longer helps: submit again"
    assert (await _status(client, created))["status"] == "expired"
    row = await session.get(PrivacyRequest, created["id"])
    assert row is not None and row.code_digest is None

    malformed = await client.post(path, json={"code": "12ab"})
    assert malformed.status_code == 422 and malformed.json()["errors"][0]["field"] == "code"
    unknown = await client.post("/api/v1/privacy/requests/prq_NOPE/verify", json={"code": code})
    assert unknown.status_code == 404


async def test_an_expired_code_expires_the_request(
    client: httpx.AsyncClient, session: AsyncSession, fake: FakeConsumerData
) -> None:
    created = (await submit(client, type="know", email=KNOWN)).json()
    code = await code_mailed_to(session, KNOWN)
    await session.execute(
        update(PrivacyRequest)
        .where(PrivacyRequest.id == created["id"])
        .values(code_expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    )
    await session.commit()
    response = await client.post(
        f"/api/v1/privacy/requests/{created['id']}/verify", json={"code": code}
    )
    assert response.status_code == 410
    assert "expired" in response.json()["detail"]
    assert (await _status(client, created))["status"] == "expired"


# The rules ---------------------------------------------------------------------------------


async def test_a_third_know_or_access_request_in_12_months_is_denied_without_fee(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    fake: FakeConsumerData,
) -> None:
    """P5, P6: twice in 12 months; the third is denied too_many_requests, with the reason
    and no fee. Requests that were never verified do not count."""
    fake.hold(email=KNOWN)
    fake.matching = 2
    await submit(client, type="know", email=KNOWN)  # never verified: does not count
    first = await _verified(client, session, type="know", email=KNOWN)
    await run_jobs(db, settings)
    second = await _verified(
        client, session, type="access", email=KNOWN, name="Ana Silva", postal_code="93650"
    )
    await run_jobs(db, settings)
    third = await _verified(client, session, type="know", email=KNOWN)
    await run_jobs(db, settings)
    assert (await _status(client, first))["status"] == "fulfilled"
    assert (await _status(client, second))["status"] == "fulfilled"
    denied = await _status(client, third)
    assert denied["status"] == "denied"
    assert denied["denial_reason"] == "too_many_requests"
    assert "twice in 12" in denied["decision_note"] and "No fee" in denied["decision_note"]
    assert len(fake.called("build_report")) == 2, "the third is not answered"

    # A deletion is not limited by this rule.
    deletion = await _verified(client, session, type="delete", email=KNOWN)
    await run_jobs(db, settings)
    assert (await _status(client, deletion))["status"] == "fulfilled"


async def test_access_needs_two_matching_data_points_for_specific_pieces(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    fake: FakeConsumerData,
) -> None:
    """P4: stronger verification for specific pieces than for categories. Short of two
    matching data points the answer is the categories only (partially fulfilled,
    insufficient_verification), and the data points are deleted once compared."""
    fake.hold(email=KNOWN)
    fake.matching = 1
    weak = await _verified(
        client, session, type="access", email=KNOWN, name="Ana Silva", birth_date="1990-04-02"
    )
    row = await session.get(PrivacyRequest, weak["id"])
    assert row is not None and row.verification_data_sealed is not None
    await run_jobs(db, settings)
    answer = await _status(client, weak)
    assert answer["status"] == "partially_fulfilled"
    assert answer["denial_reason"] == "insufficient_verification"
    assert "pieces" not in answer["report"]
    (check,) = fake.called("count_matching_data_points")
    assert check["data_points"] == {"name": "Ana Silva", "birth_date": "1990-04-02"}
    assert check["request_id"] == weak["id"]
    await session.refresh(row)
    assert row.verification_data_sealed is None, "P4: used for verification only, then gone"

    fake.matching = 2
    strong = await _verified(
        client, session, type="access", email=KNOWN, name="Ana Silva", postal_code="93650"
    )
    await run_jobs(db, settings)
    answer = await _status(client, strong)
    assert answer["status"] == "fulfilled" and answer["denial_reason"] is None
    assert answer["report"]["pieces"][0]["fields"] == {"first_name": "Ana"}
    assert fake.called("build_report")[-1]["include_pieces"] is True


async def test_deletion_lists_what_is_kept_and_why(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    fake: FakeConsumerData,
) -> None:
    """P3: exceptions kept are part of the answer, each with its legal reason."""
    fake.hold(email=KNOWN, leads=2)
    fake.kept = [
        KeptRecord("orders", 1, "complete the transaction (Cal. Civ. Code 1798.105(d)(1))")
    ]
    created = await _verified(client, session, type="delete", email=KNOWN)
    await run_jobs(db, settings)
    answer = await _status(client, created)
    assert answer["status"] == "partially_fulfilled"
    assert answer["denial_reason"] == "exception_applies"
    assert answer["report"]["leads_erased"] == 2
    assert answer["report"]["kept"] == [
        {
            "record": "orders",
            "count": 1,
            "legal_reason": "complete the transaction (Cal. Civ. Code 1798.105(d)(1))",
        }
    ]
    assert fake.called("erase_consumer") == [{"request_id": created["id"]}]
    report_json = await client.get(
        f"/api/v1/privacy/requests/{created['id']}/report.json", headers=bearer(created["token"])
    )
    assert report_json.status_code == 404, "only know/access have a downloadable report"


async def test_correction_and_opt_out_call_their_functions(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    fake: FakeConsumerData,
) -> None:
    fake.hold(email=KNOWN)
    correction = await _verified(
        client,
        session,
        type="correct",
        email=KNOWN,
        details={"name": "Ana Maria Silva", "address.city": "Fresno"},
    )
    # Opting out applies to future leads too, so it is honoured even with nothing held.
    opt_out = await _verified(client, session, type="opt_out", email=UNKNOWN)
    await run_jobs(db, settings)
    assert fake.called("correct_consumer") == [
        {"corrections": {"name": "Ana Maria Silva", "address.city": "Fresno"}}
    ]
    fixed = await _status(client, correction)
    assert fixed["status"] == "fulfilled"
    assert fixed["report"]["fields"] == ["address.city", "name"]
    row = await session.get(PrivacyRequest, correction["id"])
    assert row is not None and row.details_sealed is None, "new values are not kept afterwards"
    out = await _status(client, opt_out)
    assert out["status"] == "fulfilled" and out["report"]["opted_out"] is True


def _text_messages(folder: Path) -> list[str]:
    return [path.read_text() for path in sorted(folder.glob("*.txt"))]


# Text messages -----------------------------------------------------------------------------


async def test_a_phone_only_request_gets_its_code_by_text_message(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    fake: FakeConsumerData,
) -> None:
    response = await submit(client, type="know", phone="(415) 555-0123")
    assert response.status_code == 202
    created = response.json()
    job = await session.scalar(select(Job).where(Job.kind == "sms.send"))
    assert job is not None
    assert "4155550123" not in json.dumps(job.payload), "the job carries the number sealed"
    await run_jobs(db, settings)
    texts = await asyncio.to_thread(_text_messages, settings.sms_path)
    assert len(texts) == 1
    text = texts[0]
    assert "To: +14155550123" in text
    code = re.search(r"your code is (\d{6})", text)
    assert code is not None
    verified = await client.post(
        f"/api/v1/privacy/requests/{created['id']}/verify", json={"code": code.group(1)}
    )
    assert verified.status_code == 200


# Throttling ----------------------------------------------------------------------------------


async def test_submissions_are_throttled_per_client_and_per_identifier(
    app: FastAPI, client: httpx.AsyncClient, fake: FakeConsumerData
) -> None:
    settings: Settings = app.state.settings
    for i in range(settings.privacy_requests_per_identifier_per_day):
        assert (await submit(client, type="know", email=KNOWN)).status_code == 202, i
    refused = await submit(client, type="know", email=KNOWN)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    limit = settings.privacy_requests_per_ip_per_hour
    for i in range(limit - settings.privacy_requests_per_identifier_per_day):
        assert (await submit(client, type="know", email=f"p{i}@example.com")).status_code == 202
    assert (await submit(client, type="know", email="fresh@example.com")).status_code == 429


# No plaintext ------------------------------------------------------------------------------


async def test_no_plaintext_email_phone_or_details_in_the_request_rows(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    fake: FakeConsumerData,
) -> None:
    """S1: the request rows hold the identifiers sealed and as digests only; the token and the
    code only as digests."""
    fake.hold(email=KNOWN)
    fake.matching = 2
    secrets_given = [
        KNOWN,
        "4155550123",
        "Ana Silva",
        "93650",
        "1990-04-02",
        "Carla Agent",
        "I hold a signed power",
    ]
    response = await submit(
        client,
        type="access",
        email=KNOWN,
        phone="+14155550123",
        name="Ana Silva",
        postal_code="93650",
        birth_date="1990-04-02",
        on_behalf="agent",
        agent_name="Carla Agent",
        proof_text="I hold a signed power of attorney.",
    )
    created = response.json()
    code = await code_mailed_to(session, KNOWN)
    secrets_given += [created["token"], code]
    await client.post(f"/api/v1/privacy/requests/{created['id']}/verify", json={"code": code})
    for model in (PrivacyRequest, PrivacyRequestEvent):
        for row in await session.scalars(select(model)):
            dumped = repr({c.key: getattr(row, c.key) for c in model.__table__.columns})
            for secret in secrets_given:
                assert secret.lower() not in dumped.lower(), (model.__tablename__, secret)


async def test_a_failing_fulfilment_is_retried_and_its_giving_up_is_logged(
    client: httpx.AsyncClient,
    session: AsyncSession,
    db: Database,
    settings: Settings,
    fake: FakeConsumerData,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job's transaction rolls back on failure: nothing half done, the request stays
    pending; after the last attempt the event log says so for the officer."""
    from leadmarket.privacy import consumer_data

    async def broken(*args: Any, **kwargs: Any) -> list[str]:
        raise RuntimeError("database of leads unavailable")

    monkeypatch.setattr(consumer_data, "find_consumer_leads", broken)
    created = await _verified(client, session, type="delete", email=KNOWN)
    one_try = settings.model_copy(update={"job_max_attempts": 1})
    await run_jobs(db, one_try)
    row = await session.get(PrivacyRequest, created["id"])
    assert row is not None
    await session.refresh(row)
    assert row.status == "pending"
    actions = list(
        await session.scalars(
            select(PrivacyRequestEvent.action).where(
                PrivacyRequestEvent.request_id == created["id"]
            )
        )
    )
    assert "started" not in actions and actions[-1] == "fulfilment_failed"
