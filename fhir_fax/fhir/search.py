"""FHIR search: a parameter registry turned into MongoDB filters, keyset paging and a Bundle.

Every value a client sends is parsed into plain strings or datetimes before it becomes part
of a filter, so no query value can reach MongoDB as an operator, and no value is ever read
as a regular expression (string search's ``:contains`` escapes it into a pattern of literal
text). Paging never loses or repeats a match while resources change: sorts on immutable keys
(the default creation order, ``_id``) page with keyset cursors; sorts on values that change
(``_lastUpdated``, ``status``, dates, names) page through a snapshot of the matching ids taken at
the first page (see ``search_results``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, ReplaceOne
from pymongo.errors import OperationFailure

from .cursors import Cursor, decode_cursor, search_binding
from .dates import parse_date_value, point_filter
from .errors import InvalidRequest
from .inputs import ascii_int
from .models import now
from .search_types import KEYS, SORT_KEYS, Kind, SearchContext, split_escaped, unescape
from .store import RESERVED, public

ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# The default order: newest created first, on a key written once at creation (``store.created_sort_key``).
CREATED_FIELD = f"{RESERVED}.created"
# Sort keys that never change once written: paged by keyset. Every other sort pages through a snapshot.
IMMUTABLE_SORT_FIELDS = frozenset({"_id", CREATED_FIELD})
SNAPSHOT_MAX = 10_000
SNAPSHOT_SECONDS = 1800
# Ordered ids of a search's matches, kept for later pages of sorts on values that change (TTL on ``expires``).
SNAPSHOTS = "search_snapshots"
# What each type's stored search keys were computed by (``SearchRegistry.add_missing_keys``).
KEY_RECORDS = "search_keys"
# The store's indexer per type (``ResourceStore.indexer_for``), which may add keys beyond the parameters'.
IndexerFor = Callable[[str], Callable[[dict[str, Any]], dict[str, Any]] | None] | None
KEY_FORMAT = 1  # raise when a kind stores its keys differently, so that every stored resource is indexed again
# Indexes earlier releases created that nothing reads any more (each would still be rewritten at every write).
OBSOLETE_INDEXES = (("Communication", "patient_lastUpdated"),)
RESULT_PARAMETERS = ("_count", "_sort", "_total", "_summary", "_elements", "_include", "_revinclude")
IGNORED_PARAMETERS = ("_format", "_pretty")

# Builds a MongoDB filter from the values of one occurrence of a parameter (comma-split),
# the modifier (or None) and the request's context.
FilterBuilder = Callable[[list[str], str | None, SearchContext], dict[str, Any]]


@dataclass(frozen=True)
class SearchParameter:
    """One search parameter: how it appears in the CapabilityStatement and how it filters."""

    name: str
    type: str
    description: str
    expression: str
    build: FilterBuilder
    sort_field: str | None = None
    modifiers: frozenset[str] = frozenset()
    kind: Kind | None = None  # set for parameters whose keys are stored with each resource
    indexed: bool = False


def indexed_parameter(
    kind: Kind,
    search_type: str,
    description: str,
    expression: str,
    *,
    sortable: bool = False,
    indexed: bool = False,
) -> SearchParameter:
    modifiers = kind.modifiers | frozenset(getattr(kind, "targets", ()))
    return SearchParameter(
        name=kind.name,
        type=search_type,
        description=description,
        expression=expression,
        build=kind.filter,
        sort_field=f"{SORT_KEYS}.{kind.name}" if sortable else None,
        modifiers=modifiers,
        kind=kind,
        indexed=indexed,
    )


def id_filter(values: list[str], modifier: str | None, context: SearchContext) -> dict[str, Any]:
    for value in values:
        if not ID_PATTERN.fullmatch(value):
            raise InvalidRequest(
                f"Search parameter '_id' has the value {value!r}, which is not a FHIR id "
                "(1-64 letters, digits, '-' or '.').",
                expression=["_id"],
            )
    return {"_id": {"$nin" if modifier == "not" else "$in": values}}


def last_updated_filter(values: list[str], modifier: str | None, context: SearchContext) -> dict[str, Any]:
    clauses = [
        point_filter(f"{RESERVED}.lastUpdated", parse_date_value("_lastUpdated", v), context.moment) for v in values
    ]
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


COMMON_PARAMETERS: tuple[SearchParameter, ...] = (
    SearchParameter(
        "_id",
        "token",
        "Logical id of the resource",
        "Resource.id",
        id_filter,
        "_id",
        frozenset({"not"}),
    ),
    SearchParameter(
        "_lastUpdated",
        "date",
        "When the resource version last changed",
        "Resource.meta.lastUpdated",
        last_updated_filter,
        f"{SORT_KEYS}._lastUpdated",
    ),
)


@dataclass
class SearchRegistry:
    """Search parameters known per resource type (the common ones apply to every type)."""

    by_type: dict[str, dict[str, SearchParameter]] = field(default_factory=dict)
    compound_indexes: dict[str, dict[str, list[tuple[str, int]]]] = field(default_factory=dict)

    def register(self, resource_type: str, parameter: SearchParameter) -> None:
        self.by_type.setdefault(resource_type, {})[parameter.name] = parameter

    def parameters(self, resource_type: str) -> dict[str, SearchParameter]:
        return {p.name: p for p in COMMON_PARAMETERS} | self.by_type.get(resource_type, {})

    def indexer(self, resource_type: str) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        """Computes the ``keys`` and ``sort`` entries stored with each resource of this type."""
        kinds = [p for p in self.by_type.get(resource_type, {}).values() if p.kind is not None]
        if not kinds:
            return None

        def index(resource: dict[str, Any]) -> dict[str, Any]:
            keys, sort = {}, {}
            for parameter in kinds:
                assert parameter.kind is not None
                value = parameter.kind.keys(resource)
                if value:
                    keys[parameter.name] = value
                if parameter.sort_field:
                    sort[parameter.name] = sort_key(parameter.kind.sort_key(resource), resource["id"])
            return {"keys": keys, "sort": sort}

        return index

    def signature(self, resource_type: str) -> dict[str, str]:
        """What each stored-key parameter of the type computes: a change means the stored keys are stale."""
        return {
            name: f"{KEY_FORMAT}:{type(p.kind).__name__}:{p.expression}:{p.sort_field or ''}"
            for name, p in sorted(self.by_type.get(resource_type, {}).items())
            if p.kind is not None
        }

    async def add_missing_keys(self, database: Any, indexer_for: IndexerFor = None) -> dict[str, int]:
        """Give stored resources the search keys of parameters added (or changed) since they were written.

        Runs at start-up, like the store's creation keys. Each type's parameters are recorded in
        ``search_keys``; when they are what was recorded, nothing is read. A type without a record had its
        keys written by the release that first registered it, or had no parameters then: only resources
        without keys are indexed. Each update is conditional on the version read, so a resource changed
        meanwhile keeps the keys its writer computed. Returns how many resources got keys, per type.
        ``indexer_for`` is the store's (the runtime hands it in): a type its writer files under more keys than
        its parameters' (a Subscription's match keys) keeps them, since ``keys`` is replaced whole.
        """
        added: dict[str, int] = {}
        done: list[ReplaceOne[Any]] = []
        records = {record["_id"]: record async for record in database[KEY_RECORDS].find({})}
        for resource_type in self.by_type:
            indexer = (indexer_for or self.indexer)(resource_type)
            signature = self.signature(resource_type)
            record = records.get(resource_type)
            if indexer is None or (record is not None and record.get("parameters") == signature):
                continue
            stale: dict[str, Any] = {f"{RESERVED}.deleted": False}
            if record is None:
                stale[f"{RESERVED}.keys"] = {"$exists": False}
            collection, count = database[resource_type], 0
            async for document in collection.find(stale):
                computed = indexer(public(document))
                changes = {f"{RESERVED}.keys": computed["keys"]}
                changes.update({f"{RESERVED}.sort.{name}": value for name, value in computed["sort"].items()})
                version = {"_id": document["_id"], f"{RESERVED}.version": document[RESERVED]["version"]}
                count += (await collection.update_one(version, {"$set": changes})).modified_count
            added[resource_type] = count
            done.append(ReplaceOne({"_id": resource_type}, {"parameters": signature}, upsert=True))
        if done:
            await database[KEY_RECORDS].bulk_write(done)
        return added

    async def ensure_indexes(self, database: Any, indexer_for: IndexerFor = None) -> None:
        """One index per indexed parameter (and per sortable one), then the missing keys, at start-up.

        Each collection's indexes are created by one command: a start-up (every test's too) pays one round
        trip per collection, not one per parameter. Keys are added after the indexes exist: the embedded
        server keeps an index up to date at each write far faster than it builds one over stored documents
        (measured: 35 s to build the name index over 1,000 Patients, 2.5 s to write 1,000 more into it).
        """
        wanted: dict[str, list[IndexModel]] = {}
        for resource_type, parameters in self.by_type.items():
            models = wanted.setdefault(resource_type, [])
            for parameter in parameters.values():
                if parameter.indexed and parameter.kind is not None:
                    leaf = {"reference": "r", "token": "c", "date": "lo", "string": "p"}[parameter.type]
                    models.append(IndexModel(f"{KEYS}.{parameter.name}.{leaf}", name=f"search_{parameter.name}"))
                if parameter.sort_field:
                    models.append(IndexModel(parameter.sort_field, name=f"sort_{parameter.name}"))
        for resource_type, indexes in self.compound_indexes.items():
            wanted.setdefault(resource_type, []).extend(IndexModel(keys, name=name) for name, keys in indexes.items())
        for resource_type, models in wanted.items():
            if models:
                await database[resource_type].create_indexes(models)
        await self.add_missing_keys(database, indexer_for)
        await database[SNAPSHOTS].create_index("expires", expireAfterSeconds=0, name="expires")
        for resource_type, name in OBSOLETE_INDEXES:
            with contextlib.suppress(OperationFailure):  # absent: nothing to drop
                await database[resource_type].drop_index(name)


@dataclass
class SearchQuery:
    resource_type: str
    filter: dict[str, Any]
    count: int
    sort: tuple[str, int]
    total: str
    summary_count: bool
    cursor: Cursor | None
    echo: list[tuple[str, str]]
    ignored: list[str]
    elements: list[str] = field(default_factory=list)
    includes: list[tuple[str, str, str | None]] = field(default_factory=list)
    revincludes: list[tuple[str, str, str | None]] = field(default_factory=list)
    path: str = ""
    binding: str = ""  # digest of type, parameters and access filter; every cursor carries it
    # The access and compartment filter (from the caller): snapshot pages apply it again on every page.
    scope_filter: dict[str, Any] | None = None
    snapshot_max: int = SNAPSHOT_MAX
    snapshot_seconds: int = SNAPSHOT_SECONDS

    @property
    def keyset(self) -> bool:
        """True when the sort key never changes (keyset paging); False when pages come from a snapshot."""
        return self.sort[0] in IMMUTABLE_SORT_FIELDS

    def cursor_token(self) -> str | None:
        """The cursor this query was called with, for the self link."""
        return None if self.cursor is None else self.cursor.encode()


def parse_search(
    resource_type: str,
    params: list[tuple[str, str]],
    registry: SearchRegistry,
    *,
    default_count: int,
    max_count: int,
    base_url: str = "",
    lenient: bool = False,
    extra_filter: dict[str, Any] | None = None,
    snapshot_max: int = SNAPSHOT_MAX,
    snapshot_seconds: int = SNAPSHOT_SECONDS,
) -> SearchQuery:
    """Turn query parameters into a SearchQuery; unknown or bad parameters are 400 (unless lenient)."""
    known = registry.parameters(resource_type)
    context = SearchContext(moment=now(), base_url=base_url)
    clauses: list[dict[str, Any]] = []
    if extra_filter:
        clauses.append(extra_filter)
    query = SearchQuery(resource_type, {}, default_count, ("", 0), "none", False, None, [], [])
    query.snapshot_max, query.snapshot_seconds = snapshot_max, snapshot_seconds
    sort_texts: list[str] = []
    cursor_token: str | None = None
    keyed = False  # a positive match on stored search keys, which deleted resources never have
    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if name == "_count":
            query.count = _parse_count(value, max_count)
        elif name == "_sort":
            sort_texts.append(value)
        elif name == "_total":
            query.total = _choice("_total", value, ("none", "estimate", "accurate"))
        elif name == "_summary":
            query.summary_count = _choice("_summary", value, ("count", "false")) == "count"
        elif name == "_elements":
            query.elements = [e.strip() for e in value.split(",") if e.strip()]
        elif name in ("_include", "_revinclude"):
            target = query.includes if name == "_include" else query.revincludes
            target.append(_parse_include(name, value, resource_type, registry))
        elif name == "_cursor":
            if cursor_token is not None:
                raise InvalidRequest("_cursor is given twice; follow one next/previous link.", expression=["_cursor"])
            cursor_token = value
            continue
        elif name in IGNORED_PARAMETERS:
            continue
        elif name in known:
            parameter = known[name]
            clauses.append(_parameter_filter(parameter, raw_name, modifier, value, context))
            if parameter.kind is not None and modifier != "not" and not (modifier == "missing" and value == "true"):
                keyed = True
        else:
            if lenient:
                query.ignored.append(raw_name)
                continue
            supported = ", ".join(sorted(set(known) | set(RESULT_PARAMETERS)))
            raise InvalidRequest(
                f"Unknown search parameter {raw_name!r} for {resource_type}. Supported: {supported}. "
                "Send 'Prefer: handling=lenient' to ignore unknown parameters.",
                expression=[raw_name],
            )
        query.echo.append((raw_name, value))
    if not keyed:
        clauses.append({f"{RESERVED}.deleted": False})
    if len(sort_texts) > 1:
        raise InvalidRequest(
            f"_sort is given {len(sort_texts)} times ({', '.join(sort_texts)}); give it once, with one parameter.",
            expression=["_sort"],
        )
    query.sort = _parse_sort(sort_texts[0], known) if sort_texts else (CREATED_FIELD, DESCENDING)
    query.filter = merge_clauses(clauses)
    query.binding = search_binding(resource_type, query.echo, extra_filter)
    query.scope_filter = extra_filter
    if cursor_token is not None:
        query.cursor = decode_cursor(cursor_token, query.binding)
        if query.cursor.kind != ("key" if query.keyset else "snap"):
            raise InvalidRequest("_cursor does not fit this search's sort order.", expression=["_cursor"])
    return query


def merge_clauses(clauses: list[dict[str, Any]]) -> dict[str, Any]:
    """AND the clauses as one flat document where fields don't collide, ``$and`` only for the rest.

    Flat filters are what every MongoDB-compatible planner turns into index bounds; some
    (the embedded server among them) scan the whole collection for any ``$and``.
    """
    merged: dict[str, Any] = {}
    leftovers: list[dict[str, Any]] = []
    for clause in clauses:
        if all(key not in merged for key in clause):
            merged.update(clause)
            continue
        combined = dict(merged)
        for key, value in clause.items():
            if key not in combined:
                combined[key] = value
            elif _operators(combined[key]) and _operators(value) and not set(combined[key]) & set(value):
                combined[key] = {**combined[key], **value}
            else:
                leftovers.append(clause)
                break
        else:
            merged = combined
    if leftovers:
        merged["$and"] = leftovers
    return merged


def _operators(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(k.startswith("$") for k in value)


def sort_key(value: str, resource_id: str) -> str:
    """A sort value made unique by its resource id, so a keyset cursor is one range condition."""
    return f"{value}\x01{resource_id}"


def _parameter_filter(
    parameter: SearchParameter, raw_name: str, modifier: str, value: str, context: SearchContext
) -> dict[str, Any]:
    if modifier and modifier not in parameter.modifiers:
        supported = ", ".join(sorted(parameter.modifiers))
        raise InvalidRequest(
            f"Search parameter {parameter.name!r} does not support the modifier ':{modifier}'"
            + (f"; supported: {supported}." if supported else "."),
            expression=[raw_name],
        )
    values = split_escaped(value, ",")
    if parameter.type != "token":  # tokens split on '|' first, then unescape
        values = [unescape(v) if parameter.kind is not None else v for v in values]
    if any(v == "" for v in values):
        raise InvalidRequest(f"Search parameter {raw_name!r} has an empty value.", expression=[raw_name])
    try:
        return parameter.build(values, modifier or None, context)
    except InvalidRequest as error:
        if not error.expression:
            error.expression = [raw_name]
        raise


def _parse_include(name: str, value: str, resource_type: str, registry: SearchRegistry) -> tuple[str, str, str | None]:
    """``Source:param[:Target]`` checked against the registry; returns (source, param, target)."""
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise InvalidRequest(f"{name} takes Type:parameter[:TargetType], got {value!r}.", expression=[name])
    source, parameter_name = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if name == "_include" and source != resource_type:
        raise InvalidRequest(
            f"_include={value} must start with the searched type {resource_type}.", expression=["_include"]
        )
    parameter = registry.parameters(source).get(parameter_name)
    if parameter is None or parameter.type != "reference":
        raise InvalidRequest(
            f"{name}={value}: {source} has no reference parameter {parameter_name!r}.", expression=[name]
        )
    return source, parameter_name, target


def _parse_count(value: str, max_count: int) -> int:
    count = ascii_int(value)
    if count is None:
        raise InvalidRequest(f"_count must be a whole number from 0 to {max_count}, got {value!r}.")
    return min(count, max_count)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidRequest(f"{name} must be one of {', '.join(allowed)}, got {value!r}.", expression=[name])
    return value


def _parse_sort(text: str, known: dict[str, SearchParameter]) -> tuple[str, int]:
    if "," in text:
        raise InvalidRequest("_sort takes one parameter (ties are ordered by id).", expression=["_sort"])
    descending = text.startswith("-")
    name = text[1:] if descending else text
    parameter = known.get(name)
    if parameter is None or parameter.sort_field is None:
        sortable = ", ".join(sorted(p.name for p in known.values() if p.sort_field))
        raise InvalidRequest(
            f"_sort cannot use {name!r}; sortable parameters: {sortable} (prefix '-' for descending).",
            expression=["_sort"],
        )
    return parameter.sort_field, DESCENDING if descending else ASCENDING
