"""The ``leadmarket`` command: serve, worker, migrate, create-admin, demo, purge, audit verify,
ledger verify, keys."""

from __future__ import annotations

import asyncio
import getpass
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from leadmarket.config import Settings, get_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

app = typer.Typer(
    help="Leadmarket: a lead exchange that keeps its privacy promises.", no_args_is_help=True
)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
ledger_app = typer.Typer(help="The double-entry ledger of wallets and sales.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")
keys_app = typer.Typer(help="Master keys that wrap each lead's data key.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console(stderr=True)


def _settings() -> Settings:
    return get_settings()


@app.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    from leadmarket.kit.migrate import upgrade_to_head

    settings = _settings()
    upgrade_to_head(settings.database_url)
    console.print("[green]Database schema is up to date.[/green]")


def build_app() -> FastAPI:
    """The app as ``leadmarket serve`` runs it, settings from the environment (also each
    worker's entry point with ``--workers``)."""
    from leadmarket.app import create_app
    from leadmarket.kit.logs import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Server processes, each on its own socket of the port (SO_REUSEPORT); one per "
            "core on PostgreSQL. SQLite takes one writer at a time, so more rarely helps there.",
        ),
    ] = 1,
    migrate_first: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Migrate the schema before serving.")
    ] = True,
) -> None:
    """Run the web service (and, unless LEADMARKET_RUN_JOBS_IN_PROCESS=false, the job worker)."""
    import uvicorn

    from leadmarket.kit import gcpolicy
    from leadmarket.kit.logs import configure_logging
    from leadmarket.kit.migrate import upgrade_to_head
    from leadmarket.kit.serving import serve_workers, server_options

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    if migrate_first:
        upgrade_to_head(settings.database_url)
    console.print(
        f"Leadmarket on http://{host}:{port}  (database: {settings.database_url.split('://')[0]}"
        f", {workers} worker{'s' if workers > 1 else ''})"
    )
    if workers > 1:
        serve_workers(
            build_app,
            host=host,
            port=port,
            workers=workers,
            proxy_headers=settings.trust_proxy_headers,
        )
        return
    served = build_app()
    gcpolicy.enable()
    uvicorn.run(
        served,
        host=host,
        port=port,
        **server_options(proxy_headers=settings.trust_proxy_headers),
    )


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Jobs run at once.")] = 4,
) -> None:
    """Run background jobs in this process. Start as many as you like on PostgreSQL."""
    from leadmarket.kit.logs import configure_logging
    from leadmarket.tasks import run_worker

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(run_worker(settings, concurrency=concurrency))


@app.command("create-admin")
def create_admin(
    email: Annotated[str, typer.Option(prompt=True)],
    username: Annotated[str, typer.Option(prompt=True)],
    name: Annotated[str, typer.Option(prompt=True)] = "Administrator",
    role: Annotated[str, typer.Option(help="admin, privacy_officer or support.")] = "admin",
    password: Annotated[
        str | None,
        typer.Option(help="Read from the prompt when omitted.", envvar="LEADMARKET_ADMIN_PASSWORD"),
    ] = None,
) -> None:
    """Create a staff account (admin, privacy officer or support)."""
    from pydantic import ValidationError

    from leadmarket.accounts.schemas import check_name, check_username, normalize_email
    from leadmarket.accounts.service import AccountsKit, create_staff
    from leadmarket.kit.db import Database, make_engine
    from leadmarket.kit.errors import DomainError
    from leadmarket.kit.migrate import upgrade_to_head
    from leadmarket.models import Role

    if role not in (Role.ADMIN, Role.PRIVACY_OFFICER, Role.SUPPORT):
        raise typer.BadParameter(
            "role must be admin, privacy_officer or support", param_hint="--role"
        )
    try:
        email = normalize_email(email)
        username = check_username(username)
        name = check_name(name)
    except (ValueError, ValidationError) as exc:
        raise typer.BadParameter(str(exc)) from None
    if password is None:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise typer.BadParameter("The passwords differ.")
    settings = _settings()
    upgrade_to_head(settings.database_url)

    async def run() -> str:
        db = Database(make_engine(settings.database_url))
        try:
            async with db.transaction() as session:
                user = await create_staff(
                    session,
                    AccountsKit(settings),
                    email=email,
                    username=username,
                    name=name,
                    password=password,
                    role=Role(role),
                )
                return user.id
        finally:
            await db.dispose()

    try:
        user_id = asyncio.run(run())
    except DomainError as exc:
        console.print(f"[red]{exc.detail}[/red]")
        for error in exc.errors:
            console.print(f"  {error.field}: {error.message}")
        raise typer.Exit(1) from None
    console.print(f"[green]Created {role} {username} ({user_id}).[/green]")


