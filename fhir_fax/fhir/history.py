"""History of one resource or of a whole type: ``_count`` pages with next/previous links, ``_since``, ``_at``.

Versions never change once written, so history pages with keyset cursors on each version's
``_lastUpdated`` key (time to the microsecond plus the resource id, stored with every version): a page
never repeats or skips a version, however many writes happen while a client pages. Versions live in two
collections (the current one and ``<Type>_history``); each page reads both in key order and merges them.

``_since`` keeps versions written at or after an instant. ``_at`` keeps the versions that were current at
some moment of the given date's range: those written in the range, plus, for each resource, the version
that was current when the range began (the newest one written before it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from pymongo import ASCENDING, DESCENDING

from .cursors import Cursor, decode_cursor, search_binding
from .dates import DateRange, parse_date_value
from .errors import InvalidRequest
from .inputs import ascii_int
from .store import RESERVED, Version, as_utc, history_collection, public

KEY = f"{RESERVED}.sort._lastUpdated"
HISTORY_PARAMETERS = ("_count", "_since", "_at")
IGNORED_PARAMETERS = ("_format", "_pretty")


@dataclass
class HistoryQuery:
    resource_type: str
    resource_id: str | None
    count: int
    since: datetime | None = None
    at: DateRange | None = None
    cursor: Cursor | None = None
    echo: list[tuple[str, str]] = field(default_factory=list)
    binding: str = ""

    @property
    def filtered(self) -> bool:
        return self.since is not None or self.at is not None


def parse_history(
    resource_type: str,
    resource_id: str | None,
    params: list[tuple[str, str]],
    *,
    default_count: int,
    max_count: int,
    lenient: bool,
) -> HistoryQuery:
    """Check history parameters: unknown ones are a 400 unless the client asked for lenient handling."""
    query = HistoryQuery(resource_type, resource_id, default_count)
    seen: set[str] = set()
    cursor_token: str | None = None
    for name, value in params:
        if name == "_cursor":
            cursor_token = value
            continue
        if name in IGNORED_PARAMETERS:
            continue
        if name not in HISTORY_PARAMETERS:
            if lenient:
                continue
            raise InvalidRequest(
                f"Unknown history parameter {name!r}. Supported: {', '.join(HISTORY_PARAMETERS)}. "
                "Send 'Prefer: handling=lenient' to ignore unknown parameters.",
                expression=[name],
            )
        if name in seen:
            raise InvalidRequest(f"{name} is given more than once; give it once.", expression=[name])
        seen.add(name)
        if name == "_count":
            count = ascii_int(value)
            if count is None or count < 1:
                raise InvalidRequest(
                    f"_count must be a whole number from 1 to {max_count}, got {value!r}.", expression=["_count"]
                )
            query.count = min(count, max_count)
        elif name == "_since":
            query.since = _instant(value)
        else:
            query.at = parse_date_value("_at", value)
            if query.at.prefix != "eq":
                raise InvalidRequest(
                    f"_at takes a date without a prefix (e.g. 2026-11-30 or 2026-11-30T10:00:00Z), got {value!r}.",
                    expression=["_at"],
                )
        query.echo.append((name, value))
    path = f"{resource_type}/{resource_id}/_history" if resource_id else f"{resource_type}/_history"
    query.binding = search_binding(path, query.echo, None)
    if cursor_token is not None:
        query.cursor = decode_cursor(cursor_token, query.binding)
        if query.cursor.kind != "key":
            raise InvalidRequest("_cursor does not belong to a history.", expression=["_cursor"])
    return query


def _instant(value: str) -> datetime:
    """``_since`` is an instant: a full date and time with a time zone."""
    moment = parse_date_value("_since", value)
    if moment.prefix != "eq" or "T" not in value or not (value.endswith("Z") or value[-6] in "+-"):
        raise InvalidRequest(
            f"_since must be an instant with a time zone, e.g. 2026-11-30T10:00:00Z; got {value!r}.",
            expression=["_since"],
        )
    return moment.start


@dataclass
class HistoryPage:
    versions: list[Version]
    next: Cursor | None = None
    previous: Cursor | None = None


async def history_page(database: Any, query: HistoryQuery) -> HistoryPage:
    """One page of versions, newest first."""
    forward = query.cursor is None or query.cursor.direction == "next"
    edge = query.cursor.value if query.cursor is not None else None
    kept: list[dict[str, Any]] = []
    exhausted = False
    while len(kept) <= query.count and not exhausted:
        batch = await _batch(database, query, edge, forward, query.count + 1)
        exhausted = len(batch) < query.count + 1
        for document in batch:
            if len(kept) > query.count:
                break
            edge = document[RESERVED]["sort"]["_lastUpdated"]
            if query.at is None or await _current_during(database, query, document):
                kept.append(document)
    more = len(kept) > query.count
    kept = kept[: query.count]
    if not forward:
        kept.reverse()
    page = HistoryPage([version_of(query.resource_type, doc) for doc in kept])
    if kept:
        first, last = kept[0][RESERVED]["sort"]["_lastUpdated"], kept[-1][RESERVED]["sort"]["_lastUpdated"]
        if more if forward else True:
            page.next = Cursor("key", query.binding, direction="next", value=last)
        if (query.cursor is not None) if forward else more:
            page.previous = Cursor("key", query.binding, direction="prev", value=first)
    return page


async def _batch(
    database: Any, query: HistoryQuery, edge: str | None, forward: bool, limit: int
) -> list[dict[str, Any]]:
    """Up to ``limit`` versions beyond ``edge`` in page order, from both collections, without duplicates."""
    conditions: dict[str, Any] = {}
    if query.since is not None:
        conditions.setdefault(f"{RESERVED}.lastUpdated", {})["$gte"] = query.since
    if query.at is not None:
        conditions.setdefault(f"{RESERVED}.lastUpdated", {})["$lt"] = query.at.end
    if edge is not None:
        conditions[KEY] = {"$lt" if forward else "$gt": edge}
    current_filter, prior_filter = dict(conditions), dict(conditions)
    if query.resource_id is not None:
        current_filter["_id"] = query.resource_id
        prior_filter[f"{RESERVED}.id"] = query.resource_id
    # A crash between copying a version to history and replacing it can leave a copy of the current one: it
    # has the same (id, version) and is dropped below. (Filtering history by the version read before the
    # page would hide the version an update moves to history meanwhile.)
    order = DESCENDING if forward else ASCENDING
    found: list[dict[str, Any]] = []
    for name, where in ((query.resource_type, current_filter), (history_collection(query.resource_type), prior_filter)):
        found += await database[name].find(where).sort(KEY, order).limit(limit).to_list(None)
    unique = {
        (document[RESERVED].get("id", document["_id"]), document[RESERVED]["version"]): document for document in found
    }
    ordered = sorted(unique.values(), key=lambda d: (d[RESERVED]["sort"]["_lastUpdated"], d[RESERVED]["version"]))
    return (ordered[::-1] if forward else ordered)[:limit]


async def _current_during(database: Any, query: HistoryQuery, document: dict[str, Any]) -> bool:
    """For ``_at``: was this version current at some moment of the range (it ends before the range's end)?"""
    assert query.at is not None
    if as_utc(document[RESERVED]["lastUpdated"]) >= query.at.start:
        return True
    resource_id = document[RESERVED].get("id", document["_id"])
    successor_version = document[RESERVED]["version"] + 1
    successor = await database[query.resource_type].find_one(
        {"_id": resource_id, f"{RESERVED}.version": successor_version}, {RESERVED: 1}
    ) or await database[history_collection(query.resource_type)].find_one(
        {"_id": f"{resource_id}/{successor_version}"}, {RESERVED: 1}
    )
    if successor is None:  # still the current version (or its successor is a crash leftover)
        current = await database[query.resource_type].find_one({"_id": resource_id}, {RESERVED: 1})
        return current is None or current[RESERVED]["version"] == document[RESERVED]["version"]
    return as_utc(successor[RESERVED]["lastUpdated"]) > query.at.start


def version_of(resource_type: str, document: dict[str, Any]) -> Version:
    reserved = document[RESERVED]
    return Version(
        resource_type=resource_type,
        id=reserved.get("id", document["_id"]),
        version=reserved["version"],
        last_updated=as_utc(reserved["lastUpdated"]),
        method=reserved.get("method", "PUT"),
        deleted=reserved["deleted"],
        resource=None if reserved["deleted"] else public(document),
    )


def history_link(page_url: str, query: HistoryQuery, cursor: Cursor | None) -> str:
    params = list(query.echo)
    if cursor is not None:
        params.append(("_cursor", cursor.encode()))
    return f"{page_url}?{urlencode(params)}" if params else page_url
