"""``leadmarket purge [--dry-run]`` (L4): prints each lead it destroyed (or would) with its
deadline and lateness, then the total; a real ``leadmarket purge`` killed with SIGKILL after its
first batch committed leaves every lead either fully destroyed or untouched, and the next run
finishes the rest, each lead logged once."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database, utcnow
from leadmarket.models import Lead, LeadBlindIndex, LeadVault, PiiDestruction
from tests.fixtures.ledger import make_member
from tests.fixtures.retention import insert_due_leads

pytestmark = pytest.mark.committed


def purge_env(database_url: str, var_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LEADMARKET_DATABASE_URL": database_url,
        "LEADMARKET_VAR_DIR": str(var_dir),
        "LEADMARKET_LOG_FORMAT": "text",
        "COLUMNS": "200",
    }


async def run_purge(
    database_url: str, var_dir: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "leadmarket", "purge", *args],
        env=purge_env(database_url, var_dir),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


async def count(session: AsyncSession, model: type[object], *where: object) -> int:
    query = select(func.count()).select_from(model)
    if where:
        query = query.where(*where)  # type: ignore[arg-type]
    return int(await session.scalar(query) or 0)


async def test_purge_prints_what_it_destroys_and_dry_run_changes_nothing(
    committed_db: Database, settings: Settings, database_url: str, tmp_path: Path
) -> None:
    now = utcnow()
    deadlines = [now - dt.timedelta(seconds=30), now - dt.timedelta(seconds=2)]
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        due = await insert_due_leads(session, settings, seller.id, deadlines)
        (later,) = await insert_due_leads(
            session, settings, seller.id, [now + dt.timedelta(hours=1)]
        )

    dry = await run_purge(database_url, tmp_path, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.strip().splitlines()
    assert len(lines) == 3
    for line, lead_id, deadline in zip(lines, due, deadlines, strict=False):
        assert line.startswith(f"{lead_id}  deadline {deadline.isoformat(timespec='milliseconds')}")
        assert re.search(r"lateness \d+\.\d{3} s$", line)
    assert float(re.findall(r"lateness (\d+\.\d+) s", lines[0])[0]) >= 30
    assert lines[-1].startswith("Total: would destroy 2 leads' personal data")
    assert later not in dry.stdout
    async with committed_db.transaction() as session:
        assert await count(session, LeadVault) == 3
        assert await count(session, PiiDestruction) == 0

    real = await run_purge(database_url, tmp_path)
    assert real.returncode == 0, real.stderr
    lines = real.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == due
    assert lines[-1].startswith("Total: destroyed 2 leads' personal data, largest lateness ")
    async with committed_db.transaction() as session:
        assert await count(session, LeadVault) == 1
        assert sorted(await session.scalars(select(PiiDestruction.lead_id))) == sorted(due)
    # The log lines count, they never name a consumer.
    assert "@example.com" not in real.stderr + real.stdout

    nothing = await run_purge(database_url, tmp_path)
    assert nothing.returncode == 0
    assert nothing.stdout.strip() == "Total: destroyed 0 leads' personal data."


async def test_a_purge_killed_mid_sweep_is_finished_by_the_next(
    committed_db: Database,
    settings: Settings,
    database_url: str,
    tmp_path: Path,
    is_postgres: bool,
) -> None:
    if not is_postgres:
        pytest.skip("a second process beside the test's on PostgreSQL")
    n = 1500
    async with committed_db.transaction() as session:
        seller = await make_member(session, "seller")
        ids = await insert_due_leads(
            session, settings, seller.id, [utcnow() - dt.timedelta(seconds=1)] * n
        )

    # One lead per transaction: the sweep takes seconds, so it is killed well before the end.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "leadmarket",
        "purge",
        "--batch-size",
        "1",
        env=purge_env(database_url, tmp_path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            async with committed_db.transaction() as session:
                if await count(session, PiiDestruction) > 0:
                    break
            assert process.returncode is None, "purge ended before its first batch was seen"
            assert time.monotonic() < deadline, "no batch committed within a minute"
            await asyncio.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == -signal.SIGKILL

    async with committed_db.transaction() as session:
        logged = await count(session, PiiDestruction)
        assert 0 < logged < n  # killed mid-sweep
        # Every lead is whole: destroyed with its log row, or untouched with its vault.
        assert await count(session, Lead, Lead.pii_destroyed_at.is_not(None)) == logged
        assert await count(session, LeadVault) == n - logged
        assert await count(session, LeadBlindIndex) == 3 * (n - logged)

    rerun = await run_purge(database_url, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert f"Total: destroyed {n - logged} leads' personal data" in rerun.stdout
    async with committed_db.transaction() as session:
        log = await session.execute(
            select(PiiDestruction.lead_id, func.count()).group_by(PiiDestruction.lead_id)
        )
        assert dict(log.all()) == dict.fromkeys(ids, 1)
        assert await count(session, LeadVault) == 0
        assert await count(session, LeadBlindIndex) == 0
