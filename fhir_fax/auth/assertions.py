"""``private_key_jwt`` client authentication (SMART Backend Services): a client proves itself with a JWT
signed by a key it registered (its ``jwks``), instead of a shared secret.

The assertion must name the client as ``iss`` and ``sub``, the token endpoint as ``aud``, expire within five
minutes, and carry a ``jti`` never seen before (kept until the assertion expires, so it cannot be replayed).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import jwt
from pymongo.errors import DuplicateKeyError

from .clients import Clients

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS384", "ES384", "RS256", "ES256")
MAX_LIFETIME = 300
JTIS = "auth_assertion_jtis"


class AssertionError_(Exception):
    """Why a client assertion is refused (safe to tell the client)."""


async def ensure_indexes(database: Any) -> None:
    await database[JTIS].create_index("expires", name="expiry", expireAfterSeconds=0)


def claimed_client(assertion: str) -> str | None:
    """The client an assertion claims to come from (unverified: it only names whose failure count applies)."""
    try:
        issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        return None
    return issuer if isinstance(issuer, str) else None


async def authenticate_assertion(
    database: Any,
    assertion: str,
    token_endpoint: str,
    lookup: Callable[[str], Awaitable[dict[str, Any] | None]] | None = None,
) -> dict[str, Any]:
    """The client the assertion proves, or AssertionError_ with the reason.

    ``lookup`` finds the client record (with its ``jwks``) by client id: M2M clients by default, SMART apps
    when the authorization server asks.
    """
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise AssertionError_("client_assertion is not a JWT.") from None
    if header.get("alg") not in ALGORITHMS:
        raise AssertionError_(f"client_assertion must be signed with one of {', '.join(ALGORITHMS)}.")
    client_id = unverified.get("iss")
    find = lookup or Clients(database).by_client_id
    record = await find(client_id) if isinstance(client_id, str) else None
    if record is None or not record.get("jwks"):
        raise AssertionError_("Unknown client, or a client without registered keys (jwks).")
    keys = [k for k in record["jwks"].get("keys", []) if k.get("kid") == header.get("kid")]
    if not keys:
        raise AssertionError_("No registered key has the assertion's kid.")
    try:
        claims = jwt.decode(
            assertion,
            jwt.PyJWK(keys[0]).key,
            algorithms=[header["alg"]],
            audience=token_endpoint,
            issuer=client_id,
            options={"require": ["exp", "iss", "sub", "aud", "jti"]},
        )
    except jwt.PyJWTError as error:
        raise AssertionError_(f"client_assertion is not valid: {error}.") from None
    if claims["sub"] != client_id:
        raise AssertionError_("client_assertion's sub must be the client id.")
    if claims["exp"] - time.time() > MAX_LIFETIME:
        raise AssertionError_("client_assertion must expire within five minutes.")
    try:
        expires = datetime.fromtimestamp(claims["exp"], UTC)
        await database[JTIS].insert_one({"_id": f"{client_id}:{claims['jti']}", "expires": expires})
    except DuplicateKeyError:
        raise AssertionError_("client_assertion was already used (jti seen before).") from None
    return record