@app.command()
def demo(
    reset: Annotated[bool, typer.Option(help="Delete the SQLite database first.")] = False,
) -> None:
    """Fill the database with realistic members so a newcomer sees a living marketplace."""
    from leadmarket.demo import load_demo_data
    from leadmarket.kit.migrate import upgrade_to_head

    settings = _settings()
    if reset and settings.is_sqlite:
        path = settings.database_url.split("///", 1)[1]
        from pathlib import Path

        for suffix in ("", "-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)
    upgrade_to_head(settings.database_url)
    summary = asyncio.run(load_demo_data(settings))
    console.print(summary)


@app.command()
def purge(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be destroyed; change nothing.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Leads destroyed per transaction.")
    ] = 1000,
) -> None:
    """Run the retention sweep once (L4): destroy the personal data of every lead past its
    deadline and print each lead id with its deadline and lateness, then the total."""
    from leadmarket.kit.db import Database, make_engine
    from leadmarket.kit.logs import configure_logging
    from leadmarket.privacy.retention import PurgeResult, purge_expired_lead_data

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)

    async def run() -> PurgeResult:
        db = Database(make_engine(settings.database_url))
        try:
            return await purge_expired_lead_data(
                db, settings, dry_run=dry_run, batch_size=batch_size
            )
        finally:
            await db.dispose()

    result = asyncio.run(run())
    out = Console(highlight=False)
    verb = "would destroy" if dry_run else "destroyed"
    for d in result.destroyed:
        out.print(
            f"{d.lead_id}  deadline {d.deadline.isoformat(timespec='milliseconds')}  "
            f"lateness {d.lateness_ms / 1000:.3f} s",
            markup=False,
        )
    late = f", largest lateness {result.max_lateness_ms / 1000:.3f} s" if result.count else ""
    out.print(f"Total: {verb} {result.count} leads' personal data{late}.", markup=False)


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the audit log's hash chain; exit 1 if anything was altered or removed."""
    from leadmarket.audit.service import verify_chain
    from leadmarket.kit.db import Database, make_engine

    settings = _settings()

    async def run() -> tuple[bool, int, list[str]]:
        db = Database(make_engine(settings.database_url))
        try:
            async with db.transaction() as session:
                report = await verify_chain(session)
                return report.ok, report.checked, report.problems
        finally:
            await db.dispose()

    ok, checked, problems = asyncio.run(run())
    if ok:
        console.print(f"[green]Audit chain intact: {checked} entries checked.[/green]")
        return
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    console.print(f"[red]Audit chain BROKEN ({len(problems)} problems, {checked} entries).[/red]")
    raise typer.Exit(1)


@ledger_app.command("verify")
def ledger_verify() -> None:
    """Check the ledger's invariants; print each problem and exit 1 if there is any."""
    from leadmarket.kit.db import Database, make_engine
    from leadmarket.ledger.verify import LedgerReport, verify_ledger

    settings = _settings()

    async def run() -> LedgerReport:
        db = Database(make_engine(settings.database_url))
        try:
            async with db.transaction() as session:
                return await verify_ledger(session)
        finally:
            await db.dispose()

    report = asyncio.run(run())
    counts = f"{report.transactions} transactions, {report.accounts} accounts, {report.holds} holds"
    if report.ok:
        console.print(f"[green]Ledger balanced: {counts} checked.[/green]")
        return
    for problem in report.problems:
        console.print(problem, style="red", markup=False, highlight=False)
    console.print(f"[red]Ledger has {len(report.problems)} problems ({counts}).[/red]")
    raise typer.Exit(1)


