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

import asyncio
import logging
from collections import OrderedDict
from dataclasses import replace
from typing import Any

from ..db import maybe_await, stop_if_cancelled
from ..fhir.compartments import PATIENT_COMPARTMENT, compartment_filter
from ..fhir.search import SearchRegistry
from ..fhir.store import PENDING, PRIVATE, RESERVED, ResourceStore, as_utc, history_collection
from .criteria import Criteria, for_history, parse_criteria, version_buckets
from .faults import crash_point
from .queue import Queue
from .resource import MATCH_FIELD, channel_of

log = logging.getLogger("fhir_fax.subscriptions")
BATCH = 100
CONCURRENT = 8  # resources dispatched at once (their writes overlap)
FACETS = 500  # candidate filters evaluated in one command
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
        """Dispatch one batch of marked resources (a few at a time); how many were handled."""
        handled = 0
        for resource_type in sorted(self.store.watched):
            cursor = self.store.collection(resource_type).find({f"{RESERVED}.{PENDING}": {"$gte": 1}}).limit(BATCH)
            marked = [document async for document in cursor]
            for start in range(0, len(marked), CONCURRENT):
                done = await asyncio.gather(
                    *(self._guarded(resource_type, d) for d in marked[start : start + CONCURRENT])
                )
                handled += sum(done)
        return handled

    async def _guarded(self, resource_type: str, current: dict[str, Any]) -> bool:
        """One resource's dispatch; a failure is logged and left for the next pass (its mark stays)."""
        try:
            await self.dispatch(resource_type, current)
        except Exception:
            stop_if_cancelled()
            log.exception("notifications of %s/%s could not be dispatched; retrying", resource_type, current["_id"])
            return False
        return True

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
        # Only the match keys in the query: it is then one indexed lookup (the embedded server's planner scans
        # the collection when other conditions are added); status and age are checked here.
        cursor = self.store.collection("Subscription").find(
            {MATCH_FIELD: {"$in": version_buckets(document, resource_id)}},
            {
                "status": 1,
                "criteria": 1,
                "channel": 1,
                f"{RESERVED}.version": 1,
                f"{RESERVED}.created": 1,
                f"{RESERVED}.{PRIVATE}": 1,
            },
        )
        candidates: list[tuple[dict[str, Any], Criteria]] = []
        async for subscription in cursor:
            if subscription.get("status") != "active":
                continue
            if str(subscription[RESERVED].get("created", "")).split("\x01")[0] > written:
                continue  # created after this version was written
            criteria = self._criteria(subscription)
            if criteria is not None and criteria.resource_type == resource_type:
                candidates.append((subscription, criteria))
        matched = await self._matching(resource_type, resource_id, version, [c for _, c in candidates], in_history)
        entries = [
            (subscription["_id"], channel_of(subscription).type, resource_type, resource_id, version)
            for index, (subscription, _) in enumerate(candidates)
            if index in matched
        ]
        await self.queue.enqueue(entries)

    async def _matching(
        self, resource_type: str, resource_id: str, version: int, candidates: list[Criteria], in_history: bool
    ) -> set[int]:
        """Which candidates' search filters that stored version satisfies: one query per ``FACETS`` of them.

        The version's document is found by key, then each filter runs on it as a ``$facet`` of one command.
        """
        if not candidates:
            return set()
        self.evaluated += len(candidates)
        if in_history:  # the copy's key is "<id>/<version>"; the resource id is ``_fhirfax.id`` there
            key: dict[str, Any] = {"_id": f"{resource_id}/{version}"}
            collection = self.store.database[history_collection(resource_type)]
        else:
            key = {"_id": resource_id, f"{RESERVED}.version": version}
            collection = self.store.collection(resource_type)
        matched: set[int] = set()
        for start in range(0, len(candidates), FACETS):
            facets = {
                f"c{start + offset}": [
                    {"$match": for_history(criteria.filter) if in_history else criteria.filter},
                    {"$project": {"_id": 1}},
                ]
                for offset, criteria in enumerate(candidates[start : start + FACETS])
            }
            cursor = await maybe_await(collection.aggregate([{"$match": key}, {"$facet": facets}]))
            for row in await cursor.to_list(None):
                matched.update(int(name[1:]) for name, found in row.items() if found)
        return matched

    def _criteria(self, subscription: dict[str, Any]) -> Criteria | None:
        key = (subscription["_id"], subscription[RESERVED]["version"])
        if key in self._parsed:
            self._parsed.move_to_end(key)
            return self._parsed[key]
        try:
            parsed: Criteria | None = narrowed(
                parse_criteria(subscription.get("criteria"), self.registry, self.base_url),
                subscription[RESERVED].get(PRIVATE),
            )
        except Exception:
            parsed = None
        self._parsed[key] = parsed
        if len(self._parsed) > PARSED_KEPT:
            self._parsed.popitem(last=False)
        return parsed


def narrowed(criteria: Criteria, subscriber: Any) -> Criteria:
    """The criteria as matched for ``subscriber``: kept to its patient's compartment when its reads of the type
    were (``limited``, recorded by the gate), so other patients' versions are never queued or numbered (they
    would only be refused when sent, and the gaps in event numbers would tell of them)."""
    if not isinstance(subscriber, dict) or not isinstance(patient := subscriber.get("patient"), str):
        return criteria
    limited = subscriber.get("limited")
    if not isinstance(limited, list) or criteria.resource_type not in limited:
        return criteria
    if criteria.resource_type not in PATIENT_COMPARTMENT:
        return criteria
    compartment = compartment_filter(criteria.resource_type, patient)
    return replace(criteria, filter={"$and": [criteria.filter, compartment]} if criteria.filter else compartment)


def _time_text(document: dict[str, Any]) -> str:
    return as_utc(document[RESERVED]["lastUpdated"]).strftime("%Y-%m-%dT%H:%M:%S.%f")
