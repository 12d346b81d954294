"""Fax numbers onboarded to the project (collection ``fax_numbers``, ``_id`` = the E.164 number).

Each number may record its ``owner``: the resource (``Organization/x``...) a fax received on it is addressed to
(``Communication.recipient`` of an inbound fax). It is given at onboarding (``{"owner": ...}``) or found then:
the one resource of the most preferred type (``OWNER_TYPES``) whose fax telecom is the number.
"""

from __future__ import annotations

import builtins
from typing import Any

from pymongo.errors import DuplicateKeyError

from ..errors import Conflict, NotFound, Unprocessable
from ..fhir.models import now
from .phone import NumberProblem, check_fax_number

COLLECTION = "fax_numbers"
# Who a number belongs to, when several resources list it: the organisation before its services and people.
OWNER_TYPES = ("Organization", "HealthcareService", "PractitionerRole", "Practitioner", "CareTeam")
# NANP numbers 555-0100..0199 are reserved for fictional use: safe to hand out from the simulator.
SIMULATOR_RANGE = tuple(f"+1202555{n:04d}" for n in range(100, 200))


class NoNumberAvailable(Conflict):
    """Every number the carrier offers is taken."""


class FaxNumbers:
    def __init__(self, database: Any) -> None:
        self.collection = database[COLLECTION]

    async def list(self) -> list[str]:
        return [doc["_id"] async for doc in self.collection.find({}, {"_id": 1}).sort("onboarded", 1)]

    async def is_onboarded(self, number: str) -> bool:
        found: int = await self.collection.count_documents({"_id": number}, limit=1)
        return found == 1

    async def onboard(self, number: str, carrier: str) -> bool:
        """Register ``number`` (and its owner, when one resource owns it); False when it was already onboarded."""
        record: dict[str, Any] = {"_id": number, "carrier": carrier, "onboarded": now()}
        owner = await find_owner(self.collection.database, number)
        if owner is not None:
            record["owner"] = owner
        try:
            await self.collection.insert_one(record)
        except DuplicateKeyError:
            return False
        return True

    async def set_owner(self, number: str, owner: str) -> None:
        """Record ``owner`` (a checked ``Type/id``) as the resource that receives faxes sent to ``number``."""
        await self.collection.update_one({"_id": number}, {"$set": {"owner": owner}})

    async def record(self, number: str) -> dict[str, Any] | None:
        """The onboarded number's record (carrier, owner), or None when it is not onboarded."""
        found: dict[str, Any] | None = await self.collection.find_one({"_id": number})
        return found

    async def onboard_from_range(self, numbers: tuple[str, ...], carrier: str) -> str:
        """Register the first free number of ``numbers`` (the simulator's test range)."""
        for number in numbers:
            if await self.onboard(number, carrier):
                return number
        raise NoNumberAvailable("Every number of the simulator's range is onboarded; offboard one first.")

    async def onboard_for_project(self, number: str | None, carrier: str, carrier_number: str | None) -> str:
        """``POST /fax/v1/onboard``: register ``number``, or the project's number if it has one, or a new one.

        With the simulator a new number comes from its test range; with a real carrier it is
        the number that carrier assigned (``FHIR_FAX_CARRIER_FAX_NUMBER``).
        """
        if number is not None:
            await self.onboard(number, carrier)
            return number
        existing = await self.list()
        if existing:
            return existing[0]
        if carrier == "simulator":
            return await self.onboard_from_range(SIMULATOR_RANGE, carrier)
        if not carrier_number:
            raise Unprocessable(
                f"The {carrier} carrier has no number configured; set FHIR_FAX_CARRIER_FAX_NUMBER to the number it "
                'assigned, or send {"faxNumber": "+1..."}.'
            )
        try:
            check_fax_number(carrier_number)
        except NumberProblem as problem:
            raise Unprocessable(f"FHIR_FAX_CARRIER_FAX_NUMBER: {problem}") from None
        await self.onboard(carrier_number, carrier)
        return carrier_number

    async def offboard(self, number: str | None) -> builtins.list[str]:  # ``list`` here is the method above
        """Release ``number`` (or every number when None); returns what was released."""
        if number is None:
            released = await self.list()
            await self.collection.delete_many({})
            return released
        result = await self.collection.delete_one({"_id": number})
        if result.deleted_count == 0:
            raise NotFound(f"{number} is not onboarded; GET /fax/v1/config lists the onboarded numbers.")
        return [number]


async def find_owner(database: Any, number: str) -> str | None:
    """``Type/id`` of the one resource of the first ``OWNER_TYPES`` type listing ``number`` as its fax, else None."""
    query = {"telecom": {"$elemMatch": {"system": "fax", "value": number}}, "_fhirfax.deleted": False}
    for resource_type in OWNER_TYPES:
        found = await database[resource_type].find(query, {"_id": 1}).limit(2).to_list(None)
        if len(found) == 1:
            return f"{resource_type}/{found[0]['_id']}"
        if found:
            return None  # two of the same kind: ambiguous, and a contained Device stands for the number
    return None
