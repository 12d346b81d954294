"""How clients find this server's authorization: the SMART configuration, the OpenID configuration and
``/metadata``'s ``rest.security``.

All three state only what is served, and are built here from one list of endpoints so that they cannot
disagree. This server is a SMART App Launch 2.x authorization server:

- backend services: ``client_credentials`` for M2M clients (secret, Basic or form, or ``private_key_jwt``);
- apps people open: ``authorization_code`` with PKCE (S256 only) at ``/oauth/authorize`` (sign-in, consent,
  patient picker), standalone or from an EHR (``launch``), for public apps and confidential ones (secret or
  ``private_key_jwt``), then ``refresh_token`` (rotating) for ``offline_access`` / ``online_access``;
- an OpenID Connect id_token (RS256, ``fhirUser``) for ``openid fhirUser``;
- introspection (RFC 7662) and revocation (RFC 7009) for an app's own tokens.

Dynamic registration is not served (apps are registered with ``fhir-fax apps`` or ``/v1/smart-apps``), so no
document names it.
"""

from __future__ import annotations

from typing import Any

from .assertions import ALGORITHMS

GRANT_TYPES = ("client_credentials",)  # the M2M grant (routes.py)
APP_GRANT_TYPES = ("authorization_code", "refresh_token")  # SMART apps (smart_routes.py)
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
CAPABILITIES = (
    "launch-ehr",  # POST /oauth/launch, then launch=... with scope launch
    "launch-standalone",  # launch/patient: the patient picker
    "client-public",  # PKCE, no secret
    "client-confidential-symmetric",  # client_secret_basic / client_secret_post
    "client-confidential-asymmetric",  # private_key_jwt (a registered JWKS)
    "context-ehr-patient",  # the launch's patient in the token response
    "context-standalone-patient",  # the picked patient in the token response
    "sso-openid-connect",  # openid fhirUser: an id_token
    "permission-offline",  # offline_access: a long-lived, rotating refresh token
    "permission-online",  # online_access: a refresh token for a working day
    "permission-patient",  # patient/ scopes: kept to the patient's compartment by the gate
    "permission-user",  # user/ scopes: the user's own access policy
    "permission-v1",  # patient/*.read, user/*.write, system/*.*
    "permission-v2",  # patient/Communication.rs ...
)
SCOPES_SUPPORTED = (
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
    "patient/*.rs",
    "patient/*.read",
    "patient/Communication.cruds",
    "patient/Communication.rs",
    "user/*.cruds",
    "user/*.rs",
    "user/*.read",
    "user/*.write",
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


def endpoints(issuer: str) -> dict[str, str]:
    return {
        "authorize": f"{issuer}/oauth/authorize",
        "token": token_endpoint(issuer),
        "introspect": f"{issuer}/oauth/introspect",
        "revoke": f"{issuer}/oauth/revoke",
    }


def _endpoints_metadata(issuer: str) -> dict[str, str]:
    """Where each endpoint is, as both metadata documents name them."""
    urls = endpoints(issuer)
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "authorization_endpoint": urls["authorize"],
        "token_endpoint": urls["token"],
        "introspection_endpoint": urls["introspect"],
        "revocation_endpoint": urls["revoke"],
    }


def smart_configuration(issuer: str) -> dict[str, Any]:
    """``/.well-known/smart-configuration`` (SMART App Launch 2.x)."""
    return {
        **_endpoints_metadata(issuer),
        "grant_types_supported": [*APP_GRANT_TYPES, *GRANT_TYPES],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "scopes_supported": list(SCOPES_SUPPORTED),
        "capabilities": list(CAPABILITIES),
    }


def openid_configuration(issuer: str, fhir_path: str) -> dict[str, Any]:
    """``/.well-known/openid-configuration``: the OpenID Connect provider metadata of the same server."""
    return {
        **_endpoints_metadata(issuer),
        "response_types_supported": ["code"],
        "grant_types_supported": list(APP_GRANT_TYPES),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": [*AUTH_METHODS, "none"],
        "scopes_supported": ["openid", "fhirUser", "profile", "offline_access", "online_access"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser", "name"],
    }


def rest_security(issuer: str) -> dict[str, Any]:
    """``CapabilityStatement.rest.security``: SMART-on-FHIR, and its endpoints (the ``oauth-uris`` extension)."""
    return {
        "extension": [
            {
                "url": OAUTH_URIS,
                "extension": [{"url": name, "valueUri": url} for name, url in endpoints(issuer).items()],
            }
        ],
        "service": [
            {
                "coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}],
                "text": "OAuth 2.0 with SMART App Launch (authorization code + PKCE) and backend services",
            }
        ],
        "description": (
            "Every interaction except this CapabilityStatement needs a bearer token. Apps people open use the "
            f"authorization endpoint ({endpoints(issuer)['authorize']}: sign-in, consent, patient picker; PKCE S256, "
            "state and aud required) and then the token endpoint; machine clients use the token endpoint "
            f"({token_endpoint(issuer)}) with grant_type=client_credentials, their secret (HTTP Basic or form) or a "
            "signed JWT assertion (private_key_jwt). Scopes narrow the user's or client's access policy; patient/ "
            "scopes keep a token to the patient in context. The SMART configuration is at "
            ".well-known/smart-configuration under this base."
        ),
    }
