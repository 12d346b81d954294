"""Where a rest-hook may POST: public internet addresses only, unless the host is explicitly allowed.

A Subscription's endpoint is chosen by whoever creates it, which may be a patient-facing app. Without this
check the server would POST, from inside the clinic's network, to any address that client names: the cloud
metadata service (169.254.169.254), the database's port on localhost, a printer on 10.0.0.0/8. So an endpoint
is refused when its host is a loopback, private, link-local, multicast or reserved address, or a name for one:

- **when the Subscription is written**, for hosts that are addresses already (``127.0.0.1``, ``[::1]``,
  ``2130706433``, ``0x7f.1``: every spelling the system's resolver accepts) and ``localhost`` names, so the
  client hears of it at once;
- **when each notification is sent**, for names: the host is resolved, every address it resolves to must be
  public, and the POST then goes to the addresses that were checked (``checked_addresses``, each in turn),
  with the name kept for TLS (SNI and certificate check) and the ``Host`` header. A name that resolves to a
  public address when checked and to a private one a moment later (DNS rebinding) therefore cannot redirect
  the POST.

Hosts in ``FHIR_FAX_SUBSCRIPTION_ALLOWED_HOSTS`` are trusted as they are (development, or a known internal
receiver) and skip both checks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def literal_address(host: str) -> Address | None:
    """The address ``host`` spells, in any form the resolver takes as numeric (no DNS query), or None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:  # inet_aton's forms: "2130706433", "0x7f.1", "127.1" are all 127.0.0.1 to a resolver
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


# IPv6 prefixes that carry an IPv4 address in their last 32 bits, which a translator on the path may reach:
# NAT64's well-known prefix, SIIT's translated form, and the old IPv4-compatible form.
EMBEDDING_IPV4 = tuple(ipaddress.IPv6Network(n) for n in ("64:ff9b::/96", "::ffff:0:0:0/96", "::/96"))
LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")  # local-use NAT64: the site's own choice of mapping


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, Teredo client, NAT64, SIIT, compatible), or None."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in network for network in EMBEDDING_IPV4) and int(address) > 1:  # not :: or ::1
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: Address) -> bool:
    """Globally routable unicast: not loopback, private, link-local, shared, multicast or reserved; for an IPv6
    address that stands for an IPv4 one, that IPv4 address must be public too."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in LOCAL_NAT64:
            return False
        inner = embedded_ipv4(address)
        if inner is not None and not is_public(inner):
            return False
    return address.is_global and not address.is_multicast


def allowed(host: str, allowed_hosts: list[str]) -> bool:
    return host.lower().strip("[]") in {h.lower().strip("[]") for h in allowed_hosts}


def host_refusal(host: str, allowed_hosts: list[str]) -> str | None:
    """Why an endpoint host is refused when the Subscription is written, or None (names are checked at send)."""
    if allowed(host, allowed_hosts):
        return None
    name = host.lower().rstrip(".")
    address = literal_address(name)
    if name == "localhost" or name.endswith(".localhost") or (address is not None and not is_public(address)):
        return (
            f"channel.endpoint host {host!r} is not a public internet address; notifications are only sent to "
            "public hosts (or to a host in FHIR_FAX_SUBSCRIPTION_ALLOWED_HOSTS)."
        )
    return None


class Unsafe(Exception):
    """The endpoint's host resolves to an address notifications may not go to (the message says which)."""


async def checked_addresses(host: str, port: int, allowed_hosts: list[str]) -> list[str] | None:
    """The addresses to try, in the resolver's order, once every address of ``host`` is public; None for an
    allowed host (connect by name). Raises Unsafe, or ``socket.gaierror`` when the name does not resolve."""
    if allowed(host, allowed_hosts):
        return None
    addresses = [ipaddress.ip_address(a.split("%")[0]) for a in await resolve(host.strip("[]"), port)]
    refused = sorted({str(a) for a in addresses if not is_public(a)})
    if refused or not addresses:
        raise Unsafe(f"{host} resolves to {', '.join(refused) or 'no address'}, which is not a public address")
    return list(dict.fromkeys(str(a) for a in addresses))


async def resolve(host: str, port: int) -> list[str]:
    """Every address the system's resolver gives for ``host`` (what a connection to it could reach)."""
    found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in found]
