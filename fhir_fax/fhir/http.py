"""HTTP plumbing shared by FHIR routes: error-catching route class, bounded bodies, body parsing, responses.

Every route of the module reads its request body through a limit that belongs to its route class
(``ErrorRenderingRoute.limited``): a declared ``Content-Length`` over the limit is refused before a byte is
read, and a body without one (chunked) is counted while it streams in and refused the moment it passes the
limit. Nothing over the limit is ever held in memory, whoever is asking and whether or not they are
authenticated. The limit sits on the module's own routes only, so a host application's routes are untouched.
"""

from __future__ import annotations

import email.utils
import json
import logging
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, ClassVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.types import Message, Receive, Scope, Send

from .conformance import unique_keys
from .errors import (
    FHIRError,
    InternalError,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    outcome_of,
    status_of,
)

log = logging.getLogger("fhir_fax.http")

FHIR_JSON = "application/fhir+json"
JSON_TYPES = ("application/fhir+json", "application/json", "application/json-patch+json")
DEFAULT_MAX_BODY_BYTES = 1_000_000  # a route class that was not given a limit still has one


def too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is larger than this endpoint accepts (at most {max_bytes} bytes); send a smaller body.",
        headers={"connection": "close"},
    )


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length`` (None when absent, or not plain ASCII digits: the server refuses those)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def limit_receive(receive: Receive, max_bytes: int) -> Receive:
    """``receive`` that counts body bytes as they arrive and raises PayloadTooLarge once they pass ``max_bytes``."""
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise too_large(max_bytes)
        return message

    return limited


class FHIRResponse(Response):
    """JSON response with the FHIR media type."""

    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        if content is None:
            return b""
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def outcome_response(error: FHIRError) -> FHIRResponse:
    return FHIRResponse(outcome_of(error), status_code=status_of(error), headers=error.headers)


class ErrorRenderingRoute(APIRoute):
    """A route that answers every failure in its API's error shape, and never with a stack trace.

    Kept on the route rather than as app-wide exception handlers so that mounting the module
    leaves the host application's own error handling untouched. Subclasses say how an error looks.
    The route also bounds its request body (``max_body_bytes``; see ``limited``).
    """

    max_body_bytes: ClassVar[int] = DEFAULT_MAX_BODY_BYTES

    @classmethod
    def limited(cls, max_bytes: int) -> type[ErrorRenderingRoute]:
        """This route class with request bodies limited to ``max_bytes`` (use as a router's ``route_class``)."""
        return type(f"{cls.__name__}Upto{max_bytes}", (cls,), {"max_body_bytes": max_bytes})

    def render_error(self, error: FHIRError) -> Response:
        raise NotImplementedError

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().handle(scope, limit_receive(receive, self.max_body_bytes), send)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                declared = declared_length(request.scope)
                if declared is not None and declared > self.max_body_bytes:
                    raise too_large(self.max_body_bytes)
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


class FHIRRoute(ErrorRenderingRoute):
    """FHIR routes answer failures with an OperationOutcome."""

    def render_error(self, error: FHIRError) -> Response:
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
    chunks = await read_body(request, max_bytes)
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


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, streamed and refused (413) as soon as it is known to be over ``max_bytes``.

    The route class already bounds every body; this is for a handler whose body must be smaller still.
    """
    declared = declared_length(request.scope)
    if declared is not None and declared > max_bytes:
        raise too_large(max_bytes)
    chunks = bytearray()
    async for chunk in request.stream():
        chunks.extend(chunk)
        if len(chunks) > max_bytes:
            raise too_large(max_bytes)
    return bytes(chunks)


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
