"""The durable notification queue: one document per (Subscription, resource, version).

In ``subscription_notifications``.

The key is ``<subscription>/<type>/<id>/<version>``, so enqueueing again after a crash (the dispatcher
re-reads versions whose pending mark it had not yet cleared) adds nothing. States:

- ``due``: to be sent at ``due_at``. A sender claims one by a compare-and-set that moves ``due_at`` a lease
  ahead and names itself ``owner``; a sender that dies leaves it due again when the lease runs out. So any
  number of processes share the queue and each notification is sent once (up to retries).
- ``held``: its Subscription is in ``error``; sending ``requested`` again makes these ``due`` again.
- ``sent``, ``refused`` (the subscriber may not read that version any more), ``dropped`` (the Subscription
  was deleted or turned off, or no websocket was bound): finished, kept a week for inspection (TTL).

Per (Subscription, resource) versions go out in order: a notification is claimable only when no earlier
version of the same pair is still due or held. A later version found blocked waits as long as the version
before it (its ``due_at`` moves up to the blocker's), and a retry moves the pair's later versions with it, so
versions that cannot be sent yet never sort first and fill a sender's batch: one failing endpoint does not
stall everyone's notifications. A version that finishes makes the next one of its pair due at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError

from ..fhir.models import now

NOTIFICATIONS = "subscription_notifications"
EVENTS = "subscription_events"  # per Subscription, the last event number given
EVENT_ATTEMPTS = 3  # tries to take an event number (the first ones taken at once race to create the counter)
UNFINISHED = ("due", "held")
KEEP_FINISHED = timedelta(days=7)


@dataclass(frozen=True)
class Notification:
    id: str
    subscription: str
    resource_type: str
    resource_id: str
    version: int
    channel: str
    event: int
    attempts: int
    due_at: datetime

    @classmethod
    def of(cls, document: dict[str, Any]) -> Notification:
        resource_type, _, resource_id = document["resource"].partition("/")
        return cls(
            id=document["_id"],
            subscription=document["subscription"],
            resource_type=resource_type,
            resource_id=resource_id,
            version=document["version"],
            channel=document["channel"],
            event=document.get("event", 0),
            attempts=document.get("attempts", 0),
            due_at=document["due_at"],
        )


def notification_id(subscription: str, resource_type: str, resource_id: str, version: int) -> str:
    return f"{subscription}/{resource_type}/{resource_id}/{version}"


class Queue:
    def __init__(self, database: Any) -> None:
        self.database = database
        self.collection = database[NOTIFICATIONS]

    async def ensure_indexes(self) -> None:
        # Only a due notification has ``due_at`` (it is removed when one is sent, refused, dropped or held), so
        # the senders' one periodic query is a range over a sparse index that finished notifications are not in.
        await self.collection.create_index("due_at", name="due_at", sparse=True)
        await self.collection.create_index(
            [("subscription", ASCENDING), ("resource", ASCENDING), ("version", ASCENDING)], name="order"
        )
        await self.collection.create_index(
            "finished", name="expiry", expireAfterSeconds=int(KEEP_FINISHED.total_seconds())
        )

    async def enqueue(self, entries: list[tuple[str, str, str, str, int]]) -> int:
        """Add (subscription, channel, type, id, version) notifications; those already queued are left alone."""
        if not entries:
            return 0
        moment = now()
        documents = []
        keys = [notification_id(s, t, i, v) for s, _, t, i, v in entries]
        queued = {d["_id"] async for d in self.collection.find({"_id": {"$in": keys}}, {"_id": 1})}
        for subscription, channel, resource_type, resource_id, version in entries:
            if notification_id(subscription, resource_type, resource_id, version) in queued:
                continue  # queued by an earlier pass: it keeps its event number, and takes no new one
            documents.append(
                {
                    "_id": notification_id(subscription, resource_type, resource_id, version),
                    "subscription": subscription,
                    "resource": f"{resource_type}/{resource_id}",
                    "version": version,
                    "channel": channel,
                    "state": "due",
                    "due_at": moment,
                    "created": moment,
                    "attempts": 0,
                    "event": await self._next_event(subscription),
                }
            )
        if not documents:
            return 0
        try:
            result = await self.collection.insert_many(documents, ordered=False)
            return len(result.inserted_ids)
        except BulkWriteError as error:
            if any(e.get("code") != 11000 for e in error.details.get("writeErrors", [])):
                raise
            inserted: int = error.details.get("nInserted", 0)
            return inserted

    async def _next_event(self, subscription: str) -> int:
        """The Subscription's next event number (a crash may skip one; none is given twice).

        Two first numbers taken at once both try to create the counter: the embedded database may then answer
        one with nothing, and MongoDB with a duplicate key. The counter exists by then, so that one asks again.
        """
        for attempt in range(1, EVENT_ATTEMPTS + 1):
            try:
                document = await self.database[EVENTS].find_one_and_update(
                    {"_id": subscription}, {"$inc": {"events": 1}}, upsert=True, return_document=ReturnDocument.AFTER
                )
            except DuplicateKeyError:
                if attempt == EVENT_ATTEMPTS:
                    raise
                continue
            if document is not None:
                events: int = document["events"]
                return events
        raise RuntimeError(f"Subscription/{subscription}'s event counter was not answered; the next pass retries")

    async def candidates(
        self, limit: int, subscriptions: list[str] | None = None, channel: str | None = None
    ) -> list[Notification]:
        """Due notifications, oldest first (``subscriptions``/``channel`` narrow them).

        The query is one range on the sparse ``due_at`` index; the narrowing is done here, on a larger read, so
        that no other field makes the database read every notification.
        """
        cursor = self.collection.find({"due_at": {"$lte": now()}}).sort("due_at", ASCENDING).limit(limit * 4)
        found: list[Notification] = []
        async for document in cursor:
            if document.get("state") != "due" or (channel is not None and document.get("channel") != channel):
                continue
            if subscriptions is not None and document.get("subscription") not in subscriptions:
                continue
            found.append(Notification.of(document))
            if len(found) == limit:
                break
        return found

    async def claim(self, notification: Notification, owner: str, lease: timedelta) -> Notification | None:
        """Take ``notification`` for ``lease`` if it is still due, and it is the first unfinished of its pair."""
        earlier = await self.collection.find_one(
            {
                "subscription": notification.subscription,
                "resource": f"{notification.resource_type}/{notification.resource_id}",
                "version": {"$lt": notification.version},
                "state": {"$in": list(UNFINISHED)},
            },
            {"_id": 1, "due_at": 1},
            sort=[("version", ASCENDING)],
        )
        if earlier is not None:  # it waits as long as the version before it, behind it in the due order
            waits_until = earlier.get("due_at")  # a held one has none: it waits for re-activation
            if waits_until is not None and waits_until > notification.due_at:
                await self.collection.update_one(
                    {"_id": notification.id, "state": "due"}, {"$max": {"due_at": waits_until}}
                )
            return None
        document = await self.collection.find_one_and_update(
            {"_id": notification.id, "state": "due", "due_at": notification.due_at},
            {"$set": {"due_at": now() + lease, "owner": owner}},
            return_document=ReturnDocument.AFTER,
        )
        return None if document is None else Notification.of(document)

    async def finish(self, notification: Notification, owner: str, state: str, detail: str | None = None) -> bool:
        """``sent``, ``refused`` or ``dropped`` (only while ``owner`` still holds it)."""
        fields: dict[str, Any] = {"state": state, "finished": now(), "attempts": notification.attempts + 1}
        if detail:
            fields["detail"] = detail
        result = await self.collection.update_one(
            {"_id": notification.id, "state": "due", "owner": owner}, {"$set": fields, "$unset": {"due_at": ""}}
        )
        if result.modified_count:  # the next version of the pair, which may have been waiting behind it
            await self.collection.update_many(
                {**self._later(notification), "owner": {"$exists": False}}, {"$min": {"due_at": now()}}
            )
        return bool(result.modified_count)

    async def retry(self, notification: Notification, owner: str, at: datetime, error: str) -> bool:
        """Try again at ``at``; the pair's later versions (sent only after it) wait until then too."""
        result = await self.collection.update_one(
            {"_id": notification.id, "state": "due", "owner": owner},
            {"$set": {"due_at": at, "detail": error}, "$inc": {"attempts": 1}, "$unset": {"owner": ""}},
        )
        if result.modified_count:
            await self.collection.update_many(self._later(notification), {"$max": {"due_at": at}})
        return bool(result.modified_count)

    @staticmethod
    def _later(notification: Notification) -> dict[str, Any]:
        """The due notifications of the same (Subscription, resource) for later versions (the ``order`` index)."""
        return {
            "subscription": notification.subscription,
            "resource": f"{notification.resource_type}/{notification.resource_id}",
            "version": {"$gt": notification.version},
            "state": "due",
        }

    async def hold(self, subscription: str, error: str | None = None, notification: Notification | None = None) -> None:
        """The Subscription is in error: its unsent notifications wait until it is re-activated."""
        if notification is not None:
            await self.collection.update_one(
                {"_id": notification.id},
                {"$set": {"state": "held", "detail": error}, "$inc": {"attempts": 1}, "$unset": {"due_at": ""}},
            )
        await self.collection.update_many(
            {"subscription": subscription, "state": "due"}, {"$set": {"state": "held"}, "$unset": {"due_at": ""}}
        )

    async def release(self, subscription: str) -> int:
        """The Subscription is active again: what it held is due now, with its tries counted afresh."""
        result = await self.collection.update_many(
            {"subscription": subscription, "state": "held"},
            {"$set": {"state": "due", "due_at": now(), "attempts": 0}, "$unset": {"owner": ""}},
        )
        released: int = result.modified_count
        return released

    async def drop_stale(self, channel: str, before: datetime, keep: list[str]) -> int:
        """Due notifications of ``channel`` created before ``before`` whose Subscription nobody listens to here."""
        result = await self.collection.update_many(
            {"channel": channel, "state": "due", "created": {"$lt": before}, "subscription": {"$nin": keep}},
            {
                "$set": {"state": "dropped", "finished": now(), "detail": "no websocket was bound to it"},
                "$unset": {"due_at": ""},
            },
        )
        dropped: int = result.modified_count
        return dropped
