"""``_include`` and ``_revinclude``: the resources a page of matches points to, or is pointed at by.

Included resources are disclosed like any read: each type's query is narrowed by the access gate's
filter for it (``include_filter``; None leaves that type out), so nothing the client may not read is
returned, and the ``_revinclude`` limit counts only what may be shown.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .models import is_supported
from .search import merge_clauses
from .search_types import KEYS
from .store import RESERVED, public

if TYPE_CHECKING:
    from .search import SearchQuery

IncludeFilter = Callable[[str], Awaitable[dict[str, Any] | None]]
REVINCLUDE_LIMIT = 1000  # per _revinclude, so one page can never pull a whole collection


def _keys(document: dict[str, Any], parameter: str) -> list[dict[str, str]]:
    keys: list[dict[str, str]] = document.get(RESERVED, {}).get("keys", {}).get(parameter, [])
    return keys


async def _narrowed(include_filter: IncludeFilter, resource_type: str, clause: dict[str, Any]) -> dict[str, Any] | None:
    """``clause`` within what may be shown of ``resource_type`` (None: nothing may)."""
    allowed = await include_filter(resource_type)
    if allowed is None:
        return None
    return merge_clauses([clause, allowed]) if allowed else clause


async def included_entries(
    database: Any,
    query: SearchQuery,
    matches: list[dict[str, Any]],
    base_url: str,
    include_filter: IncludeFilter,
) -> list[dict[str, Any]]:
    if not matches or not (query.includes or query.revincludes):
        return []
    seen = {(query.resource_type, doc["_id"]) for doc in matches}
    found: list[dict[str, Any]] = []
    for _source, parameter, target in query.includes:
        wanted: dict[str, set[str]] = {}
        for doc in matches:
            for key in _keys(doc, parameter):
                resource_type, _, resource_id = key["r"].partition("/")
                if "i" not in key or not is_supported(resource_type) or (target and resource_type != target):
                    continue
                if (resource_type, resource_id) not in seen:
                    wanted.setdefault(resource_type, set()).add(resource_id)
        for resource_type, ids in wanted.items():
            clause = {"_id": {"$in": sorted(ids)}, f"{RESERVED}.deleted": False}
            narrowed = await _narrowed(include_filter, resource_type, clause)
            if narrowed is None:
                continue
            async for doc in database[resource_type].find(narrowed):
                seen.add((resource_type, doc["_id"]))
                found.append(doc)
    for source, parameter, target in query.revincludes:
        if target and target != query.resource_type:
            continue
        references = [f"{query.resource_type}/{doc['_id']}" for doc in matches]
        clause = {f"{KEYS}.{parameter}.r": {"$in": references}, f"{RESERVED}.deleted": False}
        narrowed = await _narrowed(include_filter, source, clause)
        if narrowed is None:
            continue
        async for doc in database[source].find(narrowed).limit(REVINCLUDE_LIMIT):
            if (source, doc["_id"]) not in seen:
                seen.add((source, doc["_id"]))
                found.append(doc)
    return [
        {
            "fullUrl": f"{base_url}/{doc['resourceType']}/{doc['_id']}",
            "resource": public(doc),
            "search": {"mode": "include"},
        }
        for doc in found
    ]
