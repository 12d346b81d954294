"""Tokens from an external authorization server: keys fetched from its JWKS (a real HTTP server process),
a claim mapped to access policies, forged tokens refused, keys rotated."""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from fhir_fax.auth.issuers import claim
from fhir_fax.embedded import free_port
from fhir_fax.settings import Settings
from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

from helpers import BOOTSTRAP, FIXTURES, seed_request, serving, serving_fax, stored_counts
from processes import ServerProcess

pytestmark = pytest.mark.e2e  # the issuer's JWKS site is a server process (module-scoped)

ISSUER = "https://login.example.org/realms/clinic"
AUDIENCE = "http://fhir.test/fhir"
EVERYTHING = {"rule": [{"resource": "*", "action": "*", "effect": "Allow"}]}
FAX_SENDER = {
    "rule": [
        {"resource": "Fax:Fax:*", "action": "Fax:Send", "effect": "Allow"},
        {"resource": "FHIR:*", "action": ["FHIR:Read", "FHIR:Search", "FHIR:History"], "effect": "Allow"},
        {"resource": "Z3:**", "action": "Z3:GetObject", "effect": "Allow"},
    ]
}


class Signer:
    """The external server's side: a key pair, its published JWKS, and tokens signed with it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.keys: dict[str, Any] = {}
        self.rotate()

    def rotate(self) -> str:
        """Publish one more key (as an issuer does before it starts signing with it)."""
        kid = f"key-{len(self.keys) + 1}"
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = kid
        published = []
        for key_id, key in self.keys.items():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            published.append({**jwk, "kid": key_id, "use": "sig", "alg": "RS256"})
        (self.directory / "jwks.json").write_text(json.dumps({"keys": published}))
        return kid

    def token(self, *, key: Any = None, headers: dict[str, Any] | None = None, **changes: Any) -> str:
        moment = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": moment,
            "exp": moment + 300,
            "realm_access": {"roles": ["fax-sender"]},
        }
        claims.update(changes)
        claims = {k: v for k, v in claims.items() if v is not None}
        header = {"kid": self.kid, **(headers or {})}
        return jwt.encode(claims, key or self.keys[self.kid], algorithm="RS256", headers=header)


@pytest.fixture(scope="module")
def issuer_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Signer, str]]:
    """The issuer's JWKS served by a real HTTP server process (Python's http.server) from a directory."""
    directory = tmp_path_factory.mktemp("issuer")
    signer = Signer(directory)
    server = ServerProcess(
        [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1", "--directory", str(directory)],
        log_dir=directory,
        ready_path="/jwks.json",
    )
    yield signer, f"{server.url}/jwks.json"
    server.stop()


def external_settings(tmp_path: Path, jwks_url: str, **issuer: Any) -> Settings:
    config = {
        "issuer": ISSUER,
        "jwks_url": jwks_url,
        "policy_claim": "realm_access.roles",
        "policies": {"fax-sender": FAX_SENDER, "admin": EVERYTHING},
        "jwks_min_refresh_seconds": 0,
        **issuer,
    }
    return Settings(
        data_dir=tmp_path / "data",
        base_url="http://fhir.test",
        load_fixtures=True,
        z3_url_aliases=["https://project-api.zapehr.com/v1"],
        external_issuers=[config],
        worker_enabled=False,  # about tokens: no status versions written beside the checks (a send wakes it)
        _env_file=None,
        **BOOTSTRAP,
    )


@pytest.fixture
async def api(tmp_path: Path, database: Any, issuer_site: tuple[Signer, str]) -> AsyncIterator[httpx.AsyncClient]:
    """The app trusting the issuer, with fixtures, a sender number and the seed document (admin logged in)."""
    async with serving_fax(external_settings(tmp_path, issuer_site[1]), database) as http:
        yield http


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_an_external_token_with_a_mapped_role_sends_a_fax(
    api: httpx.AsyncClient, database: Any, issuer_site: tuple[Signer, str]
) -> None:
    signer, _ = issuer_site
    response = await api.post("/fax/v1/send", json=seed_request(), headers=bearer(signer.token()))
    assert response.status_code == 200, response.text
    assert (await stored_counts(database))["Communication"] == 1
    audit = await api.get("/fhir/AuditEvent", params={"_count": "100"})
    who = [e["resource"]["agent"][0]["who"]["identifier"]["value"] for e in audit.json()["entry"]]
    assert f"alice@{ISSUER}" in who


async def test_an_external_token_whose_roles_map_to_no_policy_is_forbidden(
    api: httpx.AsyncClient, database: Any, issuer_site: tuple[Signer, str]
) -> None:
    signer, _ = issuer_site
    for roles in ({"roles": ["receptionist"]}, {}, {"roles": "fax-sender-typo"}):
        token = signer.token(realm_access=roles)
        response = await api.post("/fax/v1/send", json=seed_request(), headers=bearer(token))
        assert response.status_code == 403, response.text
        assert "access policy does not allow Fax:Send" in response.json()["message"]
    assert await stored_counts(database) == {"Communication": 0, "fax_jobs": 0, "fax_idempotency": 0}


async def test_a_role_given_as_a_single_string_is_mapped(
    api: httpx.AsyncClient, issuer_site: tuple[Signer, str]
) -> None:
    signer, _ = issuer_site
    token = signer.token(realm_access={"roles": "admin"})
    response = await api.get("/fhir/Patient/maria-lopez", headers=bearer(token))
    assert response.status_code == 200


def _forged(signer: Signer, kind: str) -> str:
    """A token of ``kind`` that must not be accepted."""
    now = int(time.time())
    if kind == "expired":
        return signer.token(iat=now - 3600, exp=now - 600)
    if kind == "other audience":
        return signer.token(aud="https://someone-else.example.org/fhir")
    if kind == "no subject":
        return signer.token(sub=None)
    if kind == "no expiry":
        return signer.token(exp=None)
    if kind == "another key with a published kid":
        return signer.token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    if kind == "unpublished kid":
        return signer.token(headers={"kid": "not-published"})
    if kind == "tampered payload":
        header, payload, signature = signer.token().split(".")
        claims = json.loads(jwt.utils.base64url_decode(payload))
        claims["realm_access"] = {"roles": ["admin"]}
        changed = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
        return f"{header}.{changed}.{signature}"
    if kind == "alg none":
        claims = jwt.decode(signer.token(), options={"verify_signature": False})
        return jwt.encode(claims, None, algorithm="none", headers={"kid": signer.kid})
    if kind == "HS256 with the public key":
        public = signer.keys[signer.kid].public_key()
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        claims = jwt.decode(signer.token(), options={"verify_signature": False})
        header, payload, _ = jwt.encode(claims, "x" * 32, algorithm="HS256").split(".")
        signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{jwt.utils.base64url_encode(signature).decode()}"
    if kind == "ES256 claiming the RSA key's kid":
        other = ec.generate_private_key(ec.SECP256R1())
        claims = jwt.decode(signer.token(), options={"verify_signature": False})
        return jwt.encode(claims, other, algorithm="ES256", headers={"kid": signer.kid})
    if kind == "unconfigured issuer":
        return signer.token(iss="https://unknown.example.org")
    raise AssertionError(kind)


FORGERIES = {
    "expired": "expired",
    "other audience": "another audience",
    "no subject": "not valid",
    "no expiry": "not valid",
    "another key with a published kid": "not valid",
    "unpublished kid": "does not publish",
    "tampered payload": "not valid",
    "alg none": "'none' are not accepted",
    "HS256 with the public key": "'HS256' are not accepted",
    "ES256 claiming the RSA key's kid": "signs with RS256, not ES256",
    "unconfigured issuer": "issued by someone else",
}


@pytest.mark.parametrize("kind", FORGERIES)
async def test_forged_external_tokens_are_refused(
    api: httpx.AsyncClient, database: Any, issuer_site: tuple[Signer, str], kind: str
) -> None:
    signer, _ = issuer_site
    response = await api.post("/fax/v1/send", json=seed_request(), headers=bearer(_forged(signer, kind)))
    assert response.status_code == 401, response.text
    assert FORGERIES[kind] in response.json()["message"]
    assert response.headers["www-authenticate"].startswith("Bearer ")
    assert await stored_counts(database) == {"Communication": 0, "fax_jobs": 0, "fax_idempotency": 0}
    fhir = await api.get("/fhir/Patient/maria-lopez", headers=bearer(_forged(signer, kind)))
    assert fhir.status_code == 401
    assert FORGERIES[kind] in fhir.json()["issue"][0]["diagnostics"]


async def test_a_rotated_key_is_fetched_when_a_token_names_it(
    api: httpx.AsyncClient, issuer_site: tuple[Signer, str]
) -> None:
    signer, _ = issuer_site
    assert (await api.get("/fhir/Patient/maria-lopez", headers=bearer(signer.token()))).status_code == 200
    signer.rotate()  # the issuer publishes a new key and signs with it from now on
    response = await api.get("/fhir/Patient/maria-lopez", headers=bearer(signer.token()))
    assert response.status_code == 200, response.text


async def test_an_unreachable_jwks_is_a_temporary_failure(tmp_path: Path, database: Any) -> None:
    closed = f"http://127.0.0.1:{free_port()}/jwks.json"
    signer = Signer(tmp_path)
    async with serving(external_settings(tmp_path, closed), database) as http:
        response = await http.get("/fhir/Patient/maria-lopez", headers=bearer(signer.token()))
        assert response.status_code == 503
        diagnostics = response.json()["issue"][0]["diagnostics"]
        assert ISSUER in diagnostics and "retry later" in diagnostics


def test_issuer_configuration_is_checked_when_settings_load(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="the policy for 'x'"):
        external_settings(tmp_path, "http://x", policies={"x": {"rule": [{"resource": "*:x", "action": "*"}]}})
    with pytest.raises(ValidationError, match="algorithms must be some of"):
        external_settings(tmp_path, "http://x", algorithms=["RS256", "HS256"])


def test_claims_are_found_by_name_or_by_a_dotted_path() -> None:
    claims = {"https://example.org/roles": ["a"], "realm_access": {"roles": ["b"]}, "plain": "c"}
    assert claim(claims, "https://example.org/roles") == ["a"]
    assert claim(claims, "realm_access.roles") == ["b"]
    assert claim(claims, "plain") == "c"
    assert claim(claims, "realm_access.missing") is None
    assert claim(claims, "plain.deeper") is None


# -- a patient in context (SMART patient/ scopes) -------------------------------------------------------


async def _communication(api: httpx.AsyncClient, **elements: Any) -> str:
    body = {"resourceType": "Communication", "status": "completed", **elements}
    response = await api.post("/fhir/Communication", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture
async def two_patients(api: httpx.AsyncClient) -> dict[str, str]:
    """A fax about Maria, one about James, and one about James addressed to Maria (created by the admin)."""
    maria = await api.post("/fax/v1/send", json=seed_request(patient="Patient/maria-lopez"))
    james = await api.post("/fax/v1/send", json=seed_request(patient="Patient/james-oneil"))
    crossed = await _communication(
        api, subject={"reference": "Patient/james-oneil"}, recipient=[{"reference": "Patient/maria-lopez"}]
    )
    return {
        "maria": maria.json()["communicationResource"]["id"],
        "james": james.json()["communicationResource"]["id"],
        "crossed": crossed,
    }


async def upload_as(api: httpx.AsyncClient, headers: dict[str, str], key: str, content: bytes | None = None) -> str:
    """Upload through a signed URL asked for with ``headers``: the upload records that token's patient."""
    signed = await api.post(f"/v1/z3/my-bucket/{key}", json={"action": "upload"}, headers=headers)
    assert signed.status_code == 200, signed.text
    body = content if content is not None else (FIXTURES / "referral-letter.pdf").read_bytes()
    stored = await api.put(signed.json()["signedUrl"], content=body, headers={"content-type": "application/pdf"})
    assert stored.status_code == 200, stored.text
    return f"z3://my-bucket/{key}"


