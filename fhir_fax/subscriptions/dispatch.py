"""From written versions to queued notifications, recovered from the writes themselves.

Every version of a watched type is written with a pending mark on the current document (``_fhirfax.pending``:
the first version nobody has looked at yet; see ``fhir.store``), in the same write. The dispatcher takes
marked resources (a sparse index keeps that set small), reads the versions from the mark on (the current
document and ``<Type>_history``), finds the Subscriptions each could match by its match keys, runs each
candidate's criteria filter against the version's stored document, and queues one notification per
(Subscription, resource, version) under a unique key. Only then does it clear the mark, by a compare-and-set
on the version it read. A crash anywhere before that leaves the mark: the next pass does the same work again
and the unique keys make it add nothing.

Subscriptions are watched too: a Subscription version that is active releases what its error had held.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from ..fhir.search import SearchRegistry
from ..fhir.store import PENDING, RESERVED, ResourceStore, as_utc, history_collection
from .criteria import Criteria, for_history, parse_criteria, version_buckets
from .faults import crash_point
from .queue import Queue
from .resource import MATCH_FIELD, channel_of

log = logging.getLogger("fhir_fax.subscriptions")
BATCH = 100
PARSED_KEPT = 2048  # parsed criteria kept, per (Subscription, version)


class Dispatcher:
    def __init__(self, store: ResourceStore, registry: SearchRegistry, queue: Queue, base_url: str = "") -> None:
        self.store = store
        self.registry = registry
        self.queue = queue
        self.base_url = base_url
        self._parsed: OrderedDict[tuple[str, int], Criteria | None] = OrderedDict()
        self.evaluated = 0  # criteria filters run (the benchmark reads it)

    async def step(self) -> int:
        """Dispatch one batch of marked resources; how many were handled."""
        handled = 0
        for resource_type in sorted(self.store.watched):
            cursor = self.store.collection(resource_type).find({f"{RESERVED}.{PENDING}": {"$gte": 1}}).limit(BATCH)
            async for current in cursor:
                try:
                    await self.dispatch(resource_type, current)
                except Exception:
                    log.exception(
                        "notifications of %s/%s could not be dispatched; retrying", resource_type, current["_id"]
                    )
                    continue
                handled += 1
        return handled

    async def dispatch(self, resource_type: str, current: dict[str, Any]) -> None:
        """Queue the notifications of every version of ``current`` from its pending mark, then clear the mark."""
        first = current[RESERVED][PENDING]
        newest = current[RESERVED]["version"]
        if resource_type == "Subscription":
            if current.get("status") == "active" and not current[RESERVED]["deleted"]:
                released = await self.queue.release(current["_id"])
                if released:
                    log.info("Subscription/%s is active again: %d notification(s) due", current["_id"], released)
        else:
            for document, in_history in await self._versions(resource_type, current, first, newest):
                await self._notify(resource_type, current["_id"], document, in_history)
            crash_point("subscription-queued")
        await self.store.collection(resource_type).update_one(
            {"_id": current["_id"], f"{RESERVED}.version": newest, f"{RESERVED}.{PENDING}": first},
            {"$unset": {f"{RESERVED}.{PENDING}": ""}},
        )  # a version written meanwhile kept the mark: the next pass sees it

    async def _versions(
        self, resource_type: str, current: dict[str, Any], first: int, newest: int
    ) -> list[tuple[dict[str, Any], bool]]:
        found: list[tuple[dict[str, Any], bool]] = []
        if first < newest:
            cursor = (
                self.store.database[history_collection(resource_type)]
                .find({f"{RESERVED}.id": current["_id"], f"{RESERVED}.version": {"$gte": first, "$lt": newest}})
                .sort(f"{RESERVED}.version", 1)
            )
            found = [(doc, True) async for doc in cursor]
        found.append((current, False))
        return found

    async def _notify(self, resource_type: str, resource_id: str, document: dict[str, Any], in_history: bool) -> None:
        if document[RESERVED]["deleted"]:
            return  # a deletion matches no search
        version: int = document[RESERVED]["version"]
        written = _time_text(document)
        candidates = self.store.collection("Subscription").find(
            {
                MATCH_FIELD: {"$in": version_buckets(document, resource_id)},
                "status": "active",
                f"{RESERVED}.deleted": False,
            }
        )
        entries = []
        async for subscription in candidates:
            if str(subscription[RESERVED].get("created", "")).split("\x01")[0] > written:
                continue  # created after this version was written
            criteria = self._criteria(subscription)
            if criteria is None or criteria.resource_type != resource_type:
                continue
            if await self._matches(resource_type, resource_id, version, criteria, in_history):
                entries.append(
                    (subscription["_id"], channel_of(subscription).type, resource_type, resource_id, version)
                )
        await self.queue.enqueue(entries)

    async def _matches(
        self, resource_type: str, resource_id: str, version: int, criteria: Criteria, in_history: bool
    ) -> bool:
        """Does that stored version satisfy the criteria's search filter? (One indexed lookup by key.)"""
        self.evaluated += 1
        if in_history:
            where = {**for_history(criteria.filter), "_id": f"{resource_id}/{version}"}
            if "_id" in criteria.filter or f"{RESERVED}.id" in criteria.filter:
                where = {"$and": [for_history(criteria.filter), {"_id": f"{resource_id}/{version}"}]}
            collection = self.store.database[history_collection(resource_type)]
        else:
            where = {"$and": [criteria.filter, {"_id": resource_id, f"{RESERVED}.version": version}]}
            if "_id" not in criteria.filter and f"{RESERVED}.version" not in criteria.filter:
                where = {**criteria.filter, "_id": resource_id, f"{RESERVED}.version": version}
            collection = self.store.collection(resource_type)
        return await collection.find_one(where, {"_id": 1}) is not None

    def _criteria(self, subscription: dict[str, Any]) -> Criteria | None:
        key = (subscription["_id"], subscription[RESERVED]["version"])
        if key in self._parsed:
            self._parsed.move_to_end(key)
            return self._parsed[key]
        try:
            parsed: Criteria | None = parse_criteria(subscription.get("criteria"), self.registry, self.base_url)
        except Exception:
            parsed = None
        self._parsed[key] = parsed
        if len(self._parsed) > PARSED_KEPT:
            self._parsed.popitem(last=False)
        return parsed


def _time_text(document: dict[str, Any]) -> str:
    return as_utc(document[RESERVED]["lastUpdated"]).strftime("%Y-%m-%dT%H:%M:%S.%f")
