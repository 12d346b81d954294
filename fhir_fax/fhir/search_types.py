"""Search parameter kinds (reference, token, date, string): what each stores at write time and how it filters.

Every parameter stores its search keys under ``_fhirfax.keys.<name>`` when a resource is
written, in a shape that makes the query a plain indexed MongoDB filter:

- reference: ``[{"r": "Patient/1", "i": "1"}]``; a contained reference is ``{"r": "#x"}`` with no
  ``i``, so it can never be mistaken for a real resource with that id.
- token: ``[{"s": system or "", "c": code}]``.
- date: ``{"lo": start, "hi": end}``, the half-open range a (possibly partial) date covers.
- string: ``{"x": [as written], "n": [normalised], "p": [every prefix of each normalised value]}``, so the
  default "starts with" search is an equality (``$in``) on ``p``: the one query shape every MongoDB-compatible
  planner, the embedded server's included, answers from an index (it scans the whole collection for a regular
  expression, a range inside ``$elemMatch`` or ``$or``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .dates import approximate_margin, parse_date_value
from .errors import InvalidRequest

KEYS = "_fhirfax.keys"
SORT_KEYS = "_fhirfax.sort"
MISSING_TEXT = "\U0010ffff"  # missing values sort last (ascending)


def sortable_instant(moment: datetime) -> str:
    """Fixed-width UTC text of an instant, so that text order is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


Extractor = Callable[[dict[str, Any]], list[Any]]


@dataclass(frozen=True)
class SearchContext:
    """What filters may need beyond the value: the time of the request and this server's FHIR base."""

    moment: datetime
    base_url: str


def split_escaped(value: str, separator: str) -> list[str]:
    """Split on ``separator`` except where escaped (FHIR's ``\\,`` ``\\|`` ``\\$``); escapes stay in the parts.

    Escapes are kept so that a later split (a token's ``|`` after the value's ``,``) still
    sees them; ``unescape`` removes them once a part is final.
    """
    parts, current, index = [], [], 0
    while index < len(value):
        char = value[index]
        if char == "\\" and index + 1 < len(value):
            current.append(value[index : index + 2])
            index += 2
            continue
        if char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def unescape(value: str) -> str:
    """Drop FHIR's escaping backslashes: ``a\\,b`` -> ``a,b``, ``a\\\\b`` -> ``a\\b``."""
    out, index = [], 0
    while index < len(value):
        if value[index] == "\\" and index + 1 < len(value):
            out.append(value[index + 1])
            index += 2
        else:
            out.append(value[index])
            index += 1
    return "".join(out)


def missing_filter(name: str, values: list[str], present_path: str) -> dict[str, Any]:
    """``:missing=true`` finds resources without the element, ``false`` those with it."""
    if values not in (["true"], ["false"]):
        raise InvalidRequest(f"{name}:missing takes true or false, got {','.join(values)!r}.", expression=[name])
    return {present_path: {"$exists": values == ["false"]}}


@dataclass(frozen=True)
class Kind:
    """How one parameter indexes and filters; subclasses per FHIR search type."""

    name: str
    extract: Extractor
    modifiers: frozenset[str] = field(default=frozenset({"missing"}))

    @property
    def field(self) -> str:
        return f"{KEYS}.{self.name}"

    def keys(self, resource: dict[str, Any]) -> Any:
        raise NotImplementedError

    def sort_key(self, resource: dict[str, Any]) -> Any:
        raise NotImplementedError

    def filter(self, values: list[str], modifier: str | None, context: SearchContext) -> dict[str, Any]:
        raise NotImplementedError


def normalise_reference(reference: str) -> str:
    """``Type/id/_history/3`` -> ``Type/id``; other forms unchanged."""
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        return "/".join(parts[:-2])
    return reference