def maria_token(signer: Signer, scope: str = "patient/*.crs", **changes: Any) -> dict[str, str]:
    return bearer(signer.token(scope=scope, patient="maria-lopez", **changes))


async def test_a_patient_token_searches_only_its_patients_compartment(
    api: httpx.AsyncClient, issuer_site: tuple[Signer, str], two_patients: dict[str, str]
) -> None:
    headers = maria_token(issuer_site[0])
    found = await api.get("/fhir/Communication", headers=headers)
    assert found.status_code == 200
    assert {e["resource"]["id"] for e in found.json()["entry"]} == {two_patients["maria"], two_patients["crossed"]}
    # Asking for James's faxes finds only the one that is also Maria's (addressed to her).
    other = await api.get("/fhir/Communication", params={"patient": "james-oneil"}, headers=headers)
    assert [e["resource"]["id"] for e in other.json()["entry"]] == [two_patients["crossed"]]
    nothing = await api.get("/fhir/Communication", params={"status": "entered-in-error"}, headers=headers)
    assert "entry" not in nothing.json()  # an empty page has no (empty) entry array
    patients = await api.get("/fhir/Patient", headers=headers)
    assert [e["resource"]["id"] for e in patients.json()["entry"]] == ["maria-lopez"]
    # The crossed fax is Maria's (she receives it) but its subject, James, is not shown to her.
    included = await api.get("/fhir/Communication", params={"_include": "Communication:subject"}, headers=headers)
    shown = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in included.json()["entry"]}
    assert "Patient/maria-lopez" in shown and "Patient/james-oneil" not in shown
    # With a system scope for Communication as well, the search is not limited.
    wider = maria_token(issuer_site[0], scope="patient/*.crs system/Communication.rs")
    assert len((await api.get("/fhir/Communication", headers=wider)).json()["entry"]) == 3


