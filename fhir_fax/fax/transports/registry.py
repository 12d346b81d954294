"""The carriers this server knows, by name: ``FHIR_FAX_CARRIER`` picks one, the webhook route asks any of them."""

from __future__ import annotations

from typing import Any

from ...settings import Settings
from .base import Carrier, Transport

CARRIERS: dict[str, Carrier] = {}


def register(carrier: Carrier) -> Carrier:
    """Make ``carrier`` available under its name (a carrier package's one line of wiring)."""
    CARRIERS[carrier.name] = carrier
    return carrier


def carrier_named(name: str) -> Carrier | None:
    return CARRIERS.get(name)


def make_transport(settings: Settings, database: Any) -> Transport:
    """The transport of the carrier named by ``FHIR_FAX_CARRIER``; the one place a carrier is built."""
    carrier = CARRIERS.get(settings.carrier)
    if carrier is None:
        known = ", ".join(sorted(CARRIERS))
        raise ValueError(f"Unknown fax carrier {settings.carrier!r}; FHIR_FAX_CARRIER may be: {known}.")
    return carrier.transport(settings, database)
