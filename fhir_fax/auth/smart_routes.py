"""The SMART App Launch endpoints: ``/oauth/authorize`` (sign-in, consent, patient picker), the code and refresh
grants of ``/oauth/token``, ``/oauth/introspect``, ``/oauth/revoke``, ``/oauth/launch`` and the OpenID
configuration. The protocol decisions are Authlib's (``smart_server.py``); this module renders pages and keeps
the interaction between them.

How the pages are protected:

- The client and its *exact* redirect URI are checked before anything else; when either is wrong, an error page
  is shown and the browser is never sent anywhere (no open redirect). Once both are known, errors go back to the
  app as ``error`` and ``state`` on its redirect URI, as RFC 6749 says.
- Every form carries the interaction id and a CSRF token; the same token is in a cookie set for that
  interaction (``SameSite=Strict``, ``HttpOnly``, path ``/oauth``), and a post whose two copies differ from the
  stored one is refused. Another site can neither read the token nor make the browser send the cookie.
- Failed sign-ins are counted per username and caller address in the token endpoint's limiter (a guesser locks
  out only its own address), and are answered with the same message whether or not the user exists.
- Pages carry ``Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; form-action 'self'``
  and ``X-Frame-Options: DENY``: no scripts, no external assets, no framing (clickjacking on the consent page).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from authlib.oauth2.rfc6749 import AccessDeniedError, OAuth2Error
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from ..audit import ANONYMOUS, FAX_EVENTS, SUCCESS
from ..errors import Invalid, NotFound, TooManyRequests
from ..fhir.http import read_json
from ..fhir.store import RESERVED, public
from ..sdk_http import SDKRoute
from ..settings import Settings
from . import discovery
from .addresses import TrustedProxies, caller_address
from .apps import Apps
from .limiter import FailureLimiter
from .oauth_http import OAuthRoute
from .policies import allows, id_scope, parse_policy
from .smart_scopes import describe, within_user
from .smart_server import Context, Grantee, ParsedRequest, SmartServer
from .smart_store import SmartStore, opaque
from .tokens import signing_key
from .users import Users

PAGES = Environment(loader=PackageLoader("fhir_fax.auth", "templates"), autoescape=select_autoescape(["html"]))
PAGE_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http: https:; "
    "frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
}
MAX_PICKER = 200  # patients listed on the picker
MAX_QUERY = 8192  # an authorization request is kept until the sign-in ends: bounded
# RFC 6749 appendix A: these parameters are URIs or NQCHAR strings, printable ASCII without '"' and '\'. (Authlib
# echoes some of them in error descriptions, which may only hold those characters.)
SCREENED = ("client_id", "redirect_uri", "response_type", "scope", "code_challenge", "code_challenge_method", "aud")
PRINTABLE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")
WRONG_SIGN_IN = "Wrong username or password."
PATIENT_ID = "patient"


def page(template: str, status: int = 200, **values: Any) -> HTMLResponse:
    return HTMLResponse(PAGES.get_template(template).render(**values), status_code=status, headers=PAGE_HEADERS)


def error_page(error: str, message: str, status: int = 400) -> HTMLResponse:
    return page("error.html", status, title="This request cannot go on", error=error, message=message)


def csrf_cookie(interaction: str) -> str:
    return f"fhir-fax-csrf-{interaction[:16]}"


def _form(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)


class SmartAPI:
    """The user-facing authorization server. ``runtime()`` is the running Runtime (503 before start-up)."""

    def __init__(self, settings: Settings, runtime: Callable[[], Any], limiter: FailureLimiter) -> None:
        self.settings = settings
        self.runtime = runtime
        self.limiter = limiter
        self.proxies = TrustedProxies.of(settings.trusted_proxies)

    def issuer(self, request: Request) -> str:
        return self.settings.public_base(str(request.base_url))

    def audience(self, request: Request) -> str:
        return self.issuer(request) + self.settings.fhir_path

    async def context(self, request: Request) -> Context:
        runtime = self.runtime()
        return Context(
            database=runtime.database,
            settings=self.settings,
            issuer=self.issuer(request),
            audience=self.audience(request),
            key=await signing_key(runtime.database),
            loop=asyncio.get_running_loop(),
            auditor=runtime.auditor,
            address=caller_address(request, self.proxies),
        )

    async def refused(self, context: Context, action: str, resource: str, reason: str, who: str = ANONYMOUS) -> None:
        if context.auditor is not None:
            await context.auditor.refused(action, resource, who, context.address, reason)

    async def succeeded(self, context: Context, code: str, who: str, description: str) -> None:
        """A sign-in or an issued code/token, on the audit trail (who, from where, for which app)."""
        if context.auditor is not None:
            await context.auditor.record(
                subtype=(FAX_EVENTS, code), action="E", outcome=SUCCESS, who=who, address=context.address,
                entities=[], description=description,
            )  # fmt: skip

    # -- OAuth errors -------------------------------------------------------------------------------------

    async def oauth_refusal(self, context: Context, error: OAuth2Error, client_id: str | None) -> Response:
        """Back to the app when its redirect URI was verified, else an error page; audited either way."""
        reason = f"{error.error}: {error.description or ''}".strip()
        await self.refused(context, "authorize", f"App/{(client_id or '-')[:100]}", reason)
        if error.redirect_uri:
            _, _, headers = error()
            return RedirectResponse(dict(headers)["Location"], status_code=302, headers={"cache-control": "no-store"})
        return error_page(error.error, error.description or error.error, error.status_code or 400)

    def oauth_request(self, context: Context, params: list[tuple[str, str]]) -> ParsedRequest:
        return ParsedRequest("GET", f"{context.issuer}/oauth/authorize", params)

    # -- the pages ----------------------------------------------------------------------------------------

    def _values(self, record: dict[str, Any], app_name: str) -> dict[str, Any]:
        return {
            "title": "Sign in",
            "action": "/oauth/authorize",
            "interaction": record["_id"],
            "csrf": record["csrf"],
            "app_name": app_name,
        }

    async def start(self, request: Request) -> Response:
        context = await self.context(request)
        if len(request.url.query) > MAX_QUERY:
            await self.refused(context, "authorize", "App/-", "an authorization request longer than 8 KiB")
            return error_page("invalid_request", "The authorization request is too long (8 KiB at most).")
        params = list(request.query_params.multi_items())
        unreadable = sorted({name for name, value in params if name in SCREENED and not PRINTABLE.fullmatch(value)})
        if unreadable:
            await self.refused(context, "authorize", "App/-", f"characters outside RFC 6749's in {unreadable}")
            return error_page(
                "invalid_request",
                f"{', '.join(unreadable)} may only hold printable ASCII (URIs percent-encoded, as RFC 6749 says).",
            )
        server = SmartServer(context)
        oauth_request = self.oauth_request(context, params)
        try:
            grant = await context.call(lambda: server.get_consent_grant(oauth_request))
        except OAuth2Error as error:
            return await self.oauth_refusal(context, error, dict(params).get("client_id"))
        record = await SmartStore(context.database).begin([list(p) for p in params], self.settings.sign_in_seconds)
        response = page("sign_in.html", **self._values(record, grant.client.record["name"]), username="", error=None)
        response.set_cookie(
            csrf_cookie(record["_id"]),
            record["csrf"],
            max_age=self.settings.sign_in_seconds,
            path="/oauth",
            httponly=True,
            samesite="strict",
            secure=context.issuer.startswith("https://"),
        )
        return response

    async def step(self, request: Request) -> Response:
        """One form of the interaction: sign-in, consent or patient; each answers the next page or the redirect."""
        context = await self.context(request)
        form_pairs = _form(await request.body())
        form = dict(form_pairs)
        store = SmartStore(context.database)
        record = await store.interaction(form.get("interaction", ""))
        if record is None:
            await self.refused(context, "authorize", "App/-", "a form post of no open sign-in")
            return error_page(
                "invalid_request", "This sign-in has expired or is already finished; start again from the app."
            )
        expected = record["csrf"].encode()
        cookie = request.cookies.get(csrf_cookie(record["_id"]), "").encode("utf-8", "replace")
        sent = form.get("csrf", "").encode("utf-8", "replace")  # bytes: compare_digest refuses non-ASCII str
        if not (hmac.compare_digest(sent, expected) and hmac.compare_digest(cookie, expected)):
            await self.refused(context, "authorize", "App/-", "a form post without this page's CSRF token")
            return error_page(
                "invalid_request",
                "The form did not come from this server's own page (its CSRF token is missing or wrong); "
                "start again from the app.",
                403,
            )
        params = [(k, v) for k, v in record["params"]]
        server = SmartServer(context)
        oauth_request = self.oauth_request(context, params)
        client_id = dict(params).get("client_id")
        try:
            grant = await context.call(lambda: server.get_consent_grant(oauth_request))
        except OAuth2Error as error:
            await store.finish(record["_id"])
            return await self.oauth_refusal(context, error, client_id)
        app_name = grant.client.record["name"]
        values = self._values(record, app_name)
        if form.get("decision") == "deny" and record.get("user"):
            await store.finish(record["_id"])
            await self.refused(context, "authorize", f"App/{client_id}", "the user denied the request")
            return await self.redirect(context, server, oauth_request, grant, None)
        if not record.get("user"):
            return await self.sign_in(request, context, record, form, values)
        user = await Users(context.database).get(record["user"])
        if user is None or user.get("disabled"):
            await store.finish(record["_id"])
            return error_page("access_denied", "Your account can no longer sign in.", 403)
        requested = dict(params).get("scope", "").split()
        if record.get("consented") is None:
            if form.get("decision") != "allow":
                return self.consent_page(values, user, requested)
            chosen = {v for k, v in form_pairs if k == "scope"}
            consented = [s for s in requested if s in chosen]
            if not consented:
                await store.finish(record["_id"])
                await self.refused(context, "authorize", f"App/{client_id}", "the user left out every scope")
                return await self.redirect(context, server, oauth_request, grant, None)
            record["consented"] = consented
            await store.update_interaction(record["_id"], {"consented": consented})
        launch = dict(params).get("launch")
        launched = await store.launch(launch) if launch else None
        patient = (launched or {}).get("patient")
        own = user.get("fhirUser") or ""
        if patient is not None:
            refusal = await self.launch_refusal(context, user, patient)
            if refusal is not None:
                await store.finish(record["_id"])
                who = user["username"]
                await self.refused(context, "authorize", f"Patient/{patient}", refusal.description, who=who)
                refusal.state, refusal.redirect_uri = dict(params).get("state"), grant.redirect_uri
                return await self.oauth_refusal(context, refusal, client_id)
        # patient/ scopes mean nothing without a patient in context: they ask for one as launch/patient does.
        wants_patient = any(s == "launch/patient" or s.startswith("patient/") for s in record["consented"])
        if patient is None and wants_patient:
            if own.startswith("Patient/"):
                patient = own.removeprefix("Patient/")  # a patient works on their own record
            else:
                patient = record.get("patient")
                if patient is None:
                    chosen_patient = form.get(PATIENT_ID)
                    if chosen_patient is None:
                        return await self.picker(context, values, user)
                    if not await self.may_pick(context, user, chosen_patient):
                        await self.refused(
                            context, "authorize", f"Patient/{chosen_patient[:64]}",
                            "the user may not choose this patient", who=user["username"],
                        )  # fmt: skip
                        return await self.picker(context, values, user, "You cannot choose that patient.")
                    patient = chosen_patient
        rules = parse_policy(user["accessPolicy"])
        granted = within_user(record["consented"], rules)
        if not await store.finish(record["_id"]):
            return error_page("invalid_request", "This sign-in is already finished; start again from the app.")
        grantee = Grantee(
            user=user,
            scope=" ".join(granted),
            family=opaque(),
            patient=patient,
            encounter=(launched or {}).get("encounter"),
            banner=launched is None,  # an EHR shows its own patient banner
            auth_time=record.get("authTime", int(time.time())),
        )
        await self.succeeded(
            context, "smart-authorize", f"{user['username']} via {client_id}",
            f"{user['username']} allowed {client_id}: {grantee.scope}"
            + (f" (Patient/{patient})" if patient else ""),
        )  # fmt: skip
        return await self.redirect(context, server, oauth_request, grant, grantee)

    async def redirect(
        self, context: Context, server: SmartServer, oauth_request: Any, grant: Any, grantee: Grantee | None
    ) -> Response:
        _, _, headers = await context.call(
            lambda: server.create_authorization_response(oauth_request, grant_user=grantee, grant=grant)
        )
        location = dict(headers).get("Location")
        if grantee is not None and location is not None and "error" in query_of(location):
            reason = query_of(location).get("error_description", "")  # e.g. the launch was used meanwhile
            await self.refused(
                context, "authorize", f"App/{grant.request.client.get_client_id()}", reason, who=grantee.who
            )
        if location is None:
            return error_page("server_error", "The authorization could not be completed; start again.", 500)
        return RedirectResponse(location, status_code=302, headers={"cache-control": "no-store"})

    async def sign_in(
        self, request: Request, context: Context, record: dict[str, Any], form: dict[str, str], values: dict[str, Any]
    ) -> Response:
        username, password = form.get("username", ""), form.get("password", "")
        if not username or not password:
            return page("sign_in.html", 400, **values, username=username, error="Enter your username and password.")
        users = Users(context.database)
        # As at the token endpoint: names of no user share one count per address (no new budget per made-up name).
        known = await users.by_username(username) is not None
        counted = f"user:{username[:100]}" if known else "user:-"
        attempt = await self.limiter.attempt(context.database, counted, context.address)
        if not attempt.allowed:
            await self.refused(context, "sign-in", f"User/{username[:100]}", "too many failed sign-ins")
            message = "Too many failed sign-ins; wait a minute and try again."
            return page("sign_in.html", 429, **values, username=username, error=message)
        try:
            user = await users.authenticate(username, password)
        except BaseException:
            await self.limiter.release(context.database, attempt)
            raise
        if user is None:
            await self.limiter.failed(context.database, attempt)
            await self.refused(context, "sign-in", f"User/{username[:100]}", "wrong username or password")
            return page("sign_in.html", 401, **values, username=username, error=WRONG_SIGN_IN)
        await self.limiter.release(context.database, attempt)
        await SmartStore(context.database).update_interaction(
            record["_id"], {"user": user["_id"], "authTime": int(time.time())}
        )
        await self.succeeded(context, "sign-in", user["username"], f"{user['username']} signed in.")
        params = dict((k, v) for k, v in record["params"])
        return self.consent_page(values, user, params.get("scope", "").split())

    def consent_page(self, values: dict[str, Any], user: dict[str, Any], requested: list[str]) -> Response:
        scopes = [{"name": s, "words": describe(s)} for s in requested]
        return page("consent.html", **{**values, "title": "Allow access"}, username=user["username"], scopes=scopes)

    def _patient_filter(self, user: dict[str, Any]) -> dict[str, Any] | None:
        rules = parse_policy(user["accessPolicy"])
        scope = id_scope(rules, "FHIR:Read", "Patient")
        if scope.empty:
            return None
        return {**scope.mongo_filter(), f"{RESERVED}.deleted": False}

    async def picker(
        self, context: Context, values: dict[str, Any], user: dict[str, Any], error: str | None = None
    ) -> Response:
        found = self._patient_filter(user)
        patients = []
        if found is not None:
            cursor = context.database["Patient"].find(found).limit(MAX_PICKER)
            for document in await cursor.to_list(None):
                resource = public(document)
                names = resource.get("name") or [{}]
                first = names[0]
                name = first.get("text") or " ".join([*first.get("given", []), first.get("family", "")]).strip()
                patients.append(
                    {"id": resource["id"], "name": name or "(no name)", "birthDate": resource.get("birthDate")}
                )
        patients.sort(key=lambda p: (p["name"].lower(), p["id"]))
        return page("patients.html", **{**values, "title": "Choose a patient"}, patients=patients, error=error)

    async def launch_refusal(self, context: Context, user: dict[str, Any], patient: str) -> OAuth2Error | None:
        """Why this user may not open the EHR launch's patient (None when they may), as for the picker.

        A patient user works on their own record only; anyone else needs to be allowed to read the patient. Without
        this a launch id (it travels in URLs) would put any patient in a token, past the user's own limits.
        """
        own = user.get("fhirUser") or ""
        if own.startswith("Patient/") and own != f"Patient/{patient}":
            return AccessDeniedError("The EHR launched this app on a patient that is not your own record.")
        if not await self.may_pick(context, user, patient):
            return AccessDeniedError("The signed-in user may not open this patient, which the EHR launched the app on.")
        return None

    async def may_pick(self, context: Context, user: dict[str, Any], patient: str) -> bool:
        if (
            not patient
            or len(patient) > 64
            or not allows(parse_policy(user["accessPolicy"]), "FHIR:Read", f"FHIR:Patient:{patient}")
        ):
            return False
        document = await context.database["Patient"].find_one({"_id": patient, f"{RESERVED}.deleted": False})
        return document is not None

    # -- token, introspection, revocation -----------------------------------------------------------------

    async def token(self, request: Request, pairs: list[tuple[str, str]]) -> Response:
        """The ``authorization_code`` and ``refresh_token`` grants; failed client secrets count in the limiter."""
        context = await self.context(request)
        server = SmartServer(context)
        oauth_request = ParsedRequest("POST", f"{context.issuer}/oauth/token", pairs, request.headers)
        form = dict(pairs)
        client_id = form.get("client_id") or _basic_client(request)
        attempt = await self.limiter.attempt(context.database, client_id, context.address)
        if not attempt.allowed:
            await self.refused(context, "token", f"App/{(client_id or '-')[:100]}", "too many failed attempts")
            raise TooManyRequests("Too many failed attempts; wait a minute.", headers={"retry-after": "60"})
        try:
            status, body, headers = await context.call(lambda: server.create_token_response(oauth_request))
        except BaseException:
            await self.limiter.release(context.database, attempt)
            raise
        if status >= 400 and body.get("error") == "invalid_client":
            await self.limiter.failed(context.database, attempt)
        else:
            await self.limiter.release(context.database, attempt)
        if status >= 400:
            reason = f"{body.get('error')}: {body.get('error_description', '')}"
            await self.refused(context, "token", f"App/{(client_id or '-')[:100]}", reason)
        for issued in context.issued:
            await self.succeeded(
                context, "smart-token", issued["who"], f"{form.get('grant_type')} issued a token: {issued['scope']}"
            )
        return JSONResponse(
            body,
            status_code=status,
            headers={**{k.lower(): v for k, v in headers}, "cache-control": "no-store", "pragma": "no-cache"},
        )

    async def endpoint(self, request: Request, name: str) -> Response:
        context = await self.context(request)
        pairs = _form(await request.body())
        server = SmartServer(context)
        oauth_request = ParsedRequest("POST", f"{context.issuer}/oauth/{name}", pairs, request.headers)
        status, body, headers = await context.call(lambda: server.create_endpoint_response(name, oauth_request))
        if status >= 400:
            client_id = dict(pairs).get("client_id") or _basic_client(request)
            await self.refused(context, name, f"App/{(client_id or '-')[:100]}", f"{body.get('error')}")
        answer_headers = {**{k.lower(): v for k, v in headers}, "cache-control": "no-store", "pragma": "no-cache"}
        return JSONResponse(body, status_code=status, headers=answer_headers)

    # -- routers ------------------------------------------------------------------------------------------

    def router(self) -> APIRouter:
        router = APIRouter(route_class=OAuthRoute.limited(self.settings.token_max_body_bytes), tags=["SMART"])

        @router.get("/oauth/authorize", summary="SMART authorization endpoint (sign-in, consent, patient)")
        async def authorize(request: Request) -> Response:
            return await self.start(request)

        @router.post("/oauth/authorize", summary="The sign-in, consent and patient forms", include_in_schema=False)
        async def authorize_step(request: Request) -> Response:
            return await self.step(request)

        @router.post("/oauth/introspect", summary="Token introspection (RFC 7662), for the app's own tokens")
        async def introspect(request: Request) -> Response:
            return await self.endpoint(request, "introspection")

        @router.post("/oauth/revoke", summary="Token revocation (RFC 7009): ends the whole grant")
        async def revoke(request: Request) -> Response:
            return await self.endpoint(request, "revocation")

        @router.get("/.well-known/openid-configuration", summary="OpenID Connect discovery")
        async def openid_configuration(request: Request) -> dict[str, Any]:
            return discovery.openid_configuration(self.issuer(request), self.settings.fhir_path)

        return router

    def launch_router(self) -> APIRouter:
        """``POST /oauth/launch``: an EHR (a client with ``App:Launch``) makes a launch context for an app."""
        router = APIRouter(route_class=SDKRoute.limited(self.settings.max_body_bytes), tags=["SMART"])

        @router.post("/oauth/launch", summary="Create an EHR launch context (App:Launch)")
        async def launch(request: Request) -> dict[str, str]:
            runtime = self.runtime()
            gate = runtime.gate
            principal = await gate.authorize(request, "App:Launch", "App:Launch")
            body = await read_json(request, self.settings.max_body_bytes)
            if not isinstance(body, dict) or set(body) - {"patient", "encounter", "clientId"}:
                raise Invalid(
                    'The body is {"patient": "Patient/<id>"} with an optional "encounter": "Encounter/<id>" and '
                    'an optional "clientId": the app the launch is for.'
                )
            if "patient" not in body:
                raise Invalid('patient is required: {"patient": "Patient/<id>"}.')
            context: dict[str, str] = {}
            for name, kind in (("patient", "Patient"), ("encounter", "Encounter")):
                value = body.get(name)
                if value is None:
                    continue
                if not isinstance(value, str) or not value.startswith(f"{kind}/") or len(value) > 80:
                    raise Invalid(f"{name} must be a reference such as {kind}/123.")
                resource_id = value.removeprefix(f"{kind}/")
                await gate.authorize(request, "FHIR:Read", f"FHIR:{kind}:{resource_id}")
                document = await runtime.database[kind].find_one({"_id": resource_id, f"{RESERVED}.deleted": False})
                if document is None:
                    raise NotFound(f"{value} does not exist; launch with a patient of this server.")
                context[name] = resource_id
            app = body.get("clientId")
            if app is not None:
                if not isinstance(app, str) or not app or len(app) > 100:
                    raise Invalid("clientId must be the client_id of a registered app.")
                if await Apps(runtime.database).by_client_id(app) is None:
                    raise NotFound(f"No app has client_id {app}; name a registered app or leave clientId out.")
            store = SmartStore(runtime.database)
            return {"launch": await store.create_launch(context, principal.client_id, app)}

        return router


def query_of(location: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(location).query))


def _basic_client(request: Request) -> str | None:
    """The client id of an HTTP Basic header (only to count and audit by; Authlib checks the secret)."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        return base64.b64decode(header[6:]).decode().partition(":")[0] or None
    except (binascii.Error, UnicodeDecodeError):
        return None