async def test_a_patient_token_cannot_read_outside_the_compartment(
    api: httpx.AsyncClient, issuer_site: tuple[Signer, str], two_patients: dict[str, str]
) -> None:
    headers = maria_token(issuer_site[0])
    assert (await api.get(f"/fhir/Communication/{two_patients['maria']}", headers=headers)).status_code == 200
    for path in (
        f"/fhir/Communication/{two_patients['james']}",
        f"/fhir/Communication/{two_patients['james']}/_history/1",
        f"/fhir/Communication/{two_patients['james']}/_history",
        "/fhir/Patient/james-oneil",
        "/fhir/Patient/james-oneil/Communication",
    ):
        response = await api.get(path, headers=headers)
        assert response.status_code == 403, path
        assert "limited to Patient/maria-lopez" in response.json()["issue"][0]["diagnostics"], path
    own = await api.get("/fhir/Patient/maria-lopez/Communication", headers=headers)
    assert {e["resource"]["id"] for e in own.json()["entry"]} == {two_patients["maria"], two_patients["crossed"]}
    # Practitioners are outside the Patient compartment: not patient data, not limited.
    assert (await api.get("/fhir/Practitioner", headers=headers)).json()["entry"]


async def test_a_patient_token_finds_only_its_patient_in_the_directory(
    api: httpx.AsyncClient, issuer_site: tuple[Signer, str]
) -> None:
    both = {"name": "lopez,o'neil", "_count": "50"}
    found = await api.get("/fhir/Patient", params=both)
    assert {e["resource"]["id"] for e in found.json()["entry"]} == {"maria-lopez", "james-oneil"}
    headers = maria_token(issuer_site[0])
    found = await api.get("/fhir/Patient", params={**both, "_total": "accurate"}, headers=headers)
    assert found.status_code == 200
    assert [e["resource"]["id"] for e in found.json()["entry"]] == ["maria-lopez"]
    assert found.json()["total"] == 1
    james_phone = await api.get("/fhir/Patient", params={"telecom": "+12175550102"}, headers=headers)
    assert james_phone.status_code == 200 and "entry" not in james_phone.json()


