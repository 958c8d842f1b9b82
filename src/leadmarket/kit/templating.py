"""Jinja2 set-up for the server-rendered pages, and the HTML rendering of problem details."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData
from starlette.responses import Response

from leadmarket.kit.errors import FieldError

PACKAGE_DIR = Path(__file__).resolve().parents[1]
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"


def install_templates(app: FastAPI) -> None:
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    app.state.templates = templates

    def render_error_page(request: Request, problem: dict[str, Any]) -> Response:
        return templates.TemplateResponse(
            request,
            "error.html",
            {"problem": problem, "principal": getattr(request.state, "principal", None)},
            status_code=int(problem["status"]),
        )

    app.state.render_error_page = render_error_page


def templates_of(request: Request) -> Jinja2Templates:
    templates: Jinja2Templates = request.app.state.templates
    return templates


def form_text(form: FormData, name: str) -> str:
    """A text field of a submitted form, or "" when it is missing or a file."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


def errors_by_field(errors: Iterable[FieldError]) -> dict[str, str]:
    """The first message for each field, as a page shows them beside their inputs."""
    by_field: dict[str, str] = {}
    for error in errors:
        by_field.setdefault(error.field, error.message)
    return by_field
