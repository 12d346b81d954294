"""Who is calling, and may they: bearer token -> client -> access policy (and scopes) -> decision.

Every route except the public ones (capabilities, well-known documents, the token endpoint, signed Z3
URLs, signature-verified webhooks) reaches this through the gate (``gate.py``), which calls
``require(request, action, resource)`` before anything is done. A missing or bad token is 401 with
``WWW-Authenticate``; a valid token without permission is 403.

Tokens are ours (issued by ``/oauth/token``, policy from the client record) or an external issuer's
(policy from a claim, see ``issuers.py``); the unverified ``iss`` only picks which verification applies.
A token whose resource scopes for some work are all ``patient/`` scopes is limited to the patient in its
context for that work: ``patient_limit`` names that patient and the FHIR routes keep to the compartment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt
from fastapi import Request

from ..errors import Forbidden, Unauthorized, Unavailable
from ..fhir.compartments import LIMITED_TYPES
from ..settings import Settings
from .addresses import TrustedProxies, caller_address
from .apps import Apps
from .clients import Clients
from .issuers import ExternalIssuers, IssuerUnavailable
from .policies import PolicyError, Rule, allows, parse_policy
from .scopes import (
    ADMINISTRATION,
    LETTER_OF_ACTION,
    Scope,
    ScopeError,
    granting,
    parse_scopes,
    permits_action,
    scope_terms,
)
from .smart_store import SmartStore
from .tokens import SigningKey, TokenError, signing_key, verify_token
from .users import Users


@dataclass(frozen=True)
class Principal:
    client_id: str
    rules: tuple[Rule, ...]
    scopes: tuple[Scope, ...]
    patient: str | None = None  # the patient in context (SMART), from a SMART app's or an external token's claim
    scoped: bool = False  # a user's token: its scopes narrow even when it has no resource scope (it then has none)
    external: bool = False  # from a configured issuer's token (its policy came with it), not one of ours
    grant: str | None = None  # a SMART app's token: its grant (token family), which a revocation ends

    def may(self, action: str, resource: str) -> bool:
        return self.refusal(action, resource) is None

    def refusal(self, action: str, resource: str) -> str | None:
        """Why ``action`` on ``resource`` is not allowed, or None when it is.

        The policy must allow it; a token with SMART scopes must also cover it by its scopes (every action,
        see ``scopes.SCOPE_OF_ACTION``); a token limited to one patient may only name that patient.
        """
        if not allows(self.rules, action, resource):
            return f"Client {self.client_id}'s access policy does not allow {action} on {resource}."
        return self.scope_refusal(action, resource)

    def scope_refusal(self, action: str, resource: str) -> str | None:
        """Why the token's scopes (and patient in context) do not allow it, or None (no scopes: None)."""
        if not self.scopes and not self.scoped:
            return None
        resource_type, letters = scope_terms(action, resource)
        if not permits_action(self.scopes, action, resource):
            granted = " ".join(str(s) for s in self.scopes)
            needed = (
                f"a system/* or user/* scope with {letters!r}"
                if resource_type == ADMINISTRATION
                else f"a scope with {letters!r} on {resource_type}"
            )
            return f"The token's scopes ({granted}) do not allow {action} on {resource}; it needs {needed}."
        if self.limited_terms(resource_type, letters):
            if self.patient is None:
                return (
                    f"The token's scopes for {resource_type} are patient/ scopes but it names no patient in context; "
                    "use system/ or user/ scopes, or a token with a patient."
                )
            named = resource.split(":")[2] if action.startswith("FHIR:") and resource.count(":") >= 2 else "*"
            if resource_type == "Patient" and named not in ("*", self.patient):
                return f"This token is limited to Patient/{self.patient}; {action} on Patient/{named} is not."
        return None

    def limited_terms(self, resource_type: str, letters: str) -> bool:
        """Do only ``patient/`` scopes grant this work (so it is kept to the patient's compartment)?"""
        if not self.scopes or resource_type not in LIMITED_TYPES:
            return False
        found = [s for letter in letters for s in granting(self.scopes, resource_type, letter)]
        return bool(found) and all(s.context == "patient" for s in found)

    def limited(self, fhir_action: str, resource_type: str) -> bool:
        letter = LETTER_OF_ACTION.get(fhir_action.partition(":")[2])
        return letter is not None and self.limited_terms(resource_type, letter)

    def patient_limit(self, fhir_action: str, resource_type: str) -> str | None:
        """The patient whose compartment this work is kept to, or None when it is not limited."""
        return self.patient if self.limited(fhir_action, resource_type) else None

    def patient_limit_of(self, action: str, resource: str) -> str | None:
        """The same for any action (documents: their Communications' compartment)."""
        return self.patient if self.limited_terms(*scope_terms(action, resource)) else None


