"""The caller's address: the ASGI peer, or what a configured proxy says it forwarded for; never a client's own claim."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.requests import Request

from fhir_fax.auth.addresses import TrustedProxies, caller_address
from fhir_fax.settings import Settings

from helpers import ADMIN_ID, ADMIN_SECRET
from processes import FaxServer

FORM = {"grant_type": "client_credentials", "client_id": ADMIN_ID}


def request_from(peer: str | None, *forwarded_for: str) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded_for]
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "headers": headers, "query_string": b""}
    scope["client"] = (peer, 1234) if peer else None
    return Request(scope)


PROXIES = TrustedProxies.of(["10.0.0.0/8", "192.0.2.1", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        ("203.0.113.5", ["6.6.6.6"], "203.0.113.5"),  # an untrusted peer's header is ignored
        ("192.0.2.1", ["203.0.113.5"], "203.0.113.5"),  # a trusted proxy's is honoured
        ("192.0.2.1", ["6.6.6.6, 203.0.113.5"], "203.0.113.5"),  # right-most untrusted: the left part is the caller's
        ("192.0.2.1", ["6.6.6.6", "203.0.113.5, 10.1.2.3"], "203.0.113.5"),  # headers join; trusted hops are skipped
        ("10.9.9.9", ["10.1.2.3, 10.4.5.6"], "10.1.2.3"),  # all hops trusted: the first one made the request
        ("192.0.2.1", ["203.0.113.5:4711"], "203.0.113.5"),  # a port is not part of the address
        ("192.0.2.1", ["[2001:db8::5]:443"], "2001:db8::5"),
        ("fd00::1", ["2001:DB8:0:0::7"], "2001:db8::7"),  # written the canonical way
        ("192.0.2.1", ["not-an-ip"], "192.0.2.1"),  # a malformed hop: the last address that can be trusted
        ("192.0.2.1", ["evil, not-an-ip, 203.0.113.5"], "203.0.113.5"),
        ("192.0.2.1", [], "192.0.2.1"),  # a trusted peer that forwarded nothing is the caller
        ("192.0.2.1", [""], "192.0.2.1"),
        (None, ["203.0.113.5"], None),
    ],
)
def test_caller_address(peer: str | None, forwarded_for: list[str], expected: str | None) -> None:
    assert caller_address(request_from(peer, *forwarded_for), PROXIES) == expected


def test_without_configured_proxies_the_header_means_nothing() -> None:
    assert caller_address(request_from("127.0.0.1", "203.0.113.5"), TrustedProxies.of([])) == "127.0.0.1"


def test_a_very_long_header_is_read_from_the_right_only() -> None:
    chain = ", ".join(["10.0.0.1"] * 10_000 + ["203.0.113.5"])
    assert caller_address(request_from("192.0.2.1", chain), PROXIES) == "203.0.113.5"
    only_proxies = ", ".join(["10.0.0.1"] * 10_000)
    assert caller_address(request_from("192.0.2.1", only_proxies), PROXIES) == "10.0.0.1"


def test_the_setting_takes_a_list_or_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FHIR_FAX_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1")
    assert Settings(_env_file=None).trusted_proxies == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.1/32"),
    ]
    monkeypatch.setenv("FHIR_FAX_TRUSTED_PROXIES", '["::1", "172.16.0.0/12"]')
    assert [str(n) for n in Settings(_env_file=None).trusted_proxies] == ["::1/128", "172.16.0.0/12"]
    monkeypatch.delenv("FHIR_FAX_TRUSTED_PROXIES")
    assert Settings(_env_file=None).trusted_proxies == []
    with pytest.raises(ValidationError, match="trusted_proxies"):
        Settings(_env_file=None, trusted_proxies=["10.0.0.1/8"])  # host bits set: say what was meant
    with pytest.raises(ValidationError, match="trusted_proxies"):
        Settings(_env_file=None, trusted_proxies=["proxy.internal"])


def audit_addresses(server: FaxServer) -> list[str]:
    bundle = httpx.get(
        f"{server.url}/fhir/AuditEvent", params={"outcome": "4", "_count": "100"}, headers=server.headers, timeout=10
    ).json()
    return sorted(
        agent["network"]["address"]
        for entry in bundle.get("entry", [])
        for agent in entry["resource"]["agent"]
        if "network" in agent
    )


@pytest.mark.e2e
def test_a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    """``fhir-fax serve`` without FHIR_FAX_TRUSTED_PROXIES: uvicorn and the app both ignore the header."""
    server = FaxServer(tmp_path / "data")
    try:
        statuses = [
            httpx.post(
                f"{server.url}/oauth/token",
                data={**FORM, "client_id": "billing-service", "client_secret": f"guess-{n}"},
                headers={"x-forwarded-for": f"198.51.100.{n}"},
                timeout=10,
            ).status_code
            for n in range(12)
        ]
        assert statuses == [401] * 10 + [429] * 2, "a new spoofed address each time does not reset the count"
        anonymous = httpx.get(f"{server.url}/fhir/Communication", headers={"x-forwarded-for": "203.0.113.9"})
        assert anonymous.status_code == 401
        config = httpx.get(
            f"{server.url}/fhir/.well-known/smart-configuration", headers={"x-forwarded-proto": "https"}
        ).json()
        assert config["token_endpoint"].startswith("http://"), "X-Forwarded-Proto is not believed either"
    finally:
        server.stop()  # a graceful stop: the counted refusals are written on the way down
    restarted = FaxServer(tmp_path / "data")
    try:
        addresses = audit_addresses(restarted)
    finally:
        restarted.stop()
    assert addresses and set(addresses) == {"127.0.0.1"}, addresses


@pytest.mark.e2e
def test_a_configured_proxy_is_believed(tmp_path: Path) -> None:
    """With the loopback proxy configured, the forwarded address is the caller: for the lock-out and the audit."""
    env = {"FHIR_FAX_TRUSTED_PROXIES": "127.0.0.1, ::1"}
    server = FaxServer(tmp_path / "data", env=env)
    try:

        def token(secret: str, forwarded_for: str) -> int:
            headers = {"x-forwarded-for": forwarded_for}
            form = {**FORM, "client_secret": secret}
            return httpx.post(f"{server.url}/oauth/token", data=form, headers=headers, timeout=10).status_code

        assert [token(f"guess-{n}", "198.51.100.7") for n in range(11)] == [401] * 10 + [429]
        assert token(ADMIN_SECRET, "192.0.2.44") == 200, "the real client, elsewhere, is not locked out"
        assert token(ADMIN_SECRET, "spoofed-by-client, 198.51.100.7") == 429, "the proxy's entry is what counts"
        headers = {"x-forwarded-for": "6.6.6.6, 203.0.113.9", "x-forwarded-proto": "https"}
        anonymous = httpx.get(f"{server.url}/fhir/Communication", headers=headers)
        assert anonymous.status_code == 401
        config = httpx.get(f"{server.url}/fhir/.well-known/smart-configuration", headers=headers).json()
        assert config["token_endpoint"].startswith("https://"), "the proxy's X-Forwarded-Proto is believed"
    finally:
        server.stop()  # a graceful stop: the counted refusals are written on the way down
    restarted = FaxServer(tmp_path / "data", env=env)
    try:
        addresses = audit_addresses(restarted)
    finally:
        restarted.stop()
    assert "203.0.113.9" in addresses and "198.51.100.7" in addresses
    assert "6.6.6.6" not in addresses and "127.0.0.1" not in addresses, addresses
