"""How many token requests failed lately, per client id *and* caller address, shared by every server process.

The count is per pair, so a guesser locks out only its own (client, address): the real client, calling
from its own address, is never refused because someone elsewhere guessed its secret. An IPv6 caller counts
by its /64, the block one subscriber is given, so rotating the low bits of the address starts no new count.

An attempt first takes its place (an atomic ``$inc`` of the pair's ``pending`` count), reads the count
back and is only then judged, so concurrent guesses cannot all pass one check before any of them is
counted: the secret is checked only while failures plus checks in flight stay within the limit. An attempt
that would pass that limit only because of checks still in flight waits a moment and tries again (a
client's honest burst of concurrent requests is slowed, not refused); once the failures alone reach it,
the answer is 429 (and 429 with a short Retry-After for a burst still waiting after five seconds, which is
not counted as a failure). Attempts made while locked are counted as failures too: a guesser that keeps going
stays locked (back-off), one that stops is let in again within two minutes.

Counts live in the database (one small document per pair and minute, removed by a TTL index), so several
``fhir-fax serve`` processes behind one load balancer share them. The window slides: the previous minute's
count weighs in for the part of it that is still within the last sixty seconds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

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
    busy: bool = False  # refused only because the pair's checks in flight did not finish in time (not counted)


class FailureLimiter:
    """``attempt`` before checking a secret, then ``failed`` or ``release`` with what it returned."""

    RETRY_SECONDS = (0.05, 0.25)  # a wait while other checks of the same pair are in flight (jittered)
    MAX_WAIT_SECONDS = 5.0

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute

    @staticmethod
    def key(client_id: str | None, address: str | None) -> str:
        return f"{(client_id or '-')[:MAX_CLIENT_ID]}@{address_key(address)}"

    async def attempt(self, database: Any, client_id: str | None, address: str | None) -> Attempt:
        """Count this attempt as in flight for (client, address), then say whether it may go on."""
        key = self.key(client_id, address)
        deadline = time.monotonic() + self.MAX_WAIT_SECONDS
        while True:
            minute, elapsed = divmod(time.time(), 60)
            current, previous = f"{key}|{int(minute)}", f"{key}|{int(minute) - 1}"
            await self._change(database, current, pending=1)
            # Read after the increment: the counts then include this attempt and every one before it (and
            # perhaps later ones too, which only makes the judgement stricter), so no two attempts can both
            # take the last place. (Not findAndModify: the embedded database answers None to concurrent upserts.)
            try:
                found = await self._counts(database, current, previous)
            except BaseException:  # cancelled or failed: do not hold the place for the rest of the minute
                await self._change(database, current, pending=-1)
                raise
            counts, before = found.get(current, {}), found.get(previous, {})
            weight = 1 - elapsed / 60
            failures = counts.get("failed", 0) + before.get("failed", 0) * weight
            in_flight = counts.get("pending", 0) + before.get("pending", 0)
            if failures + 1 > self.per_minute:  # locked, even with nothing else in flight: counts too (back-off)
                await self._change(database, current, pending=-1, failed=1)
                return Attempt(current, allowed=False)
            if failures + in_flight <= self.per_minute:
                return Attempt(current, allowed=True)
            await self._change(database, current, pending=-1)  # over only while others are checked: wait
            if time.monotonic() > deadline:
                return Attempt(current, allowed=False, busy=True)
            await asyncio.sleep(random.uniform(*self.RETRY_SECONDS))

    async def failed(self, database: Any, attempt: Attempt) -> None:
        """The secret was wrong: the attempt counts as a failure."""
        await self._change(database, attempt.document_id, pending=-1, failed=1)

    async def release(self, database: Any, attempt: Attempt) -> None:
        """The secret was right (or could not be checked): the attempt is no longer in flight, and no failure."""
        await self._change(database, attempt.document_id, pending=-1)

    @staticmethod
    async def _change(database: Any, document_id: str, **increments: int) -> None:
        """Add ``increments`` to the counts of one pair and minute (atomic ``$inc``)."""
        update = {"$inc": increments, "$setOnInsert": {"expires": now() + timedelta(minutes=3)}}
        for _ in range(3):  # two first attempts may both try to insert; the loser's update did not happen
            try:
                await database[FAILURES].update_one({"_id": document_id}, update, upsert=True)
                return
            except DuplicateKeyError:
                continue
        raise RuntimeError(f"could not count a token attempt for {document_id}")

    @staticmethod
    async def _counts(database: Any, *document_ids: str) -> dict[str, dict[str, Any]]:
        return {d["_id"]: d async for d in database[FAILURES].find({"_id": {"$in": list(document_ids)}})}
