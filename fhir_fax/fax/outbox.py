"""Durable fax jobs (collection ``fax_jobs``): written in the same transaction as their Communication.

A job is the promise to deliver one Communication's fax. It is inserted together with
the Communication, so there is never a Communication without a job (a fax that would
never move) nor a job without its Communication (a fax nobody can see).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pymongo import ASCENDING

COLLECTION = "fax_jobs"


@dataclass
class FaxJob:
    """One outbound fax to deliver; ``_id`` is the fax id written in ``Communication.identifier``."""

    fax_id: str
    communication_id: str
    media: str
    quality: str
    from_number: str
    to_number: str
    created: datetime
    state: str = "queued"
    attempts: int = 0
    next_attempt_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires: datetime | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        data = asdict(self)
        data["_id"] = data.pop("fax_id")
        data["next_attempt_at"] = self.next_attempt_at or self.created
        return data


class Outbox:
    def __init__(self, database: Any) -> None:
        self.collection = database[COLLECTION]

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("state", ASCENDING), ("next_attempt_at", ASCENDING)], name="due")
        await self.collection.create_index("communication_id", name="communication", unique=True)

    async def enqueue(self, job: FaxJob, *, session: Any = None) -> None:
        await self.collection.insert_one(job.document(), session=session)

    async def for_communication(self, communication_id: str) -> dict[str, Any] | None:
        return await self.collection.find_one({"communication_id": communication_id})
