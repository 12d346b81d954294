"""FHIR errors as typed exceptions, each able to render its OperationOutcome."""

from __future__ import annotations

from typing import Any, ClassVar


class FHIRError(Exception):
    """An outcome to return to the client: HTTP status, issue code and a diagnostic that says what to do."""

    status_code: ClassVar[int] = 400
    issue_code: ClassVar[str] = "invalid"

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: list[str] | None = None,
        headers: dict[str, str] | None = None,
        issue_code: str | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.expression = expression
        self.headers = headers or {}
        if issue_code:
            self.issue_code = issue_code

    def outcome(self) -> dict[str, Any]:
        return operation_outcome("error", self.issue_code, self.diagnostics, self.expression)


def operation_outcome(
    severity: str, code: str, diagnostics: str, expression: list[str] | None = None
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class InvalidRequest(FHIRError):
    status_code = 400
    issue_code = "invalid"


class Unauthorized(FHIRError):
    status_code = 401
    issue_code = "login"


class Forbidden(FHIRError):
    status_code = 403
    issue_code = "forbidden"


class ResourceNotFound(FHIRError):
    status_code = 404
    issue_code = "not-found"


class MethodNotAllowed(FHIRError):
    status_code = 405
    issue_code = "not-supported"


class Conflict(FHIRError):
    status_code = 409
    issue_code = "conflict"


class ResourceGone(FHIRError):
    status_code = 410
    issue_code = "deleted"


class PreconditionFailed(FHIRError):
    status_code = 412
    issue_code = "conflict"


class PayloadTooLarge(FHIRError):
    status_code = 413
    issue_code = "too-long"


class UnsupportedMediaType(FHIRError):
    status_code = 415
    issue_code = "not-supported"


class UnprocessableEntity(FHIRError):
    status_code = 422
    issue_code = "processing"
