"""Errors on the SDK-compatible routes (``/fax/v1``, ``/v1``): ``{"message": ..., "code": <status>}``."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from .fhir.errors import FHIRError
from .fhir.http import describe_request_errors

log = logging.getLogger("fhir_fax.http")


class SDKRoute(APIRoute):
    """Renders every failure as ``{"message": ..., "code": <status>}``, the shape the Oystehr SDK reads."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except FHIRError as error:
                return sdk_error(error.diagnostics, error.status_code, error.headers)
            except RequestValidationError as error:
                return sdk_error(describe_request_errors(error), 400)
            except Exception:
                incident = uuid.uuid4().hex[:12]
                log.exception("unhandled error in %s %s (incident %s)", request.method, request.url.path, incident)
                return sdk_error(f"Internal server error; quote incident {incident} when reporting it.", 500)

        return handle


def sdk_error(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"message": message, "code": status}, status_code=status, headers=headers)
