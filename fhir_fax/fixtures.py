"""Load the demo fixtures idempotently (same ids, no new version if unchanged).

They ship inside the package (``fhir_fax/data/fixtures``) and are read through ``importlib.resources``, so
``fhir-fax demo`` and ``--load-fixtures`` work from an installed wheel, not only from a source checkout.
"""

from __future__ import annotations

import json
import logging
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from .fhir.store import ResourceStore
from .z3.locations import Z3Location
from .z3.store import Z3Store

log = logging.getLogger("fhir_fax.fixtures")

FIXTURES_DIR: Traversable = files("fhir_fax") / "data" / "fixtures"
FIXTURES_BUCKET = "fixtures"


def _files(directory: Traversable | Path, suffix: str) -> list[Traversable | Path]:
    """The files of ``directory`` ending in ``suffix``, by name (a package resource has no ``glob``)."""
    if not directory.is_dir():
        raise FileNotFoundError(f"No fixtures folder at {directory}.")
    return sorted((item for item in directory.iterdir() if item.name.endswith(suffix)), key=lambda item: item.name)


def fixture_documents(directory: Traversable | Path = FIXTURES_DIR) -> list[tuple[str, bytes]]:
    """Every ``*.pdf`` under ``directory`` as (file name, content)."""
    return [(item.name, item.read_bytes()) for item in _files(directory, ".pdf")]


def fixture_resources(directory: Traversable | Path = FIXTURES_DIR) -> list[dict[str, Any]]:
    """Every ``*.json`` resource under ``directory``, sorted by file name."""
    return [json.loads(item.read_text()) for item in _files(directory, ".json")]


async def load_fixtures(store: ResourceStore, directory: Traversable | Path = FIXTURES_DIR) -> dict[str, int]:
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
