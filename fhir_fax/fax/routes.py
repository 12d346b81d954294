"""Fax routes: the SDK-compatible ``/fax/v1`` API, and what the ``$send-fax`` operation needs of a request.

Routes are thin: parse, call one FaxService function, shape the response. ``$send-fax`` itself is
declared in ``operation.py`` and routed by the FHIR layer's operation registry. Errors are the
same domain errors everywhere; the FHIR routes render them as OperationOutcomes and the SDK routes
as ``{"message": ..., "code": ...}``.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ..auth.addresses import TrustedProxies, caller_address
from ..errors import DomainError, Invalid, Unprocessable
from ..fhir.context import FHIRContext
from ..fhir.http import read_json
from ..sdk_http import SDKRoute
from ..settings import Settings
from ..z3.locations import Z3Location
from .numbers import OWNER_TYPES
from .operation import PREVIEW_SIGNATURE, parse_preview, parse_sdk_body
from .phone import NumberProblem, check_fax_number
from .preview import dry_run, preview
from .resend import SDK_SIGNATURE as RESEND_SDK_SIGNATURE
from .resend import load_original, resend
from .send import Caller, FaxService
from .tracking import Tracker

if TYPE_CHECKING:
    from ..runtime import RuntimeSlot

log = logging.getLogger("fhir_fax.fax")

MAX_KEY_LENGTH = 255


class FaxAPI:
    """Builds the fax routers; their FaxService and Tracker are the running runtime's (503 before start)."""

    def __init__(self, fhir: FHIRContext, settings: Settings, runtime: RuntimeSlot) -> None:
        self.fhir = fhir
        self.settings = settings
        self.runtime = runtime

    def require_service(self) -> FaxService:
        return self.runtime().service

    @property
    def tracker(self) -> Tracker:
        return self.runtime().tracker

    async def caller(self, request: Request) -> Caller:
        settings = self.settings
        key = request.headers.get("idempotency-key", request.headers.get("x-oystehr-request-id"))
        if key is not None and (not key.strip() or len(key) > MAX_KEY_LENGTH or not key.isprintable()):
            raise Invalid(
                f"The idempotency key must be 1-{MAX_KEY_LENGTH} printable characters (a UUID is ideal).",
                expression=["Idempotency-Key"],
            )
        public = settings.public_base(str(request.base_url))
        fhir_bases: tuple[str, ...] = (self.fhir.base_url(request),)
        if settings.reference_fhir_base:
            fhir_bases += (settings.reference_fhir_base,)

        async def authorize(action: str, resource: str) -> None:
            if action.startswith("Z3:"):  # the document the fax will carry (patient context: not another's)
                await self.fhir.document(request, action, resource, attaching=True)
            else:
                await self.fhir.authorize(request, action, resource)

        principal = getattr(request.state, "principal", None)
        return Caller(
            authorize=authorize,
            who=principal.client_id if principal else "anonymous",
            address=caller_address(request, TrustedProxies.of(settings.trusted_proxies)),
            authorization=request.headers.get("authorization"),
            idempotency_key=key,
            fhir_bases=fhir_bases,
            project_api_bases=(public + settings.project_api_path, *settings.z3_url_aliases),
            patient=await self.fhir.patient_limit(request, "FHIR:Create", "Communication"),
        )

    def sdk_router(self) -> APIRouter:
        settings = self.settings
        router = APIRouter(route_class=SDKRoute.limited(settings.max_body_bytes), tags=["Fax"])

        @router.post("/send", summary="Send a fax")
        async def send(request: Request) -> Response:
            await self.fhir.authorize(request, "Fax:Send", "Fax:Fax")
            body = await read_json(request, settings.max_body_bytes)
            result = await self.require_service().send(parse_sdk_body(body), await self.caller(request))
            headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
            return JSONResponse({"communicationResource": result.communication}, headers=headers)

        @router.post("/resend", summary="Resend a fax (same frozen documents, as a new Communication)")
        async def resend_fax(request: Request) -> Response:
            await self.fhir.authorize(request, "Fax:Send", "Fax:Fax")
            body = await read_json(request, settings.max_body_bytes)
            inputs = RESEND_SDK_SIGNATURE.parse_json(body)
            original = await load_original(self, request, inputs["communicationId"])
            result = await resend(
                self.require_service(),
                original,
                await self.caller(request),
                inputs.get("recipient"),
                inputs.get("recipientNumber"),
            )
            headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
            return JSONResponse({"communicationResource": result.communication}, headers=headers)

        @router.post("/preview", summary="Preview a fax before sending it (dry run: one page as PNG)")
        async def dry_run_preview(request: Request) -> Response:
            await self.fhir.authorize(request, "Fax:Send", "Fax:Fax")
            body = await read_json(request, settings.max_body_bytes)
            fax_request, page = parse_preview(PREVIEW_SIGNATURE.parse_json(body))
            shown = await dry_run(self.require_service(), fax_request, await self.caller(request), page)
            await self.documents_shown(request, shown.documents)
            return Response(shown.image, media_type="image/png", headers={"Fax-Pages": str(shown.pages)})

        @router.post("/onboard", summary="Onboard a fax number")
        async def onboard(request: Request) -> dict[str, str]:
            await self.fhir.authorize(request, "Fax:Onboard", "Fax:Number")
            number = await self.optional_number(request)
            owner = await self.optional_owner(request)
            onboarded = await self.require_service().onboard(number)
            if owner is not None:  # who receives the faxes sent to it (an inbound fax's recipient)
                await self.require_service().numbers.set_owner(onboarded, owner)
            return {"faxNumber": onboarded}

        @router.post("/offboard", summary="Offboard fax numbers (all, or the one named)")
        async def offboard(request: Request) -> dict[str, list[str]]:
            await self.fhir.authorize(request, "Fax:Offboard", "Fax:Number")
            number = await self.optional_number(request)
            return {"released": await self.require_service().numbers.offboard(number)}

        @router.get("/faxes/{communication_id}/preview", summary="A page as the recipient will see it (PNG)")
        async def fax_preview(request: Request, communication_id: str) -> Response:
            await self.fhir.authorize(request, "FHIR:Read", f"FHIR:Communication:{communication_id}")
            communication = await self.fhir.store.read("Communication", communication_id)
            await self.fhir.admit(request, "FHIR:Read", communication)  # its id's rules, the patient in context
            service = self.require_service()

            async def may_read(document: Z3Location) -> None:
                await self.fhir.document(request, "Z3:GetObject", f"Z3:{document.bucket}/{document.key}")

            page = request.query_params.get("page")
            image = await preview(service.database, communication_id, page, may_read, communication=communication)
            await self.fhir.was_read(request, "preview", [communication])
            return Response(image, media_type="image/png")

        @router.get("/config", summary="Fax configuration")
        async def config(request: Request) -> dict[str, Any]:
            await self.fhir.authorize(request, "Fax:GetConfiguration", "Fax:Configuration")
            numbers = await self.require_service().numbers.list()
            return {"configured": bool(numbers), "faxNumbers": numbers}

        return router

    async def documents_shown(self, request: Request, documents: tuple[tuple[Z3Location, Any], ...]) -> None:
        """A dry run showed these documents' pages: audited as document reads (the gate let each through)."""
        for location, version in documents:
            await self.fhir.document_was_read(request, f"Z3:{location.bucket}/{location.key}", version)

    async def optional_owner(self, request: Request) -> str | None:
        """``owner`` from the onboarding body: an existing resource of OWNER_TYPES the caller may read."""
        raw = await request.body()
        body = json.loads(raw) if raw.strip() else {}
        owner = body.get("owner") if isinstance(body, dict) else None
        if owner is None:
            return None
        kind, _, ident = owner.partition("/") if isinstance(owner, str) else ("", "", "")
        if kind not in OWNER_TYPES or not ident:
            raise Invalid(
                f"owner must be a reference to one of {', '.join(OWNER_TYPES)}, e.g. Organization/123.",
                expression=["owner"],
            )
        await self.fhir.authorize(request, "FHIR:Read", f"FHIR:{kind}:{ident}")
        try:
            await self.fhir.store.read(kind, ident)
        except DomainError:
            raise Unprocessable(f"owner: {owner} does not exist; create it first.", expression=["owner"]) from None
        return str(owner)

    async def optional_number(self, request: Request) -> str | None:
        """``faxNumber`` from an optional JSON body (``{}`` or no body means none)."""
        raw = await request.body()
        if not raw.strip():
            return None
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            raise Invalid('The body must be JSON: {} or {"faxNumber": "+12223334444"}.') from None
        if not isinstance(body, dict) or set(body) - {"faxNumber", "owner"}:
            raise Invalid(
                'The body may only hold "faxNumber" and "owner", e.g. {"faxNumber": "+12223334444", '
                '"owner": "Organization/123"}.'
            )
        number = body.get("faxNumber")
        if number is None:
            return None
        try:
            return check_fax_number(number, require_valid=self.settings.require_valid_numbers)
        except NumberProblem as problem:
            raise Invalid(f"faxNumber: {problem}", expression=["faxNumber"]) from None
