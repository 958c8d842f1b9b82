"""The benchmark server's entry point for ``uvicorn --factory`` (``--workers`` needs an import
string): settings from the ``LEADMARKET_*`` variables, logs set up as ``leadmarket serve`` does."""

from __future__ import annotations

from fastapi import FastAPI

from leadmarket.app import create_app as create_leadmarket_app
from leadmarket.config import Settings
from leadmarket.kit.logs import configure_logging


def create_app() -> FastAPI:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_leadmarket_app(settings)
