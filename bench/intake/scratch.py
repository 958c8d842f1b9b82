"""Scratch databases (a fresh PostgreSQL database or a temporary SQLite file, dropped
afterwards), migrated to head, with one seller and an API key made through the service layer."""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncpg  # type: ignore[import-untyped]  # no stubs ship with asyncpg

from leadmarket.accounts.auth import Principal
from leadmarket.accounts.schemas import RegisterIn
from leadmarket.accounts.service import AccountsKit, ClientMeta, create_api_key, register
from leadmarket.config import Settings
from leadmarket.kit.db import Database, make_engine
from leadmarket.kit.migrate import upgrade_to_head

DbKind = Literal["postgres", "sqlite"]
POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
SELLER_USERNAME = "bench_seller"
SELLER_PASSWORD = "violet-harbor-tangent-42"  # a throwaway account in a scratch database


@dataclass(frozen=True)
class Scratch:
    kind: DbKind
    url: str  # the SQLAlchemy URL the application uses
    workdir: Path  # var_dir of the application, bodies, markers
    secret_key: str
    master_keys: str

    @property
    def sqlite_path(self) -> Path:
        return Path(self.url.split("///", 1)[1])

    @property
    def postgres_dsn(self) -> str:
        return self.url.replace("postgresql+asyncpg://", "postgresql://", 1)

    def settings(self) -> Settings:
        return Settings(
            var_dir=self.workdir,
            database_url=self.url,
            secret_key=self.secret_key,
            master_keys=self.master_keys,
            run_jobs_in_process=False,
            # Only the seller's password is hashed, once; production cost buys nothing here.
            argon2_time_cost=1,
            argon2_memory_kib=8192,
        )

    def environment(self) -> dict[str, str]:
        """The server's ``LEADMARKET_*`` variables."""
        return {
            "LEADMARKET_VAR_DIR": str(self.workdir),
            "LEADMARKET_DATABASE_URL": self.url,
            "LEADMARKET_SECRET_KEY": self.secret_key,
            "LEADMARKET_MASTER_KEYS": self.master_keys,
            "LEADMARKET_RUN_JOBS_IN_PROCESS": "false",
            "LEADMARKET_LOG_LEVEL": "WARNING",
        }


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextmanager
def scratch_database(kind: DbKind, label: str) -> Iterator[Scratch]:
    """A migrated, empty database that is gone after the block."""
    workdir = Path(tempfile.mkdtemp(prefix=f"lmbench-{label}-"))
    name = f"lmbench_{label}_{secrets.token_hex(4)}"
    if kind == "postgres":
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    else:
        url = f"sqlite+aiosqlite:///{workdir / 'leadmarket.db'}"
    scratch = Scratch(
        kind=kind,
        url=url,
        workdir=workdir,
        secret_key=secrets.token_urlsafe(48),
        master_keys="1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
    )
    try:
        upgrade_to_head(url)
        yield scratch
    finally:
        if kind == "postgres":
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class Seller:
    user_id: str
    username: str
    api_key: str


async def _create_seller(settings: Settings) -> Seller:
    db = Database(make_engine(settings.database_url))
    try:
        async with db.transaction() as session:
            user = await register(
                session,
                AccountsKit(settings),
                RegisterIn(
                    email="bench.seller@example.com",
                    username=SELLER_USERNAME,
                    password=SELLER_PASSWORD,
                    role="seller",
                    name="Bench Seller",
                ),
                ClientMeta(ip="127.0.0.1", user_agent="bench"),
            )
            _, key = await create_api_key(session, Principal(user=user), "intake benchmark")
            return Seller(user_id=user.id, username=user.username, api_key=key)
    finally:
        await db.dispose()


def create_seller(scratch: Scratch) -> Seller:
    return asyncio.run(_create_seller(scratch.settings()))
