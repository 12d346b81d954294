"""Running a parsed search: one flat MongoDB query, a page of matches, includes, and the searchset Bundle."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from pymongo import ASCENDING

from .cursors import encode_cursor, sort_value
from .search import SearchQuery, merge_clauses
from .search_include import IncludeFilter, included_entries
from .store import public

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


async def execute_search(
    database: Any, query: SearchQuery, base_url: str, include_filter: IncludeFilter
) -> dict[str, Any]:
    """Run ``query`` and return a searchset Bundle with self/next/previous links.

    ``query.filter`` already holds the access gate's filter (so totals and pages count only what may be
    shown); ``include_filter`` narrows the ``_include``d and ``_revinclude``d resources of each type.
    """
    collection = database[query.resource_type]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if query.total in ("accurate", "estimate") or query.summary_count or query.count == 0:
        bundle["total"] = await collection.count_documents(query.filter)
    page_url = f"{base_url}/{query.path or query.resource_type}"
    links = [{"relation": "self", "url": _link(page_url, query.echo, query.cursor_token())}]
    entries: list[dict[str, Any]] = []
    if not query.summary_count and query.count > 0:
        field_name, direction = query.sort
        forward = query.cursor is None or query.cursor["direction"] == "next"
        mongo_filter = query.filter
        if query.cursor is not None:
            ascending = (direction == ASCENDING) == forward
            mongo_filter = merge_clauses(
                [query.filter, {field_name: {"$gt" if ascending else "$lt": query.cursor["value"]}}]
            )
        order = direction if forward else -direction
        cursor = collection.find(mongo_filter).sort(field_name, order).limit(query.count + 1)
        documents = await cursor.to_list(None)
        more = len(documents) > query.count
        documents = documents[: query.count]
        if not forward:
            documents.reverse()
        if documents:
            first, last = sort_value(documents[0], field_name), sort_value(documents[-1], field_name)
            if more if forward else True:
                links.append({"relation": "next", "url": _link(page_url, query.echo, encode_cursor(last, "next"))})
            if (query.cursor is not None) if forward else more:
                links.append({"relation": "previous", "url": _link(page_url, query.echo, encode_cursor(first, "prev"))})
        type_url = f"{base_url}/{query.resource_type}"
        entries = [
            {
                "fullUrl": f"{type_url}/{doc['_id']}",
                "resource": subset(public(doc), query.elements),
                "search": {"mode": "match"},
            }
            for doc in documents
        ]
        entries += await included_entries(database, query, documents, base_url, include_filter)
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    if query.ignored:
        bundle.setdefault("entry", []).append(_ignored_outcome(query.ignored))
    return bundle


def subset(resource: dict[str, Any], elements: list[str]) -> dict[str, Any]:
    """``_elements``: only the named top-level elements (plus id and meta), tagged SUBSETTED."""
    if not elements:
        return resource
    kept = {k: v for k, v in resource.items() if k in ("resourceType", "id") or k in elements}
    meta = dict(resource.get("meta", {}))
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    kept["meta"] = meta
    return kept


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


def _link(page_url: str, echo: list[tuple[str, str]], cursor: str | None) -> str:
    params = list(echo)
    if cursor:
        params.append(("_cursor", cursor))
    return f"{page_url}?{urlencode(params)}" if params else page_url
