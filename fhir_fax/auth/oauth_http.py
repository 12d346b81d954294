"""The route class of the OAuth endpoints: failures answered as RFC 6749 errors, bodies bounded.

The token endpoint reads its form before it knows who is calling, so its body limit is small
(``FHIR_FAX_TOKEN_MAX_BODY_BYTES``) and applied by the route class, as on every other route.
"""

from __future__ import annotations

from fastapi import Response
from fastapi.responses import JSONResponse

from ..errors import DomainError
from ..fhir.errors import oauth_of, status_of
from ..fhir.http import ErrorRenderingRoute


class OAuthRoute(ErrorRenderingRoute):
    """Errors as ``{"error": ..., "error_description": ...}`` (RFC 6749 section 5.2), never cached."""

    def render_error(self, error: DomainError) -> Response:
        return JSONResponse(
            {"error": oauth_of(error), "error_description": error.diagnostics},
            status_code=status_of(error),
            headers={"cache-control": "no-store", **error.headers},
        )
