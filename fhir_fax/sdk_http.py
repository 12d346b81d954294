"""Errors on the SDK-compatible routes (``/fax/v1``, ``/v1``): ``{"message": ..., "code": <status>}``."""

from __future__ import annotations

from fastapi import Response
from fastapi.responses import JSONResponse

from .errors import DomainError
from .fhir.errors import status_of
from .fhir.http import ErrorRenderingRoute


class SDKRoute(ErrorRenderingRoute):
    """SDK-compatible routes answer failures as ``{"message": ..., "code": <status>}``, what the Oystehr SDK reads."""

    def render_error(self, error: DomainError) -> Response:
        return sdk_error(error.diagnostics, status_of(error), error.headers)


def sdk_error(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"message": message, "code": status}, status_code=status, headers=headers)
