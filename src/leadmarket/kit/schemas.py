"""The base of every request body: unknown fields are refused, and so is text that no database
column can hold (PostgreSQL's text types refuse the NUL character outright)."""

from __future__ import annotations

import typing
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_contains_nul(v) for v in value)
    return False


def _mentions_request_model(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, RequestModel):
        return True
    return any(_mentions_request_model(arg) for arg in typing.get_args(annotation))


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    @cache
    def _checks_itself(cls, field_name: str) -> bool:
        """Whether the field is a nested request model, which checks its own fields and so
        names the inner field in its error."""
        field = cls.model_fields.get(field_name)
        return field is not None and _mentions_request_model(field.annotation)

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul_characters(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, dict) and info.field_name and cls._checks_itself(info.field_name):
            return value
        if _contains_nul(value):
            raise ValueError("Text may not contain the NUL character.")
        return value