@dataclass(frozen=True)
class ReferenceKind(Kind):
    targets: tuple[str, ...] = ()

    def keys(self, resource: dict[str, Any]) -> list[dict[str, str]]:
        found = []
        for reference in self.extract(resource):
            if not isinstance(reference, str):
                continue
            if reference.startswith("#"):
                found.append({"r": reference})
                continue
            reference = normalise_reference(reference)
            found.append({"r": reference, "i": reference.rsplit("/", 1)[-1]})
        return found

    def filter(self, values: list[str], modifier: str | None, context: SearchContext) -> dict[str, Any]:
        if modifier == "missing":
            return missing_filter(self.name, values, f"{self.field}.0")
        type_modifier = modifier
        if type_modifier is not None and self.targets and type_modifier not in self.targets:
            raise InvalidRequest(
                f"{self.name}:{type_modifier} is not a target of {self.name}; use one of {', '.join(self.targets)}.",
                expression=[f"{self.name}:{type_modifier}"],
            )
        references, ids = [], []
        prefix = context.base_url.rstrip("/") + "/"
        for raw in values:
            value = unescape(raw)
            value = value.removeprefix(prefix) if value.startswith(prefix) else value
            if "/" in value:
                kind = value.split("/", 1)[0]
                if type_modifier and kind != type_modifier and not value.startswith(("http://", "https://")):
                    raise InvalidRequest(
                        f"{self.name}:{type_modifier}={value} names another type; drop the modifier or the type.",
                        expression=[self.name],
                    )
                references.append(normalise_reference(value))
            elif type_modifier or len(self.targets) == 1:
                references.append(f"{type_modifier or self.targets[0]}/{value}")
            else:
                ids.append(value)
        clauses = []
        if references:
            clauses.append({f"{self.field}.r": {"$in": references}})
        if ids:
            clauses.append({f"{self.field}.i": {"$in": ids}})
        return clauses[0] if len(clauses) == 1 else {"$or": clauses}

    def sort_key(self, resource: dict[str, Any]) -> str:
        keys = self.keys(resource)
        return keys[0]["r"] if keys else MISSING_TEXT


@dataclass(frozen=True)
class TokenKind(Kind):
    modifiers: frozenset[str] = field(default=frozenset({"missing", "not"}))

    def keys(self, resource: dict[str, Any]) -> list[dict[str, str]]:
        return [{"s": system or "", "c": code} for system, code in self.extract(resource) if code]

    def filter(self, values: list[str], modifier: str | None, context: SearchContext) -> dict[str, Any]:
        if modifier == "missing":
            return missing_filter(self.name, values, f"{self.field}.0")
        elements = [self._element(value) for value in values]
        if all(set(element) == {"c"} for element in elements):  # codes alone: one indexed $in
            match: dict[str, Any] = {f"{self.field}.c": {"$in": _unique(e["c"] for e in elements)}}
        else:
            matches = [{self.field: {"$elemMatch": element}} for element in elements]
            match = matches[0] if len(matches) == 1 else {"$or": matches}
        return {"$nor": [match]} if modifier == "not" else match

    def _element(self, value: str) -> dict[str, str]:
        parts = [unescape(part) for part in split_escaped(value, "|")]
        if len(parts) == 1:
            return {"c": parts[0]}
        if len(parts) > 2:
            raise InvalidRequest(
                f"{self.name} takes code, system|code, |code or system|; {value!r} has too many '|' "
                "(escape a literal one as \\|).",
                expression=[self.name],
            )
        system, code = parts
        if not system and not code:
            raise InvalidRequest(f"{self.name}: '|' alone names neither a system nor a code.", expression=[self.name])
        if not code:
            return {"s": system}
        return {"s": system, "c": code}

    def sort_key(self, resource: dict[str, Any]) -> str:
        keys = self.keys(resource)
        return keys[0]["c"] if keys else MISSING_TEXT


@dataclass(frozen=True)
class BooleanKind(TokenKind):
    """A boolean element searched as a token (``active=true``): the only codes are ``true`` and ``false``."""

    def keys(self, resource: dict[str, Any]) -> list[dict[str, str]]:
        return [
            {"s": "", "c": "true" if value else "false"} for value in self.extract(resource) if isinstance(value, bool)
        ]

    def filter(self, values: list[str], modifier: str | None, context: SearchContext) -> dict[str, Any]:
        if modifier != "missing":
            for value in values:
                if unescape(value) not in ("true", "false"):
                    raise InvalidRequest(f"{self.name} takes true or false, got {value!r}.", expression=[self.name])
        return super().filter(values, modifier, context)


