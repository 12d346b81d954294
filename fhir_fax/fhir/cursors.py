"""Page cursors, opaque to clients and bound to the search that issued them.

Two kinds, one per paging method (see ``search_results``):

- ``key``: keyset paging on an immutable sort key (the creation order, or ``_id``). The cursor holds the
  key of the page's edge and the direction.
- ``snap``: a page of a stored snapshot of the matching ids (sorts on values that change). The cursor holds
  the snapshot's id and the offset of the page.

Every cursor carries a digest of the search it belongs to (resource type, parameters, access filter), so a
cursor copied onto another type or another query is refused instead of silently paging something else.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest


@dataclass(frozen=True)
class Cursor:
    kind: str  # "key" or "snap"
    binding: str
    direction: str = "next"  # key: "next" or "prev"
    value: str = ""  # key: the edge's sort key
    snapshot: str = ""  # snap: the snapshot id
    offset: int = 0  # snap: index of the page's first id in the snapshot

    def encode(self) -> str:
        if self.kind == "key":
            data: dict[str, Any] = {"k": "key", "q": self.binding, "after": self.value, "dir": self.direction}
        else:
            data = {"k": "snap", "q": self.binding, "s": self.snapshot, "o": self.offset}
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def search_binding(resource_type: str, echo: list[tuple[str, str]], extra_filter: dict[str, Any] | None) -> str:
    """A digest of what defines a search: a cursor is only valid on the search it came from."""
    text = json.dumps([resource_type, echo, extra_filter], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def decode_cursor(token: str, binding: str) -> Cursor:
    """The cursor in ``token``; 400 when it is not one this server issued or belongs to another search."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        kind, issued_for = data["k"], data["q"]
        if kind == "key":
            cursor = Cursor("key", issued_for, direction=data["dir"], value=data["after"])
            if cursor.direction not in ("next", "prev") or not isinstance(cursor.value, str):
                raise ValueError(cursor.direction)
        elif kind == "snap":
            cursor = Cursor("snap", issued_for, snapshot=data["s"], offset=data["o"])
            if not isinstance(cursor.snapshot, str) or not isinstance(cursor.offset, int) or cursor.offset < 0:
                raise ValueError(cursor.offset)
        else:
            raise ValueError(kind)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):  # RecursionError: deeply nested JSON
        raise InvalidRequest(
            "_cursor is not a cursor this server issued; follow the Bundle's next/previous links as given.",
            expression=["_cursor"],
        ) from None
    if cursor.binding != binding:
        raise InvalidRequest(
            "This _cursor belongs to another search (another resource type or other parameters); follow the "
            "next/previous links exactly as the Bundle gives them, or start the search again without _cursor.",
            expression=["_cursor"],
        )
    return cursor


def sort_value(document: dict[str, Any], dotted: str) -> Any:
    value: Any = document
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
