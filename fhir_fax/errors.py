"""The errors every layer raises: what went wrong, in domain terms, with no HTTP in them.

Storage, the FHIR layer, access control and the fax service all raise these. How an error looks on
the wire is decided once, at the edge (``fhir_fax.fhir.errors.HTTP``: status, FHIR issue code, OAuth
error code), and rendered by the route class of the API that was called (OperationOutcome,
``{"message", "code"}`` or RFC 6749). This module imports nothing of the package, so every layer,
the FHIR layer included, may raise them.
"""

from __future__ import annotations


class DomainError(Exception):
    """A refusal or failure to report to the caller, with a message that says what to do.

    ``expression`` names the parameter or element at fault (FHIRPath-like, e.g. ``["media"]``);
    ``headers`` are added to the response (``Retry-After``, ``WWW-Authenticate``...).
    """

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: list[str] | None = None,
        headers: dict[str, str] | None = None,
        issue_code: str | None = None,
        oauth_error: str | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.expression = expression
        self.headers = headers or {}
        self.issue_override = issue_code  # a more precise FHIR issue code than the class's (e.g. "duplicate")
        self.oauth_override = oauth_error  # a more precise RFC 6749 error than the class's (e.g. "invalid_scope")

    @property
    def message(self) -> str:
        return self.diagnostics


class Invalid(DomainError):
    """The request is malformed or breaks a rule of its own (a parameter, a value, a shape)."""


class Unauthorized(DomainError):
    """Who is calling is not known (no, bad or expired credentials)."""


class Forbidden(DomainError):
    """The caller is known but may not do this."""


class NotFound(DomainError):
    """What the request names does not exist."""


class NotAllowed(DomainError):
    """This interaction is not offered on this resource (a method, an operation)."""


class Conflict(DomainError):
    """The request clashes with the current state (a duplicate, a concurrent change)."""


class Gone(DomainError):
    """What the request names existed and was deleted."""


class PreconditionFailed(DomainError):
    """A condition the caller set (If-Match, a version) does not hold."""


class TooLarge(DomainError):
    """The request or the thing it carries is bigger than allowed."""


class UnsupportedMediaType(DomainError):
    """The body is in a format this endpoint does not read."""


class NotAcceptable(DomainError):
    """No representation the caller accepts can be produced."""


class Unprocessable(DomainError):
    """Well-formed, but its content cannot be acted on (a document that cannot be faxed, a bad reference)."""


class TooManyRequests(DomainError):
    """The caller must slow down (lock-outs, rate limits)."""


class Internal(DomainError):
    """A fault of ours; the message carries an incident id, never a stack trace."""


class BadGateway(DomainError):
    """A service we depend on (a reference server, the carrier) answered wrongly."""


class Unavailable(DomainError):
    """Not ready or overloaded; retrying later may succeed."""


class GatewayTimeout(DomainError):
    """A service we depend on did not answer in time."""
