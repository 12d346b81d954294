"""The Subscription resource: what a write must hold, its search parameters, and the keys it is filed by.

A Subscription is written through the usual FHIR interactions (``FHIR:Create``/``Update``/``Delete`` on
``FHIR:Subscription``). Before it is stored, ``check`` refuses (400, nothing stored) a criteria that does
not parse or searches a type nobody is notified about, an unknown channel type, an endpoint that is not
allowed, a header that is not ``Name: value`` and a payload other than ``application/fhir+json``; it then
turns ``requested`` (or ``active``) into ``active``. ``off`` is kept as it is; ``error`` is the server's to set.
Once its ``end`` has passed, a Subscription is treated as ``off``: nothing is sent, and no websocket binds to it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from ..fhir.errors import InvalidRequest
from ..fhir.search import SearchParameter, SearchRegistry, indexed_parameter
from ..fhir.search_types import KEYS, Kind, SearchContext, TokenKind, unescape
from ..fhir.store import RESERVED
from .criteria import Criteria, parse_criteria
from .destination import allowed, host_refusal

CHANNEL_TYPES = ("rest-hook", "websocket")
PAYLOAD = "application/fhir+json"
STATUS_SYSTEM = "http://hl7.org/fhir/subscription-status"
CHANNEL_SYSTEM = "http://hl7.org/fhir/subscription-channel-type"
HEADER = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}):[ \t]*([\x20-\x7e]{0,2000})")
# Set by the server only: a client cannot ask for them.
SERVER_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding", "connection"})
MATCH = "match"  # where a Subscription's match keys are stored: ``_fhirfax.keys.match``
LOOPBACK = ("localhost", "127.0.0.1", "::1")
LEAP_SECOND = re.compile(r"(T\d\d:\d\d:)60(?:\.\d+)?")


@dataclass(frozen=True)
class Channel:
    type: str
    endpoint: str | None
    payload: str | None
    headers: tuple[tuple[str, str], ...]


def channel_of(subscription: dict[str, Any]) -> Channel:
    channel = subscription.get("channel") or {}
    headers = []
    for line in channel.get("header") or []:
        match = HEADER.fullmatch(line) if isinstance(line, str) else None
        if match is not None:
            headers.append((match[1], match[2]))
    return Channel(channel.get("type", ""), channel.get("endpoint"), channel.get("payload"), tuple(headers))


def ended(subscription: dict[str, Any], moment: datetime) -> str | None:
    """Its ``end`` when that has passed (R4: when the server turns it off; nothing is sent after it), else None.

    A leap second (``...:60Z``, a valid FHIR instant that Python cannot hold) is read as the end of second 59;
    an ``end`` that still cannot be read counts as passed, so a bad value never keeps a Subscription on forever.
    """
    end = subscription.get("end")
    if not isinstance(end, str):
        return None
    try:
        when = datetime.fromisoformat(LEAP_SECOND.sub(r"\g<1>59.999999", end).replace("Z", "+00:00"))
    except ValueError:
        return end
    return end if (when if when.tzinfo else when.replace(tzinfo=UTC)) <= moment else None


def stopped(subscription: dict[str, Any] | None, moment: datetime) -> str | None:
    """Why nothing more is sent for this stored Subscription (deleted, off, or past its end), or None."""
    if subscription is None or subscription[RESERVED]["deleted"] or subscription.get("status") == "off":
        return "the Subscription was deleted or turned off"
    end = ended(subscription, moment)
    return None if end is None else f"the Subscription ended at {end}"


def endpoint_refusal(endpoint: str | None, allowed_hosts: list[str]) -> str | None:
    """Why a rest-hook may not POST to ``endpoint``, or None.

    https to a public host, or http to an allowed host; no credentials (see ``destination`` for what is public).
    """
    if not endpoint:
        return "A rest-hook Subscription needs channel.endpoint, the https URL to POST notifications to."
    try:
        parts = urlsplit(endpoint)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        return f"channel.endpoint {endpoint!r} is not a URL."
    if not host:
        return f"channel.endpoint {endpoint!r} names no host; give an absolute https URL."
    if parts.username or parts.password:
        return "channel.endpoint carries credentials; put them in channel.header (e.g. Authorization: Bearer ...)."
    if parts.scheme in ("http", "https") and (refusal := host_refusal(host, allowed_hosts)) is not None:
        return refusal
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and allowed(host, allowed_hosts):
        return None
    if parts.scheme == "http":
        return (
            f"channel.endpoint {endpoint!r} is plain http to {host}, which is not an allowed host; use https "
            "(or add the host to FHIR_FAX_SUBSCRIPTION_ALLOWED_HOSTS)."
        )
    return f"channel.endpoint {endpoint!r} must be an https URL."


def check_subscription(
    resource: dict[str, Any], registry: SearchRegistry, allowed_hosts: list[str], base_url: str = ""
) -> tuple[dict[str, Any], Criteria]:
    """The Subscription to store (status made ``active``) and its parsed criteria; InvalidRequest otherwise."""
    status = resource.get("status")
    if status == "error":
        raise InvalidRequest(
            "Subscription.status error is set by the server when notifications fail; send requested to "
            "re-activate the Subscription (or off to stop it).",
            expression=["Subscription.status"],
        )
    criteria = parse_criteria(resource.get("criteria"), registry, base_url)
    channel = channel_of(resource)
    if channel.type not in CHANNEL_TYPES:
        raise InvalidRequest(
            f"Subscription.channel.type {channel.type!r} is not offered; use {' or '.join(CHANNEL_TYPES)}.",
            expression=["Subscription.channel.type"],
        )
    if channel.type == "rest-hook":
        refusal = endpoint_refusal(channel.endpoint, allowed_hosts)
        if refusal is not None:
            raise InvalidRequest(refusal, expression=["Subscription.channel.endpoint"])
    if channel.payload not in (None, PAYLOAD):
        raise InvalidRequest(
            f"Subscription.channel.payload {channel.payload!r} is not offered; use {PAYLOAD} for the resource, "
            "or leave it out for an empty notification.",
            expression=["Subscription.channel.payload"],
        )
    for line in (resource.get("channel") or {}).get("header") or []:
        match = HEADER.fullmatch(line) if isinstance(line, str) else None
        if match is None:
            raise InvalidRequest(
                f"Subscription.channel.header {line!r} is not 'Name: value' (printable ASCII, one line).",
                expression=["Subscription.channel.header"],
            )
        if match[1].lower() in SERVER_HEADERS or match[1].lower().startswith("x-fhir-fax-"):
            raise InvalidRequest(
                f"Subscription.channel.header {match[1]!r} is set by the server; leave it out.",
                expression=["Subscription.channel.header"],
            )
    stored = dict(resource)
    if status in ("requested", "active"):
        stored["status"] = "active"
    stored.pop("error", None)
    return stored, criteria


# -- search ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextKind(Kind):
    """A string parameter (``criteria``): case-insensitive starts-with, or ``:exact``."""

    modifiers: frozenset[str] = frozenset({"exact"})

    def keys(self, resource: dict[str, Any]) -> dict[str, str] | None:
        values = self.extract(resource)
        return {"n": values[0].lower(), "e": values[0]} if values else None

    def filter(self, values: list[str], modifier: str | None, context: SearchContext) -> dict[str, Any]:
        if modifier == "exact":
            return {f"{self.field}.e": {"$in": [unescape(v) for v in values]}}
        clauses = [
            {f"{self.field}.n": {"$gte": v, "$lt": v + "\U0010ffff"}} for v in (unescape(x).lower() for x in values)
        ]
        return clauses[0] if len(clauses) == 1 else {"$or": clauses}

    def sort_key(self, resource: dict[str, Any]) -> str:
        values = self.extract(resource)
        return str(values[0]).lower() if values else "\U0010ffff"


@dataclass(frozen=True)
class UriKind(Kind):
    """A uri parameter (``url``, the endpoint): the same URI exactly."""

    modifiers: frozenset[str] = frozenset()

    def keys(self, resource: dict[str, Any]) -> list[str]:
        return [v for v in self.extract(resource) if isinstance(v, str)]

    def filter(self, values: list[str], modifier: str | None, context: SearchContext) -> dict[str, Any]:
        return {self.field: {"$in": [unescape(v) for v in values]}}

    def sort_key(self, resource: dict[str, Any]) -> str:
        values = self.keys(resource)
        return values[0] if values else "\U0010ffff"


def _one(get: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], list[Any]]:
    def extract(resource: dict[str, Any]) -> list[Any]:
        value = get(resource)
        return [value] if isinstance(value, str) and value else []

    return extract


SUBSCRIPTION: tuple[SearchParameter, ...] = (
    indexed_parameter(
        TokenKind("status", lambda r: [(STATUS_SYSTEM, r.get("status"))]),
        "token", "requested | active | error | off", "Subscription.status",
    ),
    indexed_parameter(
        TextKind("criteria", _one(lambda r: r.get("criteria"))), "string", "The search the Subscription watches",
        "Subscription.criteria",
    ),
    indexed_parameter(
        UriKind("url", _one(lambda r: (r.get("channel") or {}).get("endpoint"))), "uri",
        "Where the channel sends notifications", "Subscription.channel.endpoint",
    ),
    indexed_parameter(
        TokenKind("type", lambda r: [(CHANNEL_SYSTEM, (r.get("channel") or {}).get("type"))]),
        "token", "rest-hook | websocket", "Subscription.channel.type",
    ),
)  # fmt: skip


def register_parameters(registry: SearchRegistry) -> None:
    """Subscription's search parameters (idempotent: the module's registry may be handed in again)."""
    for parameter in SUBSCRIPTION:
        registry.register("Subscription", parameter)


def subscription_indexer(
    registry: SearchRegistry, base_url: str = ""
) -> Callable[[str], Callable[[dict[str, Any]], dict[str, Any]] | None]:
    """The store's indexer, which also files each Subscription under its criteria's match keys."""

    def indexer_for(resource_type: str) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        plain = registry.indexer(resource_type)
        if resource_type != "Subscription" or plain is None:
            return plain
        searchable = plain

        def index(resource: dict[str, Any]) -> dict[str, Any]:
            computed = searchable(resource)
            # One stored unchecked (by the server itself) is filed nowhere, so it matches nothing.
            with contextlib.suppress(InvalidRequest):
                computed["keys"][MATCH] = list(parse_criteria(resource.get("criteria"), registry, base_url).buckets)
            return computed

        return index

    return indexer_for


MATCH_FIELD = f"{KEYS}.{MATCH}"
