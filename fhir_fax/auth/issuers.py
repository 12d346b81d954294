"""Tokens from external authorization servers (Keycloak, Auth0, ...): keys from their JWKS, claims to a policy.

An issuer is configured with its ``iss`` value and JWKS URL (``FHIR_FAX_EXTERNAL_ISSUERS``). A token whose
unverified ``iss`` names a configured issuer is verified with that issuer's published keys only, with the
issuer's asymmetric algorithms only (``none`` and HMAC are never accepted, so a public key can never be used
as a shared secret), and must carry the configured audience. Its access policy is the union of the policies
that the values of one configurable claim map to (``realm_access.roles`` in Keycloak, a namespaced claim in
Auth0); no matching value means no rule, so default deny. SMART scopes and a ``patient`` claim narrow it.

Keys are cached; an unknown ``kid`` (the issuer rotated its keys) fetches the set again, at most once per
``jwks_min_refresh_seconds`` so a stream of forged key ids cannot make us hammer the issuer.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from pydantic import BaseModel, Field, field_validator

from .policies import Rule, parse_policy
from .scopes import Scope, parse_scopes
from .tokens import TokenError

ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class ExternalIssuer(BaseModel):
    """One trusted authorization server, as written in ``FHIR_FAX_EXTERNAL_ISSUERS`` (a JSON list of these)."""

    issuer: str = Field(description="The exact `iss` value of its tokens.")
    jwks_url: str = Field(description="Where it publishes its signing keys.")
    audience: str | None = Field(default=None, description="Required `aud`; unset: this server's FHIR base URL.")
    policy_claim: str = Field(default="roles", description="Claim whose values pick policies; dots reach inside.")
    policies: dict[str, Any] = Field(default_factory=dict, description="Claim value -> access policy.")
    patient_claim: str = Field(default="patient", description="Claim holding the patient in context (SMART).")
    algorithms: list[str] = Field(default_factory=lambda: list(ASYMMETRIC))
    jwks_cache_seconds: float = Field(default=300.0, ge=0)
    jwks_min_refresh_seconds: float = Field(default=10.0, ge=0)

    @field_validator("policies")
    @classmethod
    def _policies_are_valid(cls, policies: dict[str, Any]) -> dict[str, Any]:
        for value, policy in policies.items():
            try:
                parse_policy(policy)
            except ValueError as error:
                raise ValueError(f"the policy for {value!r}: {error}") from None
        return policies

    @field_validator("algorithms")
    @classmethod
    def _only_asymmetric(cls, algorithms: list[str]) -> list[str]:
        wrong = [a for a in algorithms if a not in ASYMMETRIC]
        if wrong or not algorithms:
            raise ValueError(f"algorithms must be some of {', '.join(ASYMMETRIC)}; not {wrong or 'none'}.")
        return algorithms


@dataclass(frozen=True)
class ExternalIdentity:
    """What a verified external token says about its bearer."""

    who: str
    rules: tuple[Rule, ...]
    scopes: tuple[Scope, ...]
    patient: str | None


class IssuerUnavailable(Exception):
    """The issuer's keys could not be fetched and none are cached (the caller should retry later)."""


@dataclass(frozen=True)
class _Key:
    key: Any
    algorithm: str | None  # the JWK's own "alg", when it declares one


