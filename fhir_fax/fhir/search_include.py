"""``_include`` and ``_revinclude``: the resources a page of matches points to, or is pointed at by."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .models import is_supported
from .search_types import KEYS
from .store import RESERVED, public

if TYPE_CHECKING:
    from .search import SearchQuery

REVINCLUDE_LIMIT = 1000  # per _revinclude, so one page can never pull a whole collection


def _keys(document: dict[str, Any], parameter: str) -> list[dict[str, str]]:
    return document.get(RESERVED, {}).get("keys", {}).get(parameter, [])


async def included_entries(
    database: Any, query: SearchQuery, matches: list[dict[str, Any]], base_url: str
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
            cursor = database[resource_type].find({"_id": {"$in": sorted(ids)}, f"{RESERVED}.deleted": False})
            async for doc in cursor:
                seen.add((resource_type, doc["_id"]))
                found.append(doc)
    for source, parameter, target in query.revincludes:
        if target and target != query.resource_type:
            continue
        references = [f"{query.resource_type}/{doc['_id']}" for doc in matches]
        cursor = (
            database[source]
            .find({f"{KEYS}.{parameter}.r": {"$in": references}, f"{RESERVED}.deleted": False})
            .limit(REVINCLUDE_LIMIT)
        )
        async for doc in cursor:
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
