"""``leadmarket ledger verify``: exit 0 on a sound ledger, exit 1 naming each problem."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import update

from leadmarket.kit.db import Database
from leadmarket.ledger import service
from leadmarket.models import AccountKind, LedgerAccount
from tests.fixtures.ledger import fund, make_member


async def run_verify(database_url: str, var_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LEADMARKET_DATABASE_URL": database_url,
        "LEADMARKET_VAR_DIR": str(var_dir),
        "COLUMNS": "200",
    }
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "leadmarket", "ledger", "verify"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


async def test_ledger_verify_command(
    committed_db: Database, database_url: str, tmp_path: Path
) -> None:
    async with committed_db.transaction() as session:
        buyer = await make_member(session)
        await fund(session, buyer, 3000)
        await service.hold_funds(
            session, buyer_id=buyer.id, amount_cents=1000, currency="USD", reference="ord_cli"
        )
        wallet = await service.find_account(session, AccountKind.BUYER_WALLET, "USD", buyer.id)
        assert wallet is not None
        wallet_id = wallet.id
    sound = await run_verify(database_url, tmp_path)
    assert sound.returncode == 0, sound.stderr
    assert "Ledger balanced: 2 transactions" in sound.stderr

    async with committed_db.transaction() as session:
        await session.execute(
            update(LedgerAccount)
            .where(LedgerAccount.id == wallet_id)
            .values(balance_cents=LedgerAccount.balance_cents + 5)
        )
    broken = await run_verify(database_url, tmp_path)
    assert broken.returncode == 1
    assert f"account {wallet_id} has a balance of 2005 cents, its entries sum to 2000" in (
        broken.stderr
    )
    assert "Ledger has 1 problems" in broken.stderr
