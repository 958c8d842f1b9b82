"""The application factory: settings, database, middleware, error handlers, routers, and the
in-process job worker (the embedded default; `leadmarket worker` takes over in production)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from html import escape

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from leadmarket import __version__
from leadmarket.accounts.auth import ApiKeyPrincipals
from leadmarket.accounts.service import AccountsKit
from leadmarket.campaigns.matching import MatchingIndex
from leadmarket.config import Settings, get_settings
from leadmarket.kit.db import Database, make_engine
from leadmarket.kit.errors import (
    PROBLEM_TYPES,
    NotFound,
    document_problems,
    install_error_handlers,
)
from leadmarket.kit.fastlane import FastLane, LaneRequest, LaneResponse
from leadmarket.kit.http import HttpEdgeMiddleware
from leadmarket.kit.realtime import make_broker
from leadmarket.kit.routing import TransactionalRoute, guard, include_guarded
from leadmarket.kit.templating import STATIC_DIR, install_templates
from leadmarket.leads.intake import IntakeBatcher, LeadsKit
from leadmarket.pingpost.service import PingKit
from leadmarket.privacy.frame import install_privacy_frame
from leadmarket.privacy.notices import NoticeBanner

log = logging.getLogger("leadmarket.app")

# Where files are uploaded (lead files, legal documents): bodies up to max_upload_bytes.
UPLOAD_PATHS = (
    "/api/v1/lead-uploads",
    "/seller/uploads",
    "/api/v1/admin/legal-requests",
    "/admin/legal-requests",
)


@guard
async def public() -> None:
    """Guard for routes anyone may call."""


def create_app(settings: Settings | None = None, *, database: Database | None = None) -> FastAPI:
    settings = settings or get_settings()
    db = database or Database(
        make_engine(settings.database_url, pool_size=settings.database_pool_size)
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker_task: asyncio.Task[None] | None = None
        stop = asyncio.Event()
        if settings.run_jobs_in_process:
            from leadmarket.kit.jobs import Worker
            from leadmarket.tasks import build_registry, build_services

            worker = Worker(
                db,
                build_registry(settings),
                build_services(settings, broker=app.state.broker),
                settings,
            )
            worker_task = asyncio.create_task(worker.run(stop))
        try:
            yield
        finally:
            stop.set()
            if worker_task is not None:
                await worker_task
            await app.state.broker.close()
            await app.state.pingpost.aclose()
            if database is None:
                await db.dispose()

    app = FastAPI(
        title="Leadmarket",
        version=__version__,
        description="A consumer lead exchange that keeps its privacy promises in code. "
        "Errors are RFC 9457 problem details; see /problems/{type} for each type.",
        lifespan=lifespan,
        # Leadmarket exports no OpenTelemetry data; with FastAPI's native telemetry on, every
        # request asked the global providers whether anyone was listening.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.db = db
    app.state.accounts_kit = AccountsKit(settings)
    app.state.leads_kit = LeadsKit(settings)
    app.state.intake = IntakeBatcher(db, app.state.leads_kit)
    app.state.api_key_principals = ApiKeyPrincipals()
    app.state.broker = make_broker(settings.redis_url)
    app.state.campaign_index = MatchingIndex(recheck_ms=settings.matching_recheck_ms)
    app.state.pingpost = PingKit(settings, db, app.state.campaign_index)
    app.router.route_class = TransactionalRoute

    install_error_handlers(app)
    document_problems(app)
    install_templates(app)
    install_privacy_frame(app, NoticeBanner(settings), db)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    from leadmarket.accounts import api as accounts_api
    from leadmarket.accounts import views as accounts_views
    from leadmarket.admin import api as admin_api
    from leadmarket.campaigns import api as campaigns_api
    from leadmarket.campaigns import views as campaigns_views
    from leadmarket.feedback import api as feedback_api
    from leadmarket.feedback import views as feedback_views
    from leadmarket.fraud import api as fraud_api
    from leadmarket.fraud import views as fraud_views
    from leadmarket.leads import api as leads_api
    from leadmarket.leads import uploads_api, uploads_views
    from leadmarket.leads import views as leads_views
    from leadmarket.ledger import api as ledger_api
    from leadmarket.ledger import views as ledger_views
    from leadmarket.marketplace import api as marketplace_api
    from leadmarket.marketplace import views as marketplace_views
    from leadmarket.messages import api as messages_api
    from leadmarket.messages import views as messages_views
    from leadmarket.notifications import views as notifications_views
    from leadmarket.orders import api as orders_api
    from leadmarket.orders import views as orders_views
    from leadmarket.payouts import api as payouts_api
    from leadmarket.pingpost import api as pingpost_api
    from leadmarket.pingpost import views as pingpost_views
    from leadmarket.privacy import api as privacy_api
    from leadmarket.privacy import (
        preferences_api,
        preferences_views,
        retention_api,
        retention_views,
    )
    from leadmarket.privacy import views as privacy_views
    from leadmarket.privacy.legal import api as legal_api
    from leadmarket.privacy.legal import views as legal_views
    from leadmarket.returns import api as returns_api
    from leadmarket.returns import views as returns_views
    from leadmarket.verticals import api as verticals_api

    include_guarded(app, _system_router())
    # The hottest API routes first: FastAPI tries the routes in order, and a ping (thousands a
    # second) should not walk past every page route to find its own.
    include_guarded(app, pingpost_api.router)
    include_guarded(app, accounts_api.router)
    include_guarded(app, admin_api.router)
    include_guarded(app, legal_api.router)
    include_guarded(app, retention_api.router)
    include_guarded(app, verticals_api.router)
    include_guarded(app, leads_api.router)
    include_guarded(app, uploads_api.router)
    include_guarded(app, ledger_api.router)
    include_guarded(app, marketplace_api.router)
    include_guarded(app, leads_views.router)
    include_guarded(app, uploads_views.router)
    include_guarded(app, ledger_views.router)
    include_guarded(app, marketplace_views.router)
    include_guarded(app, campaigns_api.router)
    include_guarded(app, campaigns_views.router)
    include_guarded(app, orders_api.router)
    include_guarded(app, feedback_api.router)
    include_guarded(app, preferences_api.router)
    include_guarded(app, preferences_views.router)
    include_guarded(app, orders_views.router)
    include_guarded(app, feedback_views.router)
    include_guarded(app, returns_api.router)
    include_guarded(app, returns_api.admin)
    include_guarded(app, payouts_api.router)
    include_guarded(app, returns_views.router)
    include_guarded(app, messages_api.router)
    include_guarded(app, messages_views.router)
    include_guarded(app, fraud_api.router)
    include_guarded(app, fraud_views.router)
    include_guarded(app, pingpost_views.router)
    include_guarded(app, accounts_views.router)
    include_guarded(app, notifications_views.router)
    include_guarded(app, privacy_api.consumer)
    include_guarded(app, privacy_api.officer)
    include_guarded(app, privacy_views.router)
    include_guarded(app, legal_views.router)
    include_guarded(app, retention_views.router)

    # Innermost of the pure-ASGI middleware: the hottest endpoints skip FastAPI's routing.
    app.add_middleware(
        FastLane,
        routes={
            ("GET", "/healthz"): healthz_in_fast_lane,
            **pingpost_api.FAST_LANE,
            **leads_api.FAST_LANE,
        },
    )
    app.add_middleware(
        HttpEdgeMiddleware,
        max_bytes=settings.max_body_bytes,
        upload_paths=UPLOAD_PATHS,
        max_upload_bytes=settings.max_upload_bytes,
    )
    return app


async def healthz_in_fast_lane(request: LaneRequest) -> LaneResponse:
    """``GET /healthz`` without FastAPI's routing and dependencies (the route below stays for
    OpenAPI and answers the same): liveness probes and load balancers call it often, and it is
    the benchmarks' bare endpoint, the ceiling of the HTTP stack itself."""
    return LaneResponse(200, b'{"status":"ok"}')


