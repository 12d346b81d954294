"""From written versions to queued notifications, recovered from the writes themselves.

Every version of a watched type is written with a pending mark on the current document (``_fhirfax.pending``:
the first version nobody has looked at yet; see ``fhir.store``), in the same write. The dispatcher takes
marked resources (a sparse index keeps that set small), reads the versions from the mark on (the current
document, and ``<Type>_history`` by key: one read for the whole batch), finds the Subscriptions each could
match by its match keys, runs each candidate's criteria filter against the version's stored document, and
queues one notification per
(Subscription, resource, version) under a unique key. Only then does it clear the mark, by a compare-and-set
on the version it read. A crash anywhere before that leaves the mark: the next pass does the same work again
and the unique keys make it add nothing.

Subscriptions are watched too: a Subscription version that is active releases what its error had held. A
version written while a Subscription was not active is not matched by it, however late the pass that reads it
(``activity``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import replace
from typing import Any

from ..db import maybe_await, stop_if_cancelled
from ..fhir.compartments import PATIENT_COMPARTMENT, compartment_filter
from ..fhir.search import SearchRegistry
from ..fhir.store import PENDING, PRIVATE, RESERVED, ResourceStore, history_collection
from .activity import matches_as_written, moment_text
from .criteria import Criteria, for_history, parse_criteria, version_buckets
from .faults import crash_point
from .queue import Queue
from .resource import MATCH_FIELD, channel_of

log = logging.getLogger("fhir_fax.subscriptions")
BATCH = 100
CONCURRENT = 8  # resources dispatched at once (their writes overlap)
FACETS = 500  # candidate filters evaluated in one command
KEYS_PER_READ = 1000  # history versions named in one read (a batch's pending versions are normally far fewer)
PARSED_KEPT = 2048  # parsed criteria kept, per (Subscription, version)


class Dispatcher:
    def __init__(self, store: ResourceStore, registry: SearchRegistry, queue: Queue, base_url: str = "") -> None:
        self.store = store
        self.registry = registry
        self.queue = queue
        self.base_url = base_url
        self._parsed: OrderedDict[tuple[str, int], Criteria | None] = OrderedDict()
        self.evaluated = 0  # criteria filters run (the benchmark reads it)
        self.queued = 0  # notifications queued (the service sends in the same pass when this grew)

    async def step(self, types: Collection[str] | None = None) -> int:
        """Dispatch one batch of marked resources (a few at a time); how many were handled.

        The Subscriptions that could match any version of the batch are read once, by the match keys of all
        of them together, rather than once per version: with many writes between passes that is one lookup
        instead of one per version (each version then keeps only the candidates whose keys it carries).
        ``types``: only the marked resources of these types (those this process wrote since the last pass).
        """
        handled = 0
        for resource_type in sorted(self.store.watched if types is None else self.store.watched & set(types)):
            cursor = self.store.collection(resource_type).find({f"{RESERVED}.{PENDING}": {"$gte": 1}}).limit(BATCH)
            marked = [document async for document in cursor]
            if not marked:
                continue
            versions: list[list[tuple[dict[str, Any], bool]] | None] = [None] * len(marked)
            watching: list[dict[str, Any]] | None = None
            if resource_type != "Subscription":
                versions = await self._pending_versions(resource_type, marked)
                buckets = {
                    bucket
                    for current, found in zip(marked, versions, strict=True)
                    for document, _ in found or ()
                    for bucket in version_buckets(document, current["_id"])
                }
                watching = await self._watching(sorted(buckets))
            dispatched: list[dict[str, Any]] = []
            for start in range(0, len(marked), CONCURRENT):
                chunk = marked[start : start + CONCURRENT]
                done = await asyncio.gather(
                    *(
                        self._guarded(
                            resource_type,
                            d,
                            versions[start + offset],
                            None if versions[start + offset] is None else watching,  # unread: its own lookup
                            clear=False,
                        )
                        for offset, d in enumerate(chunk)
                    )
                )
                dispatched += [d for d, ok in zip(chunk, done, strict=True) if ok]
            await self._clear(resource_type, dispatched)
            handled += len(dispatched)
        return handled

    async def _clear(self, resource_type: str, dispatched: list[dict[str, Any]]) -> None:
        """Clear the marks of resources whose notifications are queued, with one write for all of them.

        Each is cleared only while it is still the version dispatched: that version's ``_lastUpdated`` sort key
        names the resource and the version (``fhir.store.last_updated_sort_key``), so one list of keys holds a
        condition per resource. A resource written meanwhile has a newer version (which kept the mark), so it is
        left for the next pass; one whose mark another process cleared meanwhile is cleared again, which changes
        nothing.
        """
        if not dispatched:
            return
        ids = [current["_id"] for current in dispatched]
        keys = [current[RESERVED]["sort"]["_lastUpdated"] for current in dispatched]
        # These versions' notifications are queued, so they need their mark no more whether or not the write
        # below lands: this process's kept copies drop it first, and a status change starting from one meanwhile
        # does not race the write (it would otherwise miss, and read the resource again).
        for current in dispatched:
            self.store.pending_cleared(resource_type, [current["_id"]], current[RESERVED]["version"])
        await self.store.collection(resource_type).update_many(
            {"_id": {"$in": ids}, f"{RESERVED}.sort._lastUpdated": {"$in": keys}},
            {"$unset": {f"{RESERVED}.{PENDING}": ""}},
        )

    async def _pending_versions(
        self, resource_type: str, marked: list[dict[str, Any]]
    ) -> list[list[tuple[dict[str, Any], bool]] | None]:
        """The versions of each marked resource from its mark on, oldest first, with one history read for all.

        A history copy's key is ``<id>/<version>``, so the versions still to look at are named exactly: the read
        is a primary-key lookup on any engine, and older versions are not read. A read that fails gives None for
        every resource: each then reads its own versions and looks up its own Subscriptions in ``dispatch``, and a
        failure there leaves its mark.
        """
        found: dict[str, dict[str, Any]] = {}
        try:
            wanted = [[f"{current['_id']}/{v}" for v in range(*_pending_range(current))] for current in marked]
            keys = [key for names in wanted for key in names]
            history = self.store.database[history_collection(resource_type)]
            for start in range(0, len(keys), KEYS_PER_READ):
                async for document in history.find({"_id": {"$in": keys[start : start + KEYS_PER_READ]}}):
                    found[document["_id"]] = document
        except Exception:
            stop_if_cancelled()
            log.exception("pending %s versions could not be read; reading them one resource at a time", resource_type)
            return [None] * len(marked)
        return [
            [(found[key], True) for key in names if key in found] + [(current, False)]
            for current, names in zip(marked, wanted, strict=True)
        ]

    async def _watching(self, buckets: list[str]) -> list[dict[str, Any]]:
        """The Subscriptions filed under any of ``buckets`` (one indexed lookup), with what matching needs."""
        cursor = self.store.collection("Subscription").find({MATCH_FIELD: {"$in": buckets}}, SUBSCRIPTION_FIELDS)
        return [subscription async for subscription in cursor]

    async def _guarded(
        self,
        resource_type: str,
        current: dict[str, Any],
        versions: list[tuple[dict[str, Any], bool]] | None = None,
        watching: list[dict[str, Any]] | None = None,
        *,
        clear: bool = True,
    ) -> bool:
        """One resource's dispatch; a failure is logged and left for the next pass (its mark stays)."""
        try:
            await self.dispatch(resource_type, current, versions, watching, clear=clear)
        except Exception:
            stop_if_cancelled()
            log.exception("notifications of %s/%s could not be dispatched; retrying", resource_type, current["_id"])
            return False
        return True

    async def dispatch(
        self,
        resource_type: str,
        current: dict[str, Any],
        versions: list[tuple[dict[str, Any], bool]] | None = None,
        watching: list[dict[str, Any]] | None = None,
        *,
        clear: bool = True,
    ) -> None:
        """Queue the notifications of every version of ``current`` from its pending mark, then clear the mark.

        ``versions`` and ``watching``: those versions, and the Subscriptions filed under their match keys, when
        the caller read them already (``step``); read here otherwise. ``clear`` False: the caller clears the
        mark once the whole batch is queued (``_clear``).
        """
        first = current[RESERVED][PENDING]
        newest = current[RESERVED]["version"]
        if resource_type == "Subscription":
            if current.get("status") == "active" and not current[RESERVED]["deleted"]:
                released = await self.queue.release(current["_id"])
                self.queued += released  # due again: sent in this pass
                if released:
                    log.info("Subscription/%s is active again: %d notification(s) due", current["_id"], released)
        else:
            if versions is None:
                versions = await self._versions(resource_type, current, first, newest)
            for document, in_history in versions:
                await self._notify(resource_type, current["_id"], document, in_history, watching)
            crash_point("subscription-queued")
        if not clear:
            return
        await self.store.collection(resource_type).update_one(
            {"_id": current["_id"], f"{RESERVED}.version": newest, f"{RESERVED}.{PENDING}": first},
            {"$unset": {f"{RESERVED}.{PENDING}": ""}},
        )  # a version written meanwhile kept the mark: the next pass sees it
        self.store.pending_cleared(resource_type, [current["_id"]], newest)

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

    async def _notify(
        self,
        resource_type: str,
        resource_id: str,
        document: dict[str, Any],
        in_history: bool,
        watching: list[dict[str, Any]] | None = None,
    ) -> None:
        if document[RESERVED]["deleted"]:
            return  # a deletion matches no search
        version: int = document[RESERVED]["version"]
        written = _time_text(document)
        buckets = version_buckets(document, resource_id)
        if watching is None:
            # Only the match keys in the query: it is then one indexed lookup (the embedded server's planner scans
            # the collection when other conditions are added); status and age are checked here.
            watching = await self._watching(buckets)
        filed = set(buckets)
        cursor = [s for s in watching if filed.intersection(_match_keys(s))]
        candidates: list[tuple[dict[str, Any], Criteria]] = []
        for subscription in cursor:
            if str(subscription[RESERVED].get("created", "")).split("\x01")[0] > written:
                continue  # created after this version was written
            if not matches_as_written(subscription, written):
                continue  # not active when this version was written (or off now)
            criteria = self._criteria(subscription)
            if criteria is not None and criteria.resource_type == resource_type:
                candidates.append((subscription, criteria))
        matched = await self._matching(resource_type, resource_id, version, [c for _, c in candidates], in_history)
        entries = [
            (subscription["_id"], channel_of(subscription).type, resource_type, resource_id, version)
            for index, (subscription, _) in enumerate(candidates)
            if index in matched
        ]
        self.queued += await self.queue.enqueue(entries)

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


SUBSCRIPTION_FIELDS = {
    "status": 1,
    "criteria": 1,
    "channel": 1,
    MATCH_FIELD: 1,
    f"{RESERVED}.version": 1,
    f"{RESERVED}.created": 1,
    f"{RESERVED}.{PRIVATE}": 1,
}


def _pending_range(current: dict[str, Any]) -> tuple[int, int]:
    """The versions of a marked resource still to look at that are in history: from its mark to its newest."""
    reserved = current[RESERVED]
    return int(reserved[PENDING]), int(reserved["version"])


def _match_keys(subscription: dict[str, Any]) -> list[Any]:
    """The match keys a Subscription is filed under (``MATCH_FIELD``), as stored."""
    value: Any = subscription
    for part in MATCH_FIELD.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, list) else []


def _time_text(document: dict[str, Any]) -> str:
    """A version's write time as text, in the one format it is compared with (``activity.moment_text``)."""
    return moment_text(document[RESERVED]["lastUpdated"])
