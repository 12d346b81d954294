"""Presigned Z3 URLs: HMAC-SHA256 over the action, bucket, key and expiry; no bearer token needed.

A URL is bound to one object and one action and expires (15 minutes by default). The signing
key is generated once and kept in the database (``server_secrets``), so every server and worker
process signs and verifies alike, and a restart does not invalidate URLs already handed out.

An upload URL also carries a random ``nonce`` under the signature and is good for one upload: the
first PUT records the nonce (``claim_upload``, an insert that only one caller can win, kept until
the URL expires), so a second PUT of a leaked or replayed URL is refused and stores nothing. A
upload URL made for a token with a patient in context carries that ``patient`` under the signature too. A
download URL may carry a ``version`` under the signature: it then returns that upload and nothing
else, whatever the key holds now (how a carrier fetches, and a client reads, a faxed document).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from pymongo.errors import DuplicateKeyError

from ..fhir.inputs import ascii_int
from .locations import Z3Location

SECRETS = "server_secrets"
KEY_ID = "z3-url-signing"
EXPIRES, SIGNATURE, ACTION, NONCE, VERSION = "expires", "signature", "action", "nonce", "version"
PATIENT = "patient"  # an upload URL's uploader's patient in context, kept with the upload (``uploadedFor``)
PATIENT_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
USED_UPLOAD_URLS = "z3_used_upload_urls"
TOKEN = re.compile(r"[A-Za-z0-9_\-]{1,64}")


async def signing_key(database: Any) -> bytes:
    """The shared signing key, created on first use."""
    record = await database[SECRETS].find_one({"_id": KEY_ID})
    if record is None:
        with contextlib.suppress(DuplicateKeyError):  # another process created it first
            await database[SECRETS].insert_one({"_id": KEY_ID, "key": secrets.token_bytes(32)})
        record = await database[SECRETS].find_one({"_id": KEY_ID})
    return bytes(record["key"])


def _signature(key: bytes, action: str, location: Z3Location, expires: int, bound: str = "") -> str:
    """HMAC of the action, object, expiry and what else the URL is bound to (``nonce=..`` or ``version=..``)."""
    message = f"{action}\n{location.bucket}\n{location.key}\n{expires}" + (f"\n{bound}" if bound else "")
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def presign(
    key: bytes,
    project_api_base: str,
    location: Z3Location,
    action: str,
    ttl_seconds: int,
    *,
    version: str | None = None,
    patient: str | None = None,
) -> str:
    """``{project_api}/z3/{bucket}/{key}?action=..&expires=..[&nonce=..|&version=..]&signature=..``.

    Upload URLs always get a fresh nonce (one upload each); download URLs name a version when given one.
    """
    expires = int(time.time()) + ttl_seconds
    path = f"{project_api_base.rstrip('/')}/z3/{location.bucket}/{quote(location.key)}"
    bound = ""
    if action == "upload":
        bound = f"{NONCE}={secrets.token_urlsafe(16)}"
        if patient is not None:  # under the signature: an upload cannot be passed off as another patient's
            bound += f"&{PATIENT}={patient}"
    elif version is not None:
        bound = f"{VERSION}={version}"
    signature = _signature(key, action, location, expires, bound)
    extra = f"&{bound}" if bound else ""
    return f"{path}?{ACTION}={action}&{EXPIRES}={expires}{extra}&{SIGNATURE}={signature}"


def verify(
    key: bytes,
    location: Z3Location,
    action: str,
    expires: str,
    signature: str,
    *,
    nonce: str | None = None,
    version: str | None = None,
    patient: str | None = None,
) -> str | None:
    """None when the signature is valid and current, else why not."""
    moment = ascii_int(expires)
    if moment is None:
        return "The signed URL is malformed (expires)."
    if moment < time.time():
        return "The signed URL has expired; ask for a new one."
    bound = ""
    if action == "upload":
        if nonce is None or not TOKEN.fullmatch(nonce):
            return "The signed upload URL is malformed (nonce); ask for a new one."
        bound = f"{NONCE}={nonce}"
        if patient is not None:
            if not PATIENT_ID.fullmatch(patient):
                return "The signed upload URL is malformed (patient); ask for a new one."
            bound += f"&{PATIENT}={patient}"
    elif version is not None:
        if not TOKEN.fullmatch(version):
            return "The signed URL is malformed (version)."
        bound = f"{VERSION}={version}"
    expected = _signature(key, action, location, moment, bound)
    if not hmac.compare_digest(expected, signature):
        return "The signed URL's signature does not match this object and action."
    return None


async def claim_upload(database: Any, nonce: str, expires: str) -> bool:
    """Record the one use of an upload URL; False when it was used already (one insert decides, race-free).

    Kept until the URL expires (a TTL index on ``expires``): after that the signature refuses it anyway.
    """
    try:
        await database[USED_UPLOAD_URLS].insert_one(
            {"_id": nonce, "expires": datetime.fromtimestamp(int(expires), UTC), "used": datetime.now(UTC)}
        )
    except DuplicateKeyError:
        return False
    return True


async def release_upload(database: Any, nonce: str) -> None:
    """An upload that stored nothing (too large, or the client went away) gives its URL back for a retry."""
    await database[USED_UPLOAD_URLS].delete_one({"_id": nonce})
