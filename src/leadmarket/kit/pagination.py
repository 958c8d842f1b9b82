"""Keyset pagination: ``?limit=&cursor=`` → ``{"items": […], "next_cursor": "…" | null}``.
Cursors are opaque to clients (a base64url-wrapped sort key), so their form may change."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from leadmarket.kit.errors import FieldError, ValidationFailed

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=200, description="Items per page (1-200).")]
Cursor = Annotated[str | None, Query(max_length=200, description="next_cursor of the last page.")]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValidationFailed(
            "The cursor is not one this service gave out.",
            errors=[FieldError("cursor", "Unknown cursor; start again without it.")],
        ) from None
