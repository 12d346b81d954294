"""How many token requests failed lately, per client id and per address, shared by every server process.

Counts live in the database (one small document per key and minute, removed by a TTL index), so several
``fhir-fax serve`` processes behind one load balancer refuse a secret-guesser together rather than each
allowing its own quota. The window slides: the previous minute's count weighs in for the part of it that
is still within the last sixty seconds.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from pymongo import UpdateOne

from ..fhir.models import now

FAILURES = "token_failures"


async def ensure_indexes(database: Any) -> None:
    await database[FAILURES].create_index("expires", name="expiry", expireAfterSeconds=0)


class FailureLimiter:
    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute

    async def blocked(self, database: Any, *keys: str) -> bool:
        """Has any of ``keys`` failed ``per_minute`` times in the last sixty seconds (estimated)?"""
        minute, elapsed = divmod(time.time(), 60)
        minute = int(minute)
        ids = [f"{key}|{m}" for key in keys for m in (minute, minute - 1)]
        counts = {d["_id"]: d["count"] async for d in database[FAILURES].find({"_id": {"$in": ids}})}
        for key in keys:
            recent = counts.get(f"{key}|{minute}", 0) + counts.get(f"{key}|{minute - 1}", 0) * (1 - elapsed / 60)
            if recent >= self.per_minute:
                return True
        return False

    async def failed(self, database: Any, *keys: str) -> None:
        minute = int(time.time() // 60)
        expires = now() + timedelta(minutes=3)
        await database[FAILURES].bulk_write(
            [
                UpdateOne(
                    {"_id": f"{key}|{minute}"},
                    {"$inc": {"count": 1}, "$setOnInsert": {"expires": expires}},
                    upsert=True,
                )
                for key in keys
            ],
            ordered=False,
        )