def _unauthorized(message: str, error: str = "invalid_token") -> Unauthorized:
    # A quoted-string in a Latin-1 header, whatever the token claimed (its issuer is quoted in the message).
    printable = "".join(c if c.isascii() and c.isprintable() else "?" for c in message)
    described = printable.replace('"', "'").replace("\\", "/")
    challenge = f'Bearer realm="fhir-fax", error="{error}", error_description="{described}"'
    return Unauthorized(message, headers={"WWW-Authenticate": challenge})


class Guard:
    def __init__(self, settings: Settings, *, database: Any = None, auditor: Any = None) -> None:
        self.settings = settings
        self.database = database
        self.auditor = auditor  # fhir_fax.audit.Auditor
        self.issuers = ExternalIssuers(settings.external_issuers)
        self.proxies = TrustedProxies.of(settings.trusted_proxies)
        self._key: SigningKey | None = None

    async def principal(self, request: Request) -> Principal:
        cached = getattr(request.state, "principal", None)
        if isinstance(cached, Principal):
            return cached
        if self.database is None:
            raise Unavailable("The server is starting; retry in a moment.")
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            await self._audit_refusal(request, "anonymous", "no bearer token")
            raise _unauthorized(
                "This request needs a bearer token; get one with POST /oauth/token (client credentials) or "
                "through a SMART app (/oauth/authorize).",
                error="invalid_request",
            )
        token = header[7:].strip()
        base = self.settings.public_base(str(request.base_url))
        audience = base + self.settings.fhir_path
        try:
            issuer = unverified_issuer(token)
            if issuer == base:
                principal = await self._our_principal(token, base, audience)
            elif self.issuers.knows(issuer):
                identity = await self.issuers.verify(token, issuer, audience)
                principal = Principal(identity.who, identity.rules, identity.scopes, identity.patient, external=True)
            else:
                raise TokenError(
                    f"The bearer token was issued by someone else ({issuer!r}), whom this server does not trust; "
                    "get a token from POST /oauth/token or from a configured issuer."
                )
        except IssuerUnavailable as error:
            raise Unavailable(str(error)) from None
        except (TokenError, PolicyError, ScopeError, KeyError) as error:
            await self._audit_refusal(request, "anonymous", str(error) or "invalid token")
            raise _unauthorized(str(error) or "The bearer token is not valid.") from None
        request.state.principal = principal
        return principal

    async def _our_principal(self, token: str, base: str, audience: str) -> Principal:
        """A token this server issued: verified with our key; the policy is the client's current one."""
        if self._key is None:
            self._key = await signing_key(self.database)
        claims = verify_token(self._key, token, issuer=base, audience=audience)
        if "grant" in claims:
            return await self._user_principal(claims)
        client = await Clients(self.database).by_client_id(claims["client_id"])
        if client is None:
            raise TokenError("The token's client no longer exists.")
        return Principal(
            client["clientId"], parse_policy(client["accessPolicy"]), parse_scopes(claims.get("scope", ""))
        )

    async def _user_principal(self, claims: dict[str, Any]) -> Principal:
        return await self.user_principal(
            str(claims["grant"]), claims["client_id"], claims["sub"], claims.get("scope", ""), claims.get("patient")
        )

    async def user_principal(
        self, grant_id: str, app_id: str, user_id: str, scope: str, patient: str | None
    ) -> Principal:
        """A SMART app's token: the user's current policy, the granted scopes, the patient in context.

        Its grant must not be revoked (a replayed code or refresh token, or RFC 7009 revocation, revokes it), and
        the app and the user must still exist (the user not disabled): each is looked up on every request, and
        again for each notification of a Subscription the user made (the grant is recorded with it).
        """
        grant = await SmartStore(self.database).grant(grant_id)
        if grant is None or grant.get("revoked"):
            raise TokenError("The bearer token was revoked; sign in to the app again.")
        app = await Apps(self.database).by_client_id(app_id)
        if app is None:
            raise TokenError("The token's app is no longer registered.")
        user = await Users(self.database).get(user_id)
        if user is None or user.get("disabled"):
            raise TokenError("The token's user no longer exists or may no longer sign in.")
        return Principal(
            f"{user['username']} via {app['clientId']}",
            parse_policy(user["accessPolicy"]),
            parse_scopes(scope),
            patient,
            scoped=True,
            grant=grant_id,
        )

    def address(self, request: Request) -> str | None:
        """The caller's address as the audit trail records it (proxy headers only from trusted proxies)."""
        return caller_address(request, self.proxies)

    async def _audit_refusal(
        self, request: Request, who: str, reason: str, action: str = "authenticate", resource: str = "-"
    ) -> None:
        if self.auditor is not None:
            await self.auditor.refused(action, resource, who, self.address(request), reason)

    async def require(self, request: Request, action: str, resource: str) -> Principal:
        principal = await self.principal(request)
        refusal = principal.refusal(action, resource)
        if refusal is not None:
            await self._audit_refusal(request, principal.client_id, refusal, action, resource)
            raise Forbidden(refusal)
        return principal


def unverified_issuer(token: str) -> Any:
    """The ``iss`` a token claims, read without checking anything: it only chooses how to verify the token."""
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        raise TokenError("The bearer token is not a JWT.") from None
