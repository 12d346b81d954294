"""The SMART App Launch authorization server, built on Authlib's OAuth 2.0 / OpenID Connect grants.

Authlib decides the protocol: the authorization request's checks (client, exact redirect URI, response type),
PKCE (``CodeChallenge``, here narrowed to S256 and made mandatory), the code and refresh-token grants, client
authentication (``none``, ``client_secret_basic``/``_post``, plus our ``private_key_jwt``), the id_token
(``OpenIDCode``), introspection (RFC 7662) and revocation (RFC 7009). This module supplies what Authlib leaves
to the application: where apps, codes and tokens are stored (``smart_store.py``), what a token contains, and
the SMART rules Authlib does not know (``state`` and ``aud`` required, scopes within the app's registration,
EHR launch contexts).

Authlib is synchronous and our database is asynchronous, so an Authlib call runs in a worker thread
(``Context.call``) and its storage callbacks hop back to the event loop (``Context.run``) for each database
operation. Each request builds its own server object, so no state is shared between threads. Authlib's
"https only" check of the request URL is not used: TLS is the deployment's business (``FHIR_FAX_BASE_URL``
behind a proxy), as for the client-credentials grant.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from authlib.oauth2.rfc6749 import (
    AuthorizationCodeGrant,
    AuthorizationServer,
    ClientMixin,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Request,
    RefreshTokenGrant,
    TokenMixin,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core import AuthorizationCodeMixin
from authlib.oidc.core.grants import OpenIDCode
from joserfc.jwk import RSAKey

from ..settings import Settings
from .apps import Apps
from .assertions import ASSERTION_TYPE, AssertionError_, authenticate_assertion
from .smart_scopes import beyond_app
from .smart_store import SmartStore, opaque
from .tokens import SigningKey, TokenError, sign, verify_token
from .users import Users

T = TypeVar("T")
AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
REFRESH_WORDS = ("offline_access", "online_access")


@dataclass
class Context:
    """What one request's Authlib callbacks need: the database, settings, URLs, key, and the event loop."""

    database: Any
    settings: Settings
    issuer: str  # this server (tokens' iss)
    audience: str  # the FHIR base (aud of access tokens, and of authorization requests)
    key: SigningKey
    loop: asyncio.AbstractEventLoop
    auditor: Any = None
    address: str | None = None
    issued: list[dict[str, Any]] = field(default_factory=list)  # what this request issued (for the audit trail)

    @property
    def store(self) -> SmartStore:
        return SmartStore(self.database)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the event loop from Authlib's thread, and wait for it."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result()

    async def call(self, work: Callable[[], T]) -> T:
        """Run Authlib (synchronous) in a worker thread; its callbacks use ``run``."""
        return await asyncio.to_thread(work)


