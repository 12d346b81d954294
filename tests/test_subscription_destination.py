"""Where a rest-hook may POST: the send-time resolution check and the pinned request it builds.

The resolver is the one part replaced here (these names have no DNS on a test machine); the checks and the
request are the sender's own.
"""

from __future__ import annotations

import socket

import pytest

from fhir_fax.settings import Settings
from fhir_fax.subscriptions import destination
from fhir_fax.subscriptions.destination import Unsafe, checked_address, host_refusal
from fhir_fax.subscriptions.sender import Sender


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {
        "hooks.example.com": ["93.184.216.34"],
        "split.example.com": ["93.184.216.34", "10.0.0.7"],  # one public, one private answer
        "metadata.example.com": ["169.254.169.254"],
        "mapped.example.com": ["::ffff:127.0.0.1"],
    }

    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    monkeypatch.setattr(destination, "resolve", resolve)


async def test_the_post_goes_to_the_checked_address_with_the_name_kept_for_host_and_tls(
    resolver: None, settings: Settings
) -> None:
    sender = Sender(settings.model_copy(update={"subscription_allowed_hosts": []}), None, None, None)  # type: ignore[arg-type]
    try:
        request = await sender.request("https://hooks.example.com:8443/in?x=1", {"X-A": "b"}, b"{}")
    finally:
        await sender.close()
    assert str(request.url) == "https://93.184.216.34:8443/in?x=1"
    assert request.headers["Host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert request.headers["X-A"] == "b"


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("split.example.com", "split.example.com resolves to 10.0.0.7"),
        ("metadata.example.com", "resolves to 169.254.169.254"),
        ("mapped.example.com", "resolves to ::ffff:7f00:1"),
    ],
)
async def test_a_name_with_any_private_answer_is_unsafe(resolver: None, host: str, reason: str) -> None:
    with pytest.raises(Unsafe, match=reason):
        await checked_address(host, 443, [])


async def test_an_allowed_host_is_not_resolved_and_an_unknown_name_is_an_error(resolver: None) -> None:
    assert await checked_address("metadata.example.com", 443, ["metadata.example.com"]) is None
    with pytest.raises(OSError):
        await checked_address("nowhere.example.com", 443, [])


def test_names_are_left_to_send_time_and_spelled_addresses_are_judged_at_once() -> None:
    assert host_refusal("hooks.example.com", []) is None
    assert host_refusal("93.184.216.34", []) is None
    assert host_refusal("0x7f.1", []) is not None  # 127.0.0.1 to a resolver
    assert host_refusal("::ffff:10.0.0.1", []) is not None
    assert host_refusal("10.0.0.1", ["10.0.0.1"]) is None