def _system_router() -> APIRouter:
    router = APIRouter(route_class=TransactionalRoute, dependencies=[Depends(public)])

    @router.get("/healthz", tags=["system"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        tags=["system"],
        summary="Readiness: 200 when the database answers",
        responses={503: {"description": "The database does not answer."}},
    )
    async def readyz(request: Request) -> JSONResponse:
        db: Database = request.app.state.db
        try:
            await asyncio.wait_for(db.ping(), timeout=5)
        except Exception:
            return JSONResponse(
                {
                    "type": "/problems/unavailable",
                    "title": "Service unavailable",
                    "status": 503,
                    "detail": "The database does not answer.",
                },
                status_code=503,
                media_type="application/problem+json",
            )
        return JSONResponse({"status": "ok", "database": db.engine.dialect.name})

    @router.get(
        "/problems/{slug}",
        tags=["system"],
        summary="What a problem type means",
        response_class=HTMLResponse,
        include_in_schema=True,
    )
    async def problem_doc(slug: str) -> HTMLResponse:
        if slug not in PROBLEM_TYPES:
            raise NotFound(f"No problem type is called {slug!r}.")
        title, explanation = PROBLEM_TYPES[slug]
        return HTMLResponse(
            f"<!doctype html><html lang=en><title>{escape(title)}</title>"
            f"<h1>{escape(title)}</h1><p>{escape(explanation)}</p></html>"
        )

    return router
