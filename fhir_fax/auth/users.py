"""People who sign in at the authorization endpoint (collection ``auth_users``).

A user has a username, an argon2id password hash (argon2-cffi, RFC 9106 low-memory parameters), an optional
``fhirUser`` (the Practitioner, PractitionerRole, Patient or RelatedPerson they are), an access policy in the
same language as clients (``policies.py``) and a ``disabled`` flag. The policy is what every token issued for
them can at most do: a SMART app's token is the user's policy narrowed by the app's and the granted scopes.

Hashing is slow on purpose, so it runs in the secret-hashing threads (``clients.HASHING``), never on the event
loop. Checking a password costs the same whether or not the user exists, so sign-in failures do not tell
which usernames are taken.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pymongo.errors import DuplicateKeyError

from ..fhir.models import now
from .clients import ALLOW_EVERYTHING, HASHING
from .policies import PolicyError, parse_policy
from .records import Records

COLLECTION = "auth_users"
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
FHIR_USER = re.compile(r"(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}")
HASHER = PasswordHasher()
MIN_PASSWORD = 8


class UserError(ValueError):
    """A username, password, fhirUser or policy that cannot be used (the message says why)."""


def check_fhir_user(reference: str | None) -> str | None:
    if reference is not None and not FHIR_USER.fullmatch(reference):
        raise UserError(
            f"fhirUser {reference!r} must be a Practitioner, PractitionerRole, Patient or RelatedPerson "
            "reference, such as Practitioner/123."
        )
    return reference


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"A password needs at least {MIN_PASSWORD} characters.")
    return password


async def _in_hashing_thread(work: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(HASHING.executor, work, *args)


def _verify(hashed: str, password: str) -> bool:
    try:
        return HASHER.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


_UNKNOWN_USER_HASH = HASHER.hash(uuid.uuid4().hex)  # checked against when there is no such user (same work)


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The user as listings show it: never the hash."""
    return {
        "id": record["_id"],
        "username": record["username"],
        "fhirUser": record.get("fhirUser"),
        "accessPolicy": record["accessPolicy"],
        "disabled": bool(record.get("disabled")),
    }


class Users(Records):
    def __init__(self, database: Any) -> None:
        super().__init__(database, COLLECTION)

    async def ensure_indexes(self) -> None:
        await self.collection.create_index("username", name="username", unique=True)

    async def create(
        self, username: str, password: str, policy: dict[str, Any], *, fhir_user: str | None = None
    ) -> dict[str, Any]:
        if not USERNAME.fullmatch(username):
            raise UserError(
                "A username is 1-100 letters, digits, '.', '_', '@' or '-', starting with a letter or digit."
            )
        check_password(password)
        check_fhir_user(fhir_user)
        try:
            parse_policy(policy)
        except PolicyError as error:
            raise UserError(f"The access policy is not valid: {error}") from None
        record = {
            "_id": str(uuid.uuid4()),
            "username": username,
            "passwordHash": await _in_hashing_thread(HASHER.hash, password),
            "fhirUser": fhir_user,
            "accessPolicy": policy,
            "disabled": False,
            "created": now(),
        }
        try:
            await self.collection.insert_one(record)
        except DuplicateKeyError:
            raise UserError(f"There is already a user {username!r}.") from None
        return record

    async def authenticate(self, username: str, password: str) -> dict[str, Any] | None:
        """The enabled user whose password this is, else None (the same work either way)."""
        record = await self.by_username(username) if USERNAME.fullmatch(username) else None
        hashed = record["passwordHash"] if record else _UNKNOWN_USER_HASH
        matches = await _in_hashing_thread(_verify, hashed, password)
        return record if matches and record and not record.get("disabled") else None

    async def by_username(self, username: str) -> dict[str, Any] | None:
        record: dict[str, Any] | None = await self.collection.find_one({"username": username})
        return record

    async def set_password(self, username: str, password: str) -> bool:
        check_password(password)
        hashed = await _in_hashing_thread(HASHER.hash, password)
        result = await self.collection.update_one(
            {"username": username}, {"$set": {"passwordHash": hashed, "updated": now()}}
        )
        return bool(result.matched_count)

    async def set_disabled(self, username: str, disabled: bool = True) -> bool:
        result = await self.collection.update_one(
            {"username": username}, {"$set": {"disabled": disabled, "updated": now()}}
        )
        return bool(result.matched_count)

    async def delete(self, username: str) -> bool:
        deleted: int = (await self.collection.delete_one({"username": username})).deleted_count
        return deleted == 1

    async def ensure_bootstrap(self, username: str, password: str) -> None:
        """The admin user of FHIR_FAX_BOOTSTRAP_USER/_PASSWORD: created, or reset to that password and policy."""
        record = await self.by_username(username)
        if record is None:
            try:
                await self.create(username, password, ALLOW_EVERYTHING)
            except UserError:
                if await self.by_username(username) is None:  # not a concurrent start-up that created it first
                    raise
            return
        if await self.authenticate(username, password) is None or record["accessPolicy"] != ALLOW_EVERYTHING:
            hashed = await _in_hashing_thread(HASHER.hash, password)
            await self.collection.update_one(
                {"_id": record["_id"]},
                {"$set": {"passwordHash": hashed, "accessPolicy": ALLOW_EVERYTHING, "disabled": False}},
            )
