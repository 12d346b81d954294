"""What the SMART authorization server remembers between requests, all in the database (every server process
sees the same): sign-ins in progress, authorization codes, grants, refresh tokens and EHR launch contexts.

- *Interactions* (``smart_interactions``): one authorization request between its GET and the final redirect:
  the validated parameters, the CSRF token, the signed-in user, the scopes consented to. Lives ``sign_in_seconds``.
- *Codes* (``smart_codes``): stored by their SHA-256 only; single use. Taking a code is a compare-and-set of
  ``used`` from false to true, so two concurrent exchanges cannot both win; a code presented again is a replay,
  and the grant it started (every token issued from it) is revoked. Kept ten minutes past expiry to notice that.
- *Grants* (``smart_grants``): one per code exchanged: the family of every access and refresh token that came
  from it. The guard checks a user token's grant on every request, so revoking it stops all of them at once.
- *Refresh tokens* (``smart_refresh_tokens``): by SHA-256; each use marks it used (compare-and-set) and issues a
  new one in the same family. An old one used again revokes the family (RFC 9700 refresh token rotation).
- *Launches* (``smart_launches``): the context an EHR created with ``POST /oauth/launch``; an hour to start, then
  single use. A launch belongs to one app (``clientId``): the one the EHR named, else the first to present it. Its
  id travels in a URL (history, Referer), so once an app's code is issued for it, it is used up: a copy is useless.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from ..fhir.models import now

INTERACTIONS = "smart_interactions"
CODES = "smart_codes"
GRANTS = "smart_grants"
REFRESH_TOKENS = "smart_refresh_tokens"
LAUNCHES = "smart_launches"
CODE_MEMORY = timedelta(minutes=10)  # how long after expiry a replayed code is still recognised
LAUNCH_LIFETIME = timedelta(hours=1)


async def ensure_smart_indexes(database: Any) -> None:
    from .apps import Apps
    from .users import Users

    await Users(database).ensure_indexes()
    await Apps(database).ensure_indexes()
    for collection in (INTERACTIONS, CODES, GRANTS, REFRESH_TOKENS, LAUNCHES):
        await database[collection].create_index("removeAt", name="expiry", expireAfterSeconds=0)
    await database[REFRESH_TOKENS].create_index("family", name="family")


def digest(secret: str) -> str:
    """What is stored of a code or refresh token: its SHA-256 (they are random, so no salt is needed)."""
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def opaque() -> str:
    return secrets.token_urlsafe(32)


class SmartStore:
    def __init__(self, database: Any) -> None:
        self.database = database

    # -- interactions ----------------------------------------------------------------------------------

    async def begin(self, params: list[list[str]], lifetime: int) -> dict[str, Any]:
        record = {
            "_id": opaque(),
            "csrf": opaque(),
            "params": params,
            "user": None,
            "removeAt": now() + timedelta(seconds=lifetime),
        }
        await self.database[INTERACTIONS].insert_one(record)
        return record

    async def interaction(self, interaction_id: str) -> dict[str, Any] | None:
        record: dict[str, Any] | None = await self.database[INTERACTIONS].find_one(
            {"_id": interaction_id, "removeAt": {"$gt": now()}}
        )
        return record

    async def update_interaction(self, interaction_id: str, changes: dict[str, Any]) -> None:
        await self.database[INTERACTIONS].update_one({"_id": interaction_id}, {"$set": changes})

    async def finish(self, interaction_id: str) -> bool:
        """End an interaction; False when it had already ended (a form posted twice)."""
        deleted: int = (await self.database[INTERACTIONS].delete_one({"_id": interaction_id})).deleted_count
        return deleted == 1

    # -- codes -----------------------------------------------------------------------------------------

    async def save_code(self, code: str, fields: dict[str, Any], lifetime: int) -> None:
        expires = now() + timedelta(seconds=lifetime)
        record = {**fields, "_id": digest(code), "used": False, "expires": expires, "removeAt": expires + CODE_MEMORY}
        await self.database[CODES].insert_one(record)

    async def take_code(self, code: str, client_id: str) -> tuple[dict[str, Any] | None, str]:
        """The code's record if this is its first use within its lifetime, else None and why (a replay revokes).

        Another app presenting the code learns nothing and uses nothing up.
        """
        key = digest(code)
        taken = await self.database[CODES].update_one(
            {"_id": key, "clientId": client_id, "used": False, "expires": {"$gt": now()}}, {"$set": {"used": True}}
        )
        record: dict[str, Any] | None = await self.database[CODES].find_one({"_id": key, "clientId": client_id})
        if taken.modified_count == 1 and record is not None:
            return record, ""
        if record is None:
            return None, "unknown"
        if record.get("used"):
            await self.revoke_grant(record["family"], "authorization code used twice")
            return None, "reused"
        return None, "expired"

    # -- grants (token families) -----------------------------------------------------------------------

    async def start_grant(self, family: str, fields: dict[str, Any], lasts: timedelta) -> None:
        record = {**fields, "_id": family, "revoked": None, "created": now(), "removeAt": now() + lasts}
        await self.database[GRANTS].update_one({"_id": family}, {"$setOnInsert": record}, upsert=True)

    async def extend_grant(self, family: str, lasts: timedelta) -> None:
        await self.database[GRANTS].update_one({"_id": family}, {"$max": {"removeAt": now() + lasts}})

    async def grant(self, family: str) -> dict[str, Any] | None:
        record: dict[str, Any] | None = await self.database[GRANTS].find_one({"_id": family})
        return record

    async def revoke_grant(self, family: str, reason: str) -> None:
        """Every token of the family stops working: the access tokens (the guard checks) and refresh tokens."""
        when = now()
        revoked = {"at": when, "reason": reason}
        first = await self.database[GRANTS].update_one({"_id": family, "revoked": None}, {"$set": {"revoked": revoked}})
        if not first.matched_count:  # already revoked (keep the first reason), or never started: record it
            await self.database[GRANTS].update_one(
                {"_id": family},
                {"$setOnInsert": {"revoked": revoked, "created": when, "removeAt": when + timedelta(days=1)}},
                upsert=True,
            )
        await self.database[REFRESH_TOKENS].update_many({"family": family}, {"$set": {"used": True}})

    # -- refresh tokens --------------------------------------------------------------------------------

    async def save_refresh(self, token: str, fields: dict[str, Any], lasts: timedelta) -> None:
        expires = now() + lasts
        record = {**fields, "_id": digest(token), "used": False, "expires": expires, "removeAt": expires}
        await self.database[REFRESH_TOKENS].insert_one(record)

    async def usable_refresh(self, token: str, client_id: str) -> dict[str, Any] | None:
        """The refresh token's record if this app may use it now (not used, not expired, grant not revoked).

        A token used before is a replay: its whole family is revoked.
        """
        record: dict[str, Any] | None = await self.database[REFRESH_TOKENS].find_one(
            {"_id": digest(token), "clientId": client_id}
        )
        if record is None or record["expires"].replace(tzinfo=None) <= now().replace(tzinfo=None):
            return None
        if record["used"]:
            await self.revoke_grant(record["family"], "refresh token used twice")
            return None
        grant = await self.grant(record["family"])
        return None if grant is None or grant.get("revoked") else record

    async def use_refresh(self, record: dict[str, Any]) -> bool:
        """Use the token up (compare-and-set); False when another request used it first (that one is a replay)."""
        taken = await self.database[REFRESH_TOKENS].update_one(
            {"_id": record["_id"], "used": False}, {"$set": {"used": True}}
        )
        if taken.modified_count == 1:
            return True
        await self.revoke_grant(record["family"], "refresh token used twice")
        return False

    async def peek_refresh(self, token: str) -> dict[str, Any] | None:
        """A refresh token's record without using it (introspection, revocation)."""
        record: dict[str, Any] | None = await self.database[REFRESH_TOKENS].find_one({"_id": digest(token)})
        return record

    # -- launches --------------------------------------------------------------------------------------

    async def create_launch(self, context: dict[str, Any], by: str, client_id: str | None = None) -> str:
        launch = opaque()
        record: dict[str, Any] = {
            "_id": launch, "context": context, "by": by, "used": False, "created": now(),
            "removeAt": now() + LAUNCH_LIFETIME,
        }  # fmt: skip
        if client_id is not None:
            record["clientId"] = client_id
        await self.database[LAUNCHES].insert_one(record)
        return launch

    async def launch(self, launch: str) -> dict[str, Any] | None:
        record = await self.database[LAUNCHES].find_one(
            {"_id": launch, "removeAt": {"$gt": now()}, "used": {"$ne": True}}
        )
        return None if record is None else dict(record["context"])

    async def claim_launch(self, launch: str, client_id: str) -> str | None:
        """Bind the launch to this app if no app has it yet; None when the app may use it, else why not."""
        live = {"_id": launch, "removeAt": {"$gt": now()}}
        await self.database[LAUNCHES].update_one(
            {**live, "clientId": {"$exists": False}}, {"$set": {"clientId": client_id}}
        )
        record = await self.database[LAUNCHES].find_one(live)
        if record is None:
            return "The launch is unknown or has expired; launch the app from the EHR again."
        if record.get("clientId") != client_id:
            return "The launch was made for another app; launch this app from the EHR."
        if record.get("used"):
            return "The launch was already used; launch the app from the EHR again."
        return None

    async def use_launch(self, launch: str, client_id: str) -> bool:
        """Use the launch up (compare-and-set) as a code is issued for it; False when it was used already."""
        taken = await self.database[LAUNCHES].update_one(
            {"_id": launch, "clientId": client_id, "used": {"$ne": True}, "removeAt": {"$gt": now()}},
            {"$set": {"used": True}},
        )
        return bool(taken.modified_count == 1)
