"""Who is calling, and may they: bearer token -> client -> access policy (and scopes) -> decision.

Every route except the public ones (capabilities, well-known documents, the token endpoint, signed Z3
URLs, signature-verified webhooks) calls ``require(request, action, resource)`` before doing anything.
A missing or bad token is 401 with ``WWW-Authenticate``; a valid token without permission is 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from ..fhir.context import ServiceUnavailable
from ..fhir.errors import Forbidden, Unauthorized
from ..settings import Settings
from .clients import Clients
from .policies import PolicyError, Rule, allows, parse_policy
from .scopes import Scope, ScopeError, parse_scopes, permits
from .tokens import SigningKey, TokenError, signing_key, verify_token


@dataclass(frozen=True)
class Principal:
    client_id: str
    rules: tuple[Rule, ...]
    scopes: tuple[Scope, ...]

    def may(self, action: str, resource: str) -> bool:
        """The policy must allow it; a token with SMART scopes must also cover FHIR work by its scopes."""
        if not allows(self.rules, action, resource):
            return False
        if not self.scopes:
            return True
        if action.startswith("FHIR:"):
            return permits(self.scopes, action, resource.split(":")[1] if resource.count(":") else "*")
        if action == "Fax:Send":
            return permits(self.scopes, "FHIR:Create", "Communication")
        return True


def _unauthorized(message: str, error: str = "invalid_token") -> Unauthorized:
    challenge = f'Bearer realm="fhir-fax", error="{error}", error_description="{message}"'
    return Unauthorized(message, headers={"WWW-Authenticate": challenge})


class Guard:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database: Any = None
        self.auditor: Any = None  # fhir_fax.audit.Auditor, set when the module starts
        self._key: SigningKey | None = None

    async def principal(self, request: Request) -> Principal:
        cached = getattr(request.state, "principal", None)
        if cached is not None:
            return cached
        if self.database is None:
            raise ServiceUnavailable("The server is starting; retry in a moment.")
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            await self._audit_refusal(request, "anonymous", "no bearer token")
            raise _unauthorized(
                "This request needs a bearer token; get one with POST /oauth/token (client credentials).",
                error="invalid_request",
            )
        if self._key is None:
            self._key = await signing_key(self.database)
        base = self.settings.public_base(str(request.base_url))
        try:
            claims = verify_token(self._key, header[7:].strip(), issuer=base, audience=base + self.settings.fhir_path)
            client = await Clients(self.database).by_client_id(claims["client_id"])
            if client is None:
                raise TokenError("The token's client no longer exists.")
            principal = Principal(
                client["clientId"], parse_policy(client["accessPolicy"]), parse_scopes(claims.get("scope", ""))
            )
        except (TokenError, PolicyError, ScopeError, KeyError) as error:
            await self._audit_refusal(request, "anonymous", str(error) or "invalid token")
            raise _unauthorized(str(error) or "The bearer token is not valid.") from None
        request.state.principal = principal
        return principal

    async def _audit_refusal(
        self, request: Request, who: str, reason: str, action: str = "authenticate", resource: str = "-"
    ) -> None:
        if self.auditor is not None:
            address = request.client.host if request.client else None
            await self.auditor.refused(action, resource, who, address, reason)

    async def require(self, request: Request, action: str, resource: str) -> Principal:
        principal = await self.principal(request)
        if not principal.may(action, resource):
            await self._audit_refusal(
                request, principal.client_id, "not allowed by the access policy", action, resource
            )
            raise Forbidden(f"Client {principal.client_id}'s access policy does not allow {action} on {resource}.")
        return principal
