"""Machine clients (client id + secret), each with an access policy (collection ``auth_clients``).

Secrets are shown once and stored only as a salted scrypt hash. scrypt is meant to be slow (about 50 ms and
16 MB a hash), so it runs in a small thread pool of its own, never on the event loop: a burst of token
requests then waits for a hashing thread instead of stalling every other request, and cannot take more
than ``HASHING_THREADS`` cores or the default pool other work uses (see ``HashingPool``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt

from ..fhir.models import now
from .policies import PolicyError, parse_policy

COLLECTION = "auth_clients"
ALLOW_EVERYTHING = {"rule": [{"resource": "*", "action": "*", "effect": "Allow"}]}


def hash_secret(secret: str, salt: bytes) -> bytes:
    """The scrypt hash (blocking; async code uses ``HASHING``)."""
    return hashlib.scrypt(secret.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


class HashingBusy(Exception):
    """Too many secret checks are already waiting for a hashing thread; retry in a moment."""


class HashingPool:
    """scrypt off the event loop, in threads of its own (hashlib releases the GIL while it hashes).

    Secret checks of token requests, which anyone can send, may only queue up to ``max_waiting``: beyond
    that they are refused at once (``HashingBusy``), so a flood costs neither unbounded memory nor an
    unbounded wait for the real clients behind it. Hashing a new secret (creating, rotating) always waits.
    """

    def __init__(self, threads: int, max_waiting: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fhir-fax-hash")
        self.max_waiting = max_waiting
        self.waiting = 0

    async def hash(self, secret: str, salt: bytes, *, shed: bool = False) -> bytes:
        if shed and self.waiting >= self.max_waiting:
            raise HashingBusy("The server is busy checking other secrets; retry in a moment.")
        self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, _hash, secret, salt)
        finally:
            self.waiting -= 1


def _hash(secret: str, salt: bytes) -> bytes:
    return hash_secret(secret, salt)  # looked up when called, so the tests can watch which thread runs it


HASHING_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))  # half the cores: the loop and database keep some
HASHING = HashingPool(HASHING_THREADS, max_waiting=64)


def check_jwks(jwks: Any) -> dict[str, Any]:
    """A client's public keys for private_key_jwt: ``{"keys": [JWK with kid, ...]}``; PolicyError otherwise."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise PolicyError('jwks must be {"keys": [...]} with at least one public key.')
    for key in jwks["keys"]:
        if not isinstance(key, dict) or not key.get("kid") or "d" in key:
            raise PolicyError("each jwks key needs a kid and must be a public key (no private parts).")
        try:
            jwt.PyJWK(key)
        except jwt.PyJWTError as error:
            raise PolicyError(f"jwks key {key.get('kid')!r} is not a usable key: {error}") from None
    return jwks


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The client as the M2M API shows it: never the secret or its hash."""
    return {
        "id": record["_id"],
        "clientId": record["clientId"],
        "name": record["name"],
        "description": record.get("description"),
        "accessPolicy": record["accessPolicy"],
        **({"jwks": record["jwks"]} if record.get("jwks") else {}),
    }


class Clients:
    def __init__(self, database: Any) -> None:
        self.collection = database[COLLECTION]

    async def ensure_indexes(self) -> None:
        await self.collection.create_index("clientId", name="clientId", unique=True)

    async def create(
        self,
        name: str,
        policy: dict[str, Any],
        *,
        description: str | None = None,
        client_id: str | None = None,
        secret: str | None = None,
        jwks: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], str]:
        """A new client and its secret (the only time the secret is seen); ``jwks`` enables private_key_jwt."""
        parse_policy(policy)
        secret = secret or new_secret()
        salt = secrets.token_bytes(16)
        record = {
            "_id": str(uuid.uuid4()),
            "clientId": client_id or uuid.uuid4().hex,
            "name": name,
            "description": description,
            "accessPolicy": policy,
            "salt": salt,
            "secretHash": await HASHING.hash(secret, salt),
            "created": now(),
        }
        if jwks:
            record["jwks"] = check_jwks(jwks)
        await self.collection.insert_one(record)
        return record, secret

    async def authenticate(self, client_id: str, secret: str) -> dict[str, Any] | None:
        """The client if ``secret`` is its secret, else None (same work either way); HashingBusy under a flood."""
        record = await self.collection.find_one({"clientId": client_id})
        salt = bytes(record["salt"]) if record else b"\x00" * 16
        expected = bytes(record["secretHash"]) if record else b"\x00" * 32
        matches = hmac.compare_digest(await HASHING.hash(secret, salt, shed=True), expected)
        return record if matches and record else None

    async def by_client_id(self, client_id: str) -> dict[str, Any] | None:
        record: dict[str, Any] | None = await self.collection.find_one({"clientId": client_id})
        return record

    async def list(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = await self.collection.find({}).sort("created", 1).to_list(None)
        return records

    async def rotate_secret(self, record_id: str) -> str | None:
        secret = new_secret()
        salt = secrets.token_bytes(16)
        hashed = await HASHING.hash(secret, salt)
        result = await self.collection.update_one(
            {"_id": record_id}, {"$set": {"salt": salt, "secretHash": hashed, "updated": now()}}
        )
        return secret if result.matched_count else None

    async def get(self, record_id: str) -> dict[str, Any] | None:
        record: dict[str, Any] | None = await self.collection.find_one({"_id": record_id})
        return record

    async def update(self, record_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        """Change name, description or access policy; the new policy applies to the next request."""
        if "accessPolicy" in changes:
            parse_policy(changes["accessPolicy"])
        if "jwks" in changes:
            check_jwks(changes["jwks"])
        if changes:
            await self.collection.update_one({"_id": record_id}, {"$set": {**changes, "updated": now()}})
        return await self.get(record_id)

    async def delete(self, record_id: str) -> bool:
        deleted: int = (await self.collection.delete_one({"_id": record_id})).deleted_count
        return deleted == 1

    async def ensure_bootstrap(self, client_id: str, secret: str) -> None:
        """The admin client of FHIR_FAX_BOOTSTRAP_CLIENT_ID/_SECRET: created, or reset to the configured secret."""
        record = await self.by_client_id(client_id)
        if record is None:
            await self.create("bootstrap admin", ALLOW_EVERYTHING, client_id=client_id, secret=secret)
        elif await self.authenticate(client_id, secret) is None or record["accessPolicy"] != ALLOW_EVERYTHING:
            salt = secrets.token_bytes(16)
            hashed = await HASHING.hash(secret, salt)
            await self.collection.update_one(
                {"_id": record["_id"]},
                {"$set": {"salt": salt, "secretHash": hashed, "accessPolicy": ALLOW_EVERYTHING}},
            )
