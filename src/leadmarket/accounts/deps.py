"""Request-level helpers shared by the accounts API and pages."""

from __future__ import annotations

from fastapi import Request

from leadmarket.accounts.service import AccountsKit, ClientMeta
from leadmarket.config import settings_of
from leadmarket.kit.http import client_ip


async def get_kit(request: Request) -> AccountsKit:
    kit: AccountsKit = request.app.state.accounts_kit
    return kit


def client_meta(request: Request) -> ClientMeta:
    settings = settings_of(request)
    return ClientMeta(
        ip=client_ip(request, trust_proxy=settings.trust_proxy_headers),
        user_agent=request.headers.get("user-agent"),
    )
