"""How clients find this server's authorization: the SMART configuration and ``/metadata``'s ``rest.security``.

Both documents state only what is served. This server is a SMART *backend services* authorization server:
one grant (``client_credentials``), clients authenticated by a secret (Basic or form) or a signed assertion
(``private_key_jwt``), tokens carrying ``system/`` scopes. It has no authorization endpoint, so nothing that
belongs to the user-facing flows is announced: no ``response_types_supported`` or PKCE methods (they describe
the authorization endpoint), no ``launch-*`` or ``sso-openid-connect`` capabilities, no ``permission-patient``
(a client-credentials token cannot carry a patient in context). Introspection, revocation and registration
are not served either, so neither document names them.

The two documents are built here from one list of endpoints so that they cannot disagree.
"""

from __future__ import annotations

from typing import Any

from .assertions import ALGORITHMS

GRANT_TYPES = ("client_credentials",)
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
CAPABILITIES = (
    "client-confidential-symmetric",  # client_secret_basic / client_secret_post
    "client-confidential-asymmetric",  # private_key_jwt (a registered JWKS or JWKS URL)
    "permission-v1",  # system/*.read, system/*.write, system/*.*
    "permission-v2",  # system/Communication.rs ...
)
SCOPES_SUPPORTED = (
    "system/*.cruds",
    "system/*.rs",
    "system/Communication.cruds",
    "system/Communication.rs",
    "system/*.read",
    "system/*.write",
)
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def token_endpoint(issuer: str) -> str:
    return f"{issuer}/oauth/token"


def smart_configuration(issuer: str) -> dict[str, Any]:
    """``/.well-known/smart-configuration`` (SMART App Launch 2.x) for a backend-services-only server.

    Required there: ``token_endpoint``, ``grant_types_supported``, ``capabilities``. ``issuer`` is required only
    with ``sso-openid-connect`` (not served) and is left out; ``jwks_uri`` is optional without it and kept: it is
    where resource servers and clients find the key that signs our access tokens.
    """
    return {
        "token_endpoint": token_endpoint(issuer),
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "scopes_supported": list(SCOPES_SUPPORTED),
        "capabilities": list(CAPABILITIES),
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
    }


def rest_security(issuer: str) -> dict[str, Any]:
    """``CapabilityStatement.rest.security``: SMART-on-FHIR, and where the token endpoint is (``oauth-uris``).

    Only ``token`` is listed in ``oauth-uris``: ``authorize``, ``introspect``, ``revoke`` and ``register`` are
    not served.
    """
    return {
        "extension": [{"url": OAUTH_URIS, "extension": [{"url": "token", "valueUri": token_endpoint(issuer)}]}],
        "service": [
            {
                "coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}],
                "text": "OAuth 2.0 with SMART backend services (client credentials)",
            }
        ],
        "description": (
            "Every interaction except this CapabilityStatement needs a bearer token from the token endpoint "
            f"({token_endpoint(issuer)}): grant_type=client_credentials, the client authenticated with its secret "
            "(HTTP Basic or form) or a signed JWT assertion (private_key_jwt). Tokens carry system/ scopes, which "
            "narrow the client's access policy; the token response's scope says what the token may do. The SMART "
            "configuration is at .well-known/smart-configuration under this base."
        ),
    }