async def test_a_patient_token_cannot_write_outside_the_compartment(
    api: httpx.AsyncClient, database: Any, issuer_site: tuple[Signer, str], two_patients: dict[str, str]
) -> None:
    headers = maria_token(issuer_site[0], scope="patient/*.cruds", realm_access={"roles": ["admin"]})
    about_james = {
        "resourceType": "Communication",
        "status": "completed",
        "subject": {"reference": "Patient/james-oneil"},
    }
    before = await database["Communication"].count_documents({})
    refused = [
        await api.post("/fhir/Communication", json=about_james, headers=headers),
        await api.put(f"/fhir/Communication/{two_patients['james']}", json={**about_james, "status": "stopped"},
                      headers=headers),
        # Moving Maria's fax to James is leaving the compartment too.
        await api.put(f"/fhir/Communication/{two_patients['maria']}", json=about_james, headers=headers),
        await api.delete(f"/fhir/Communication/{two_patients['james']}", headers=headers),
    ]  # fmt: skip
    for response in refused:
        assert response.status_code == 403, response.text
        assert "limited to Patient/maria-lopez's compartment" in response.json()["issue"][0]["diagnostics"]
    assert await database["Communication"].count_documents({}) == before
    james = await api.get(f"/fhir/Communication/{two_patients['james']}")
    assert james.json()["meta"]["versionId"] == "1"
    about_maria = {**about_james, "subject": {"reference": "Patient/maria-lopez"}}
    assert (await api.post("/fhir/Communication", json=about_maria, headers=headers)).status_code == 201


