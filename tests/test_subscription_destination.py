"""Where a rest-hook may POST: the send-time resolution check, and the pinned POSTs the sender makes.

The resolver is the one part replaced here (these names have no DNS on a test machine). The POSTs are real: a
TLS server with a certificate for one name, a listener that never answers, an address with nothing behind it.
To reach those on this machine's loopback, the tests that connect also accept loopback as public; every other
part (the pinning, TLS, the timeouts, the fallback) is the sender's own.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fhir_fax.settings import Settings
from fhir_fax.subscriptions import destination
from fhir_fax.subscriptions.destination import Unsafe, checked_addresses, host_refusal, is_public
from fhir_fax.subscriptions.resource import Channel
from fhir_fax.subscriptions.sender import DeliveryFailed, Sender


def answering(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    monkeypatch.setattr(destination, "resolve", resolve)


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    answering(monkeypatch, {
        "hooks.example.com": ["93.184.216.34", "2606:2800:220:1::1"],
        "split.example.com": ["93.184.216.34", "10.0.0.7"],  # one public, one private answer
        "metadata.example.com": ["169.254.169.254"],
        "mapped.example.com": ["::ffff:127.0.0.1"],
        "nat64.example.com": ["64:ff9b::a00:5"],  # 10.0.0.5 through a NAT64 gateway
    })  # fmt: skip


@pytest.fixture
def loopback_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(destination, "is_public", lambda address: True)


@pytest.fixture
async def sender(settings: Settings) -> AsyncIterator[Sender]:
    quick = {"subscription_allowed_hosts": [], "subscription_timeout_seconds": 2.0}
    made = Sender(settings.model_copy(update=quick), None, None, None)  # type: ignore[arg-type]
    yield made
    await made.close()


def hook(endpoint: str) -> Channel:
    return Channel("rest-hook", endpoint, None, ())


def notification() -> Any:
    return type("N", (), {"event": 1, "version": 1})()


async def post(sender: Sender, endpoint: str) -> None:
    resource = {"resourceType": "Communication", "id": "c1", "meta": {"versionId": "1"}}
    await sender.post(hook(endpoint), {"id": "s1"}, resource, notification())


async def test_each_checked_address_gets_its_own_request_with_the_name_kept_for_host_and_tls(
    resolver: None, sender: Sender
) -> None:
    client, requests = await sender.requests("https://hooks.example.com:8443/in?x=1", {"X-A": "b"}, b"{}")
    assert client is sender.pinned
    assert [str(r.url) for r in requests] == [
        "https://93.184.216.34:8443/in?x=1",
        "https://[2606:2800:220:1::1]:8443/in?x=1",
    ]
    for request in requests:
        assert request.headers["Host"] == "hooks.example.com:8443"
        assert request.extensions["sni_hostname"] == "hooks.example.com"
        assert request.headers["X-A"] == "b"


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("split.example.com", "split.example.com resolves to 10.0.0.7"),
        ("metadata.example.com", "resolves to 169.254.169.254"),
        ("mapped.example.com", "resolves to ::ffff:7f00:1"),
        ("nat64.example.com", "resolves to 64:ff9b::a00:5"),
    ],
)
async def test_a_name_with_any_private_answer_is_unsafe(resolver: None, host: str, reason: str) -> None:
    with pytest.raises(Unsafe, match=reason):
        await checked_addresses(host, 443, [])


async def test_an_allowed_host_is_not_resolved_and_an_unknown_name_says_so(resolver: None, sender: Sender) -> None:
    assert await checked_addresses("metadata.example.com", 443, ["metadata.example.com"]) is None
    with pytest.raises(DeliveryFailed, match=r"nowhere.example.com/x not sent: its host does not resolve"):
        await post(sender, "https://nowhere.example.com/x")


def test_names_are_left_to_send_time_and_spelled_addresses_are_judged_at_once() -> None:
    assert host_refusal("hooks.example.com", []) is None
    assert host_refusal("93.184.216.34", []) is None
    assert host_refusal("0x7f.1", []) is not None  # 127.0.0.1 to a resolver
    assert host_refusal("::ffff:10.0.0.1", []) is not None
    assert host_refusal("10.0.0.1", ["10.0.0.1"]) is None


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("64:ff9b::a00:5", False),  # NAT64 of 10.0.0.5
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("2002:a9fe:a9fe::", False),  # 6to4 of 169.254.169.254
        ("2002:808:808::", True),
        ("::a00:5", False),  # IPv4-compatible 10.0.0.5
        ("::ffff:0:a00:5", False),  # SIIT's translated 10.0.0.5
        ("::ffff:7f00:1", False),  # IPv4-mapped 127.0.0.1
        ("64:ff9b:1::a00:5", False),  # local-use NAT64: the site's own mapping
        ("2606:4700::1111", True),
        ("::1", False),
    ],
)
def test_ipv6_addresses_that_stand_for_ipv4_ones_are_judged_by_that_ipv4_address(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


# --- real connections -------------------------------------------------------------------------------------------


@dataclass
class TlsHook:
    """An HTTPS server on 127.0.0.1 whose certificate names only ``a.example``; it answers 503 and keeps the
    connection alive, and records the Host header of each request it takes."""

    ca: Path
    port: int = 0
    hosts: list[str] = field(default_factory=list)


def certificate_for(name: str, folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for ``name`` that it signed: (CA file, certificate file, key file)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    files = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


@pytest.fixture
def tls_hook(tmp_path: Path) -> Iterator[TlsHook]:
    ca, cert, key = certificate_for("a.example", tmp_path)
    found = TlsHook(ca)

    class Busy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            found.hosts.append(self.headers["Host"])
            self.send_response(503)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"busy")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    found.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


async def test_a_connection_checked_for_one_name_never_carries_a_post_for_another(
    monkeypatch: pytest.MonkeyPatch, loopback_is_public: None, sender: Sender, tls_hook: TlsHook
) -> None:
    """Both names resolve to the same address; only a.example's certificate is served. A kept-alive connection
    to a.example (it answered 503 and left the connection open) must not carry b.example's POST, whose
    certificate check would fail on a fresh connection."""
    answering(monkeypatch, {"a.example": ["127.0.0.1"], "b.example": ["127.0.0.1"]})
    sender.pinned._transport._pool._ssl_context.load_verify_locations(tls_hook.ca)  # type: ignore[attr-defined]
    with pytest.raises(DeliveryFailed, match="answered 503: busy"):
        await post(sender, f"https://a.example:{tls_hook.port}/hook")
    with pytest.raises(DeliveryFailed, match="CERTIFICATE_VERIFY_FAILED"):
        await post(sender, f"https://b.example:{tls_hook.port}/hook")
    assert tls_hook.hosts == [f"a.example:{tls_hook.port}"], "b.example's POST reached nobody"


async def test_a_hung_endpoint_is_reported_as_too_slow(
    monkeypatch: pytest.MonkeyPatch, loopback_is_public: None, sender: Sender
) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    answering(monkeypatch, {"slow.example": ["127.0.0.1"]})
    try:
        with pytest.raises(DeliveryFailed, match=r"^POST http://slow.example:\d+/hook took longer than 2 s$"):
            await post(sender, f"http://slow.example:{port}/hook")
    finally:
        for writer in accepted:
            writer.close()
        server.close()
    assert accepted, "the connection was made; the answer never came"


async def test_when_an_address_has_nothing_behind_it_the_next_checked_one_is_tried(
    monkeypatch: pytest.MonkeyPatch, loopback_is_public: None, sender: Sender
) -> None:
    taken: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        taken.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    answering(monkeypatch, {"two.example": ["127.0.0.2", "127.0.0.1"]})  # nothing listens on 127.0.0.2
    try:
        await post(sender, f"http://two.example:{port}/hook")
    finally:
        server.close()
    assert len(taken) == 1 and f"host: two.example:{port}".encode() in taken[0].lower()
