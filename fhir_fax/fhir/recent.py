"""The stored documents this process wrote last, so that a server-side change can start from one unread.

A status change of a fax (``ResourceStore.modify``) reads the Communication, copies it to history and replaces
it on the condition that it is still the version read. When this process wrote that version itself moments
before (the send's QUEUED version, the worker's PROCESSING one), the read tells it nothing new: the copy kept
here is what the database holds, unless someone else wrote since. The replace's condition (the version, and the
Subscription mark the copy carries) finds that out, and the change then reads the resource and starts again, so
a stale copy costs a failed write, never a lost or a wrong one. A mark this process's own dispatcher clears is
cleared on the copy too (``amend``); one another process clears makes the copy miss once.

Copies are kept as BSON, encoded when written and decoded when used: what a caller later does to the
dictionaries it was given cannot change them, and a decoded copy is exactly what a read would return (times to
the millisecond, in UTC). Only writes known to be committed are kept: a write in a transaction is held aside
until its caller says the transaction committed (``committed``), so a copy never describes a version that a
rolled-back transaction wrote.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC
from typing import Any

from bson import CodecOptions, decode, encode

KEPT = 1024  # documents kept (a few KB each), the least recently written dropped first
HELD = 256  # writes of transactions not yet said to be committed (a rolled-back one is dropped in time)
CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, tzinfo=UTC)


class RecentWrites:
    """``types``: those the server itself changes after writing them (a fax's Communication, a Task, a Subscription);
    writes of other types are not kept."""

    def __init__(self, types: frozenset[str], kept: int = KEPT) -> None:
        self.types = types
        self.kept = kept
        self._documents: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._held: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def written(self, resource_type: str, document: dict[str, Any], *, in_transaction: bool = False) -> None:
        """``document`` (as stored) was written; in a transaction, it is kept once ``committed`` is called."""
        if resource_type not in self.types:
            return
        key = (resource_type, str(document["_id"]))
        self._documents.pop(key, None)  # the older copy is wrong either way
        shelf, bound = (self._held, HELD) if in_transaction else (self._documents, self.kept)
        shelf[key] = encode(document, codec_options=CODEC)
        shelf.move_to_end(key)
        while len(shelf) > bound:
            shelf.popitem(last=False)

    def committed(self, resource_type: str, resource_id: str) -> None:
        """The transaction that wrote ``resource_id`` committed: its copy may be used."""
        data = self._held.pop((resource_type, resource_id), None)
        if data is not None:
            self._documents[(resource_type, resource_id)] = data
            while len(self._documents) > self.kept:
                self._documents.popitem(last=False)

    def take(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The kept copy of the resource's last write by this process, or None; it is dropped until written again."""
        data = self._documents.pop((resource_type, resource_id), None)
        return None if data is None else decode(data, codec_options=CODEC)

    def forget(self, resource_type: str, resource_id: str) -> None:
        self._documents.pop((resource_type, resource_id), None)
        self._held.pop((resource_type, resource_id), None)

    def amend(self, resource_type: str, resource_id: str, change: Callable[[dict[str, Any]], bool]) -> None:
        """Apply to the kept copy a change written to the database without a new version (``change`` says
        whether it applies to that copy)."""
        key = (resource_type, resource_id)
        for shelf in (self._documents, self._held):
            data = shelf.get(key)
            if data is None:
                continue
            document = decode(data, codec_options=CODEC)
            if change(document):
                shelf[key] = encode(document, codec_options=CODEC)