class Payload:
    """Request parameters as Authlib reads them (``data``: first values; ``datalist``: every value)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.data: dict[str, str] = {}
        self.datalist: dict[str, list[str]] = {}
        for name, value in pairs:
            self.data.setdefault(name, value)
            self.datalist.setdefault(name, []).append(value)

    def __getattr__(self, name: str) -> Any:
        if name in ("client_id", "redirect_uri", "scope", "state", "grant_type"):
            return self.data.get(name)
        if name == "response_type":
            value = self.data.get("response_type")
            return " ".join(sorted(value.split())) if value and " " in value else value
        raise AttributeError(name)


class ParsedRequest(OAuth2Request):  # type: ignore[misc]
    """An Authlib request made from parameters already read by the route (query string or form)."""

    def __init__(self, method: str, uri: str, pairs: list[tuple[str, str]], headers: Any = None) -> None:
        self.method = method
        self.uri = uri
        self.headers = headers if headers is not None else {}
        self._body = None
        self.payload = Payload(pairs)
        self.client = None
        self.auth_method = None
        self.user = None
        self.authorization_code = None
        self.refresh_token = None
        self.credential = None
        self._scope = None

    @property
    def args(self) -> dict[str, str]:
        return self.payload.data

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data


@dataclass
class Grantee:
    """The person a code or token acts for, and the context granted with it (Authlib's "user")."""

    user: dict[str, Any]
    scope: str
    family: str
    patient: str | None = None
    encounter: str | None = None
    banner: bool = True
    auth_time: int = 0

    def get_user_id(self) -> str:
        return str(self.user["_id"])

    @property
    def who(self) -> str:
        return str(self.user["username"])


class AppClient(ClientMixin):  # type: ignore[misc]
    """A registered SMART app as Authlib sees it."""

    def __init__(self, record: dict[str, Any], context: Context) -> None:
        self.record = record
        self.context = context

    def get_client_id(self) -> str:
        return str(self.record["clientId"])

    def get_default_redirect_uri(self) -> None:
        return None  # redirect_uri is always required, and compared exactly

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope or not scope.split():
            raise InvalidScopeError("scope is required: the SMART scopes the app asks for, e.g. openid launch/patient.")
        return scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.record["redirectUris"]

    def check_client_secret(self, client_secret: str) -> bool:
        return self.context.run(Apps(self.context.database).check_secret(self.record, client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.record["type"] == "public":
            return method == "none"
        if self.record.get("jwks"):
            return method == "private_key_jwt"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


class StoredCode(AuthorizationCodeMixin):  # type: ignore[misc]
    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.code_challenge = record["challenge"]
        self.code_challenge_method = "S256"

    def get_redirect_uri(self) -> str:
        return str(self.record["redirectUri"])

    def get_scope(self) -> str:
        return str(self.record["scope"])

    def get_nonce(self) -> str | None:
        return self.record.get("nonce")

    def get_auth_time(self) -> int | None:
        return self.record.get("authTime")

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


class IssuedToken(TokenMixin):  # type: ignore[misc]
    """A refresh token (its stored record) or an access token (its verified claims), for RFC 7662/7009."""

    def __init__(self, kind: str, fields: dict[str, Any], active: bool) -> None:
        self.kind = kind
        self.fields = fields
        self.active = active

    def check_client(self, client: AppClient) -> bool:
        return bool(self.fields.get("clientId") == client.get_client_id())

    def get_scope(self) -> str:
        return str(self.fields.get("scope", ""))

    def get_expires_in(self) -> int:
        return max(0, int(self.fields.get("exp", 0) - time.time()))

    def is_expired(self) -> bool:
        return bool(self.fields.get("exp", 0) <= time.time())

    def is_revoked(self) -> bool:
        return not self.active


async def grantee_of(database: Any, record: dict[str, Any]) -> Grantee | None:
    """The grantee of a stored code or refresh token, if the user still exists and may sign in."""
    user = await Users(database).get(record["userId"])
    if user is None or user.get("disabled"):
        return None
    return Grantee(
        user=user,
        scope=record["scope"],
        family=record["family"],
        patient=record.get("patient"),
        encounter=record.get("encounter"),
        banner=record.get("banner", True),
        auth_time=record.get("authTime", 0),
    )


# -- the SMART rules Authlib does not know ------------------------------------------------------------------


class S256Only(CodeChallenge):  # type: ignore[misc]
    """PKCE for every app, and only S256 (``plain`` would hand the verifier to whoever sees the request)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("code_challenge is required (PKCE, with code_challenge_method=S256).")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256; plain is not accepted.")
        super().validate_code_challenge(grant, redirect_uri)


class SmartChecks:
    """``state`` and ``aud`` required, scopes within the app's registration, and a known ``launch``."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_validate_authorization_request_payload", self.check)

    def check(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("state"):
            raise InvalidRequestError("state is required: an unguessable value the app checks on its return.")
        if (data.get("aud") or "").rstrip("/") != self.context.audience:  # clients may add the trailing slash
            raise InvalidRequestError(f"aud must be this FHIR server's base URL, {self.context.audience}.")
        requested = data.get("scope", "").split()
        try:
            outside = beyond_app(requested, grant.request.client.record["scopes"])
        except ValueError as error:
            raise InvalidScopeError(str(error)) from None
        if outside:
            raise InvalidScopeError(f"The app is not registered for {' '.join(outside)}; ask only for its scopes.")
        launch = data.get("launch")
        if launch:
            if "launch" not in requested:
                raise InvalidRequestError("A launch parameter needs the scope launch.")
            client_id = grant.request.client.get_client_id()
            refusal = self.context.run(self.context.store.claim_launch(launch, client_id))
            if refusal is not None:
                raise InvalidRequestError(refusal)
        elif "launch" in requested:
            raise InvalidRequestError("The scope launch needs the launch parameter the EHR gave the app.")


class IdToken(OpenIDCode):  # type: ignore[misc]
    """The id_token: RS256 with this server's key; ``iss``, ``sub``, ``aud`` = client_id, ``nonce``, ``fhirUser``."""

    def __init__(self, context: Context) -> None:
        super().__init__(require_nonce=False)
        self.context = context

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return False  # codes are single use, and the nonce goes back only in the one id_token of that code

    def resolve_client_private_key(self, client: Any) -> Any:
        return RSAKey.import_key(self.context.key.pem)

    def get_client_algorithm(self, client: Any) -> str:
        return "RS256"

    def get_client_claims(self, client: Any) -> dict[str, Any]:
        return {"iss": self.context.issuer, "aud": client.get_client_id()}

    def get_encode_header(self, client: Any) -> dict[str, Any]:
        return {"alg": "RS256", "kid": self.context.key.kid, "typ": "JWT"}

    def generate_user_info(self, user: Grantee, scope: str) -> dict[str, Any]:
        words = scope.split()
        claims: dict[str, Any] = {"sub": user.get_user_id()}
        if "fhirUser" in words and user.user.get("fhirUser"):
            claims["fhirUser"] = f"{self.context.audience}/{user.user['fhirUser']}"
        if "profile" in words:
            claims["preferred_username"] = claims["name"] = user.who
        return claims


class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

    @property
    def context(self) -> Context:
        context: Context = self.server.context
        return context

    def save_authorization_code(self, code: str, request: Any) -> None:
        grantee: Grantee = request.user
        data = request.payload.data
        fields = {
            "family": grantee.family,
            "clientId": request.client.get_client_id(),
            "redirectUri": data["redirect_uri"],
            "scope": grantee.scope,
            "userId": grantee.get_user_id(),
            "patient": grantee.patient,
            "encounter": grantee.encounter,
            "banner": grantee.banner,
            "nonce": data.get("nonce"),
            "challenge": data["code_challenge"],
            "authTime": grantee.auth_time,
        }
        launch = data.get("launch")
        if launch and not self.context.run(self.context.store.use_launch(launch, fields["clientId"])):
            raise InvalidRequestError(  # single use: a second sign-in raced this one with the same launch
                "The launch was already used; launch the app from the EHR again.", redirect_uri=data["redirect_uri"]
            )
        self.context.run(self.context.store.save_code(code, fields, self.context.settings.authorization_code_seconds))

    def query_authorization_code(self, code: str, client: AppClient) -> StoredCode:
        record, why = self.context.run(self.context.store.take_code(code, client.get_client_id()))
        if record is None:
            raise InvalidGrantError(
                {
                    "reused": "The code was already used; every token issued from it is now revoked.",
                    "expired": "The code has expired (codes last "
                    f"{self.context.settings.authorization_code_seconds} seconds); start again.",
                }.get(why, "The code is not one this server issued to this app.")
            )
        return StoredCode(record)

    def delete_authorization_code(self, authorization_code: StoredCode) -> None:
        """Nothing to do: the code was used up when it was taken (and is kept a while to notice a replay)."""

    def authenticate_user(self, authorization_code: StoredCode) -> Grantee | None:
        return self.context.run(grantee_of(self.context.database, authorization_code.record))


class RefreshedToken(TokenMixin):  # type: ignore[misc]
    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def check_client(self, client: AppClient) -> bool:
        return bool(self.record["clientId"] == client.get_client_id())

    def get_scope(self) -> str:
        return str(self.record["scope"])


class RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    """Each refresh token is used once and replaced (rotation); an old one used again revokes the family."""

    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    @property
    def context(self) -> Context:
        context: Context = self.server.context
        return context

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshedToken | None:
        store = self.context.store
        record = self.context.run(store.usable_refresh(refresh_token, self.request.client.get_client_id()))
        return None if record is None else RefreshedToken(record)

    def _validate_token_scope(self, token: RefreshedToken) -> None:
        """Authlib's scope check, then the token is used up: a refused request (a wider scope) leaves it usable."""
        super()._validate_token_scope(token)
        if not self.context.run(self.context.store.use_refresh(token.record)):
            raise InvalidGrantError("The refresh token was already used; the grant is now revoked.")

    def authenticate_user(self, refresh_token: RefreshedToken) -> Grantee | None:
        return self.context.run(grantee_of(self.context.database, refresh_token.record))

    def revoke_old_credential(self, refresh_token: RefreshedToken) -> None:
        """Nothing to do: it was used up when it was taken."""


# -- introspection and revocation -------------------------------------------------------------------------


def _find_token(context: Context, token: str, hint: str | None) -> IssuedToken | None:
    record = context.run(context.store.peek_refresh(token)) if hint != "access_token" else None
    if record is not None:
        grant = context.run(context.store.grant(record["family"]))
        active = not record["used"] and grant is not None and not grant.get("revoked")
        fields = {**record, "exp": int(record["expires"].timestamp())}
        return IssuedToken("refresh_token", fields, active)
    try:
        claims = verify_token(context.key, token, issuer=context.issuer, audience=context.audience)
    except TokenError:
        return None
    if "grant" not in claims:
        return None  # a client-credentials token: not an app's
    grant = context.run(context.store.grant(claims["grant"]))
    active = grant is not None and not grant.get("revoked")
    return IssuedToken("access_token", {**claims, "clientId": claims["client_id"], "family": claims["grant"]}, active)


class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = AUTH_METHODS

    def query_token(self, token: str, token_type_hint: str | None) -> IssuedToken | None:
        return _find_token(self.server.context, token, token_type_hint)

    def check_permission(self, token: IssuedToken, client: AppClient, request: Any) -> bool:
        return token.check_client(client)  # an app learns about its own tokens only

    def introspect_token(self, token: IssuedToken) -> dict[str, Any]:
        fields = token.fields
        answer = {
            "active": True,
            "scope": token.get_scope(),
            "client_id": fields["clientId"],
            "token_type": "Bearer" if token.kind == "access_token" else "refresh_token",
            "exp": fields["exp"],
            "sub": fields.get("sub") or fields.get("userId"),
            "iss": self.server.context.issuer,
        }
        for name in ("patient", "encounter", "fhirUser", "iat", "aud"):
            if fields.get(name):
                answer[name] = fields[name]
        return answer


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = AUTH_METHODS

    def query_token(self, token: str, token_type_hint: str | None) -> IssuedToken | None:
        return _find_token(self.server.context, token, token_type_hint)

    def revoke_token(self, token: IssuedToken, request: Any) -> None:
        """Revoking either token of a grant ends the whole grant (RFC 7009 section 2.1 allows it)."""
        context: Context = self.server.context
        context.run(context.store.revoke_grant(token.fields["family"], f"revoked by the app ({token.kind})"))


# -- the server -------------------------------------------------------------------------------------------


class SmartServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, context: Context) -> None:
        super().__init__()
        self.context = context
        self.register_grant(CodeGrant, [S256Only(required=True), SmartChecks(context), IdToken(context)])
        self.register_grant(RefreshGrant)
        self.register_endpoint(Introspection)
        self.register_endpoint(Revocation)
        self.register_token_generator("default", self.generate)
        self.register_client_auth_method("private_key_jwt", self._assertion)

    def query_client(self, client_id: str) -> AppClient | None:
        record = self.context.run(Apps(self.context.database).by_client_id(client_id))
        return None if record is None else AppClient(record, self.context)

    def _assertion(self, query_client: Any, request: Any) -> AppClient | None:
        form = request.form
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
            return None
        apps = Apps(self.context.database)
        try:
            record = self.context.run(
                authenticate_assertion(
                    self.context.database,
                    form["client_assertion"],
                    f"{self.context.issuer}/oauth/token",
                    lookup=apps.by_client_id,
                )
            )
        except AssertionError_:
            return None
        return AppClient(record, self.context)

    def create_oauth2_request(self, request: Any) -> Any:
        return request  # the routes hand over a ParsedRequest

    def create_json_request(self, request: Any) -> Any:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, list(headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def validate_requested_scope(self, scope: str | None) -> None:
        return None  # SmartChecks holds the scopes to the app's registration

    def generate(
        self,
        grant_type: str,
        client: AppClient,
        user: Grantee | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        """The token response (SMART 2.x): the signed access token, its context, and a refresh token if asked."""
        assert user is not None
        context = self.context
        lifetime = context.settings.token_lifetime_seconds
        granted = scope or ""
        moment = int(time.time())
        claims: dict[str, Any] = {
            "iss": context.issuer,
            "aud": context.audience,
            "sub": user.get_user_id(),
            "client_id": client.get_client_id(),
            "scope": granted,
            "grant": user.family,
            "iat": moment,
            "exp": moment + lifetime,
            "jti": uuid.uuid4().hex,
        }
        if user.patient:
            claims["patient"] = user.patient
        if user.encounter:
            claims["encounter"] = user.encounter
        if user.user.get("fhirUser"):
            claims["fhirUser"] = user.user["fhirUser"]
        token: dict[str, Any] = {
            "access_token": sign(context.key, claims),
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": granted,
            "need_patient_banner": user.banner,
        }
        if user.patient:
            token["patient"] = user.patient
        if user.encounter:
            token["encounter"] = user.encounter
        if include_refresh_token and any(word in user.scope.split() for word in REFRESH_WORDS):
            token["refresh_token"] = opaque()
        return token

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Record the grant (the token family) and the refresh token; audit what was issued."""
        context = self.context
        grantee: Grantee = request.user
        settings = context.settings
        offline = "offline_access" in grantee.scope.split()
        refresh_life = (
            timedelta(days=settings.refresh_token_days) if offline else timedelta(hours=settings.online_refresh_hours)
        )
        access_life = timedelta(seconds=settings.token_lifetime_seconds)
        lasts = (refresh_life if "refresh_token" in token else timedelta()) + access_life
        store = context.store
        owner = {"clientId": request.client.get_client_id(), "userId": grantee.get_user_id()}
        context.run(store.start_grant(grantee.family, owner, lasts))
        context.run(store.extend_grant(grantee.family, lasts))
        if "refresh_token" in token:
            fields = {
                **owner,
                "family": grantee.family,
                "scope": grantee.scope,
                "patient": grantee.patient,
                "encounter": grantee.encounter,
                "banner": grantee.banner,
                "authTime": grantee.auth_time,
            }
            context.run(store.save_refresh(token["refresh_token"], fields, refresh_life))
        context.issued.append({"who": f"{grantee.who} via {owner['clientId']}", "scope": token.get("scope", "")})
