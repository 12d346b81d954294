"""What the stores of sign-in parties (users, SMART apps) share: records by id, and all of them in order."""

from __future__ import annotations

from typing import Any


class Records:
    """One collection of records, each with an ``_id`` and a ``created`` time; subclasses add their own keys."""

    def __init__(self, database: Any, collection: str) -> None:
        self.collection = database[collection]

    async def get(self, record_id: str) -> dict[str, Any] | None:
        record: dict[str, Any] | None = await self.collection.find_one({"_id": record_id})
        return record

    async def list(self) -> list[dict[str, Any]]:
        """Every record, oldest first (the order the command line and the API list them in)."""
        records: list[dict[str, Any]] = await self.collection.find({}).sort("created", 1).to_list(None)
        return records
