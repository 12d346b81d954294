"""Once, at start-up: bring faxes received before two fixes up to what reception and ``$file`` now write.

- Their documents were not pinned, so an upload to the key or a delete could remove them: each version the
  reception wrote (``metadata.receivedFax``) is pinned now, with its SHA-1, as a new reception pins it.
- A filed Task kept the other suggested patients (names, identifiers, birth dates) while ``Task.for`` put it in
  the filed patient's compartment: those suggestions are dropped now, as ``$file`` drops them.

A record done is marked ``repaired``; new records are written marked (``inbound.py``), so a start only looks up
the unmarked ones through the ``repaired`` index, and finds none after the first.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
from typing import Any

from ..fhir.store import ResourceStore
from ..z3.locations import Z3Location
from ..z3.store import Z3Store
from .suggestions import filed_inputs

log = logging.getLogger(__name__)
REPAIRED = 1  # the version of this repair a record had


async def repair_received(records: Any, store: ResourceStore, z3: Z3Store) -> int:
    """Repair every record not marked yet; how many were."""
    repaired = 0
    async for record in records.find({"repaired": None}):
        await pin_documents(z3, record["fax_id"])
        filed, task_id = record.get("filed"), record.get("task_id")
        if filed is not None and task_id:
            await store.modify("Task", task_id, functools.partial(without_others, patient=filed["patient"]))
        await records.update_one({"_id": record["_id"]}, {"$set": {"repaired": REPAIRED}})
        repaired += 1
    if repaired:
        log.info("%d received faxes were repaired (documents pinned, filed Tasks cleared of other patients)", repaired)
    return repaired


async def pin_documents(z3: Z3Store, fax_id: str) -> None:
    async for version in z3.files.find({"metadata.receivedFax": fax_id, "metadata.pinned": {"$ne": True}}):
        data = await z3.read_version(version["_id"])
        if data is None:
            continue
        bucket, _, key = str(version["filename"]).partition("/")
        digest = base64.b64encode(hashlib.sha1(data).digest()).decode()
        await z3.pin(version["_id"], Z3Location(bucket, key), digest)


def without_others(current: dict[str, Any], patient: str) -> dict[str, Any] | None:
    inputs = current.get("input", [])
    kept = filed_inputs(inputs, patient)
    if len(kept) == len(inputs):
        return None
    changed = {**current, "input": kept}
    if not kept:
        del changed["input"]
    return changed
