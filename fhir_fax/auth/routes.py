"""The token endpoint (OAuth 2.0 client credentials), the JWKS, and the SMART configuration.

The SMART App Launch grants (``authorization_code``, ``refresh_token``) and pages are ``smart_routes.py``;
the token endpoint hands those grant types over to it.

``POST /oauth/token`` takes ``grant_type=client_credentials`` with the client's id and secret (form
fields or HTTP Basic) and an optional ``scope`` that can only narrow the client's access policy; the
response's ``scope`` is what was granted (``grants.py``: none granted is ``invalid_scope``, no token).
Failed attempts are limited per client id and caller address (429, counted in the database so all
server processes share the count; see ``limiter.py``), so secrets cannot be guessed and a guesser cannot
lock the real client out. Refused requests are audited in aggregate (``audit.RefusalAggregator``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ..audit import ANONYMOUS
from ..errors import Invalid, TooManyRequests, Unauthorized, Unavailable
from ..settings import Settings
from . import discovery
from .addresses import TrustedProxies, caller_address
from .assertions import ASSERTION_TYPE, AssertionError_, authenticate_assertion, claimed_client
from .clients import Clients, HashingBusy
from .grants import grant_for
from .limiter import FailureLimiter
from .oauth_http import OAuthRoute
from .scopes import ScopeError
from .smart_routes import SmartAPI
from .tokens import issue_token, signing_key

GRANT_TYPES = list(discovery.GRANT_TYPES)
WRONG_SECRET = "wrong secret, or no such client"
BUSY = "too many attempts at once from this address (not counted as failures)"
UNKNOWN_OR_WRONG = "Unknown client or wrong secret."
LOCKED_OUT = "locked out after too many failed attempts from this address"


class AuthAPI:
    def __init__(self, settings: Settings, runtime: Callable[[], Any]) -> None:
        """``runtime()`` is the running ``fhir_fax.runtime.Runtime`` (Unavailable, so 503, before start-up)."""
        self.settings = settings
        self.runtime = runtime
        self.limiter = FailureLimiter(settings.token_failures_per_minute)
        self.proxies = TrustedProxies.of(settings.trusted_proxies)
        self.smart = SmartAPI(settings, runtime, self.limiter)  # the SMART App Launch grants and pages

    @property
    def database(self) -> Any:
        return self.runtime().database

    @property
    def auditor(self) -> Any:
        return self.runtime().auditor

    async def _authenticate(
        self, request: Request, client_id: str | None, secret: str | None, assertion: str | None
    ) -> tuple[dict[str, Any] | None, str]:
        """The client the request proves it is, or None and why not."""
        if assertion:
            try:
                token_endpoint = f"{self.issuer(request)}/oauth/token"
                return await authenticate_assertion(self.database, assertion, token_endpoint), ""
            except AssertionError_ as error:
                return None, str(error)
        record = await Clients(self.database).authenticate(client_id or "", secret or "")
        return record, WRONG_SECRET

    async def _refused(self, client_id: str | None, address: str | None, reason: str) -> None:
        """Audit a refused token request (aggregated: a flood of them is a few writes, not one each)."""
        if self.auditor is not None:
            resource = f"Client/{(client_id or '-')[:100]}"
            await self.auditor.refused("token", resource, ANONYMOUS, address, reason)

    def issuer(self, request: Request) -> str:
        return self.settings.public_base(str(request.base_url))

    def audience(self, request: Request) -> str:
        return self.issuer(request) + self.settings.fhir_path

    def router(self) -> APIRouter:
        router = APIRouter(route_class=OAuthRoute.limited(self.settings.token_max_body_bytes), tags=["Access"])

        @router.post("/oauth/token", summary="OAuth 2.0 token endpoint (client credentials, code, refresh token)")
        async def token(request: Request) -> Response:
            pairs = parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
            form = dict(pairs)
            if form.get("grant_type") in discovery.APP_GRANT_TYPES:
                return await self.smart.token(request, pairs)  # SMART apps (Authlib's grants)
            client_id, secret = form.get("client_id"), form.get("client_secret")
            basic = request.headers.get("authorization", "")
            if basic.lower().startswith("basic "):
                try:
                    client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    raise Invalid("The Basic authorization header is malformed.") from None
            self.runtime()  # Unavailable (503 temporarily_unavailable) before start-up
            if form.get("grant_type") not in GRANT_TYPES:
                raise Invalid(
                    f"grant_type must be one of {', '.join(GRANT_TYPES)}.", oauth_error="unsupported_grant_type"
                )
            assertion = form.get("client_assertion") if form.get("client_assertion_type") == ASSERTION_TYPE else None
            if assertion:
                client_id = claimed_client(assertion) or client_id  # the one it must prove, whatever the form says
            elif not client_id or not secret:
                raise Invalid("Send client_id and client_secret (form or Basic), or a client_assertion.")
            address = caller_address(request, self.proxies)
            # Ids of no client share one count per address: a made-up id on every request buys no new budget.
            counted = client_id if client_id and await Clients(self.database).by_client_id(client_id) else None
            attempt = await self.limiter.attempt(self.database, counted, address)
            if attempt.busy:
                await self._refused(client_id, address, BUSY)
                message = "Too many token requests for this client from this address at once; retry in a second."
                raise TooManyRequests(message, headers={"retry-after": "1"})
            if not attempt.allowed:
                await self._refused(client_id, address, LOCKED_OUT)
                raise TooManyRequests("Too many failed attempts; wait a minute.", headers={"retry-after": "60"})
            try:
                record, refusal = await self._authenticate(request, client_id, secret, assertion)
            except HashingBusy as busy:
                await self.limiter.release(self.database, attempt)
                raise Unavailable(str(busy), headers={"retry-after": "1"}) from None
            except BaseException:
                await self.limiter.release(self.database, attempt)  # no verdict on the secret
                raise
            if record is None:
                await self.limiter.failed(self.database, attempt)
                await self._refused(client_id, address, refusal)
                headers = None if assertion else {"www-authenticate": "Basic"}
                raise Unauthorized(refusal if assertion else UNKNOWN_OR_WRONG, headers=headers)
            await self.limiter.release(self.database, attempt)
            try:
                scopes = grant_for(form.get("scope", ""), record["accessPolicy"])
            except ScopeError as error:
                raise Invalid(str(error), oauth_error="invalid_scope") from None
            scope = " ".join(str(s) for s in scopes)
            key = await signing_key(self.database)
            lifetime = self.settings.token_lifetime_seconds
            access_token = issue_token(
                key,
                issuer=self.issuer(request),
                audience=self.audience(request),
                client_id=record["clientId"],
                scope=scope,
                lifetime=lifetime,
            )
            body = {"access_token": access_token, "token_type": "Bearer", "expires_in": lifetime, "scope": scope}
            return JSONResponse(body, headers={"cache-control": "no-store"})

        @router.get("/.well-known/jwks.json", summary="Keys that sign this server's access tokens")
        async def jwks() -> dict[str, Any]:
            return {"keys": [(await signing_key(self.database)).jwk()]}

        @router.get(f"{self.settings.fhir_path}/.well-known/smart-configuration", summary="SMART configuration")
        async def smart_configuration(request: Request) -> dict[str, Any]:
            return discovery.smart_configuration(self.issuer(request))

        router.include_router(self.smart.router())
        router.include_router(self.smart.launch_router())
        return router
