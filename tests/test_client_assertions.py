"""private_key_jwt: a client signs an assertion with its registered key instead of sending a secret."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhir_fax.auth.assertions import ASSERTION_TYPE

TOKEN_URL = "http://fhir.test/oauth/token"
ALLOW_SEND = {"rule": [{"resource": "Fax:Fax:*", "action": "Fax:Send", "effect": "Allow"}]}


def public_jwk(private_key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if alg.startswith("RS") else jwt.algorithms.ECAlgorithm
    return {**json.loads(algorithm.to_jwk(private_key.public_key())), "kid": kid, "alg": alg}


def assertion(private_key: Any, client_id: str, *, kid: str, alg: str = "RS384", **changes: Any) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "exp": now + 240, "jti": uuid.uuid4().hex}
    claims.update(changes)
    return jwt.encode(claims, private_key, algorithm=alg, headers={"kid": kid})


async def token_with(api: httpx.AsyncClient, signed: str) -> httpx.Response:
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE, "client_assertion": signed}
    return await api.post("/oauth/token", data=form)


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
async def test_a_registered_key_gets_a_token(api: httpx.AsyncClient, alg: str) -> None:
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if alg == "RS384"
        else ec.generate_private_key(ec.SECP384R1())
    )
    created = await api.post(
        "/v1/m2m", json={"name": "backend", "accessPolicy": ALLOW_SEND, "jwks": {"keys": [public_jwk(key, "k1", alg)]}}
    )
    assert created.status_code == 201, created.text
    client_id = created.json()["clientId"]
    response = await token_with(api, assertion(key, client_id, kid="k1", alg=alg))
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"


async def test_bad_assertions_are_refused(api: httpx.AsyncClient) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    created = await api.post(
        "/v1/m2m",
        json={"name": "backend", "accessPolicy": ALLOW_SEND, "jwks": {"keys": [public_jwk(key, "k1", "RS384")]}},
    )
    client_id = created.json()["clientId"]
    replayed = assertion(key, client_id, kid="k1")
    assert (await token_with(api, replayed)).status_code == 200
    cases = {
        "replayed": (replayed, "already used"),
        "other key": (assertion(other, client_id, kid="k1"), "not valid"),
        "unknown kid": (assertion(key, client_id, kid="k9"), "kid"),
        "wrong audience": (assertion(key, client_id, kid="k1", aud="http://elsewhere/token"), "not valid"),
        "expired": (assertion(key, client_id, kid="k1", exp=int(time.time()) - 60), "not valid"),
        "too long-lived": (assertion(key, client_id, kid="k1", exp=int(time.time()) + 3600), "five minutes"),
        "sub is someone else": (assertion(key, client_id, kid="k1", sub="admin"), "sub must be the client id"),
        "unknown client": (assertion(key, "nobody", kid="k1"), "Unknown client"),
        "HS256": (
            jwt.encode({"iss": client_id}, "s" * 32, algorithm="HS256", headers={"kid": "k1"}),
            "signed with one of",
        ),
        "not a jwt": ("nope", "not a JWT"),
    }
    for name, (signed, message) in cases.items():
        response = await token_with(api, signed)
        assert response.status_code == 401, name
        assert response.json()["error"] == "invalid_client" and message in response.json()["error_description"], name


@pytest.mark.parametrize(
    ("jwks", "message"),
    [
        ({"keys": []}, "at least one public key"),
        ({"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]}, "needs a kid"),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "x", "d": "y"}]}, "no private parts"),
    ],
)
async def test_bad_key_sets_are_refused(api: httpx.AsyncClient, database: Any, jwks: Any, message: str) -> None:
    response = await api.post("/v1/m2m", json={"name": "backend", "accessPolicy": ALLOW_SEND, "jwks": jwks})
    assert response.status_code == 400 and message in response.json()["message"]
    assert await database.auth_clients.count_documents({"name": "backend"}) == 0