async def test_a_patient_token_faxes_only_about_its_patient(
    api: httpx.AsyncClient, database: Any, issuer_site: tuple[Signer, str]
) -> None:
    headers = maria_token(issuer_site[0], realm_access={"roles": ["admin"]})  # may also upload
    media = await upload_as(api, headers, f"maria/{uuid.uuid4().hex}.pdf")  # uploaded under Maria
    for patient, message in (
        ("Patient/james-oneil", "limited to Patient/maria-lopez"),
        (None, "a fax it sends must name that patient"),
    ):
        response = await api.post("/fax/v1/send", json=seed_request(media=media, patient=patient), headers=headers)
        assert response.status_code == 403, response.text
        assert message in response.json()["message"]
    assert await stored_counts(database) == {"Communication": 0, "fax_jobs": 0, "fax_idempotency": 0}
    staff = await api.post("/fax/v1/send", json=seed_request(patient="Patient/maria-lopez"), headers=headers)
    assert staff.status_code == 403, "a staff upload no fax carries is not Maria's to fax"
    assert "was not uploaded under Patient/maria-lopez" in staff.json()["message"]
    sent = await api.post(
        "/fax/v1/send", json=seed_request(media=media, patient="Patient/maria-lopez"), headers=headers
    )
    assert sent.status_code == 200, sent.text
    assert sent.json()["communicationResource"]["subject"] == {"reference": "Patient/maria-lopez"}


async def test_patient_scopes_without_a_patient_in_context_are_refused(
    api: httpx.AsyncClient, database: Any, issuer_site: tuple[Signer, str], two_patients: dict[str, str]
) -> None:
    headers = bearer(issuer_site[0].token(scope="patient/Communication.rs"))
    response = await api.get("/fhir/Communication", headers=headers)
    assert response.status_code == 403
    assert "names no patient in context" in response.json()["issue"][0]["diagnostics"]


async def test_a_patient_token_sees_only_its_patients_audit_events(
    api: httpx.AsyncClient, issuer_site: tuple[Signer, str], two_patients: dict[str, str]
) -> None:
    headers = maria_token(issuer_site[0], realm_access={"roles": ["admin"]})
    events = await api.get("/fhir/AuditEvent", params={"_count": "200"}, headers=headers)
    assert events.status_code == 200
    entries = events.json()["entry"]
    assert entries, "Maria's fax was audited"
    for entry in entries:
        patients = {e["what"].get("reference", "") for e in entry["resource"].get("entity", [])}
        assert "Patient/maria-lopez" in patients, entry
    everything = await api.get("/fhir/AuditEvent", params={"_count": "200", "_summary": "count"})
    assert everything.json()["total"] > len(entries)


# -- documents and previews of a patient-limited token (one gate for every read) ---------------------------


async def _james_only_document(api: httpx.AsyncClient, database: Any) -> str:
    """A fax about James with a document no other fax carries; returns its Communication id."""
    pdf = (FIXTURES / "referral-letter.pdf").read_bytes()
    await Z3Store(database).put(Z3Location("my-bucket", "james/letter.pdf"), pdf, "application/pdf")
    sent = await api.post(
        "/fax/v1/send", json=seed_request(media="z3://my-bucket/james/letter.pdf", patient="Patient/james-oneil")
    )
    assert sent.status_code == 200, sent.text
    return sent.json()["communicationResource"]["id"]