async def _rewrap(settings: Settings) -> tuple[int, set[int]]:
    from leadmarket.kit.db import Database, make_engine
    from leadmarket.leads.uploads import rewrap_upload_keys, upload_key_versions_in_use
    from leadmarket.leads.vault import key_versions_in_use, rewrap_all
    from leadmarket.privacy.legal.service import legal_key_versions_in_use, rewrap_legal_keys
    from leadmarket.privacy.requests import request_key_versions_in_use, rewrap_request_keys
    from leadmarket.webhooks.service import endpoint_key_versions_in_use, rewrap_endpoint_secrets

    db = Database(make_engine(settings.database_url))
    try:
        # Leads' data keys, those of uploaded files still waiting to be processed and those of
        # privacy and law-enforcement requests: a version any of them needs must never be retired.
        async with db.transaction() as session:
            done = await rewrap_all(session, settings.keyring())
            done += await rewrap_upload_keys(session, settings.keyring())
            done += await rewrap_request_keys(session, settings.keyring())
            done += await rewrap_legal_keys(session, settings.keyring())
            # Buyers' webhook signing secrets, sealed by the master key directly.
            secrets_done, secrets_lost = await rewrap_endpoint_secrets(session, settings)
            done += secrets_done
        async with db.transaction() as session:
            in_use = (
                await key_versions_in_use(session)
                | await upload_key_versions_in_use(session)
                | await request_key_versions_in_use(session)
                | await legal_key_versions_in_use(session)
            )
            in_use |= await endpoint_key_versions_in_use(session)
        if secrets_lost:
            console.print(
                f"[red]{secrets_lost} webhook signing secrets do not open with this "
                "LEADMARKET_SECRET_KEY; their buyers must set new ones.[/red]"
            )
        return done, in_use
    finally:
        await db.dispose()


@keys_app.command("rotate")
def keys_rotate(
    retire: Annotated[
        bool, typer.Option(help="Drop old versions from the key file once nothing uses them.")
    ] = True,
) -> None:
    """Add a new master key version, re-wrap every lead's data key with it, retire the old."""
    from leadmarket.kit.migrate import upgrade_to_head

    settings = _settings()
    if settings.master_keys is not None:
        console.print(
            "[red]The master keys come from LEADMARKET_MASTER_KEYS: put a new VERSION:KEY first "
            "in it, restart, then run `leadmarket keys rewrap`.[/red]"
        )
        raise typer.Exit(1)
    assert settings.master_key_file is not None
    upgrade_to_head(settings.database_url)
    rotated = settings.keyring().with_new_version()
    # Saved before re-wrapping: a crash in between leaves keys that still open everything.
    rotated.save(settings.master_key_file)
    settings.reload_keyring()
    done, in_use = asyncio.run(_rewrap(settings))
    console.print(f"Master key version {rotated.current} is current; {done} data keys re-wrapped.")
    if retire:
        old = set(rotated.versions) - in_use - {rotated.current}
        if old:
            rotated.without_versions(old).save(settings.master_key_file)
            console.print(f"Retired versions: {', '.join(map(str, sorted(old)))}.")


@keys_app.command("rewrap")
def keys_rewrap() -> None:
    """Re-wrap every lead's data key with the current master key version."""
    settings = _settings()
    done, in_use = asyncio.run(_rewrap(settings))
    versions = ", ".join(map(str, sorted(in_use))) or "none"
    console.print(f"{done} data keys re-wrapped; versions in use: {versions}.")
