"""Load the FHIR resources in ``fixtures/`` idempotently (same ids, no new version if unchanged)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .fhir.store import ResourceStore
from .z3.locations import Z3Location
from .z3.store import Z3Store

log = logging.getLogger("fhir_fax.fixtures")

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures"
FIXTURES_BUCKET = "fixtures"


def fixture_documents(directory: Path = FIXTURES_DIR) -> list[tuple[str, bytes]]:
    """Every ``*.pdf`` under ``directory`` as (file name, content)."""
    return [(path.name, path.read_bytes()) for path in sorted(directory.glob("*.pdf"))]


def fixture_resources(directory: Path = FIXTURES_DIR) -> list[dict[str, Any]]:
    """Every ``*.json`` resource under ``directory``, sorted by file name."""
    if not directory.is_dir():
        raise FileNotFoundError(f"No fixtures folder at {directory}.")
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]


async def load_fixtures(store: ResourceStore, directory: Path = FIXTURES_DIR) -> dict[str, int]:
    """Create or update each fixture resource, and put each PDF in Z3 at ``z3://fixtures/{name}``.

    Returns counts of ``written`` and ``unchanged`` items; nothing is rewritten when unchanged.
    """
    counts = {"written": 0, "unchanged": 0}
    for resource in fixture_resources(directory):
        counts["written" if await store.put_if_changed(resource) else "unchanged"] += 1
    documents = Z3Store(store.database)
    for name, data in fixture_documents(directory):
        location = Z3Location(FIXTURES_BUCKET, name)
        current = await documents.stat(location)
        if current is not None and current.size == len(data):
            counts["unchanged"] += 1
            continue
        await documents.put(location, data, "application/pdf")
        counts["written"] += 1
    log.info("fixtures: %(written)s written, %(unchanged)s unchanged", counts)
    return counts
