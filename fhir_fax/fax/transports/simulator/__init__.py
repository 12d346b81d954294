"""The built-in simulated carrier (``carrier.py``) and its registration."""

from __future__ import annotations

from typing import Any

from ....settings import Settings
from ..base import Carrier
from .carrier import Simulator, planned_outcome


def simulator(settings: Settings, database: Any) -> Simulator:
    return Simulator(database, speed=settings.simulator_speed)


CARRIER = Carrier(name="simulator", title="the simulator", transport=simulator)

__all__ = ["CARRIER", "Simulator", "planned_outcome"]
