"""Choosing a resource's fax number from its ``telecom`` entries.

Rule: consider entries with ``system = fax`` whose ``period`` has not ended (and has
started); prefer the lowest ``rank`` (1 = most preferred; entries without a rank come
after ranked ones), then the order in the resource. The recipient's first such entry is
used; the sender's first such entry that is an onboarded number is used.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..errors import Invalid
from ..fhir.dates import parse_date_value


def fax_entries(resource: dict[str, Any], moment: datetime) -> list[str]:
    """The resource's current fax numbers, most preferred first (values unchecked)."""
    candidates = []
    for position, entry in enumerate(resource.get("telecom") or []):
        if entry.get("system") != "fax" or not entry.get("value"):
            continue
        if not _in_period(entry.get("period") or {}, moment):
            continue
        rank = entry.get("rank")
        candidates.append((rank is None, rank or 0, position, entry["value"]))
    return [value for *_, value in sorted(candidates)]


def _in_period(period: dict[str, Any], moment: datetime) -> bool:
    try:
        if "end" in period and parse_date_value("period.end", period["end"]).end <= moment:
            return False
        return not ("start" in period and parse_date_value("period.start", period["start"]).start > moment)
    except Invalid:
        return True  # unparseable periods were refused when the resource was stored