@dataclass(frozen=True)
class DateKind(Kind):
    """A date or dateTime element: stored as the range its precision covers."""

    def keys(self, resource: dict[str, Any]) -> dict[str, datetime] | None:
        values = self.extract(resource)
        if not values:
            return None
        covered = parse_date_value(self.name, values[0])
        return {"lo": covered.start, "hi": covered.end}

    def filter(self, values: list[str], modifier: str | None, context: SearchContext) -> dict[str, Any]:
        if modifier == "missing":
            return missing_filter(self.name, values, f"{self.field}.lo")
        clauses = [self._one(parse_date_value(self.name, unescape(v)), context.moment) for v in values]
        return clauses[0] if len(clauses) == 1 else {"$or": clauses}

    def _one(self, value: Any, moment: datetime) -> dict[str, Any]:
        lo, hi = f"{self.field}.lo", f"{self.field}.hi"
        start, end = value.start, value.end
        within = {lo: {"$gte": start}, hi: {"$lte": end}}
        match value.prefix:
            case "eq":
                return within
            case "ne":
                return {"$nor": [within], lo: {"$exists": True}}
            case "gt":
                return {hi: {"$gt": end}}
            case "lt":
                return {lo: {"$lt": start}}
            case "ge":
                return {"$or": [{hi: {"$gt": end}}, within]}
            case "le":
                return {"$or": [{lo: {"$lt": start}}, within]}
            case "sa":
                return {lo: {"$gte": end}}
            case "eb":
                return {hi: {"$lte": start}}
            case "ap":
                margin = approximate_margin(start, moment)
                return {lo: {"$lt": end + margin}, hi: {"$gt": start - margin}}
        raise AssertionError(value.prefix)

    def sort_key(self, resource: dict[str, Any]) -> str:
        keys = self.keys(resource)
        return sortable_instant(keys["lo"]) if keys else MISSING_TEXT


# Prefixes are stored up to this many characters; a longer search value matches its first PREFIX_MAX characters
# on the index and the rest on the normalised value.
PREFIX_MAX = 24
_SPACES = re.compile(r"\s+")
# Letters that carry their accent in the letter itself, so NFKD does not split them: their plain forms.
_PLAIN_LETTERS = str.maketrans({"ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "æ": "ae", "œ": "oe", "\u0131": "i"})


def normalise_text(text: str) -> str:
    """FHIR's string matching key: case- and accent-insensitive (``Müller`` -> ``muller``), spaces collapsed.

    Casefolding first turns ``ß`` into ``ss``; NFKD then splits letters from their accents (and compatibility
    forms such as ``ﬁ`` into ``fi``), and the combining marks are dropped; the few letters NFKD keeps whole
    (``ø``, ``ł``, ``æ`` ...) get their plain forms.
    """
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(char for char in decomposed if not unicodedata.combining(char))
    return _SPACES.sub(" ", stripped.translate(_PLAIN_LETTERS)).strip()


def prefixes(normalised: str) -> list[str]:
    """Every prefix of ``normalised`` up to PREFIX_MAX characters, shortest first."""
    return [normalised[:length] for length in range(1, min(len(normalised), PREFIX_MAX) + 1)]


@dataclass(frozen=True)
class StringKind(Kind):
    """A string (or the string parts of a HumanName, an Address ...): FHIR's string search.

    Default: case- and accent-insensitive "starts with" on any of the values; ``:exact``: the whole value,
    exactly as written; ``:contains``: anywhere in a value (case- and accent-insensitive, unindexed: the
    value is escaped and never read as a pattern).
    """

    modifiers: frozenset[str] = field(default=frozenset({"missing", "exact", "contains"}))

    def keys(self, resource: dict[str, Any]) -> dict[str, list[str]] | None:
        written = _unique(value.strip() for value in self.extract(resource) if isinstance(value, str))
        written = [value for value in written if value]
        if not written:
            return None
        normalised = _unique(normalise_text(value) for value in written)
        return {
            "x": written,
            "n": normalised,
            "p": _unique(prefix for value in normalised for prefix in prefixes(value)),
        }

    def filter(self, values: list[str], modifier: str | None, context: SearchContext) -> dict[str, Any]:
        if modifier == "missing":
            return missing_filter(self.name, values, f"{self.field}.n")
        if modifier == "exact":
            return {f"{self.field}.x": {"$in": _unique(values)}}
        wanted = _unique(normalise_text(value) for value in values)
        if "" in wanted:
            raise InvalidRequest(
                f"{self.name} has a value with nothing to match once spaces are removed; give some text.",
                expression=[self.name],
            )
        if modifier == "contains":
            return {f"{self.field}.n": {"$regex": "|".join(re.escape(value) for value in wanted)}}
        short = [value for value in wanted if len(value) <= PREFIX_MAX]
        clauses: list[dict[str, Any]] = [{f"{self.field}.p": {"$in": short}}] if short else []
        for value in wanted:
            if len(value) > PREFIX_MAX:
                clauses.append(
                    {
                        f"{self.field}.p": value[:PREFIX_MAX],
                        f"{self.field}.n": {"$regex": "^" + re.escape(value)},
                    }
                )
        return clauses[0] if len(clauses) == 1 else {"$or": clauses}

    def sort_key(self, resource: dict[str, Any]) -> str:
        keys = self.keys(resource)
        return keys["n"][0] if keys else MISSING_TEXT


def _unique(values: Any) -> list[str]:
    """The values in their first order, each once."""
    return list(dict.fromkeys(values))
