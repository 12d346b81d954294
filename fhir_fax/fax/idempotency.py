"""Idempotency keys for sends (collection ``fax_idempotency``, ``_id`` = the key).

The record is written in the same transaction as the Communication it answers, so a key
either has its complete first response or nothing at all. Records expire after
``FHIR_FAX_IDEMPOTENCY_TTL_SECONDS`` (a day by default), longer than any client retries.
"""

from __future__ import annotations

from typing import Any

from ..errors import Unprocessable
from ..fhir.models import now

COLLECTION = "fax_idempotency"


class IdempotencyRecords:
    def __init__(self, database: Any, ttl_seconds: int = 86_400) -> None:
        self.collection = database[COLLECTION]
        self.ttl_seconds = ttl_seconds

    async def ensure_indexes(self) -> None:
        await self.collection.create_index("created", name="expiry", expireAfterSeconds=self.ttl_seconds)

    async def replay(self, key: str, fingerprint: str) -> dict[str, Any] | None:
        """The first response for ``key``; None if the key is new; 422 if it came with another request."""
        record = await self.collection.find_one({"_id": key})
        if record is None:
            return None
        if record["fingerprint"] != fingerprint:
            shown = key.rsplit("\x1f", 1)[-1]
            raise Unprocessable(
                f"The idempotency key {shown!r} was already used for a different fax request; send a new key for a "
                "new fax, or repeat the original request unchanged.",
                expression=["Idempotency-Key"],
            )
        response: dict[str, Any] = record["response"]
        return response

    async def remember(self, key: str, fingerprint: str, response: dict[str, Any], *, session: Any) -> None:
        await self.collection.insert_one(
            {"_id": key, "fingerprint": fingerprint, "response": response, "created": now()}, session=session
        )