async def _events(database: Any, code: str) -> list[dict[str, Any]]:
    return await database["AuditEvent"].find({"subtype.code": code}).to_list(None)


async def test_a_patient_token_previews_only_its_patients_faxes(
    api: httpx.AsyncClient, database: Any, issuer_site: tuple[Signer, str], two_patients: dict[str, str]
) -> None:
    headers = maria_token(issuer_site[0])
    refused = await api.get(f"/fax/v1/faxes/{two_patients['james']}/preview", params={"page": "1"}, headers=headers)
    assert refused.status_code == 403, "a 200 with James's page image before"
    assert refused.headers["content-type"].startswith("application/json")
    assert "limited to Patient/maria-lopez" in refused.json()["message"]
    assert await _events(database, "preview") == []
    assert await database["fax_jobs"].count_documents({"rendered": {"$exists": True}}) == 0
    own = await api.get(f"/fax/v1/faxes/{two_patients['maria']}/preview", params={"page": "1"}, headers=headers)
    assert own.status_code == 200 and own.headers["content-type"] == "image/png"
    [event] = await _events(database, "preview")
    assert event["agent"][0]["who"]["identifier"]["value"] == f"alice@{ISSUER}"
    entities = {e["what"].get("reference") for e in event["entity"]}
    assert {f"Communication/{two_patients['maria']}", "Patient/maria-lopez"} <= entities
    assert event["outcome"] == "0" and event["action"] == "R"


async def test_a_patient_token_gets_only_documents_its_patients_faxes_carry(
    api: httpx.AsyncClient, database: Any, issuer_site: tuple[Signer, str], two_patients: dict[str, str]
) -> None:
    await _james_only_document(api, database)
    await Z3Store(database).put(Z3Location("my-bucket", "loose.pdf"), b"%PDF-1.4", "application/pdf")
    headers = maria_token(issuer_site[0], scope="patient/*.cruds", realm_access={"roles": ["admin"]})
    for key, action, message in (
        ("james/letter.pdf", "download", "carried by no fax in Patient/maria-lopez's compartment"),
        ("loose.pdf", "download", "carried by no fax in Patient/maria-lopez's compartment"),
        ("james/letter.pdf", "upload", "carried by a fax outside Patient/maria-lopez's compartment"),
    ):
        response = await api.post(f"/v1/z3/my-bucket/{key}", json={"action": action}, headers=headers)
        assert response.status_code == 403, (key, action, response.text)
        assert message in response.json()["message"], (key, response.text)
        assert "signedUrl" not in response.json()
    deleted = await api.delete("/v1/z3/my-bucket/james/letter.pdf", headers=headers)
    assert deleted.status_code == 403 and "outside Patient/maria-lopez's compartment" in deleted.json()["message"]
    assert await Z3Store(database).read(Z3Location("my-bucket", "james/letter.pdf")) is not None
    listed = await api.get("/v1/z3/my-bucket/james", headers=headers)
    assert listed.status_code == 403 and "limited to Patient/maria-lopez" in listed.json()["message"]
    assert await _events(database, "document-read") == []
    # The seed document is carried by Maria's fax: she may read it, and the read is on record.
    allowed = await api.post("/v1/z3/my-bucket/path/to/document.pdf", json={"action": "download"}, headers=headers)
    assert allowed.status_code == 200 and allowed.json()["signedUrl"]
    [event] = await _events(database, "document-read")
    entities = {e["what"].get("reference") for e in event["entity"]}
    assert {f"Communication/{two_patients['maria']}", "Patient/maria-lopez"} <= entities
    assert f"Communication/{two_patients['james']}" not in entities, "the disclosure is of Maria's fax"
    assert event["agent"][0]["who"]["identifier"]["value"] == f"alice@{ISSUER}"
    # A new document (no fax carries it yet) may be uploaded, and then faxed about Maria.
    fresh = await api.post("/v1/z3/my-bucket/maria/new.pdf", json={"action": "upload"}, headers=headers)
    assert fresh.status_code == 200, fresh.text


