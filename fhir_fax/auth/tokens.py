"""Signed JWT access tokens (RFC 9068 claims), the signing key, and the JWKS that publishes it.

The key is an RSA key generated once and kept in the database (``server_secrets``), so every server
process issues and verifies alike and a restart does not invalidate tokens. Verification accepts
exactly RS256 with our key id: ``alg: none`` and HS256-with-the-public-key (the HS/RS confusion) are
refused before any signature is checked.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pymongo.errors import DuplicateKeyError

SECRETS = "server_secrets"
KEY_ID = "token-signing"
ALGORITHM = "RS256"


class TokenError(Exception):
    """Why a bearer token is not accepted (the message is safe to show to the caller)."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey

    @property
    def pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def jwk(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key()))
        return {**public, "kid": self.kid, "use": "sig", "alg": ALGORITHM}


async def signing_key(database: Any) -> SigningKey:
    """The shared token-signing key, created on first use."""
    record = await database[SECRETS].find_one({"_id": KEY_ID})
    if record is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        with contextlib.suppress(DuplicateKeyError):  # another process created it first
            await database[SECRETS].insert_one({"_id": KEY_ID, "kid": uuid.uuid4().hex[:16], "pem": pem})
        record = await database[SECRETS].find_one({"_id": KEY_ID})
    private_key = serialization.load_pem_private_key(bytes(record["pem"]), password=None)
    assert isinstance(private_key, rsa.RSAPrivateKey)
    return SigningKey(record["kid"], private_key)


def issue_token(key: SigningKey, *, issuer: str, audience: str, client_id: str, scope: str, lifetime: int) -> str:
    moment = int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": client_id,
        "client_id": client_id,
        "scope": scope,
        "iat": moment,
        "exp": moment + lifetime,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "at+jwt"})


def sign(key: SigningKey, claims: dict[str, Any]) -> str:
    """An access token with these claims (SMART apps' tokens carry the user, grant and patient too)."""
    return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "at+jwt"})


def verify_token(key: SigningKey, token: str, *, issuer: str, audience: str) -> dict[str, Any]:
    """The token's claims if it is ours, current and meant for us; TokenError says why not."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenError("The bearer token is not a JWT.") from None
    if header.get("alg") != ALGORITHM:
        raise TokenError(f"Tokens signed with {header.get('alg')!r} are not accepted; this server issues {ALGORITHM}.")
    if header.get("kid") != key.kid:
        raise TokenError("The bearer token was not signed by this server's key.")
    try:
        return jwt.decode(
            token,
            key.private_key.public_key(),
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("The bearer token has expired; get a new one from the token endpoint.") from None
    except jwt.InvalidAudienceError:
        raise TokenError("The bearer token is meant for another audience.") from None
    except jwt.InvalidIssuerError:
        raise TokenError("The bearer token was issued by someone else.") from None
    except jwt.PyJWTError:
        raise TokenError("The bearer token's signature or claims are not valid.") from None
