"""Fax numbers onboarded to the project (collection ``fax_numbers``, ``_id`` = the E.164 number)."""

from __future__ import annotations

import builtins
from typing import Any

from pymongo.errors import DuplicateKeyError

from ..errors import Conflict, NotFound, Unprocessable
from ..fhir.models import now
from .phone import NumberProblem, check_fax_number

COLLECTION = "fax_numbers"
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
        """Register ``number``; False when it was already onboarded."""
        try:
            await self.collection.insert_one({"_id": number, "carrier": carrier, "onboarded": now()})
        except DuplicateKeyError:
            return False
        return True

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
