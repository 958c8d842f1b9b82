"""Feedback reports through the platform's one report path (M3, M6; docs/api.md
``POST /api/v1/reports``): ``POST /api/v1/reports`` with ``subject_type: "feedback"``,
``POST /api/v1/feedback/{id}/reports`` and the profile page's form are the same function
(:func:`leadmarket.fraud.reports.file_report`, with the resolver the feedback feature
registers). Each report lands once in the admins' feedback queue and as a complaint in the
author's fraud case, with the same refusals whichever route it came by (own feedback 422, a
reason not for feedback 422, hidden or unknown feedback 404, twice 409, over the daily cap 429,
staff 403), and a refusal leaves nothing behind."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.fraud.signals import SignalKind
from leadmarket.models import FeedbackReport, FraudCase, FraudSignal
from tests.fixtures.accounts import signed_in
from tests.fixtures.feedback import Deal, a_deal
from tests.fixtures.staff import staff_member
from tests.ledger.test_wallet_page import field, sign_in

REPORTS = "/api/v1/reports"


def by_reports(
    feedback_id: str, reason: str, note: str | None = None
) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {"subject_type": "feedback", "subject_id": feedback_id, "reason": reason}
    if note is not None:
        body["details"] = note
    return REPORTS, body


def by_feedback(
    feedback_id: str, reason: str, note: str | None = None
) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {"reason": reason}
    if note is not None:
        body["note"] = note
    return f"/api/v1/feedback/{feedback_id}/reports", body


ROUTES = {"reports": by_reports, "feedback": by_feedback}


async def report(
    client: httpx.AsyncClient, route: str, feedback_id: str, reason: str, auth: dict[str, str],
    note: str | None = None,
) -> httpx.Response:  # fmt: skip
    url, body = ROUTES[route](feedback_id, reason, note)
    return await client.post(url, json=body, headers=auth)


async def written(session: AsyncSession) -> tuple[int, int]:
    """Feedback reports and fraud signals stored."""
    reports = await session.scalar(select(func.count()).select_from(FeedbackReport))
    signals = await session.scalar(select(func.count()).select_from(FraudSignal))
    return int(reports or 0), int(signals or 0)


async def rated(client: httpx.AsyncClient, deal: Deal, auth: dict[str, str], comment: str) -> str:
    left = await client.post(
        f"/api/v1/orders/{deal.order_id}/feedback",
        json={"rating": 1, "comment": comment},
        headers=auth,
    )
    assert left.status_code == 201, left.text
    return str(left.json()["id"])


@pytest.mark.parametrize(("first", "second"), [("reports", "feedback"), ("feedback", "reports")])
async def test_both_routes_file_one_report_in_the_feedback_queue_and_the_authors_case(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, first: str, second: str
) -> None:
    deal = await a_deal(client, session, settings)
    feedback_id = await rated(client, deal, deal.buyer_auth, "Crooks, all of them")
    _, reporter = await signed_in(client, "buyer")

    filed = await report(client, first, feedback_id, "abusive", reporter, note="Insults only")
    assert filed.status_code == 201, filed.text
    (stored,) = await session.scalars(select(FeedbackReport))
    assert (stored.feedback_id, stored.reason, stored.note) == (
        feedback_id,
        "abusive",
        "Insults only",
    )
    # The same report, whichever route: a complaint about the feedback's author.
    (signal,) = await session.scalars(select(FraudSignal))
    assert signal.kind == SignalKind.COMPLAINT.value and signal.reason == "abusive"
    assert signal.subject_user_id == deal.buyer["id"]
    assert signal.details["subject_type"] == "feedback"
    assert signal.details["subject_id"] == feedback_id
    assert signal.details["reference"] == stored.id
    answer = filed.json()
    assert answer["id"] == (signal.id if first == "reports" else stored.id)

    # The admins see it in both queues.
    _, admin = await staff_member(client, session, "admin")
    queue = await client.get("/api/v1/admin/feedback/reports", headers=admin)
    assert [r["id"] for r in queue.json()["items"]] == [stored.id]
    cases = await client.get("/api/v1/admin/fraud/cases", headers=admin)
    [case] = [c for c in cases.json()["items"] if c["member"]["id"] == deal.buyer["id"]]
    assert case["kinds"] == {"complaint": 1}

    # Twice, by the other route: the same 409, nothing more written.
    before = await written(session)
    twice = await report(client, second, feedback_id, "spam", reporter)
    assert twice.status_code == 409, twice.text
    assert twice.json()["type"] == "/problems/feedback-already-reported"
    assert await written(session) == before


@pytest.mark.parametrize("route", ["reports", "feedback"])
async def test_every_refusal_is_the_same_on_both_routes_and_leaves_nothing(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, route: str
) -> None:
    deal = await a_deal(client, session, settings)
    feedback_id = await rated(client, deal, deal.buyer_auth, "Never again")
    _, stranger = await signed_in(client, "seller")
    _, support = await staff_member(client, session, "support")
    refusals = [
        (deal.buyer_auth, feedback_id, "false", 422, "/problems/validation-error"),
        (stranger, "fb_nothing", "abusive", 404, "/problems/feedback-not-found"),
        (support, feedback_id, "abusive", 403, "/problems/forbidden"),
    ]
    for auth, subject, reason, status, kind in refusals:
        refused = await report(client, route, subject, reason, auth)
        assert refused.status_code == status, (route, subject, refused.text)
        assert refused.json()["type"] == kind
    own = await report(client, route, feedback_id, "false", deal.buyer_auth)
    assert own.json()["errors"][0]["field"] == "subject_id"
    # A reason that is not one for feedback (the feedback route's schema knows only those).
    not_for_feedback = await report(client, route, feedback_id, "scam", stranger)
    assert not_for_feedback.status_code == 422
    assert await written(session) == (0, 0)

    # Over the daily cap: 429 on either route, with nothing of the refused report stored.
    settings.fraud_reports_per_day = 1
    other = await rated(client, deal, deal.seller_auth, "Slow to pay")
    assert (await report(client, route, feedback_id, "abusive", stranger)).status_code == 201
    over = await report(client, route, other, "abusive", stranger)
    assert over.status_code == 429 and over.headers["retry-after"]
    assert await written(session) == (1, 1)

    # Hidden feedback is gone for reports too.
    _, admin = await staff_member(client, session, "admin")
    hidden = await client.post(
        f"/api/v1/admin/feedback/{other}/hide",
        json={"reason": "Not about the order"},
        headers=admin,
    )
    assert hidden.status_code == 200, hidden.text
    _, late = await signed_in(client, "buyer")
    gone = await report(client, route, other, "abusive", late)
    assert gone.status_code == 404


async def test_the_profile_form_goes_through_the_same_report_path(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    deal = await a_deal(client, session, settings)
    feedback_id = await rated(client, deal, deal.buyer_auth, "Thieves and liars")
    await sign_in(client, deal.seller["username"])
    profile = await client.get(f"/members/{deal.seller['username']}")
    token = field(profile.text, "csrf_token")
    form = {"csrf_token": token, "reason": "abusive", "note": "Insults", "back": "/"}
    assert (await client.post(f"/feedback/{feedback_id}/report", data=form)).status_code == 303
    (signal,) = await session.scalars(select(FraudSignal))
    assert signal.subject_user_id == deal.buyer["id"] and signal.details["note"] == "Insults"
    case = await session.get(FraudCase, signal.case_id)
    assert case is not None and case.status == "open"
    # The API then says it was reported already, as the form would the second time.
    again = await client.post(
        REPORTS, json=by_reports(feedback_id, "spam")[1], headers=deal.seller_auth
    )
    assert again.status_code == 409
