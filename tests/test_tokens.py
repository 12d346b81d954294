"""The token endpoint, the JWKS, SMART configuration, and token verification against forgeries."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fhir_fax.auth.clients import Clients
from fhir_fax.auth.tokens import TokenError, issue_token, signing_key, verify_token
from fhir_fax.settings import Settings

from helpers import serving

ISSUER, AUDIENCE = "http://fhir.test", "http://fhir.test/fhir"


@pytest.fixture
async def auth_api(settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    configured = settings.model_copy(
        update={"bootstrap_client_id": "admin", "bootstrap_client_secret": "admin-secret", "worker_enabled": False}
    )
    async with serving(configured, database, authenticated=False) as http:
        yield http


async def test_client_credentials_gives_a_verifiable_token(auth_api: httpx.AsyncClient, database: Any) -> None:
    response = await auth_api.post(
        "/oauth/token", data={"grant_type": "client_credentials", "client_id": "admin", "client_secret": "admin-secret"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", 900, "system/*.cruds")
    claims = verify_token(await signing_key(database), body["access_token"], issuer=ISSUER, audience=AUDIENCE)
    assert {"iss", "aud", "sub", "exp", "iat", "jti", "scope", "client_id"} <= set(claims)
    assert (claims["sub"], claims["client_id"]) == ("admin", "admin")
    jwks = (await auth_api.get("/.well-known/jwks.json")).json()
    assert jwks["keys"][0]["kid"] == jwt.get_unverified_header(body["access_token"])["kid"]
    assert "d" not in jwks["keys"][0], "only the public key is published"


async def test_basic_auth_and_a_narrowing_scope(auth_api: httpx.AsyncClient) -> None:
    basic = base64.b64encode(b"admin:admin-secret").decode()
    response = await auth_api.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "openid system/Communication.rs"},
        headers={"authorization": f"Basic {basic}"},
    )
    assert response.status_code == 200 and response.json()["scope"] == "system/Communication.rs"


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        (
            {"grant_type": "password", "client_id": "admin", "client_secret": "admin-secret"},
            400,
            "unsupported_grant_type",
        ),
        ({"grant_type": "client_credentials", "client_id": "admin"}, 400, "invalid_request"),
        ({"grant_type": "client_credentials", "client_id": "admin", "client_secret": "wrong"}, 401, "invalid_client"),
        ({"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"}, 401, "invalid_client"),
        (
            {
                "grant_type": "client_credentials",
                "client_id": "admin",
                "client_secret": "admin-secret",
                "scope": "system/X.q",
            },
            400,
            "invalid_scope",
        ),
    ],
)
async def test_bad_token_requests(auth_api: httpx.AsyncClient, form: dict[str, str], status: int, error: str) -> None:
    response = await auth_api.post("/oauth/token", data=form)
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert "access_token" not in response.json()


async def test_guessing_secrets_is_rate_limited(auth_api: httpx.AsyncClient) -> None:
    form = {"grant_type": "client_credentials", "client_id": "admin"}
    statuses = [
        (await auth_api.post("/oauth/token", data={**form, "client_secret": f"guess-{n}"})).status_code
        for n in range(12)
    ]
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]
    blocked = await auth_api.post("/oauth/token", data={**form, "client_secret": "admin-secret"})
    assert blocked.status_code == 429, "even the right secret waits out the minute"


async def test_every_server_process_shares_the_failure_count(
    auth_api: httpx.AsyncClient, settings: Settings, database: Any
) -> None:
    """A second server on the same database refuses the guesser too: the count is not per process."""
    form = {"grant_type": "client_credentials", "client_id": "admin"}
    for n in range(10):
        assert (await auth_api.post("/oauth/token", data={**form, "client_secret": f"guess-{n}"})).status_code == 401
    async with serving(settings.model_copy(update={"worker_enabled": False}), database, authenticated=False) as second:
        refused = await second.post("/oauth/token", data={**form, "client_secret": "guess-10"})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "60"
    counted = {d["_id"].rsplit("|", 1)[0] async for d in database["token_failures"].find({})}
    assert counted == {"admin@127.0.0.1"}, "one count per client and caller address"


async def test_smart_configuration(auth_api: httpx.AsyncClient) -> None:
    config = (await auth_api.get("/fhir/.well-known/smart-configuration")).json()
    assert config["token_endpoint"] == "http://fhir.test/oauth/token"
    assert config["code_challenge_methods_supported"] == ["S256"], "PKCE, S256 only"
    assert "permission-v2" in config["capabilities"] and "client_credentials" in config["grant_types_supported"]


async def test_forged_tokens_are_refused(database: Any) -> None:
    key = await signing_key(database)
    good = issue_token(key, issuer=ISSUER, audience=AUDIENCE, client_id="c", scope="", lifetime=60)
    assert verify_token(key, good, issuer=ISSUER, audience=AUDIENCE)["sub"] == "c"
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "c", "iat": now, "exp": now + 60, "jti": "j"}
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header, _payload, signature = good.split(".")
    tampered_payload = base64.urlsafe_b64encode(b'{"sub":"admin"}').decode().rstrip("=")
    forgeries = {
        "alg none": jwt.encode(claims, None, algorithm="none", headers={"kid": key.kid}),
        "HS256 with the public key": _hs256(claims, public_pem, key.kid),
        "another key": jwt.encode(claims, other, algorithm="RS256", headers={"kid": key.kid}),
        "tampered": f"{header}.{tampered_payload}.{signature}",
        "expired": issue_token(key, issuer=ISSUER, audience=AUDIENCE, client_id="c", scope="", lifetime=-120),
        "wrong audience": issue_token(
            key, issuer=ISSUER, audience="http://elsewhere/fhir", client_id="c", scope="", lifetime=60
        ),
        "wrong issuer": issue_token(key, issuer="http://evil", audience=AUDIENCE, client_id="c", scope="", lifetime=60),
        "not a jwt": "hello",
    }
    accepted = []
    for name, token in forgeries.items():
        try:
            verify_token(key, token, issuer=ISSUER, audience=AUDIENCE)
        except TokenError:
            continue
        accepted.append(name)
    assert accepted == [], f"forged tokens accepted: {accepted}"


def _hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """An HS256 token whose HMAC key is the server's public key (PyJWT refuses to make one, so by hand)."""
    import hashlib
    import hmac
    import json

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    signing_input = f"{part({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{part(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


