"""Presigned Z3 URLs: HMAC-SHA256 over the action, bucket, key and expiry; no bearer token needed.

A URL is bound to one object and one action and expires (15 minutes by default). The signing
key is generated once and kept in the database (``server_secrets``), so every server and worker
process signs and verifies alike, and a restart does not invalidate URLs already handed out.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import time
from typing import Any
from urllib.parse import quote

from pymongo.errors import DuplicateKeyError

from ..fhir.inputs import ascii_int
from .locations import Z3Location

SECRETS = "server_secrets"
KEY_ID = "z3-url-signing"
EXPIRES, SIGNATURE, ACTION = "expires", "signature", "action"


async def signing_key(database: Any) -> bytes:
    """The shared signing key, created on first use."""
    record = await database[SECRETS].find_one({"_id": KEY_ID})
    if record is None:
        with contextlib.suppress(DuplicateKeyError):  # another process created it first
            await database[SECRETS].insert_one({"_id": KEY_ID, "key": secrets.token_bytes(32)})
        record = await database[SECRETS].find_one({"_id": KEY_ID})
    return bytes(record["key"])


def _signature(key: bytes, action: str, location: Z3Location, expires: int) -> str:
    message = f"{action}\n{location.bucket}\n{location.key}\n{expires}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def presign(key: bytes, project_api_base: str, location: Z3Location, action: str, ttl_seconds: int) -> str:
    """``{project_api}/z3/{bucket}/{key}?action=..&expires=..&signature=..``."""
    expires = int(time.time()) + ttl_seconds
    path = f"{project_api_base.rstrip('/')}/z3/{location.bucket}/{quote(location.key)}"
    signature = _signature(key, action, location, expires)
    return f"{path}?{ACTION}={action}&{EXPIRES}={expires}&{SIGNATURE}={signature}"


def verify(key: bytes, location: Z3Location, action: str, expires: str, signature: str) -> str | None:
    """None when the signature is valid and current, else why not."""
    moment = ascii_int(expires)
    if moment is None:
        return "The signed URL is malformed (expires)."
    if moment < time.time():
        return "The signed URL has expired; ask for a new one."
    expected = _signature(key, action, location, moment)
    if not hmac.compare_digest(expected, signature):
        return "The signed URL's signature does not match this object and action."
    return None
