"""The caller's network address, for the token lock-out and the audit trail.

``X-Forwarded-For`` is a claim anyone can make, so it is believed only from a proxy the operator
configured (``FHIR_FAX_TRUSTED_PROXIES``): when the ASGI peer is one, the header is read from the right
(each proxy appends the address it saw), past the configured proxies, and the first address that is not one
of them is the caller; everything left of it was written by the caller and is ignored. From any other peer
the header means nothing and the peer is the caller.

``fhir-fax serve`` gives uvicorn the same list, so uvicorn rewrites the peer (and the scheme) only for
those proxies too; the rule here gives the same answer whether or not uvicorn has already applied it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_HOPS = 32  # a chain of proxies longer than this is not one anybody runs; the rest is ignored


@dataclass(frozen=True)
class TrustedProxies:
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, networks: Iterable[IPNetwork | str]) -> TrustedProxies:
        return cls(tuple(ipaddress.ip_network(n) if isinstance(n, str) else n for n in networks))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def uvicorn_options(self) -> dict[str, Any]:
        """The options that make uvicorn believe ``X-Forwarded-*`` from these proxies and nobody else."""
        if not self.networks:
            return {"proxy_headers": False}
        return {"proxy_headers": True, "forwarded_allow_ips": [str(n) for n in self.networks]}


def parse_address(value: str) -> IPAddress | None:
    """An address as found in a forwarded header (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:443``), or None."""
    value = value.strip()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def caller_address(request: Any, trusted: TrustedProxies) -> str | None:
    """Who is calling: the peer, or (only when the peer is a trusted proxy) the address it forwarded for."""
    peer: str | None = request.client.host if request.client else None
    if peer is None or not trusted:
        return peer
    hop = parse_address(peer)
    if hop is None or not trusted.trusts(hop):
        return peer
    hops = [part for value in reversed(request.headers.getlist("x-forwarded-for")) for part in _right_end(value)]
    for entry in hops[:MAX_HOPS]:
        address = parse_address(entry)
        if address is None:
            if entry.strip():  # a trusted proxy never writes this: stop at the last address we could trust
                break
            continue
        hop = address
        if not trusted.trusts(address):
            break
    return str(hop)


def _right_end(value: str, limit: int = 4096) -> list[str]:
    """The entries of one header, right-most first, from its last ``limit`` characters (a cut entry is dropped)."""
    parts = value[-limit:].split(",")
    return list(reversed(parts[1:] if len(value) > limit else parts))
