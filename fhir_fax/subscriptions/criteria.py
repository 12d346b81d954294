"""Subscription criteria: a search of this server's, parsed once by the search machinery, and what it pins.

A criteria is any search the server supports on a watched type (``Communication?patient=Patient/123``).
It is parsed by ``fhir.search.parse_search`` exactly as a search would be, so it means what the same search
means, and it is evaluated against one resource version by running that search's MongoDB filter on the
version's stored document (the current one, or its copy in ``<Type>_history``): the same keys, the same
operators, no second implementation that could disagree.

So that a write does not cost one query per Subscription, each Subscription is filed under what its
criteria pins (``match`` keys): an ``_id``, a reference (``patient``, ``subject``, ``sender``, ...) or a
token code (``status``, ``medium``, ...) that every match must carry; a criteria that pins nothing is
filed under ``*``. A version's own keys (``version_buckets``) then find the few Subscriptions that could
match it with one indexed query, and only those run their filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from ..fhir.errors import InvalidRequest
from ..fhir.search import SearchRegistry, parse_search
from ..fhir.search_types import KEYS
from ..fhir.store import RESERVED

WATCHED_TYPES = ("Communication",)
CATCH_ALL = "*"
# Result parameters shape pages, not matches: a criteria with one is refused (it would not mean anything).
RESULT_PARAMETERS = ("_count", "_sort", "_total", "_summary", "_elements", "_include", "_revinclude", "_cursor")
# The pins tried in turn: the first the criteria has is where it is filed (the most selective first).
PIN_ORDER = ("_id", "identifier", "patient", "subject", "based-on", "part-of", "encounter", "recipient", "sender",
             "status", "category", "medium")  # fmt: skip


@dataclass(frozen=True)
class Criteria:
    """A parsed criteria: the type it watches, the filter a matching version satisfies, the keys it is filed by."""

    text: str
    resource_type: str
    filter: dict[str, Any]
    buckets: tuple[str, ...]


def parse_criteria(text: Any, registry: SearchRegistry, base_url: str = "") -> Criteria:
    """Parse ``Type?params``; InvalidRequest naming ``Subscription.criteria`` and the problem otherwise."""
    where = ["Subscription.criteria"]
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(
            "Subscription.criteria is missing; give a search such as Communication?patient=Patient/123.",
            expression=where,
        )
    resource_type, _, query = text.strip().partition("?")
    if resource_type not in WATCHED_TYPES:
        raise InvalidRequest(
            f"Subscription.criteria searches {resource_type!r}; this server sends notifications about "
            f"{', '.join(WATCHED_TYPES)} only, e.g. Communication?patient=Patient/123.",
            expression=where,
        )
    try:
        params = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise InvalidRequest(
            f"Subscription.criteria {text!r} is not a query string (name=value&name=value).", expression=where
        ) from None
    for name, _ in params:
        if name.partition(":")[0] in RESULT_PARAMETERS:
            raise InvalidRequest(
                f"Subscription.criteria has {name!r}, which shapes search pages; a criteria takes search "
                "parameters only. Remove it.",
                expression=where,
            )
    try:
        search = parse_search(resource_type, params, registry, default_count=1, max_count=1, base_url=base_url)
    except InvalidRequest as error:
        raise InvalidRequest(f"Subscription.criteria does not parse: {error.diagnostics}", expression=where) from None
    return Criteria(text.strip(), resource_type, search.filter, pins(search.filter))


def pins(search_filter: dict[str, Any]) -> tuple[str, ...]:
    """The match keys a criteria is filed under: values every match carries, or ``*`` when none is pinned."""
    by_name: dict[str, list[str]] = {}
    for field, value in search_filter.items():
        found = _pinned(field, value)
        if found:
            by_name[found[0]] = found[1]
    ors = search_filter.get("$or")
    if isinstance(ors, list) and ors:  # several values of one token parameter: every branch pins one code
        branches = [_pinned(f, v) for branch in ors if isinstance(branch, dict) and len(branch) == 1
                    for f, v in branch.items()]  # fmt: skip
        if len(branches) == len(ors) and all(branches) and len({b[0] for b in branches if b}) == 1:
            first = branches[0]
            assert first is not None
            by_name.setdefault(first[0], [key for b in branches if b for key in b[1]])
    for name in PIN_ORDER:
        if name in by_name:
            return tuple(by_name[name])
    return (CATCH_ALL,)


def _pinned(field: str, value: Any) -> tuple[str, list[str]] | None:
    """(parameter, match keys) when ``field: value`` requires one of a few plain values, else None."""
    if field == "_id" and isinstance(value, dict) and set(value) == {"$in"}:
        return "_id", [f"_id={v}" for v in value["$in"]]
    if not field.startswith(f"{KEYS}.") or not isinstance(value, dict):
        return None
    name, _, leaf = field.removeprefix(f"{KEYS}.").partition(".")
    if leaf in ("r", "i") and set(value) == {"$in"} and value["$in"]:
        return name, [f"{name}.{leaf}={v}" for v in value["$in"]]
    element = value.get("$elemMatch") if set(value) == {"$elemMatch"} else None
    if not leaf and isinstance(element, dict) and isinstance(element.get("c"), str):
        return name, [f"{name}.c={element['c']}"]
    return None


# Parameters whose bare id (``subject=123``) names the patient a Communication is about.
PATIENT_PARAMETERS = ("patient", "subject")


def patients_named(search_filter: Any) -> list[str]:
    """The patients a criteria's filter requires a reference to be one of: ``Patient/id`` under any parameter,
    and a bare ``id`` under ``patient`` or ``subject`` (which name the patient without a type)."""
    found: list[str] = []
    if isinstance(search_filter, list):
        for item in search_filter:
            found += patients_named(item)
    elif isinstance(search_filter, dict):
        for field, value in search_filter.items():
            name, _, leaf = field.removeprefix(f"{KEYS}.").partition(".")
            if not field.startswith(f"{KEYS}.") or not isinstance(value, dict):
                if field in ("$or", "$and"):
                    found += patients_named(value)
                continue
            values = [v for v in value.get("$in") or [] if isinstance(v, str)]
            if leaf == "r":
                found += [v for v in values if v.startswith("Patient/")]
            elif leaf == "i" and name in PATIENT_PARAMETERS:
                found += values
    return list(dict.fromkeys(found))


def version_buckets(document: dict[str, Any], resource_id: str) -> list[str]:
    """Every match key a stored version carries (so any criteria that could match it is found by them)."""
    found = {CATCH_ALL, f"_id={resource_id}"}
    for name, keys in (document.get(RESERVED, {}).get("keys") or {}).items():
        if not isinstance(keys, list):
            continue
        for key in keys:
            if not isinstance(key, dict):
                continue
            for leaf in ("r", "i", "c"):
                if isinstance(key.get(leaf), str):
                    found.add(f"{name}.{leaf}={key[leaf]}")
    return sorted(found)


def for_history(search_filter: Any) -> Any:
    """The same filter for a copy in ``<Type>_history``, where the resource's id is ``_fhirfax.id``."""
    if isinstance(search_filter, dict):
        return {(f"{RESERVED}.id" if k == "_id" else k): for_history(v) for k, v in search_filter.items()}
    if isinstance(search_filter, list):
        return [for_history(v) for v in search_filter]
    return search_filter
