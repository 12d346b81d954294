"""Registered SMART apps (collection ``smart_apps``): who may send people to the authorization endpoint.

An app has a ``client_id``, a type (``public``: no secret, PKCE only; ``confidential``: a secret, or a JWKS
for ``private_key_jwt``), its exact redirect URIs (compared character for character, never by prefix), a
launch URL (where an EHR opens it) and the scopes it may ask for. A request for any scope beyond those is
refused (``invalid_scope``), so an app cannot gain more than it was registered for, whatever the user agrees to.

Apps carry no access policy of their own: a token issued to an app acts for the person who signed in, with
that person's policy narrowed by the scopes (``smart_scopes.py``).
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from typing import Any
from urllib.parse import urlsplit

from pymongo.errors import DuplicateKeyError

from ..fhir.models import now
from .clients import HASHING, check_jwks, new_secret
from .policies import PolicyError
from .records import Records
from .scopes import ScopeError, parse_scopes

COLLECTION = "smart_apps"
TYPES = ("public", "confidential")
# Scopes that are not about resources, which an app may be registered for.
WORDS = (
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
)


class AppError(ValueError):
    """A registration that cannot be used (the message says which field and why)."""


def check_redirect_uri(uri: Any) -> str:
    if not isinstance(uri, str) or len(uri) > 2000:
        raise AppError("Each redirect URI must be a string (at most 2000 characters).")
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment or "#" in uri:
        raise AppError(f"Redirect URI {uri!r} must be an absolute http(s) URL without a fragment.")
    return uri


def check_scopes(scopes: Any) -> list[str]:
    if isinstance(scopes, str):
        scopes = scopes.split()
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise AppError("scopes must be a non-empty list of scopes (or one space-separated string).")
    for scope in scopes:
        if scope in WORDS:
            continue
        if not scope.startswith(("patient/", "user/", "system/")):
            raise AppError(f"{scope!r} is not a scope this server grants ({', '.join(WORDS)} or a resource scope).")
        try:
            parse_scopes(scope)
        except ScopeError as error:
            raise AppError(str(error)) from None
    return list(dict.fromkeys(scopes))


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The app as listings show it: never the secret hash."""
    return {
        "id": record["_id"],
        "clientId": record["clientId"],
        "name": record["name"],
        "type": record["type"],
        "redirectUris": record["redirectUris"],
        "launchUrl": record.get("launchUrl"),
        "scopes": record["scopes"],
        **({"jwks": record["jwks"]} if record.get("jwks") else {}),
    }


class Apps(Records):
    def __init__(self, database: Any) -> None:
        super().__init__(database, COLLECTION)

    async def ensure_indexes(self) -> None:
        await self.collection.create_index("clientId", name="clientId", unique=True)

    async def register(
        self,
        name: str,
        *,
        redirect_uris: Any,
        scopes: Any,
        app_type: str = "public",
        launch_url: str | None = None,
        jwks: Any = None,
        client_id: str | None = None,
        secret: str | None = None,
    ) -> tuple[dict[str, Any], str | None]:
        """A new app, and its secret when it is confidential without a JWKS (the only time it is seen)."""
        if not isinstance(name, str) or not name.strip():
            raise AppError("name is required.")
        if app_type not in TYPES:
            raise AppError(f"type must be one of {', '.join(TYPES)}.")
        if not isinstance(redirect_uris, list) or not redirect_uris:
            raise AppError("redirectUris must be a non-empty list of exact URLs.")
        uris = [check_redirect_uri(uri) for uri in redirect_uris]
        if launch_url is not None:
            check_redirect_uri(launch_url)
        record: dict[str, Any] = {
            "_id": str(uuid.uuid4()),
            "clientId": client_id or uuid.uuid4().hex,
            "name": name,
            "type": app_type,
            "redirectUris": uris,
            "launchUrl": launch_url,
            "scopes": check_scopes(scopes),
            "created": now(),
        }
        created_secret = None
        if app_type == "confidential":
            if jwks:
                try:
                    record["jwks"] = check_jwks(jwks)
                except PolicyError as error:
                    raise AppError(str(error)) from None
            else:
                created_secret = secret or new_secret()
                record["salt"] = secrets.token_bytes(16)
                record["secretHash"] = await HASHING.hash(created_secret, record["salt"])
        elif jwks or secret:
            raise AppError("A public app has neither a secret nor keys; register it as confidential.")
        try:
            await self.collection.insert_one(record)
        except DuplicateKeyError:
            raise AppError(f"There is already an app with client id {record['clientId']!r}.") from None
        return record, created_secret

    async def check_secret(self, record: dict[str, Any], secret: str) -> bool:
        """Is ``secret`` this confidential app's secret? (Flood-shed like client secrets: HashingBusy.)"""
        if not record.get("secretHash"):
            return False
        hashed = await HASHING.hash(secret, bytes(record["salt"]), shed=True)
        return hmac.compare_digest(hashed, bytes(record["secretHash"]))

    async def by_client_id(self, client_id: str) -> dict[str, Any] | None:
        record: dict[str, Any] | None = await self.collection.find_one({"clientId": client_id})
        return record

    async def delete(self, record_id: str) -> bool:
        """Delete by record id or client id; its tokens stop working at once (the guard looks the app up)."""
        result = await self.collection.delete_one({"$or": [{"_id": record_id}, {"clientId": record_id}]})
        deleted: int = result.deleted_count
        return deleted == 1
