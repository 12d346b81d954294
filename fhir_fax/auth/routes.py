"""The token endpoint (OAuth 2.0 client credentials), the JWKS, and the SMART configuration.

``POST /oauth/token`` takes ``grant_type=client_credentials`` with the client's id and secret (form
fields or HTTP Basic) and an optional ``scope`` that can only narrow the client's access policy.
Failed attempts are limited per client id and per address (429, counted in the database so all
server processes share the count), so secrets cannot be guessed.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..settings import Settings
from .assertions import ALGORITHMS, ASSERTION_TYPE, AssertionError_, authenticate_assertion
from .clients import Clients
from .limiter import FailureLimiter
from .oauth_http import OAuthRoute
from .scopes import ScopeError, parse_scopes
from .tokens import issue_token, signing_key

GRANT_TYPES = ["client_credentials"]


def oauth_error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"cache-control": "no-store", **(headers or {})},
    )


class AuthAPI:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database: Any = None
        self.limiter = FailureLimiter(settings.token_failures_per_minute)

    def issuer(self, request: Request) -> str:
        return self.settings.public_base(str(request.base_url))

    def audience(self, request: Request) -> str:
        return self.issuer(request) + self.settings.fhir_path

    def router(self) -> APIRouter:
        router = APIRouter(route_class=OAuthRoute.limited(self.settings.token_max_body_bytes), tags=["Access"])

        @router.post("/oauth/token", summary="OAuth 2.0 token endpoint (client credentials)")
        async def token(request: Request) -> JSONResponse:
            form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))
            client_id, secret = form.get("client_id"), form.get("client_secret")
            basic = request.headers.get("authorization", "")
            if basic.lower().startswith("basic "):
                try:
                    client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    return oauth_error(400, "invalid_request", "The Basic authorization header is malformed.")
            if self.database is None:
                return oauth_error(503, "temporarily_unavailable", "The server is starting; retry in a moment.")
            address = request.client.host if request.client else "unknown"
            keys = (f"ip:{address}", f"client:{client_id}")
            if await self.limiter.blocked(self.database, *keys):
                return oauth_error(429, "slow_down", "Too many failed attempts; wait a minute.", {"retry-after": "60"})
            if form.get("grant_type") not in GRANT_TYPES:
                return oauth_error(
                    400, "unsupported_grant_type", f"grant_type must be one of {', '.join(GRANT_TYPES)}."
                )
            if form.get("client_assertion_type") == ASSERTION_TYPE and form.get("client_assertion"):
                try:
                    token_endpoint = f"{self.issuer(request)}/oauth/token"
                    record = await authenticate_assertion(self.database, form["client_assertion"], token_endpoint)
                except AssertionError_ as error:
                    await self.limiter.failed(self.database, *keys)
                    return oauth_error(401, "invalid_client", str(error))
            else:
                if not client_id or not secret:
                    return oauth_error(
                        400,
                        "invalid_request",
                        "Send client_id and client_secret (form or Basic), or a client_assertion.",
                    )
                record = await Clients(self.database).authenticate(client_id, secret)
                if record is None:
                    await self.limiter.failed(self.database, *keys)
                    return oauth_error(
                        401, "invalid_client", "Unknown client or wrong secret.", {"www-authenticate": "Basic"}
                    )
            try:
                scopes = parse_scopes(form.get("scope", ""))
            except ScopeError as error:
                return oauth_error(400, "invalid_scope", str(error))
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
            base = self.issuer(request)
            return {
                "issuer": base,
                "jwks_uri": f"{base}/.well-known/jwks.json",
                "token_endpoint": f"{base}/oauth/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                    "private_key_jwt",
                ],
                "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
                "grant_types_supported": GRANT_TYPES,
                "scopes_supported": ["system/*.cruds", "system/Communication.rs", "user/*.cruds", "patient/*.rs"],
                "response_types_supported": ["token"],
                "capabilities": [
                    "client-confidential-symmetric",
                    "client-confidential-asymmetric",
                    "permission-v1",
                    "permission-v2",
                    "permission-patient",  # patient/ scopes keep to the patient in an external token's context
                ],
                "code_challenge_methods_supported": ["S256"],
            }

        return router
