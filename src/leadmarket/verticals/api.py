"""``GET /api/v1/verticals``: each kind of service with the JSON Schema of its attributes and
the categories of personal data a lead in it holds."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from leadmarket.accounts.auth import optional_principal
from leadmarket.kit.errors import NotFound
from leadmarket.kit.routing import TransactionalRoute
from leadmarket.verticals.registry import Vertical, all_verticals, attributes_schema, get_vertical

router = APIRouter(
    prefix="/api/v1",
    route_class=TransactionalRoute,
    tags=["verticals"],
    dependencies=[Depends(optional_principal)],
)


def vertical_out(vertical: Vertical) -> dict[str, Any]:
    return {
        "slug": vertical.slug,
        "name": vertical.name,
        "description": vertical.description,
        "schema": attributes_schema(vertical),
        "pi_categories": list(vertical.pi_categories),
        "consent_text": vertical.consent_text,
    }


@router.get("/verticals", summary="The verticals, with the JSON Schema of their attributes")
async def list_verticals() -> list[dict[str, Any]]:
    return [vertical_out(v) for v in all_verticals()]


@router.get("/verticals/{slug}", summary="One vertical")
async def show_vertical(slug: Annotated[str, Path(max_length=40)]) -> dict[str, Any]:
    vertical = get_vertical(slug)
    if vertical is None:
        raise NotFound("No such vertical.")
    return vertical_out(vertical)
