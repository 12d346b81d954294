"""Fax carriers behind one small interface (base.Transport)."""

from __future__ import annotations

from typing import Any

from ...settings import Settings
from .base import Transport


def make_transport(settings: Settings, database: Any) -> Transport:
    """The carrier named by ``FHIR_FAX_CARRIER``."""
    if settings.carrier == "simulator":
        from .simulator import Simulator

        return Simulator(database, speed=settings.simulator_speed)
    if settings.carrier == "telnyx":
        from .telnyx import Telnyx

        return Telnyx(settings, database)
    raise ValueError(f"Unknown fax carrier {settings.carrier!r}; FHIR_FAX_CARRIER may be: simulator, telnyx.")
