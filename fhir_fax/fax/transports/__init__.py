"""Fax carriers: one package each behind one interface (``base.py``), and one registration line each below."""

from __future__ import annotations

from . import simulator, telnyx
from .base import Capabilities, Carrier, Submission, Transport, TransportError
from .registry import CARRIERS, carrier_named, make_transport, register

register(simulator.CARRIER)
register(telnyx.CARRIER)

__all__ = [
    "CARRIERS",
    "Capabilities",
    "Carrier",
    "Submission",
    "Transport",
    "TransportError",
    "carrier_named",
    "make_transport",
    "register",
]
