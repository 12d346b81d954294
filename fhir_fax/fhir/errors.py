"""Domain errors on the wire: the one table that maps each to HTTP, and the OperationOutcome rendering.

Every layer raises the errors of ``fhir_fax.errors``; nothing below the route classes knows a status
code. ``HTTP`` says, once, what each kind of error becomes: its status, its FHIR issue code and its
RFC 6749 error code. The route classes (``fhir.http.FHIRRoute``, ``sdk_http.SDKRoute``,
``auth.oauth_http.OAuthRoute``) look errors up here and render them in their API's shape.

The older FHIR-flavoured names (``InvalidRequest``, ``ResourceNotFound``...) remain as aliases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import (
    BadGateway,
    Conflict,
    DomainError,
    Forbidden,
    GatewayTimeout,
    Gone,
    Internal,
    Invalid,
    NotAcceptable,
    NotAllowed,
    NotFound,
    PreconditionFailed,
    TooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Unprocessable,
    UnsupportedMediaType,
)


@dataclass(frozen=True)
class Wire:
    """How one kind of error looks over HTTP."""

    status: int
    issue: str  # FHIR OperationOutcome.issue.code
    oauth: str  # RFC 6749 section 5.2 error code


HTTP: dict[type[DomainError], Wire] = {
    Invalid: Wire(400, "invalid", "invalid_request"),
    Unauthorized: Wire(401, "login", "invalid_client"),
    Forbidden: Wire(403, "forbidden", "unauthorized_client"),
    NotFound: Wire(404, "not-found", "invalid_request"),
    NotAllowed: Wire(405, "not-supported", "invalid_request"),
    NotAcceptable: Wire(406, "not-supported", "invalid_request"),
    Conflict: Wire(409, "conflict", "invalid_request"),
    Gone: Wire(410, "deleted", "invalid_request"),
    PreconditionFailed: Wire(412, "conflict", "invalid_request"),
    TooLarge: Wire(413, "too-long", "invalid_request"),
    UnsupportedMediaType: Wire(415, "not-supported", "invalid_request"),
    Unprocessable: Wire(422, "processing", "invalid_request"),
    TooManyRequests: Wire(429, "throttled", "slow_down"),
    Internal: Wire(500, "exception", "server_error"),
    BadGateway: Wire(502, "transient", "server_error"),
    Unavailable: Wire(503, "transient", "temporarily_unavailable"),
    GatewayTimeout: Wire(504, "timeout", "temporarily_unavailable"),
}
UNMAPPED = Wire(500, "exception", "server_error")


def wire(error: DomainError) -> Wire:
    """The table's entry for ``error``'s class or its nearest mapped base class."""
    for kind in type(error).__mro__:
        found = HTTP.get(kind)
        if found is not None:
            return found
    return UNMAPPED


def status_of(error: DomainError) -> int:
    return wire(error).status


def issue_of(error: DomainError) -> str:
    return error.issue_override or wire(error).issue


def oauth_of(error: DomainError) -> str:
    return error.oauth_override or wire(error).oauth


def outcome_of(error: DomainError) -> dict[str, Any]:
    """The OperationOutcome of ``error`` (severity fatal for our own faults)."""
    severity = "fatal" if isinstance(error, Internal) else "error"
    return operation_outcome(severity, issue_of(error), error.diagnostics, error.expression)


def operation_outcome(
    severity: str, code: str, diagnostics: str, expression: list[str] | None = None
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


# Earlier names, kept so that callers and host applications need not change.
FHIRError = DomainError
InvalidRequest = Invalid
ResourceNotFound = NotFound
MethodNotAllowed = NotAllowed
ResourceGone = Gone
PayloadTooLarge = TooLarge
UnprocessableEntity = Unprocessable
ServiceUnavailable = Unavailable
InternalError = Internal

__all__ = [
    "HTTP",
    "Conflict",
    "DomainError",
    "FHIRError",
    "Forbidden",
    "InternalError",
    "InvalidRequest",
    "MethodNotAllowed",
    "NotAcceptable",
    "PayloadTooLarge",
    "PreconditionFailed",
    "ResourceGone",
    "ResourceNotFound",
    "ServiceUnavailable",
    "Unauthorized",
    "UnprocessableEntity",
    "UnsupportedMediaType",
    "Wire",
    "issue_of",
    "oauth_of",
    "operation_outcome",
    "outcome_of",
    "status_of",
    "wire",
]
