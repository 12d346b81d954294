"""Versioned FHIR resources on MongoDB: create, read, vread, update, delete, history.

Layout: one collection per resource type holding the current version of each resource
(``_id`` = resource id), and ``<Type>_history`` holding every prior version (``_id`` =
``<id>/<version>``). Each document is the resource's FHIR JSON plus one reserved field,
``_fhirfax``, with what only the server needs (version number, deletion flag, a
datetime for ``_lastUpdated``, search keys); it never leaves the store.

No transactions are needed: an update first copies the current version into history
(immutable, so the copy is idempotent) and then replaces the current document on the
condition that its version is still the one read. Two writers racing on one resource
cannot both win; the loser re-reads and tries again (or gets 412 when it sent
``If-Match``). A crash between the two steps leaves a harmless duplicate of the current
version in history, which readers ignore.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import DuplicateKeyError

from .errors import InvalidRequest, PreconditionFailed, ResourceGone, ResourceNotFound
from .inputs import ascii_int
from .models import format_instant, now, validate_resource
from .recent import RecentWrites

RESERVED = "_fhirfax"
MAX_WRITE_ATTEMPTS = 50
# On the current document of a watched type: the first version nobody has yet looked at for notifications.
# Set in the same write as the version (so no crash can lose it), cleared by a compare-and-set on the version.
PENDING = "pending"
# Types whose resources all have the keys this release writes (creation and sort keys): the start-up migration
# that gives older resources theirs reads only types not recorded here. Its queries (a field that does not exist)
# cannot use an index on the embedded database, which reads, and holds, every document of the collection for
# them: at a million Communications a start ran out of memory. A database this release made is recorded at its
# first start, while it is empty; one an older release made is read once.
MIGRATIONS = "store_migrations"
KEYS_MIGRATION = 1
# Types the server itself changes after writing them (``modify``): their last writes are kept (``fhir.recent``).
SERVER_CHANGED = frozenset({"Communication", "Task", "Subscription"})
# Server-only data a caller keeps with a resource (e.g. who created a Subscription); never shown, kept by ``modify``.
PRIVATE = "private"

# Server-kept data a type derives at each of its writes from the stored document it replaces (None for a new one),
# the resource written and the private data the writer gives: ``ResourceStore.keep_with``. It runs inside each
# write's retry, so it is always decided on what that write replaces.
KeepWith = Callable[[dict[str, Any] | None, dict[str, Any], dict[str, Any] | None], dict[str, Any] | None]

# Computes the search keys stored in ``_fhirfax`` (``keys`` and ``sort``) for one resource.
Indexer = Callable[[dict[str, Any]], dict[str, Any]]
IndexerFor = Callable[[str], Indexer | None]


@dataclass(frozen=True)
class Version:
    """One version of a resource as history reports it."""

    resource_type: str
    id: str
    version: int
    last_updated: datetime
    method: str
    deleted: bool
    resource: dict[str, Any] | None


def public(document: dict[str, Any]) -> dict[str, Any]:
    """The resource as clients see it: the stored document without storage fields."""
    return {k: v for k, v in document.items() if k not in ("_id", RESERVED)}


def history_collection(resource_type: str) -> str:
    return f"{resource_type}_history"


class ResourceStore:
    """Create/read/update/delete/history of FHIR resources in one MongoDB database."""

    def __init__(
        self, database: Any, indexer_for: IndexerFor | None = None, *, watched: frozenset[str] = frozenset()
    ) -> None:
        self.database = database
        self.indexer_for = indexer_for
        # Types whose every version is marked pending (``PENDING``) in its own write, for whoever watches them.
        self.watched = watched
        # Called after each write of a watched type (type, id): wakes an in-process watcher at once.
        self.on_write: Callable[[str, str], None] | None = None
        # Per type, what to keep with each write besides what the writer gives (``KeepWith``).
        self.keep_with: dict[str, KeepWith] = {}
        # What this process wrote last: ``modify`` starts from it rather than reading (see ``fhir.recent``).
        self.recent = RecentWrites(SERVER_CHANGED)

    def collection(self, resource_type: str) -> Any:
        return self.database[resource_type]

    async def ensure_indexes(self, resource_types: tuple[str, ...]) -> None:
        migrated = {record["_id"] async for record in self.database[MIGRATIONS].find({"keys": KEYS_MIGRATION})}
        for resource_type in resource_types:
            if resource_type not in migrated:  # read once per database, never at every start (see MIGRATIONS)
                await self._add_created_keys(resource_type)
                await self.database[MIGRATIONS].replace_one(
                    {"_id": resource_type}, {"keys": KEYS_MIGRATION}, upsert=True
                )
            await self.collection(resource_type).create_index([(f"{RESERVED}.created", DESCENDING)], name="created")
            await self.collection(resource_type).create_index(f"{RESERVED}.lastUpdated", name="lastUpdated")
            await self.collection(resource_type).create_index(
                [(f"{RESERVED}.sort._lastUpdated", DESCENDING)], name="sort_lastUpdated"
            )
            await self.database[history_collection(resource_type)].create_index(
                [(f"{RESERVED}.id", ASCENDING), (f"{RESERVED}.version", DESCENDING)], name="versions"
            )
            await self.database[history_collection(resource_type)].create_index(
                [(f"{RESERVED}.sort._lastUpdated", DESCENDING)], name="sort_lastUpdated"
            )
            if resource_type in self.watched:  # sparse: only the few documents with versions still to look at
                await self.collection(resource_type).create_index(f"{RESERVED}.{PENDING}", name="pending", sparse=True)

    async def _add_created_keys(self, resource_type: str) -> None:
        """Give resources stored before creation keys existed theirs: the time of their first version.

        Runs at start-up and touches only documents that lack a key (none, after the first start).
        """
        collection = self.collection(resource_type)
        async for document in collection.find({f"{RESERVED}.created": {"$exists": False}}, {RESERVED: 1}):
            first = await self.database[history_collection(resource_type)].find_one(
                {"_id": f"{document['_id']}/1"}, {f"{RESERVED}.lastUpdated": 1}
            )
            moment = (first or document)[RESERVED]["lastUpdated"]
            key = created_sort_key(as_utc(moment), document["_id"])
            await collection.update_one(
                {"_id": document["_id"], f"{RESERVED}.created": {"$exists": False}},
                {"$set": {f"{RESERVED}.created": key}},
            )
        # Deletion markers written before they carried one lack the key history pages by.
        for name in (resource_type, history_collection(resource_type)):
            unkeyed = {f"{RESERVED}.sort._lastUpdated": {"$exists": False}}
            async for document in self.database[name].find(unkeyed, {RESERVED: 1}):
                resource_id = document[RESERVED].get("id", document["_id"])
                moment = as_utc(document[RESERVED]["lastUpdated"])
                key = last_updated_sort_key(moment, resource_id, document[RESERVED]["version"])
                await self.database[name].update_one(
                    {"_id": document["_id"]}, {"$set": {f"{RESERVED}.sort._lastUpdated": key}}
                )

    # -- writes -------------------------------------------------------------------------------

    def _document(
        self,
        resource: dict[str, Any],
        resource_id: str,
        version: int,
        method: str,
        moment: datetime,
        created: str | None = None,
        private: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Stored form of a validated resource: server-owned id and meta, plus reserved fields.

        ``created`` is the creation key of the resource's first version, carried over unchanged by every
        later version: the default search order, which therefore never moves a resource while it changes.
        """
        resource_type = resource["resourceType"]
        body = {k: v for k, v in resource.items() if k not in ("id", "meta", "_id", RESERVED)}
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = format_instant(moment)
        document = {"_id": resource_id, "resourceType": resource_type, "id": resource_id, "meta": meta}
        document.update(body)
        indexer = self.indexer_for(resource_type) if self.indexer_for else None
        reserved: dict[str, Any] = {
            "version": version,
            "lastUpdated": moment,
            "method": method,
            "deleted": False,
            "created": created or created_sort_key(moment, resource_id),
            "sort": {"_lastUpdated": last_updated_sort_key(moment, resource_id, version)},
        }
        if indexer is not None:
            computed = indexer(public(document))
            reserved["keys"] = computed.get("keys", {})
            reserved["sort"].update(computed.get("sort", {}))
        if private is not None:
            reserved[PRIVATE] = private
        if resource_type in self.watched and version == 1:
            reserved[PENDING] = 1
        document[RESERVED] = reserved
        return document

    def _written(self, resource_type: str, resource_id: str) -> None:
        if self.on_write is not None and resource_type in self.watched:
            self.on_write(resource_type, resource_id)

    async def create(
        self,
        resource: dict[str, Any],
        *,
        resource_id: str | None = None,
        moment: datetime | None = None,
        session: Any = None,
        validated: bool = False,
        private: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store ``resource`` as version 1 with a new id (client ids are ignored, as FHIR says).

        ``session`` lets a caller make the create part of its own transaction. ``validated`` skips the
        schema check for a resource that already passed it (or that the server built in a shape its tests
        validate): the check costs more than the write. ``private`` is kept with it, never shown.
        """
        if not validated:
            resource = validate_resource(resource, resource.get("resourceType", ""))
        resource_type = resource["resourceType"]
        private = self._kept(resource_type, None, resource, private)
        document = self._document(resource, resource_id or str(uuid.uuid4()), 1, "POST", moment or now(), None, private)
        await self.collection(resource_type).insert_one(document, session=session)
        self.recent.written(resource_type, document, in_transaction=session is not None)
        self._written(resource_type, document["_id"])
        return public(document)

    def _kept(
        self,
        resource_type: str,
        current: dict[str, Any] | None,
        resource: dict[str, Any],
        private: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        rule = self.keep_with.get(resource_type)
        return private if rule is None else rule(current, resource, private)

    def committed(self, resource_type: str, resource_id: str) -> None:
        """The transaction that created ``resource_id`` committed (see ``fhir.recent``): a later ``modify``
        starts from what it wrote."""
        self.recent.committed(resource_type, resource_id)

    def pending_cleared(self, resource_type: str, resource_ids: list[Any], version: int) -> None:
        """The pending mark of these resources was removed where they are at ``version`` (by whoever watches)."""

        def clear(document: dict[str, Any]) -> bool:
            reserved = document[RESERVED]
            return reserved.get("version") == version and reserved.pop(PENDING, None) is not None

        for resource_id in resource_ids:
            self.recent.amend(resource_type, str(resource_id), clear)

    async def create_many(self, resources: list[dict[str, Any]], *, validated: bool = False) -> None:
        """Store several new resources of one type with one round trip (each gets its own id)."""
        if not validated:
            resources = [validate_resource(r, r.get("resourceType", "")) for r in resources]
        moment = now()
        documents = [self._document(r, str(uuid.uuid4()), 1, "POST", moment) for r in resources]
        if documents:
            await self.collection(documents[0]["resourceType"]).insert_many(documents, ordered=False)
            for document in documents:
                self._written(document["resourceType"], document["_id"])

    async def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any],
        *,
        if_match: str | None = None,
        private: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Replace (or create) ``resource_id``; returns the stored resource and whether it was created.

        ``private`` (when given) replaces what is kept with it; otherwise the current one is kept.
        """
        resource = validate_resource(resource, resource_type)
        if resource.get("id") != resource_id:
            raise InvalidRequest(
                f"The resource id {resource.get('id')!r} does not match the id in the URL ({resource_id!r}); "
                "put the same id in both.",
                expression=[f"{resource_type}.id"],
            )
        wanted = parse_if_match(if_match)
        collection = self.collection(resource_type)
        for _ in range(MAX_WRITE_ATTEMPTS):
            current = await collection.find_one({"_id": resource_id})
            if current is None:
                if wanted is not None:
                    raise PreconditionFailed(
                        f"If-Match asks for version {wanted} of {resource_type}/{resource_id}, which does not exist."
                    )
                document = self._document(
                    resource, resource_id, 1, "PUT", now(), None, self._kept(resource_type, None, resource, private)
                )
                try:
                    await collection.insert_one(document)
                except DuplicateKeyError:
                    continue  # created concurrently: update it instead
                self._written(resource_type, resource_id)
                return public(document), True
            version = current[RESERVED]["version"]
            if wanted is not None and wanted != version:
                raise version_conflict(resource_type, resource_id, wanted, version)
            kept = private if private is not None else current[RESERVED].get(PRIVATE)
            kept = self._kept(resource_type, None if current[RESERVED]["deleted"] else current, resource, kept)
            document = self._document(resource, resource_id, version + 1, "PUT", now(), created_of(current), kept)
            if await self._replace(resource_type, current, document):
                return public(document), current[RESERVED]["deleted"]
            if wanted is not None:
                raise version_conflict(resource_type, resource_id, wanted, version + 1)
        raise PreconditionFailed(
            f"{resource_type}/{resource_id} is being changed by many clients at once; retry the update."
        )

    async def put_if_changed(self, resource: dict[str, Any]) -> bool:
        """Create or update ``resource`` (which carries its id) unless the stored one has the same content.

        For resources the server itself owns (fixtures, its OperationDefinitions): loading them
        at every start must not add a version each time. Returns True when it wrote.
        """
        resource = validate_resource(resource, resource.get("resourceType", ""))
        current = await self.find_current(resource["resourceType"], resource["id"])
        if current is not None and not current[RESERVED]["deleted"] and _content(public(current)) == _content(resource):
            return False
        await self.update(resource["resourceType"], resource["id"], resource)
        return True

    async def delete(self, resource_type: str, resource_id: str) -> int | None:
        """Delete ``resource_id`` (a new, deleted version); returns that version, None if already deleted."""
        collection = self.collection(resource_type)
        for _ in range(MAX_WRITE_ATTEMPTS):
            current = await collection.find_one({"_id": resource_id})
            if current is None:
                raise ResourceNotFound(f"{resource_type}/{resource_id} does not exist.")
            if current[RESERVED]["deleted"]:
                return None
            version: int = current[RESERVED]["version"] + 1
            moment = now()
            tombstone = {
                "_id": resource_id,
                "resourceType": resource_type,
                "id": resource_id,
                "meta": {"versionId": str(version), "lastUpdated": format_instant(moment)},
                RESERVED: {
                    "version": version,
                    "lastUpdated": moment,
                    "method": "DELETE",
                    "deleted": True,
                    "created": created_of(current),
                    "sort": {"_lastUpdated": last_updated_sort_key(moment, resource_id, version)},  # history's order
                },
            }
            if await self._replace(resource_type, current, tombstone):
                return version
        raise PreconditionFailed(f"{resource_type}/{resource_id} is being changed by many clients at once.")

    async def _replace(
        self, resource_type: str, current: dict[str, Any], document: dict[str, Any], session: Any = None
    ) -> bool:
        """Copy ``current`` to history, then swap in ``document`` if nobody changed it meanwhile.

        For a watched type the new document keeps the first version still pending, or marks its own. The swap
        also requires the mark ``current`` carries: one cleared since (its versions were dispatched) must not be
        written back, or those versions would be matched again against whatever the Subscriptions are by then.
        A version cannot gain a mark without a new version, so a ``current`` without one needs no condition.
        """
        version = current[RESERVED]["version"]
        prior = dict(current)
        prior["_id"] = f"{current['_id']}/{version}"
        prior[RESERVED] = {k: v for k, v in current[RESERVED].items() if k != PENDING} | {"id": current["_id"]}
        history = self.database[history_collection(resource_type)]
        if session is None:
            with contextlib.suppress(DuplicateKeyError):  # copied by an earlier attempt; versions never change
                await history.insert_one(prior)
        elif await history.count_documents({"_id": prior["_id"]}, limit=1, session=session) == 0:
            await history.insert_one(prior, session=session)  # a duplicate key would abort the transaction
        condition: dict[str, Any] = {"_id": current["_id"], f"{RESERVED}.version": version}
        if resource_type in self.watched:
            pending = current[RESERVED].get(PENDING)
            document[RESERVED][PENDING] = document[RESERVED]["version"] if pending is None else pending
            if pending is not None:
                condition[f"{RESERVED}.{PENDING}"] = pending
        result = await self.collection(resource_type).replace_one(condition, document, session=session)
        matched: int = result.matched_count
        if matched == 1:
            self.recent.written(resource_type, document, in_transaction=session is not None)
            self._written(resource_type, current["_id"])
        else:
            self.recent.forget(resource_type, current["_id"])
        return matched == 1

    async def modify(
        self,
        resource_type: str,
        resource_id: str,
        change: Callable[[dict[str, Any]], dict[str, Any] | None],
        *,
        session: Any = None,
    ) -> dict[str, Any] | None:
        """Read-modify-write with retries: ``change`` gets the current resource and returns the new one.

        ``change`` returning None means "no change"; the current resource is then returned
        unchanged. Used by server-side changes (e.g. status updates) that must never lose a
        concurrent version. ``session`` makes the change part of the caller's transaction.
        The first try starts from this process's own last write of the resource when it has one
        (``fhir.recent``): the replace's condition tells whether that is still current, and only a write is
        decided on it (no change, or gone, is decided on a read).
        """
        collection = self.collection(resource_type)
        for attempt in range(MAX_WRITE_ATTEMPTS):
            current = self.recent.take(resource_type, resource_id) if attempt == 0 and session is None else None
            remembered = current is not None
            if current is None:
                current = await collection.find_one({"_id": resource_id}, session=session)
            if current is None or current[RESERVED]["deleted"]:
                if remembered:
                    continue  # only what is stored may say it is gone
                raise ResourceNotFound(f"{resource_type}/{resource_id} does not exist.")
            changed = change(public(current))
            if changed is None:
                if remembered:
                    continue  # "nothing to change" is decided on what is stored, never on a copy
                return None
            changed = validate_resource(changed, resource_type)
            version = current[RESERVED]["version"] + 1
            kept = self._kept(resource_type, current, changed, current[RESERVED].get(PRIVATE))
            document = self._document(changed, resource_id, version, "PUT", now(), created_of(current), kept)
            if await self._replace(resource_type, current, document, session):
                return public(document)
        raise PreconditionFailed(f"{resource_type}/{resource_id} is being changed by many clients at once.")

    # -- reads --------------------------------------------------------------------------------

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        document = await self.collection(resource_type).find_one({"_id": resource_id})
        if document is None:
            raise ResourceNotFound(f"{resource_type}/{resource_id} does not exist.")
        if document[RESERVED]["deleted"]:
            raise gone(resource_type, resource_id, document)
        return public(document)

    async def find_current(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The current stored document (including deleted markers), or None."""
        document: dict[str, Any] | None = await self.collection(resource_type).find_one({"_id": resource_id})
        return document

    async def vread(self, resource_type: str, resource_id: str, version_id: str) -> dict[str, Any]:
        version = ascii_int(version_id)
        if version is None:
            raise ResourceNotFound(f"{resource_type}/{resource_id} has no version {version_id!r}.")
        document = await self.collection(resource_type).find_one({"_id": resource_id, f"{RESERVED}.version": version})
        if document is None:
            document = await self.database[history_collection(resource_type)].find_one(
                {"_id": f"{resource_id}/{version}"}
            )
        if document is None:
            raise ResourceNotFound(f"{resource_type}/{resource_id} has no version {version}.")
        if document[RESERVED]["deleted"]:
            raise gone(resource_type, resource_id, document)
        return public(document)

    async def history(self, resource_type: str, resource_id: str, limit: int) -> list[Version]:
        """Every version of one resource, newest first (at most ``limit``)."""
        current = await self.collection(resource_type).find_one({"_id": resource_id})
        if current is None:
            raise ResourceNotFound(f"{resource_type}/{resource_id} does not exist.")
        newest = current[RESERVED]["version"]
        cursor = (
            self.database[history_collection(resource_type)]
            .find({f"{RESERVED}.id": resource_id, f"{RESERVED}.version": {"$lt": newest}})
            .sort(f"{RESERVED}.version", DESCENDING)
            .limit(max(limit - 1, 0))
        )
        documents = [current, *[doc async for doc in cursor]][:limit]
        return [
            Version(
                resource_type=resource_type,
                id=resource_id,
                version=doc[RESERVED]["version"],
                last_updated=as_utc(doc[RESERVED]["lastUpdated"]),
                method=doc[RESERVED].get("method", "PUT"),
                deleted=doc[RESERVED]["deleted"],
                resource=None if doc[RESERVED]["deleted"] else public(doc),
            )
            for doc in documents
        ]

    async def count_versions(self, resource_type: str, resource_id: str) -> int:
        current = await self.collection(resource_type).find_one({"_id": resource_id}, {RESERVED: 1})
        return 0 if current is None else current[RESERVED]["version"]


def last_updated_sort_key(moment: datetime, resource_id: str, version: int) -> str:
    """``_lastUpdated`` as fixed-width text, the id and the version: unique even among one resource's versions
    (times are kept to the millisecond), so search and history pages need one range condition."""
    return f"{_time_text(moment)}\x01{resource_id}\x01{version:010d}"


def created_sort_key(moment: datetime, resource_id: str) -> str:
    """When the resource was first created, as fixed-width text plus the id: unique and never changed."""
    return f"{_time_text(moment)}\x01{resource_id}"


def _time_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def created_of(current: dict[str, Any]) -> str | None:
    """The creation key of a stored resource (None for one stored before keys existed: the next write sets it)."""
    created: str | None = current[RESERVED].get("created")
    return created


def _content(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def as_utc(moment: datetime) -> datetime:
    """Datetimes read through a client without ``tz_aware`` come back naive; they are UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_if_match(value: str | None) -> int | None:
    """``W/"3"`` (or ``"3"`` / ``3``) to 3; None when absent."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    version = ascii_int(text.strip('"'))
    if version is None:
        raise InvalidRequest(
            f'If-Match must name a version as W/"<versionId>", got {value!r}.', expression=["If-Match"]
        )
    return version


def version_conflict(resource_type: str, resource_id: str, wanted: int, actual: int) -> PreconditionFailed:
    return PreconditionFailed(
        f"If-Match asks for version {wanted} of {resource_type}/{resource_id} but the current version is "
        f'{actual}; read it again and retry with If-Match: W/"{actual}".'
    )


def gone(resource_type: str, resource_id: str, document: dict[str, Any]) -> ResourceGone:
    version = document[RESERVED]["version"]
    return ResourceGone(
        f"{resource_type}/{resource_id} was deleted (version {version}).",
        headers={"ETag": f'W/"{version}"'},
    )