async def test_a_patient_token_cannot_fax_another_patients_document(
    api: httpx.AsyncClient, database: Any, issuer_site: tuple[Signer, str]
) -> None:
    await _james_only_document(api, database)
    before = await stored_counts(database)
    headers = maria_token(issuer_site[0])
    request = seed_request(media="z3://my-bucket/james/letter.pdf", patient="Patient/maria-lopez")
    response = await api.post("/fax/v1/send", json=request, headers=headers)
    assert response.status_code == 403, response.text
    assert "carried by a fax outside Patient/maria-lopez's compartment" in response.json()["message"]
    assert await stored_counts(database) == before


async def test_a_patient_token_reads_only_the_versions_its_patients_faxes_pinned(
    api: httpx.AsyncClient, database: Any, issuer_site: tuple[Signer, str]
) -> None:
    """Documents are frozen at send: one key can hold Maria's faxed version and, later, James's."""
    key = Z3Location("my-bucket", "shared/letter.pdf")
    pdf = (FIXTURES / "referral-letter.pdf").read_bytes()
    media = "z3://my-bucket/shared/letter.pdf"
    await Z3Store(database).put(key, pdf, "application/pdf")
    maria = await api.post("/fax/v1/send", json=seed_request(media=media, patient="Patient/maria-lopez"))
    await Z3Store(database).put(key, pdf + b"\n% a later edition\n", "application/pdf")
    james = await api.post("/fax/v1/send", json=seed_request(media=media, patient="Patient/james-oneil"))
    hashes = {
        name: sent.json()["communicationResource"]["payload"][0]["contentAttachment"]["hash"]
        for name, sent in (("maria", maria), ("james", james))
    }
    assert hashes["maria"] != hashes["james"]
    headers = maria_token(issuer_site[0])
    path = "/v1/z3/my-bucket/shared/letter.pdf"
    for body in ({"action": "download", "hash": hashes["james"]}, {"action": "download"}):
        refused = await api.post(path, json=body, headers=headers)
        assert refused.status_code == 403, (body, refused.text)
        assert "carried by no fax in Patient/maria-lopez's compartment" in refused.json()["message"]
    assert await _events(database, "document-read") == []
    own = await api.post(path, json={"action": "download", "hash": hashes["maria"]}, headers=headers)
    assert own.status_code == 200 and own.json()["signedUrl"]
    [event] = await _events(database, "document-read")
    assert {"what": {"reference": f"Communication/{maria.json()['communicationResource']['id']}"}} in event["entity"]
    # Faxing the key now would pin James's version: refused, and nothing is stored.
    before = await stored_counts(database)
    about_maria = seed_request(media=media, patient="Patient/maria-lopez")
    refused = await api.post("/fax/v1/send", json=about_maria, headers=headers)
    assert refused.status_code == 403, refused.text
    assert "carried by a fax outside Patient/maria-lopez's compartment" in refused.json()["message"]
    assert await stored_counts(database) == before


async def test_a_patient_token_gets_every_document_of_its_patients_packets_and_no_other(
    api: httpx.AsyncClient, database: Any, issuer_site: tuple[Signer, str]
) -> None:
    pdf = (FIXTURES / "referral-letter.pdf").read_bytes()
    keys = {name: f"packets/{uuid.uuid4().hex}-{name}.pdf" for name in ("maria", "james")}
    for key in keys.values():
        await Z3Store(database).put(Z3Location("my-bucket", key), pdf, "application/pdf")
    for name, patient in (("maria", "Patient/maria-lopez"), ("james", "Patient/james-oneil")):
        media = ["z3://my-bucket/path/to/document.pdf", f"z3://my-bucket/{keys[name]}"]
        sent = await api.post("/fax/v1/send", json=seed_request(media=media, patient=patient, coverPage=True))
        assert sent.status_code == 200, sent.text
    headers = maria_token(issuer_site[0], scope="patient/*.cruds", realm_access={"roles": ["admin"]})
    second = await api.post(f"/v1/z3/my-bucket/{keys['maria']}", json={"action": "download"}, headers=headers)
    assert second.status_code == 200 and second.json()["signedUrl"], "the second document of Maria's fax"
    other = await api.post(f"/v1/z3/my-bucket/{keys['james']}", json={"action": "download"}, headers=headers)
    assert other.status_code == 403
    assert "carried by no fax in Patient/maria-lopez's compartment" in other.json()["message"]