@dataclass
class _KeyCache:
    keys: dict[str, _Key] = field(default_factory=dict)
    fetched_at: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def claim(claims: dict[str, Any], name: str) -> Any:
    """A claim by name; a name with dots reaches into objects unless the whole name is a claim itself."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class ExternalIssuers:
    """Verifies tokens of the configured issuers; one key cache per issuer."""

    def __init__(self, issuers: list[ExternalIssuer], timeout: float = 5.0) -> None:
        self.by_issuer = {i.issuer: i for i in issuers}
        self.timeout = timeout
        self._caches = {i.issuer: _KeyCache() for i in issuers}

    def knows(self, issuer: Any) -> bool:
        return isinstance(issuer, str) and issuer in self.by_issuer

    async def verify(self, token: str, issuer: str, default_audience: str) -> ExternalIdentity:
        """The bearer's identity if ``token`` is a current token of ``issuer`` meant for us; TokenError if not."""
        config = self.by_issuer[issuer]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("The bearer token is not a JWT.") from None
        algorithm = header.get("alg")
        if algorithm not in config.algorithms:
            raise TokenError(
                f"Tokens of {issuer} signed with {algorithm!r} are not accepted; "
                f"allowed: {', '.join(config.algorithms)}."
            )
        key = await self._key(config, header.get("kid"))
        if key.algorithm is not None and key.algorithm != algorithm:
            raise TokenError(f"The bearer token's key at {issuer} signs with {key.algorithm}, not {algorithm}.")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=config.audience or default_audience,
                issuer=issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
                leeway=30,
            )
        except jwt.ExpiredSignatureError:
            raise TokenError(f"The bearer token has expired; get a new one from {issuer}.") from None
        except jwt.InvalidAudienceError:
            raise TokenError("The bearer token is meant for another audience.") from None
        except jwt.PyJWTError:
            raise TokenError("The bearer token's signature or claims are not valid.") from None
        return self._identity(config, claims)

    def _identity(self, config: ExternalIssuer, claims: dict[str, Any]) -> ExternalIdentity:
        values = claim(claims, config.policy_claim)
        values = [values] if isinstance(values, str) else values if isinstance(values, list) else []
        rules: list[Rule] = []
        for value in values:
            if isinstance(value, str) and value in config.policies:
                rules.extend(parse_policy(config.policies[value]))
        scope = claims.get("scope", claims.get("scp", ""))
        patient = claim(claims, config.patient_claim)
        return ExternalIdentity(
            who=f"{claims['sub']}@{config.issuer}",
            rules=tuple(rules),
            scopes=parse_scopes(" ".join(scope) if isinstance(scope, list) else str(scope)),
            patient=patient if isinstance(patient, str) and patient else None,
        )

    async def _key(self, config: ExternalIssuer, kid: Any) -> _Key:
        cache = self._caches[config.issuer]
        async with cache.lock:
            age = time.monotonic() - cache.fetched_at
            stale = age > config.jwks_cache_seconds
            unknown = kid not in cache.keys if kid is not None else len(cache.keys) != 1
            if stale or (unknown and age > config.jwks_min_refresh_seconds):
                await self._refresh(config, cache)
        if kid is None:
            if len(cache.keys) != 1:
                raise TokenError(f"The bearer token names no key (kid) and {config.issuer} publishes several.")
            return next(iter(cache.keys.values()))
        if kid not in cache.keys:
            raise TokenError(f"The bearer token was signed by a key {config.issuer} does not publish.")
        return cache.keys[kid]

    async def _refresh(self, config: ExternalIssuer, cache: _KeyCache) -> None:
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                response = await http.get(config.jwks_url, headers={"accept": "application/json"})
            response.raise_for_status()
            published = response.json()["keys"]
            if not isinstance(published, list):
                raise ValueError("'keys' is not a list")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
            if cache.keys:  # keep using the keys we have; try again after the minimum interval
                cache.fetched_at = time.monotonic() - config.jwks_cache_seconds + config.jwks_min_refresh_seconds
                return
            raise IssuerUnavailable(
                f"The signing keys of {config.issuer} could not be fetched from {config.jwks_url} ({error}); "
                "retry later."
            ) from None
        cache.keys = usable_keys(published, config.algorithms)
        cache.fetched_at = time.monotonic()


def usable_keys(published: list[Any], algorithms: list[str]) -> dict[str, _Key]:
    """Signing keys by ``kid`` (``""`` for a lone key without one); encryption and unknown keys are skipped."""
    keys: dict[str, _Key] = {}
    for jwk in published:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or jwk.get("kty") == "oct":
            continue
        declared = jwk.get("alg")
        if declared is not None and declared not in algorithms:
            continue
        try:
            parsed = jwt.PyJWK(jwk)
        except jwt.PyJWTError:
            continue
        keys[str(jwk.get("kid", ""))] = _Key(parsed.key, declared)
    return keys
