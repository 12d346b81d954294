"""Load the FHIR resources in ``fixtures/`` idempotently (same ids, no new version if unchanged)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .fhir.store import ResourceStore

log = logging.getLogger("fhir_fax.fixtures")

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures"


def fixture_resources(directory: Path = FIXTURES_DIR) -> list[dict[str, Any]]:
    """Every ``*.json`` resource under ``directory``, sorted by file name."""
    if not directory.is_dir():
        raise FileNotFoundError(f"No fixtures folder at {directory}.")
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]


async def load_fixtures(store: ResourceStore, directory: Path = FIXTURES_DIR) -> dict[str, int]:
    """Create or update each fixture; returns counts of ``written`` and ``unchanged`` resources."""
    counts = {"written": 0, "unchanged": 0}
    for resource in fixture_resources(directory):
        counts["written" if await store.put_if_changed(resource) else "unchanged"] += 1
    log.info("fixtures: %(written)s written, %(unchanged)s unchanged", counts)
    return counts
