"""Routes of the lead domain; filled in by the pages and CSV upload work of issue 3."""

from __future__ import annotations

from fastapi import APIRouter

from leadmarket.kit.routing import TransactionalRoute

router = APIRouter(route_class=TransactionalRoute)
