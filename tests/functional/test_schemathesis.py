"""Schemathesis generates requests from /openapi.json, valid and invalid, against a live server
on a real database: whatever it sends, the answer is never a 5xx (S2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from leadmarket.config import Settings
from leadmarket.kit.db import Database
from tests.fixtures.accounts import PASSWORD, member
from tests.fixtures.server import free_port, live_server

pytestmark = pytest.mark.committed


@pytest.fixture
def server(committed_db: Database, database_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    server_settings = Settings(
        database_url=database_url,
        var_dir=tmp_path / "var",
        secret_key="schemathesis-secret-key-0123456789abcdef",  # type: ignore[arg-type]
        argon2_time_cost=1,
        argon2_memory_kib=64,
        run_jobs_in_process=False,
        base_url=f"http://127.0.0.1:{port}",
        # Schemathesis sends many bad passwords; throttling would turn them all into 429s.
        login_max_failures_per_account=1_000_000,
        login_max_failures_per_ip=1_000_000,
    )
    with live_server(server_settings, port) as base_url:
        yield base_url


def signed_in_headers(server: str, role: str) -> dict[str, str]:
    body = member(role)
    assert httpx.post(f"{server}/api/v1/auth/register", json=body).status_code == 201
    response = httpx.post(
        f"{server}/api/v1/auth/login", json={"login": body["username"], "password": PASSWORD}
    )
    return {"Authorization": f"Bearer {response.json()['token']}"}


@pytest.fixture
def auth_headers(server: str) -> dict[str, str]:
    return signed_in_headers(server, "seller")


# Operations only a buyer gets past the guard of: fuzzed as a buyer, so the bodies reach them.
BUYER_PATHS = ("/api/v1/wallet",)


def test_no_input_makes_the_api_fail(server: str, auth_headers: dict[str, str]) -> None:
    buyer_headers = signed_in_headers(server, "buyer")
    # Driven by hand rather than through schemathesis' pytest plugin, which does not load under
    # pytest 9; every operation still gets its own Hypothesis run and all failures are reported.
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        headers = buyer_headers if operation.path.startswith(BUYER_PATHS) else auth_headers

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: schemathesis.Case) -> None:
            # Run within this iteration of the loop, so `headers` is this operation's.
            response = case.call(headers={**headers, **(case.headers or {})})  # noqa: B023
            case.validate_response(response, checks=[not_a_server_error])

        try:
            exercise()
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:2000]}")
    assert operations >= 20
    assert failures == []
