"""Machine clients over HTTP, as the Oystehr SDK's ``m2m`` calls them at ``{projectApiUrl}/m2m``.

Responses never include the secret or its hash; ``POST /m2m/{id}/rotate-secret`` is the only way to
see a secret. Every call needs an ``App:`` action on ``App:M2MClient[:id]``, except ``GET /m2m/me``,
which shows the caller itself.

A client never creates or grants rights beyond its own (the gate's ``grant``): a new or changed policy
must be covered by the caller's, and a client with more rights than the caller cannot be changed or have
its secret rotated or be deleted by it (that would hand its rights over, or take them from everyone).
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
from .clients import Clients, public
from .gate import Gate
from .policies import PolicyError, Rule, parse_policy

EDITABLE = {"name", "description", "accessPolicy", "jwks"}


def _fields(body: Any, *, creating: bool) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Invalid("The body must be a JSON object with name, description and accessPolicy.")
    unknown = set(body) - EDITABLE
    if unknown:
        raise Invalid(f"Unknown fields: {', '.join(sorted(unknown))}; a client has {', '.join(sorted(EDITABLE))}.")
    if creating and not body.get("name"):
        raise Invalid("name is required.")
    if creating and "accessPolicy" not in body:
        raise Invalid(
            "accessPolicy is required, e.g. "
            '{"rule": [{"resource": "Fax:Fax:*", "action": "Fax:Send", "effect": "Allow"}]}.'
        )
    if "name" in body and not isinstance(body["name"], str):
        raise Invalid("name must be a string.")
    return body


def _policy(value: Any, prefix: str = "") -> tuple[Rule, ...]:
    try:
        return parse_policy(value)
    except PolicyError as error:
        raise Invalid(f"{prefix}{error}") from None


def m2m_router(fhir: FHIRContext, runtime: Callable[[], Any]) -> APIRouter:
    """``runtime()`` is the running ``fhir_fax.runtime.Runtime`` (Unavailable, so 503, before start-up)."""
    router = APIRouter(route_class=SDKRoute.limited(fhir.settings.max_body_bytes), tags=["M2M clients"])

    def clients() -> Clients:
        return Clients(runtime().database)

    def gate() -> Gate:
        found: Gate = runtime().gate
        return found

    async def found(record_id: str) -> dict[str, Any]:
        record = await clients().get(record_id)
        if record is None:
            raise NotFound(f"There is no M2M client {record_id}.")
        return record

    @router.post("/m2m", summary="Create an M2M client", status_code=201)
    async def create(request: Request) -> JSONResponse:
        await fhir.authorize(request, "App:CreateM2MClient", "App:M2MClient")
        body = _fields(await read_json(request, fhir.settings.max_body_bytes), creating=True)
        await gate().grant(request, "App:CreateM2MClient", "App:M2MClient", _policy(body["accessPolicy"]))
        try:
            record, _ = await clients().create(
                body["name"], body["accessPolicy"], description=body.get("description"), jwks=body.get("jwks")
            )
        except PolicyError as error:
            raise Invalid(str(error)) from None
        return JSONResponse(public(record), status_code=201)

    @router.get("/m2m", summary="List M2M clients")
    async def list_clients(request: Request) -> list[dict[str, Any]]:
        await fhir.authorize(request, "App:ListAllM2MClients", "App:M2MClient")
        return [public(record) for record in await gate().listable(request, await clients().list())]

    @router.get("/m2m/me", summary="The calling M2M client")
    async def me(request: Request) -> dict[str, Any]:
        await fhir.authenticate(request)
        record = await clients().by_client_id(request.state.principal.client_id)
        if record is None:
            raise NotFound("The calling client no longer exists.")
        return public(record)

    @router.get("/m2m/{record_id}", summary="Get an M2M client")
    async def get(request: Request, record_id: str) -> dict[str, Any]:
        await fhir.authorize(request, "App:GetM2MClient", f"App:M2MClient:{record_id}")
        return public(await found(record_id))

    @router.patch("/m2m/{record_id}", summary="Update an M2M client")
    async def update(request: Request, record_id: str) -> dict[str, Any]:
        await fhir.authorize(request, "App:UpdateM2MClient", f"App:M2MClient:{record_id}")
        body = _fields(await read_json(request, fhir.settings.max_body_bytes), creating=False)
        current = await found(record_id)
        granted = _policy(body["accessPolicy"], "accessPolicy: ") if "accessPolicy" in body else None
        target = _policy(current["accessPolicy"])
        await gate().grant(request, "App:UpdateM2MClient", f"App:M2MClient:{record_id}", granted, target)
        try:
            record = await clients().update(record_id, body)
        except PolicyError as error:
            raise Invalid(f"accessPolicy: {error}") from None
        assert record is not None
        return public(record)

    @router.delete("/m2m/{record_id}", summary="Delete an M2M client")
    async def delete(request: Request, record_id: str) -> Response:
        await fhir.authorize(request, "App:DeleteM2MClient", f"App:M2MClient:{record_id}")
        target = _policy((await found(record_id))["accessPolicy"])
        await gate().grant(request, "App:DeleteM2MClient", f"App:M2MClient:{record_id}", None, target)
        if not await clients().delete(record_id):
            raise NotFound(f"There is no M2M client {record_id}.")
        return Response(status_code=204)

    @router.post("/m2m/{record_id}/rotate-secret", summary="Give an M2M client a new secret")
    async def rotate(request: Request, record_id: str) -> dict[str, str]:
        await fhir.authorize(request, "App:RotateM2MClientSecret", f"App:M2MClient:{record_id}")
        target = _policy((await found(record_id))["accessPolicy"])
        await gate().grant(request, "App:RotateM2MClientSecret", f"App:M2MClient:{record_id}", None, target)
        secret = await clients().rotate_secret(record_id)
        if secret is None:
            raise NotFound(f"There is no M2M client {record_id}.")
        return {"secret": secret}

    return router
