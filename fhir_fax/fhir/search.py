"""FHIR search: a parameter registry turned into MongoDB filters, keyset paging and a Bundle.

Every value a client sends is parsed into plain strings, numbers or datetimes before it
becomes part of a filter, so no query value can reach MongoDB as an operator.
Paging uses keyset cursors (the sort values of the last entry), not skip, so pages stay
free of duplicates and gaps while new resources are being written.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from pymongo import ASCENDING, DESCENDING

from .dates import parse_date_value, point_filter
from .errors import InvalidRequest
from .models import now
from .store import RESERVED, public

ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
RESULT_PARAMETERS = {"_count", "_sort", "_total", "_summary", "_cursor", "_format", "_pretty"}

# Builds a MongoDB filter from the values of one occurrence of a parameter (comma-split),
# the modifier (or None) and the time of the request.
FilterBuilder = Callable[[str, list[str], str | None, datetime], dict[str, Any]]


@dataclass(frozen=True)
class SearchParameter:
    """One search parameter: how it appears in the CapabilityStatement and how it filters."""

    name: str
    type: str
    description: str
    expression: str
    build: FilterBuilder
    sort_field: str | None = None
    modifiers: frozenset[str] = frozenset()


def id_filter(name: str, values: list[str], modifier: str | None, moment: datetime) -> dict[str, Any]:
    for value in values:
        if not ID_PATTERN.match(value):
            raise InvalidRequest(
                f"Search parameter {name!r} has the value {value!r}, which is not a FHIR id "
                "(1-64 letters, digits, '-' or '.').",
                expression=[name],
            )
    if modifier == "not":
        return {"_id": {"$nin": values}}
    return {"_id": {"$in": values}}


def last_updated_filter(name: str, values: list[str], modifier: str | None, moment: datetime) -> dict[str, Any]:
    clauses = [point_filter(f"{RESERVED}.lastUpdated", parse_date_value(name, v), moment) for v in values]
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


COMMON_PARAMETERS: tuple[SearchParameter, ...] = (
    SearchParameter("_id", "token", "Logical id of the resource", "Resource.id", id_filter, "_id", frozenset({"not"})),
    SearchParameter(
        "_lastUpdated",
        "date",
        "When the resource version last changed",
        "Resource.meta.lastUpdated",
        last_updated_filter,
        f"{RESERVED}.lastUpdated",
    ),
)


@dataclass
class SearchRegistry:
    """Search parameters known per resource type (the common ones apply to every type)."""

    by_type: dict[str, dict[str, SearchParameter]] = field(default_factory=dict)

    def register(self, resource_type: str, parameter: SearchParameter) -> None:
        self.by_type.setdefault(resource_type, {})[parameter.name] = parameter

    def parameters(self, resource_type: str) -> dict[str, SearchParameter]:
        return {p.name: p for p in COMMON_PARAMETERS} | self.by_type.get(resource_type, {})


@dataclass
class SearchQuery:
    resource_type: str
    filter: dict[str, Any]
    count: int
    sort: list[tuple[str, int]]
    total: str
    summary_count: bool
    cursor: dict[str, Any] | None
    echo: list[tuple[str, str]]
    ignored: list[str]

    def cursor_token(self) -> str | None:
        """The cursor this query was called with, re-encoded for the self link."""
        if self.cursor is None:
            return None
        return _encode_cursor(self.cursor["values"], self.cursor["direction"])


def parse_search(
    resource_type: str,
    params: list[tuple[str, str]],
    registry: SearchRegistry,
    *,
    default_count: int,
    max_count: int,
    lenient: bool = False,
) -> SearchQuery:
    """Turn query parameters into a SearchQuery; unknown or bad parameters are 400 (unless lenient)."""
    known = registry.parameters(resource_type)
    moment = now()
    clauses: list[dict[str, Any]] = [{f"{RESERVED}.deleted": False}]
    echo: list[tuple[str, str]] = []
    ignored: list[str] = []
    count, sort_text, total, summary_count, cursor = default_count, "-_lastUpdated", "none", False, None
    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if name == "_count":
            count = _parse_count(value, max_count)
        elif name == "_sort":
            sort_text = value
        elif name == "_total":
            total = _choice("_total", value, ("none", "estimate", "accurate"))
        elif name == "_summary":
            summary_count = _choice("_summary", value, ("count", "false")) == "count"
        elif name == "_cursor":
            cursor = _decode_cursor(value)
            continue
        elif name in ("_format", "_pretty"):
            continue
        elif name in known:
            parameter = known[name]
            if modifier and modifier not in parameter.modifiers:
                raise InvalidRequest(
                    f"Search parameter {name!r} does not support the modifier ':{modifier}'"
                    + (f"; supported: {', '.join(sorted(parameter.modifiers))}." if parameter.modifiers else "."),
                    expression=[raw_name],
                )
            values = value.split(",")
            if any(v == "" for v in values):
                raise InvalidRequest(f"Search parameter {raw_name!r} has an empty value.", expression=[raw_name])
            clauses.append(parameter.build(name, values, modifier or None, moment))
        else:
            if lenient:
                ignored.append(raw_name)
                continue
            supported = ", ".join(sorted(set(known) | RESULT_PARAMETERS - {"_cursor", "_format", "_pretty"}))
            raise InvalidRequest(
                f"Unknown search parameter {raw_name!r} for {resource_type}. Supported: {supported}. "
                "Send 'Prefer: handling=lenient' to ignore unknown parameters.",
                expression=[raw_name],
            )
        echo.append((raw_name, value))
    sort = _parse_sort(sort_text, known)
    return SearchQuery(resource_type, {"$and": clauses}, count, sort, total, summary_count, cursor, echo, ignored)


def _parse_count(value: str, max_count: int) -> int:
    if not value.isdigit():
        raise InvalidRequest(f"_count must be a whole number from 0 to {max_count}, got {value!r}.")
    return min(int(value), max_count)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidRequest(f"{name} must be one of {', '.join(allowed)}, got {value!r}.", expression=[name])
    return value


def _parse_sort(text: str, known: dict[str, SearchParameter]) -> list[tuple[str, int]]:
    sort: list[tuple[str, int]] = []
    for item in text.split(","):
        descending = item.startswith("-")
        name = item[1:] if descending else item
        parameter = known.get(name)
        if parameter is None or parameter.sort_field is None:
            sortable = ", ".join(sorted(p.name for p in known.values() if p.sort_field))
            raise InvalidRequest(
                f"_sort cannot use {name!r}; sortable parameters: {sortable} (prefix '-' for descending).",
                expression=["_sort"],
            )
        sort.append((parameter.sort_field, DESCENDING if descending else ASCENDING))
    if not any(f == "_id" for f, _ in sort):
        sort.append(("_id", sort[-1][1]))
    return sort


# -- keyset cursors --------------------------------------------------------------------------------


def _encode_cursor(values: list[Any], direction: str) -> str:
    encoded = [{"d": v.isoformat()} if isinstance(v, datetime) else {"v": v} for v in values]
    raw = json.dumps({"k": encoded, "dir": direction}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(token: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        values = [datetime.fromisoformat(v["d"]) if "d" in v else v["v"] for v in data["k"]]
        direction = data["dir"]
        if direction not in ("next", "prev") or any(isinstance(v, dict | list) for v in values):
            raise ValueError(direction)
    except (ValueError, KeyError, TypeError):
        raise InvalidRequest(
            "_cursor is not a cursor this server issued; follow the Bundle's next/previous links as given.",
            expression=["_cursor"],
        ) from None
    return {"values": values, "direction": direction}


def _sort_value(document: dict[str, Any], dotted: str) -> Any:
    value: Any = document
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _keyset_filter(sort: list[tuple[str, int]], values: list[Any], forward: bool) -> dict[str, Any]:
    """Documents strictly after (forward) or before the given sort values."""
    branches = []
    for i, (name, direction) in enumerate(sort):
        ascending = (direction == ASCENDING) == forward
        branch = {sort[j][0]: values[j] for j in range(i)}
        branch[name] = {"$gt" if ascending else "$lt": values[i]}
        branches.append(branch)
    return {"$or": branches}


async def execute_search(database: Any, query: SearchQuery, base_url: str) -> dict[str, Any]:
    """Run ``query`` and return a searchset Bundle with self/next/previous links."""
    collection = database[query.resource_type]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if query.total in ("accurate", "estimate") or query.summary_count or query.count == 0:
        bundle["total"] = await collection.count_documents(query.filter)
    type_url = f"{base_url}/{query.resource_type}"
    links = [{"relation": "self", "url": _link(type_url, query.echo, query.cursor_token())}]
    entries: list[dict[str, Any]] = []
    if not query.summary_count and query.count > 0:
        forward = query.cursor is None or query.cursor["direction"] == "next"
        mongo_filter = query.filter
        if query.cursor is not None:
            if len(query.cursor["values"]) != len(query.sort):
                raise InvalidRequest("_cursor does not belong to this _sort; start the search again.")
            mongo_filter = {"$and": [query.filter, _keyset_filter(query.sort, query.cursor["values"], forward)]}
        order = query.sort if forward else [(f, -d) for f, d in query.sort]
        documents = await collection.find(mongo_filter).sort(order).limit(query.count + 1).to_list(None)
        more = len(documents) > query.count
        documents = documents[: query.count]
        if not forward:
            documents.reverse()
        if documents:
            first = [_sort_value(documents[0], f) for f, _ in query.sort]
            last = [_sort_value(documents[-1], f) for f, _ in query.sort]
            has_next = more if forward else True
            has_previous = query.cursor is not None if forward else more
            if has_next:
                links.append({"relation": "next", "url": _link(type_url, query.echo, _encode_cursor(last, "next"))})
            if has_previous:
                links.append(
                    {
                        "relation": "previous",
                        "url": _link(type_url, query.echo, _encode_cursor(first, "prev")),
                    }
                )
        entries = [
            {"fullUrl": f"{type_url}/{doc['_id']}", "resource": public(doc), "search": {"mode": "match"}}
            for doc in documents
        ]
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    if query.ignored:
        bundle.setdefault("entry", []).append(_ignored_outcome(query.ignored))
    return bundle


def _ignored_outcome(ignored: list[str]) -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "warning",
                    "code": "not-supported",
                    "diagnostics": f"Ignored unknown search parameter {name!r}.",
                    "expression": [name],
                }
                for name in ignored
            ],
        },
        "search": {"mode": "outcome"},
    }


def _link(type_url: str, echo: list[tuple[str, str]], cursor: str | None) -> str:
    params = list(echo)
    if cursor:
        params.append(("_cursor", cursor))
    return f"{type_url}?{urlencode(params)}" if params else type_url
