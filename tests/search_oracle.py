"""An independent, plain-Python reading of FHIR search rules, to check the server's answers against.

Written from the FHIR R4B search specification, deliberately sharing no code with the server.
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

EVENT_STATUS = "http://hl7.org/fhir/event-status"
BASE = "http://fhir.test/fhir/"


def covered(text: str) -> tuple[datetime, datetime]:
    """The instants [start, end) that a FHIR date/dateTime of any precision covers."""
    m = re.fullmatch(r"(\d{4})(?:-(\d\d)(?:-(\d\d)(?:T(\d\d):(\d\d)(?::(\d\d)(\.\d+)?)?(Z|[+-]\d\d:\d\d)?)?)?)?", text)
    assert m, text
    year, month, day, hour, minute, second, fraction, tz = m.groups()
    if month is None:
        return datetime(int(year), 1, 1, tzinfo=UTC), datetime(int(year) + 1, 1, 1, tzinfo=UTC)
    if day is None:
        days = calendar.monthrange(int(year), int(month))[1]
        start = datetime(int(year), int(month), 1, tzinfo=UTC)
        return start, start + timedelta(days=days)
    if hour is None:
        start = datetime(int(year), int(month), int(day), tzinfo=UTC)
        return start, start + timedelta(days=1)
    offset = UTC
    if tz and tz != "Z":
        sign = -1 if tz[0] == "-" else 1
        offset = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
    micro = round(float(fraction) * 1_000_000) if fraction else 0
    start = datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micro, tzinfo=offset
    ).astimezone(UTC)
    step = timedelta(milliseconds=1) if fraction else timedelta(seconds=1) if second else timedelta(minutes=1)
    return start, start + step


def date_matches(value: str | None, search: str, now: datetime) -> bool:
    """FHIR date comparison: both the element and the search value are ranges."""
    if value is None:
        return False
    prefix, text = ("eq", search)
    if search[:2] in ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"):
        prefix, text = search[:2], search[2:]
    lo, hi = covered(value)
    start, end = covered(text)
    inside = start <= lo and hi <= end
    rules: dict[str, Callable[[], bool]] = {
        "eq": lambda: inside,
        "ne": lambda: not inside,
        "gt": lambda: hi > end,
        "lt": lambda: lo < start,
        "ge": lambda: hi > end or inside,
        "le": lambda: lo < start or inside,
        "sa": lambda: lo >= end,
        "eb": lambda: hi <= start,
    }
    if prefix == "ap":
        margin = max(abs(now - start) / 10, timedelta(days=1))
        return lo < end + margin and hi > start - margin
    return rules[prefix]()


def references_of(resource: dict[str, Any], element: str) -> list[str]:
    value = resource.get(element)
    items = value if isinstance(value, list) else [value] if value else []
    return [item["reference"] for item in items if item.get("reference")]


def reference_matches(resource: dict[str, Any], element: str, search: str, targets: tuple[str, ...]) -> bool:
    """``Type/id``, a bare id (any allowed type) or a full URL on this server; contained refs never match."""
    search = search.removeprefix(BASE)
    for reference in references_of(resource, element):
        if reference.startswith("#"):
            continue
        if "/" in search:
            if reference == search:
                return True
        elif reference.split("/")[-1] == search and reference.split("/")[0] in targets:
            return True
    return False


def tokens_of(resource: dict[str, Any], parameter: str) -> list[tuple[str, str]]:
    if parameter == "status":
        return [(EVENT_STATUS, resource["status"])]
    if parameter == "identifier":
        return [(i.get("system", ""), i["value"]) for i in resource.get("identifier", [])]
    return [(c.get("system", ""), c["code"]) for concept in resource.get(parameter, []) for c in concept["coding"]]


def token_matches(resource: dict[str, Any], parameter: str, search: str) -> bool:
    for system, code in tokens_of(resource, parameter):
        if "|" not in search:
            if code == search:
                return True
            continue
        want_system, want_code = search.split("|")
        if want_code == "" and system == want_system:
            return True
        if want_code and system == want_system and code == want_code:
            return True
    return False


# Letters whose accent is part of the letter (Unicode gives them no decomposition), spelled plainly.
PLAIN = {"ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "æ": "ae", "œ": "oe", "\u0131": "i"}


def folded(text: str) -> str:
    """FHIR string matching's equivalence: letters without accents, in one case, single spaces."""
    decomposed = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text).casefold())
    plain = "".join(PLAIN.get(c, c) for c in decomposed if unicodedata.category(c) != "Mn")
    return " ".join(unicodedata.normalize("NFKD", plain).split())


def string_matches(values: list[str], search: str, modifier: str = "") -> bool:
    """String search on one value of a parameter: ``:exact`` whole and as written, ``:contains`` anywhere,
    otherwise the start of a value, ignoring case and accents."""
    for value in values:
        if modifier == "exact" and value == search:
            return True
        if modifier == "contains" and folded(search) in folded(value):
            return True
        if not modifier and folded(value).startswith(folded(search)):
            return True
    return False


def human_name_parts(resource: dict[str, Any], part: str | None = None) -> list[str]:
    """The strings of a resource's HumanNames: one part (family, given), or every part when ``part`` is None."""
    found: list[str] = []
    for name in resource.get("name", []):
        for key in (part,) if part else ("family", "given", "prefix", "suffix", "text"):
            value = name.get(key)
            found += value if isinstance(value, list) else [value] if value else []
    return found
