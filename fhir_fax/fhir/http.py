"""HTTP plumbing shared by FHIR routes: error-catching route class, body parsing, responses."""

from __future__ import annotations

import email.utils
import json
import logging
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from .conformance import unique_keys
from .errors import FHIRError, InvalidRequest, PayloadTooLarge, UnsupportedMediaType, operation_outcome

log = logging.getLogger("fhir_fax.http")

FHIR_JSON = "application/fhir+json"
JSON_TYPES = ("application/fhir+json", "application/json", "application/json-patch+json")


class FHIRResponse(Response):
    """JSON response with the FHIR media type."""

    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        if content is None:
            return b""
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def outcome_response(error: FHIRError) -> FHIRResponse:
    return FHIRResponse(error.outcome(), status_code=error.status_code, headers=error.headers)


class ErrorRenderingRoute(APIRoute):
    """A route that answers every failure in its API's error shape, and never with a stack trace.

    Kept on the route rather than as app-wide exception handlers so that mounting the module
    leaves the host application's own error handling untouched. Subclasses say how an error looks.
    """

    def render_error(self, error: FHIRError) -> Response:
        raise NotImplementedError

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except FHIRError as error:
                return self.render_error(error)
            except RequestValidationError as error:
                return self.render_error(InvalidRequest(describe_request_errors(error)))
            except Exception:
                incident = uuid.uuid4().hex[:12]
                log.exception("unhandled error in %s %s (incident %s)", request.method, request.url.path, incident)
                return self.render_error(
                    InternalError(f"Internal server error; quote incident {incident} when reporting it.")
                )

        return handle


class InternalError(FHIRError):
    status_code = 500
    issue_code = "exception"


class FHIRRoute(ErrorRenderingRoute):
    """FHIR routes answer failures with an OperationOutcome."""

    def render_error(self, error: FHIRError) -> Response:
        if isinstance(error, InternalError):
            outcome = operation_outcome("fatal", error.issue_code, error.diagnostics)
            return FHIRResponse(outcome, status_code=error.status_code)
        return outcome_response(error)


def describe_request_errors(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        parts.append(f"{where}: {item.get('msg')}")
    return "The request is not valid: " + "; ".join(parts)


async def read_json(request: Request, max_bytes: int) -> Any:
    """The request body as JSON, refusing non-JSON media types, oversized and malformed bodies."""
    content_type = request.headers.get("content-type", FHIR_JSON).split(";")[0].strip().lower()
    if content_type and content_type not in JSON_TYPES:
        raise UnsupportedMediaType(f"Content-Type {content_type!r} is not supported; send the resource as {FHIR_JSON}.")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"The body is larger than the {max_bytes} bytes this server accepts.")
    chunks = bytearray()
    async for chunk in request.stream():
        chunks.extend(chunk)
        if len(chunks) > max_bytes:
            raise PayloadTooLarge(f"The body is larger than the {max_bytes} bytes this server accepts.")
    if not chunks:
        raise InvalidRequest("The request has no body; send a FHIR resource as JSON.")
    try:
        return json.loads(chunks, object_pairs_hook=unique_keys)  # a key given twice is a 400, not last-wins
    except json.JSONDecodeError as error:
        raise InvalidRequest(
            f"The body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}."
        ) from None
    except (UnicodeDecodeError, RecursionError):
        raise InvalidRequest("The body is not valid JSON (bad encoding or nested too deeply).") from None


def prefer(request: Request, key: str) -> str | None:
    """The value of one ``Prefer`` header token, e.g. ``prefer(request, "return")``."""
    for header in request.headers.getlist("prefer"):
        for token in header.split(","):
            name, _, value = token.strip().partition("=")
            if name.strip().lower() == key:
                return value.strip().strip('"')
    return None


def http_date(moment: datetime) -> str:
    return email.utils.format_datetime(moment, usegmt=True)


def version_headers(resource: dict[str, Any]) -> dict[str, str]:
    """ETag and Last-Modified of a stored resource."""
    meta = resource.get("meta", {})
    headers = {"ETag": f'W/"{meta["versionId"]}"'}
    if "lastUpdated" in meta:
        moment = datetime.fromisoformat(meta["lastUpdated"].replace("Z", "+00:00"))
        headers["Last-Modified"] = http_date(moment)
    return headers
