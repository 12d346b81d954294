"""Running a parsed search: one flat MongoDB query, a page of matches, includes, and the searchset Bundle."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from pymongo import ASCENDING

from .cursors import Cursor, sort_value
from .errors import InvalidRequest, ResourceGone
from .models import now
from .search import SNAPSHOTS, SearchQuery, merge_clauses
from .search_include import IncludeFilter, included_entries
from .store import RESERVED, as_utc, public

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
        page = await (_keyset_page if query.keyset else _snapshot_page)(database, query)
        for relation, cursor in (("next", page.next), ("previous", page.previous)):
            if cursor is not None:
                links.append({"relation": relation, "url": _link(page_url, query.echo, cursor.encode())})
        type_url = f"{base_url}/{query.resource_type}"
        entries = [
            {
                "fullUrl": f"{type_url}/{doc['_id']}",
                "resource": subset(public(doc), query.elements),
                "search": {"mode": "match"},
            }
            for doc in page.documents
        ]
        entries += await included_entries(database, query, page.documents, base_url, include_filter)
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    if query.ignored:
        bundle.setdefault("entry", []).append(_ignored_outcome(query.ignored))
    return bundle


@dataclass
class Page:
    documents: list[dict[str, Any]]
    next: Cursor | None = None
    previous: Cursor | None = None


async def _keyset_page(database: Any, query: SearchQuery) -> Page:
    """A page after (or before) the cursor's key, on a sort key that never changes once written.

    Because the key of a resource never changes, a resource is on one side of the cursor for the whole
    walk: it can neither jump over the cursor (lost) nor come back behind it (seen twice).
    """
    field_name, direction = query.sort
    forward = query.cursor is None or query.cursor.direction == "next"
    mongo_filter = query.filter
    if query.cursor is not None:
        ascending = (direction == ASCENDING) == forward
        mongo_filter = merge_clauses([query.filter, {field_name: {"$gt" if ascending else "$lt": query.cursor.value}}])
    order = direction if forward else -direction
    found = database[query.resource_type].find(mongo_filter).sort(field_name, order).limit(query.count + 1)
    documents = await found.to_list(None)
    more = len(documents) > query.count
    documents = documents[: query.count]
    if not forward:
        documents.reverse()
    page = Page(documents)
    if documents:
        first, last = sort_value(documents[0], field_name), sort_value(documents[-1], field_name)
        if more if forward else True:
            page.next = Cursor("key", query.binding, direction="next", value=last)
        if (query.cursor is not None) if forward else more:
            page.previous = Cursor("key", query.binding, direction="prev", value=first)
    return page


async def _snapshot_page(database: Any, query: SearchQuery) -> Page:
    """A page of the ids that matched at the first page, in the order they had then (as HAPI's search cache).

    Sort values such as ``_lastUpdated`` or ``status`` change while a client pages (every fax status
    change does), so a keyset on them would let resources jump over the cursor. The first page reads
    the ordered ids of every match (at most ``snapshot_max``) and, when there is more than one page,
    keeps them in ``search_snapshots`` for ``snapshot_seconds``; later pages read their slice. Each page
    shows the resources as they are when the page is read; resources deleted since are left out.
    """
    field_name, direction = query.sort
    snapshots = database[SNAPSHOTS]
    if query.cursor is None:
        found = database[query.resource_type].find(query.filter, {"_id": 1}).sort(field_name, direction)
        ordered = [doc["_id"] for doc in await found.limit(query.snapshot_max + 1).to_list(None)]
        if len(ordered) > query.snapshot_max:
            raise InvalidRequest(
                f"More than {query.snapshot_max} resources match, too many to page in _sort={_sort_text(query)} "
                "order; narrow the search, or leave _sort out (newest first) or use _sort=_id, which page any "
                "number of matches.",
                expression=["_sort"],
            )
        offset = 0
        snapshot_id = ""
        if len(ordered) > query.count:
            snapshot_id = uuid.uuid4().hex
            expires = now() + timedelta(seconds=query.snapshot_seconds)
            await snapshots.insert_one(
                {"_id": snapshot_id, "binding": query.binding, "ids": ordered, "expires": expires}
            )
    else:
        snapshot_id, offset = query.cursor.snapshot, query.cursor.offset
        stored = await snapshots.find_one({"_id": snapshot_id, "binding": query.binding})
        if stored is None or as_utc(stored["expires"]) <= now():
            raise ResourceGone(
                f"This page's search has expired (searches are kept {query.snapshot_seconds // 60} minutes "
                "after their first page); run the search again from its first page.",
                expression=["_cursor"],
            )
        ordered = stored["ids"]
    wanted = ordered[offset : offset + query.count]
    documents = (
        await database[query.resource_type]
        .find(merge_clauses([{"_id": {"$in": wanted}}, {f"{RESERVED}.deleted": False}, query.scope_filter or {}]))
        .to_list(None)
    )
    by_id = {doc["_id"]: doc for doc in documents}
    page = Page([by_id[i] for i in wanted if i in by_id])
    if offset + query.count < len(ordered):
        page.next = Cursor("snap", query.binding, snapshot=snapshot_id, offset=offset + query.count)
    if offset > 0:
        page.previous = Cursor("snap", query.binding, snapshot=snapshot_id, offset=max(offset - query.count, 0))
    return page


def _sort_text(query: SearchQuery) -> str:
    return next((value for name, value in query.echo if name == "_sort"), "")


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
