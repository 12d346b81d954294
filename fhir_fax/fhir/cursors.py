"""Keyset paging cursors: the sort value of the page's edge and the direction, opaque to clients."""

from __future__ import annotations

import base64
import json
from typing import Any

from .errors import InvalidRequest


def encode_cursor(value: str, direction: str) -> str:
    raw = json.dumps({"after": value, "dir": direction}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        value, direction = data["after"], data["dir"]
        if direction not in ("next", "prev") or not isinstance(value, str):
            raise ValueError(direction)
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: deeply nested JSON
        raise InvalidRequest(
            "_cursor is not a cursor this server issued; follow the Bundle's next/previous links as given.",
            expression=["_cursor"],
        ) from None
    return {"value": value, "direction": direction}


def sort_value(document: dict[str, Any], dotted: str) -> Any:
    value: Any = document
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