async def test_secrets_are_stored_hashed_and_can_be_rotated(database: Any) -> None:
    clients = Clients(database)
    record, secret = await clients.create(
        "billing", {"rule": {"resource": "Fax:*", "action": "Fax:Send", "effect": "Allow"}}
    )
    stored = await database.auth_clients.find_one({"_id": record["_id"]})
    assert secret.encode() not in repr(stored).encode()
    assert await clients.authenticate(record["clientId"], secret) is not None
    rotated = await clients.rotate_secret(record["_id"])
    assert rotated and await clients.authenticate(record["clientId"], secret) is None
    assert await clients.authenticate(record["clientId"], rotated) is not None


async def test_a_malformed_basic_header_is_400(auth_api: httpx.AsyncClient) -> None:
    response = await auth_api.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers={"authorization": "Basic %%%not-base64"}
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    assert "Basic authorization header is malformed" in response.json()["error_description"]


async def test_a_token_naming_a_non_latin_issuer_is_a_401_not_a_500(api: httpx.AsyncClient, database: Any) -> None:
    """The refusal quotes what the token claims; HTTP headers are Latin-1, so the challenge must stay encodable."""
    claims = {"iss": "https://évil.example/Ā\u2028", "sub": "x", "exp": int(time.time()) + 60}
    token = jwt.encode(claims, "k" * 32, algorithm="HS256")
    response = await api.get("/fhir/Communication", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="fhir-fax", error="invalid_token"') and challenge.isascii()
    assert "évil" in response.json()["issue"][0]["diagnostics"], "the body still says which issuer it was"
    assert await database.Communication.count_documents({}) == 0
