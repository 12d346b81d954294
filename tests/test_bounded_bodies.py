"""Every request body has a limit and is read as a stream: too large is 413 before anything is buffered.

These run against a real ``fhir-fax serve`` process over a raw socket, because what matters is what the
server does before the body has arrived. A declared Content-Length over the limit is answered with no body
bytes sent at all; a chunked body is answered once it passes the limit, while the client is still "sending"
(the body is never finished). A server that buffered the body first would wait for the rest and never answer,
and the read below would fail (it waits 30 s: a guard against hanging, not a timing assertion).
"""

from __future__ import annotations

import http.client
import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient

from processes import FaxServer

pytestmark = pytest.mark.e2e  # every test talks to a real server process

TOKEN_LIMIT, WEBHOOK_LIMIT, JSON_LIMIT = 65_536, 262_144, 1_000_000  # the defaults
DECLARED = 300 * 1024 * 1024  # what the review sent to /oauth/token


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str) -> Iterator[tuple[FaxServer, str]]:
    name = f"bodies_{uuid.uuid4().hex[:8]}"
    env = {
        "FHIR_FAX_MONGODB_URI": mongo_uri,
        "FHIR_FAX_DATABASE_NAME": name,
        "FHIR_FAX_WORKER_ENABLED": "false",
        "FHIR_FAX_TELNYX_PUBLIC_KEY": "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=",
    }
    process = FaxServer(tmp_path_factory.mktemp("bodies") / "data", env=env)
    try:
        yield process, name
    finally:
        process.stop()
        with MongoClient(mongo_uri) as client:
            client.drop_database(name)


def exchange(
    server: FaxServer, path: str, headers: dict[str, str], body: bytes, *, chunked: bool, finish: bool = False
) -> Any:
    """Send the head and ``body`` (chunked: as chunks, not finished unless ``finish``) and read the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head += ["Transfer-Encoding: chunked"] if chunked else [f"Content-Length: {DECLARED}"]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        if chunked:
            try:
                for start in range(0, len(body), 16_384):
                    piece = body[start : start + 16_384]
                    sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                if finish:
                    sock.sendall(b"0\r\n\r\n")
            except BrokenPipeError:  # the server answered and closed before the rest was sent: read its answer
                pass
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


ENDPOINTS = [  # path, limit, content type, authenticated, where the message is in the error shape
    ("/oauth/token", TOKEN_LIMIT, "application/x-www-form-urlencoded", False, "error_description"),
    ("/fax/webhooks/telnyx", WEBHOOK_LIMIT, "application/json", False, "message"),
    ("/fhir/Patient", JSON_LIMIT, "application/fhir+json", True, "issue"),
    ("/fhir/Communication/$send-fax", JSON_LIMIT, "application/fhir+json", True, "issue"),
    ("/fhir/Patient/_search", JSON_LIMIT, "application/x-www-form-urlencoded", True, "issue"),
    ("/fax/v1/send", JSON_LIMIT, "application/json", True, "message"),
    ("/fax/v1/onboard", JSON_LIMIT, "application/json", True, "message"),
    ("/v1/m2m", JSON_LIMIT, "application/json", True, "message"),
    ("/v1/z3/letters/a.pdf", JSON_LIMIT, "application/json", True, "message"),  # presign: JSON, not an upload
]
IDS = [endpoint[0] for endpoint in ENDPOINTS]


def message_of(body: dict[str, Any], field: str) -> str:
    return body["issue"][0]["diagnostics"] if field == "issue" else body[field]


def check_refusal(status: int, body: dict[str, Any], limit: int, field: str) -> None:
    assert status == 413, body
    assert f"larger than this endpoint accepts (at most {limit} bytes)" in message_of(body, field)
    if field == "error_description":
        assert body["error"] == "invalid_request"  # RFC 6749's shape on the OAuth endpoint


@pytest.mark.parametrize(("path", "limit", "content_type", "authenticated", "field"), ENDPOINTS, ids=IDS)
def test_a_declared_length_over_the_limit_is_refused_before_a_byte_is_read(
    server: tuple[FaxServer, str], path: str, limit: int, content_type: str, authenticated: bool, field: str
) -> None:
    process, _ = server
    headers = {"content-type": content_type, **(process.headers if authenticated else {})}
    status, body = exchange(process, path, headers, b"", chunked=False)
    check_refusal(status, body, limit, field)


@pytest.mark.parametrize(("path", "limit", "content_type", "authenticated", "field"), ENDPOINTS, ids=IDS)
def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(
    server: tuple[FaxServer, str], path: str, limit: int, content_type: str, authenticated: bool, field: str
) -> None:
    process, _ = server
    headers = {"content-type": content_type, **(process.headers if authenticated else {})}
    status, body = exchange(process, path, headers, b"x" * (limit + 1), chunked=True)
    check_refusal(status, body, limit, field)


def test_refused_bodies_leave_nothing_behind(server: tuple[FaxServer, str], mongo_uri: str) -> None:
    """After every refusal above (whatever the order the tests ran in), nothing was stored or queued."""
    process, name = server
    for path, limit, content_type, authenticated, field in ENDPOINTS:
        headers = {"content-type": content_type, **(process.headers if authenticated else {})}
        status, body = exchange(process, path, headers, b"x" * (limit + 1), chunked=True)
        check_refusal(status, body, limit, field)
    with MongoClient(mongo_uri) as client:
        database = client[name]
        for collection in ("Patient", "Communication", "fax_jobs", "webhook_receipts", "z3.files", "fax_numbers"):
            assert database[collection].count_documents({}) == 0, collection
        assert database["auth_clients"].count_documents({}) == 1  # the bootstrap admin only


def test_bodies_under_the_limit_still_work(server: tuple[FaxServer, str]) -> None:
    """The limits refuse only what is over them: a finished chunked body under the limit is read as usual."""
    process, _ = server
    form = b"grant_type=client_credentials&client_id=test-admin&client_secret=test-admin-secret"
    status, body = exchange(process, "/oauth/token", {"content-type": "application/x-www-form-urlencoded"},
                            form, chunked=True, finish=True)  # fmt: skip
    assert status == 200, body
    assert body["token_type"] == "Bearer"
