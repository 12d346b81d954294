"""The fax app: a SMART-on-FHIR browser app served at ``/apps/fax/`` and registered as a public SMART app.

The files under ``apps/fax/`` are served as they are: plain ES modules and CSS, no build step, and the
unmodified browser bundle of the SMART JS client (npm ``fhirclient``) vendored with its license, so an
installed wheel needs no Node. Every page carries a strict Content-Security-Policy (scripts, styles and
requests from this origin only; images also from ``blob:``/``data:`` for page previews), so nothing the app
shows can run script or reach another host.

At start-up the app is registered (or its registration refreshed) under the fixed client id ``fhir-fax-app``:
a public app (PKCE only), its redirect URI ``{base}/apps/fax/`` on the server's base URL, which is also its
launch URL. The base is ``FHIR_FAX_BASE_URL`` when set; otherwise the address the server listens on (and
``localhost`` for a loopback or wildcard host), which is all a standalone server can know before a request.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..auth.apps import COLLECTION, Apps, check_redirect_uri, check_scopes
from ..fhir.models import now
from ..settings import Settings

CLIENT_ID = "fhir-fax-app"
BUCKET = "fax-app"  # the Z3 bucket the app uploads documents to (created at start-up)
PATH = "/apps/fax/"
# What the app may ask for: a patient's faxes (read, create = send/upload/resend), the directory, a refresh
# token for the working session (online_access), so that a session outlives one access token, and its own
# websocket Subscription for live status (create it, delete it on close; the gate keeps a patient-limited
# token's Subscriptions to that patient).
SCOPES = [
    "openid",
    "fhirUser",
    "online_access",
    "launch",
    "launch/patient",
    "patient/*.rs",
    "patient/Communication.c",
    "patient/Subscription.cd",
    "user/Practitioner.rs",
    "user/PractitionerRole.rs",
    "user/Organization.rs",
    "user/HealthcareService.rs",
]
# The clinic view (no patient): received faxes awaiting triage and every sent fax, with the user's own reach.
# Filing (``$file``) updates the Communication and the Task and creates a DocumentReference; resend creates a
# Communication; the patient search and the suggested patients read Patients.
CLINIC_SCOPES = [
    "openid",
    "fhirUser",
    "online_access",
    "user/Communication.crus",
    "user/Subscription.crd",
    "user/Task.rus",
    "user/DocumentReference.c",
    "user/Patient.rs",
    "user/Practitioner.rs",
    "user/PractitionerRole.rs",
    "user/Organization.rs",
    "user/HealthcareService.rs",
]
REGISTERED_SCOPES = list(dict.fromkeys(SCOPES + CLINIC_SCOPES))  # what the app is registered for
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "log.js": "text/javascript; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "send.js": "text/javascript; charset=utf-8",
    "words.js": "text/javascript; charset=utf-8",
    "clinic.js": "text/javascript; charset=utf-8",
    "inbox.js": "text/javascript; charset=utf-8",
    "outbox.js": "text/javascript; charset=utf-8",
    "clinic_words.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "vendor/fhir-client.min.js": "text/javascript; charset=utf-8",
    "vendor/fhirclient-LICENSE.txt": "text/plain; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'self'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")


def headers_for(request: Request) -> dict[str, str]:
    """The headers, with the app's own websocket (live status) allowed: ws:/wss: of this very host only.

    CSP 3 lets ``'self'`` cover the same host's websocket, but not every browser does, so the host the page
    was asked from is named as well (when it is a plain host name or address; nothing else reaches the header).
    """
    host = request.headers.get("host", "")
    if not HOST.fullmatch(host):
        return HEADERS
    policy = CSP.replace("connect-src 'self';", f"connect-src 'self' ws://{host} wss://{host};")
    return {**HEADERS, "Content-Security-Policy": policy}


def bases(settings: Settings) -> list[str]:
    """The base URLs the app may be reached on, before any request says which."""
    if settings.base_url:
        return [settings.base_url.rstrip("/")]
    found = [f"http://{settings.host}:{settings.port}"]
    if settings.host in ("127.0.0.1", "0.0.0.0", "::", "::1", "localhost"):
        found += [f"http://127.0.0.1:{settings.port}", f"http://localhost:{settings.port}"]
    return list(dict.fromkeys(found))


async def register_fax_app(database: Any, settings: Settings) -> dict[str, Any]:
    """Register the app, or bring its redirect URIs and scopes up to date (the port may change between runs)."""
    uris = [check_redirect_uri(base + PATH) for base in bases(settings)]
    apps = Apps(database)
    record = await apps.by_client_id(CLIENT_ID)
    if record is None:
        record, _ = await apps.register(
            "Fax app", redirect_uris=uris, scopes=REGISTERED_SCOPES, launch_url=uris[0], client_id=CLIENT_ID
        )
        return record
    changes = {"redirectUris": uris, "launchUrl": uris[0], "scopes": check_scopes(REGISTERED_SCOPES), "updated": now()}
    await database[COLLECTION].update_one({"clientId": CLIENT_ID}, {"$set": changes})
    record.update(changes)
    return record


def read(name: str) -> bytes:
    return resources.files("fhir_fax.apps").joinpath("fax", name).read_bytes()


def fax_app_router(settings: Settings) -> APIRouter:
    """``GET /apps/fax/`` (the page), its files, and ``config.json`` (client id and FHIR base path)."""
    router = APIRouter(tags=["Fax app"], include_in_schema=False)
    config = json.dumps(
        {"clientId": CLIENT_ID, "fhirPath": settings.fhir_path, "projectApiPath": settings.project_api_path,
         "faxApiPath": settings.fax_api_path, "bucket": BUCKET, "scopes": SCOPES, "clinicScopes": CLINIC_SCOPES}
    ).encode()  # fmt: skip

    @router.get(PATH)
    async def index(request: Request) -> Response:
        return Response(read("index.html"), media_type=FILES["index.html"], headers=headers_for(request))

    @router.get(PATH + "config.json")
    async def app_config(request: Request) -> Response:
        return Response(config, media_type="application/json", headers=headers_for(request))

    @router.get(PATH + "{name:path}")
    async def asset(request: Request, name: str) -> Response:
        if name not in FILES:
            return Response(b"Not found", status_code=404, media_type="text/plain", headers=headers_for(request))
        return Response(read(name), media_type=FILES[name], headers=headers_for(request))

    return router
