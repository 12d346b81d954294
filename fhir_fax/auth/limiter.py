"""How many token requests failed lately, per client id *and* caller address, shared by every server process.

The count is per pair, so a guesser locks out only its own (client, address): the real client, calling
from its own address, is never refused because someone elsewhere guessed its secret. An IPv6 caller counts
by its /64, the block one subscriber is given, so rotating the low bits of the address starts no new count.

An attempt first takes its place (an atomic ``$inc`` that returns the new count) and is only then judged,
so concurrent guesses cannot all pass one check before any of them is counted; a success gives its place
back. Attempts made while locked are counted too: a guesser that keeps going stays locked (back-off), one
that stops is let in again within two minutes.

Counts live in the database (one small document per pair and minute, removed by a TTL index), so several
``fhir-fax serve`` processes behind one load balancer share them. The window slides: the previous minute's
count weighs in for the part of it that is still within the last sixty seconds.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from ..fhir.models import now

FAILURES = "token_failures"
MAX_CLIENT_ID = 200  # longer claimed ids share a count with their prefix (only the claimant's own)


async def ensure_indexes(database: Any) -> None:
    await database[FAILURES].create_index("expires", name="expiry", expireAfterSeconds=0)


def address_key(address: str | None) -> str:
    """The address a count is kept for: IPv4 as is, IPv6 by its /64, anything else by its text."""
    if not address:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address[:100]
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


@dataclass(frozen=True)
class Attempt:
    """A place taken in a pair's count; ``allowed`` says whether the secret may be checked at all."""

    document_id: str
    allowed: bool


class FailureLimiter:
    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute

    @staticmethod
    def key(client_id: str | None, address: str | None) -> str:
        return f"{(client_id or '-')[:MAX_CLIENT_ID]}@{address_key(address)}"

    async def attempt(self, database: Any, client_id: str | None, address: str | None) -> Attempt:
        """Count this attempt for (client, address), then say whether it is within the limit."""
        minute, elapsed = divmod(time.time(), 60)
        key = self.key(client_id, address)
        current, previous = f"{key}|{int(minute)}", f"{key}|{int(minute) - 1}"
        count = await self._increment(database, current)
        before = await database[FAILURES].find_one({"_id": previous})
        recent = count + (before["count"] if before else 0) * (1 - elapsed / 60)
        return Attempt(current, allowed=recent <= self.per_minute)

    async def succeeded(self, database: Any, attempt: Attempt) -> None:
        """The secret was right: the attempt was not a failure, give its place back."""
        await database[FAILURES].update_one({"_id": attempt.document_id}, {"$inc": {"count": -1}})

    @staticmethod
    async def _increment(database: Any, document_id: str) -> int:
        update = {"$inc": {"count": 1}, "$setOnInsert": {"expires": now() + timedelta(minutes=3)}}
        for _ in range(3):  # two first attempts may both try to insert; the loser then increments
            try:
                document = await database[FAILURES].find_one_and_update(
                    {"_id": document_id}, update, upsert=True, return_document=ReturnDocument.AFTER
                )
                return int(document["count"])
            except DuplicateKeyError:
                continue
        raise RuntimeError(f"could not count a token attempt for {document_id}")
