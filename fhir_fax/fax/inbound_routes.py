"""Reception over HTTP, for admins (policy action ``Fax:Receive``): simulate a received fax, read the settings.

``POST {fax-api}/inbound/simulate?from=+1...&to=+1...`` takes the document as the raw body (PDF or TIFF), as
if it had been faxed to the onboarded number ``to``; the answer holds the Communication and its Task.
``&fail=BUSY`` (any failure-reason code) plays a reception that failed instead.
``GET {fax-api}/inbound/config`` shows how faxes are received (bucket, media hosts, limits, numbers and owners).
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..auth.addresses import TrustedProxies, caller_address
from ..errors import Invalid
from ..fhir.http import read_body
from ..sdk_http import SDKRoute
from .inbound import Received
from .phone import NumberProblem, check_fax_number
from .transports.simulator.inbound import NAME as SIMULATOR
from .transports.simulator.inbound import simulated_fax

if TYPE_CHECKING:
    from .routes import FaxAPI

RECEIVE = ("Fax:Receive", "Fax:Number")
MAX_ID = 100


def received_body(received: Received) -> dict[str, Any]:
    return {"communication": received.communication, "task": received.task, "duplicate": received.duplicate}


def number_parameter(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if value is None:
        raise Invalid(
            f"The query parameter '{name}' is required: an E.164 number such as +12223334444.", expression=[name]
        )
    try:
        return check_fax_number(value)
    except NumberProblem as problem:
        raise Invalid(f"{name}: {problem}", expression=[name]) from None


def inbound_router(fax: FaxAPI) -> APIRouter:
    settings = fax.settings
    router = APIRouter(route_class=SDKRoute.limited(settings.inbound_max_bytes), tags=["Fax"])

    @router.post("/inbound/simulate", summary="Receive a document as if it had been faxed to an onboarded number")
    async def simulate(request: Request) -> JSONResponse:
        principal = await fax.fhir.require_gate().authorize(request, *RECEIVE)
        from_number, to_number = number_parameter(request, "from"), number_parameter(request, "to")
        fax_id = request.query_params.get("id")
        if fax_id is not None and not (0 < len(fax_id) <= MAX_ID and fax_id.isascii() and fax_id.isprintable()):
            raise Invalid(f"id must be 1-{MAX_ID} printable ASCII characters.", expression=["id"])
        data = await read_body(request, settings.inbound_max_bytes)
        try:
            notice, media = simulated_fax(data, from_number, to_number, fax_id, request.query_params.get("fail"))
        except ValueError as problem:
            raise Invalid(f"fail: {problem}", expression=["fail"]) from None
        address = caller_address(request, TrustedProxies.of(settings.trusted_proxies))
        received = await fax.runtime().reception.receive(
            SIMULATOR, notice, media, who=principal.client_id, address=address
        )
        return JSONResponse(received_body(received), status_code=200 if received.duplicate else 201)

    @router.get("/inbound/config", summary="How faxes are received: bucket, media hosts, limits, numbers")
    async def config(request: Request) -> dict[str, Any]:
        await fax.fhir.authorize(request, *RECEIVE)
        numbers = fax.require_service().numbers
        records = [await numbers.record(n) for n in await numbers.list()]
        return {
            "bucket": settings.inbound_bucket,
            "maxBytes": settings.inbound_max_bytes,
            "mediaHosts": settings.inbound_media_hosts,
            "ocr": settings.inbound_ocr and shutil.which("tesseract") is not None,
            "numbers": [{"faxNumber": r["_id"], "owner": r.get("owner")} for r in records if r is not None],
        }

    return router
