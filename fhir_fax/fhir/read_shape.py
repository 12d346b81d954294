"""``_elements`` and ``_summary`` on a read or version read (``GET /{type}/{id}[/_history/{vid}]``).

FHIR lets a client ask for part of a resource. What is kept, always with ``resourceType``, ``id`` and ``meta``
and the type's mandatory top-level elements (so the part is still a valid resource), tagged ``SUBSETTED``:

- ``_elements=a,b``: those top-level elements (the same ``subset`` as search).
- ``_summary=true``: the elements the specification marks as summary; ``text``: the narrative;
  ``data``: everything but the narrative; ``false``: the whole resource (untagged). ``count`` only means
  something for a search, so on a read it is a 400.

Which elements are mandatory or summary is read from the R4B model's field metadata. A primitive element's
``_name`` (its id and extensions) goes with it. Element names that the type does not have are a 400, as are
the two parameters together or either one given twice: each would otherwise be a silent guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from .errors import InvalidRequest
from .models import model_class
from .search_results import subset

SUMMARY_VALUES = ("true", "text", "data", "count", "false")
ALWAYS = ("resourceType", "id", "meta")


@dataclass(frozen=True)
class ElementsOfType:
    names: frozenset[str]
    mandatory: frozenset[str]
    summary: frozenset[str]


@cache
def elements_of(resource_type: str) -> ElementsOfType:
    """The JSON names of a type's top-level elements, and which are mandatory and summary (from the model)."""
    names, mandatory, summary = set(), set(), set()
    for name, field in model_class(resource_type).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        json_name = field.alias or name
        if json_name.startswith("_") or name.endswith("__ext"):
            continue  # a primitive's _name: kept with its element
        names.add(json_name)
        if extra.get("element_required") or field.is_required():
            mandatory.add(json_name)
        if extra.get("summary_element_property"):
            summary.add(json_name)
    return ElementsOfType(frozenset(names), frozenset(mandatory), frozenset(summary))


@dataclass(frozen=True)
class ReadShape:
    """Which part of the resource a read returns (``None`` from ``parse_read_shape``: all of it)."""

    elements: tuple[str, ...] = ()
    summary: str = "false"


def _single(params: list[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in params if key == name]
    if len(values) > 1:
        raise InvalidRequest(f"{name} is given {len(values)} times; give it once.", expression=[name])
    return values[0] if values else None


def parse_read_shape(params: list[tuple[str, str]], resource_type: str) -> ReadShape | None:
    """``_elements`` / ``_summary`` of a read's query string (other parameters are not looked at)."""
    elements_text = _single(params, "_elements")
    summary = _single(params, "_summary")
    if elements_text is None and summary is None:
        return None
    if elements_text is not None and summary is not None:
        raise InvalidRequest(
            "_elements and _summary are both given; use one of them.", expression=["_elements", "_summary"]
        )
    if summary is not None:
        if summary not in SUMMARY_VALUES:
            raise InvalidRequest(
                f"_summary={summary!r} is not one of {', '.join(SUMMARY_VALUES)}.", expression=["_summary"]
            )
        if summary == "count":
            raise InvalidRequest(
                "_summary=count counts the matches of a search; on a read use true, text, data or false.",
                expression=["_summary"],
            )
        return None if summary == "false" else ReadShape(summary=summary)
    requested = tuple(e.strip() for e in (elements_text or "").split(",") if e.strip())
    if not requested:
        raise InvalidRequest("_elements is empty; name the top-level elements to return.", expression=["_elements"])
    known = elements_of(resource_type).names
    unknown = [e for e in requested if e not in known and e not in ALWAYS]
    if unknown:
        raise InvalidRequest(
            f"_elements names {', '.join(unknown)}, which {resource_type} does not have at the top level; "
            "name top-level elements such as " + ", ".join(sorted(known)[:5]) + ".",
            expression=["_elements"],
        )
    return ReadShape(elements=requested)


def _with_extensions(names: set[str]) -> list[str]:
    return [*names, *(f"_{name}" for name in names)]


def shape(resource: dict[str, Any], wanted: ReadShape | None) -> dict[str, Any]:
    """The part of ``resource`` that ``wanted`` asks for (SUBSETTED-tagged), or the resource itself."""
    if wanted is None:
        return resource
    of_type = elements_of(resource["resourceType"])
    if wanted.summary == "data":
        kept = {name for name in resource if name != "text" and not name.startswith("_")}
    elif wanted.summary == "text":
        kept = {"text", *of_type.mandatory}
    elif wanted.summary == "true":
        kept = set(of_type.summary | of_type.mandatory)
    else:
        kept = {*wanted.elements, *of_type.mandatory}
    kept -= set(ALWAYS)
    return subset(resource, _with_extensions(kept) or ["id"])
