"""The privacy routes keep their published contract under fuzzing (S2, P1–P6): schemathesis
sends valid and invalid requests to every ``/api/v1/privacy`` and ``/api/v1/admin/privacy``
operation of a live server, with a real request's id and token and a real privacy officer's
session, and checks more than "no 5xx": every status code is one the schema lists, every body
matches its schema and content type.

``test_schemathesis.py`` fuzzes the whole API for server errors only, with random ids and a
seller's session, so for these routes it mostly sees 401/403/404; here the guards are passed."""

from __future__ import annotations

import random
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import update

from leadmarket.kit.db import Database
from leadmarket.models import User
from tests.fixtures.accounts import PASSWORD, member
from tests.functional.test_schemathesis import pytestmark, server  # noqa: F401

PRIVACY = ("/api/v1/privacy", "/api/v1/admin/privacy")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


async def officer_headers(server: str, db: Database) -> dict[str, str]:  # noqa: F811
    body = member("buyer")
    async with httpx.AsyncClient(base_url=server) as http:
        registered = await http.post("/api/v1/auth/register", json=body)
        assert registered.status_code == 201, registered.text
        async with db.transaction() as session:
            await session.execute(
                update(User)
                .where(User.id == registered.json()["id"])
                .values(role="privacy_officer")
            )
        login = await http.post(
            "/api/v1/auth/login", json={"login": body["username"], "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['token']}"}


def real_request(server: str) -> dict[str, Any]:  # noqa: F811
    created = httpx.post(
        f"{server}/api/v1/privacy/requests",
        json={"type": "know", "email": "fuzz.target@example.com"},
    )
    assert created.status_code == 202, created.text
    body: dict[str, Any] = created.json()
    return body


async def test_privacy_routes_keep_their_contract(
    server: str,  # noqa: F811
    committed_db: Database,
) -> None:
    officer = await officer_headers(server, committed_db)
    target = real_request(server)
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    failures: list[str] = []
    operations = 0
    chance = random.Random(5)
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith(PRIVACY):
            continue
        operations += 1
        if operation.path.startswith("/api/v1/admin/"):
            headers = officer
        else:
            headers = {"Authorization": f"Bearer {target['token']}"}

        @given(case=operation.as_strategy())
        @settings(
            max_examples=60,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: schemathesis.Case) -> None:
            if case.path_parameters and chance.random() < 0.7:
                # Mostly the real request, so the routes get past "not found".
                case.path_parameters = {**case.path_parameters, "request_id": target["id"]}
            response = case.call(headers={**headers, **(case.headers or {})})  # noqa: B023
            case.validate_response(response, checks=CHECKS)

        try:
            exercise()
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:3000]}")
    assert operations >= 9
    assert failures == [], "\n\n".join(failures)
