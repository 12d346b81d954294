"""FHIR date search values: partial precision becomes a half-open range ``[start, end)``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from .errors import InvalidRequest

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")

_DATE = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d{1,9})?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?",
    re.ASCII,  # matched whole (fullmatch) and with ASCII digits only
)


@dataclass(frozen=True)
class DateRange:
    """A search value: prefix and the half-open instant range its precision covers."""

    prefix: str
    start: datetime
    end: datetime


def parse_date_value(parameter: str, raw: str) -> DateRange:
    """Parse ``[prefix]YYYY[-MM[-DD[Thh:mm[:ss[.fff]][tz]]]]`` into a range in UTC."""
    prefix, text = "eq", raw
    if len(raw) >= 2 and raw[:2] in PREFIXES:
        prefix, text = raw[:2], raw[2:]
    match = _DATE.fullmatch(text)
    if match is None:
        raise InvalidRequest(
            f"Search parameter {parameter!r} has the value {raw!r}, which is not a FHIR date; use "
            f"[prefix]YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss][Z|+hh:mm] "
            f"(prefixes: {', '.join(PREFIXES)}).",
            expression=[parameter],
        )
    parts = match.groupdict()
    try:
        start, step = _start_and_step(parts)
    except ValueError as error:
        raise InvalidRequest(
            f"Search parameter {parameter!r} has the value {raw!r}, which is not a real date ({error}).",
            expression=[parameter],
        ) from None
    return DateRange(prefix, start, _add(start, step))


def _start_and_step(parts: dict[str, str | None]) -> tuple[datetime, str]:
    year = int(parts["year"] or 0)
    if parts["month"] is None:
        return datetime(year, 1, 1, tzinfo=UTC), "year"
    month = int(parts["month"])
    if parts["day"] is None:
        return datetime(year, month, 1, tzinfo=UTC), "month"
    day = int(parts["day"])
    if parts["hour"] is None:
        return datetime(year, month, day, tzinfo=UTC), "day"
    tz: timezone = UTC
    if parts["tz"] and parts["tz"] != "Z":
        sign = 1 if parts["tz"][0] == "+" else -1
        hours, minutes = parts["tz"][1:].split(":")
        tz = timezone(timedelta(minutes=sign * (int(hours) * 60 + int(minutes))))
    fraction = parts["fraction"]
    micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
    moment = datetime(
        year, month, day, int(parts["hour"] or 0), int(parts["minute"] or 0), int(parts["second"] or 0),
        micro, tzinfo=tz,
    ).astimezone(UTC)  # fmt: skip
    if fraction:
        return moment, "millisecond"
    return moment, "second" if parts["second"] is not None else "minute"


def _add(start: datetime, step: str) -> datetime:
    if step == "year":
        return start.replace(year=start.year + 1)
    if step == "month":
        return start.replace(year=start.year + (start.month == 12), month=start.month % 12 + 1)
    return (
        start
        + {
            "day": timedelta(days=1),
            "minute": timedelta(minutes=1),
            "second": timedelta(seconds=1),
            "millisecond": timedelta(milliseconds=1),
        }[step]
    )


def point_filter(field: str, value: DateRange, now: datetime) -> dict[str, Any]:
    """Mongo filter for an instant stored at ``field`` (a point in time, millisecond precision)."""
    start, end = value.start, value.end
    within = {field: {"$gte": start, "$lt": end}}
    match value.prefix:
        case "eq":
            return within
        case "ne":
            return {"$or": [{field: {"$lt": start}}, {field: {"$gte": end}}]}
        case "gt" | "sa":
            return {field: {"$gte": end}}
        case "lt" | "eb":
            return {field: {"$lt": start}}
        case "ge":
            return {field: {"$gte": start}}
        case "le":
            return {field: {"$lt": end}}
        case "ap":
            margin = approximate_margin(start, now)
            return {field: {"$gte": start - margin, "$lt": end + margin}}
    raise AssertionError(value.prefix)


def approximate_margin(start: datetime, now: datetime) -> timedelta:
    """``ap``: 10% of the distance between the value and now (at least a day), as FHIR suggests."""
    return max(abs(now - start) / 10, timedelta(days=1))
