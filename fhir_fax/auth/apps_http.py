"""SMART apps over HTTP, next to the M2M API: ``/v1/smart-apps`` (register, list, get, delete).

Each call needs an ``App:`` action on ``App:SmartApp[:id]``. A registration answers the app once with its
secret (confidential apps without a JWKS); listings never show a secret or its hash.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ..errors import Invalid, NotFound
from ..fhir.context import FHIRContext
from ..fhir.http import read_json
from ..sdk_http import SDKRoute
from .apps import AppError, Apps, public

FIELDS = {"name", "type", "redirectUris", "launchUrl", "scopes", "jwks", "clientId"}


def smart_apps_router(fhir: FHIRContext, runtime: Callable[[], Any]) -> APIRouter:
    router = APIRouter(route_class=SDKRoute.limited(fhir.settings.max_body_bytes), tags=["SMART apps"])

    def apps() -> Apps:
        return Apps(runtime().database)

    @router.post("/smart-apps", summary="Register a SMART app", status_code=201)
    async def register(request: Request) -> JSONResponse:
        await fhir.authorize(request, "App:RegisterSmartApp", "App:SmartApp")
        body = await read_json(request, fhir.settings.max_body_bytes)
        if not isinstance(body, dict):
            raise Invalid(f"The body must be a JSON object with {', '.join(sorted(FIELDS))}.")
        unknown = set(body) - FIELDS
        if unknown:
            raise Invalid(f"Unknown fields: {', '.join(sorted(unknown))}; an app has {', '.join(sorted(FIELDS))}.")
        try:
            record, secret = await apps().register(
                body.get("name", ""),
                redirect_uris=body.get("redirectUris"),
                scopes=body.get("scopes"),
                app_type=body.get("type", "public"),
                launch_url=body.get("launchUrl"),
                jwks=body.get("jwks"),
                client_id=body.get("clientId") if isinstance(body.get("clientId"), str) else None,
            )
        except AppError as error:
            raise Invalid(str(error)) from None
        return JSONResponse({**public(record), **({"secret": secret} if secret else {})}, status_code=201)

    @router.get("/smart-apps", summary="List SMART apps")
    async def list_apps(request: Request) -> list[dict[str, Any]]:
        await fhir.authorize(request, "App:ListSmartApps", "App:SmartApp")
        return [public(record) for record in await apps().list()]

    @router.delete("/smart-apps/{record_id}", summary="Delete a SMART app (its tokens stop working)")
    async def delete(request: Request, record_id: str) -> Response:
        await fhir.authorize(request, "App:DeleteSmartApp", f"App:SmartApp:{record_id}")
        if not await apps().delete(record_id):
            raise NotFound(f"There is no SMART app {record_id}.")
        return Response(status_code=204)

    return router
