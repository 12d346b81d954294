"""The CapabilityStatement, generated from what is really registered."""

from __future__ import annotations

from typing import Any

from .context import FHIRContext
from .interactions import READ_ONLY_TYPES
from .models import FHIR_VERSION, SUPPORTED_TYPES, now
from .search_types import Kind, ReferenceKind

INTERACTIONS = ("read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type")
READ_INTERACTIONS = ("read", "vread", "history-instance", "history-type", "search-type")
REST_DOCUMENTATION = (
    "Search pages never lose or repeat a match while resources change. Without _sort (newest created first) and "
    "with _sort=_id, pages follow a key that never changes and each page shows the matches as they are when it "
    "is read. With _sort on a value that changes (_lastUpdated and every other sortable parameter: status, sent, "
    "names, birthdate ...), the first page fixes "
    "which resources match and their order; later pages show those resources as they are when each page is read "
    "(deleted ones are left out), for {minutes} minutes after the first page, for at most {most:,} matches "
    "(400 beyond). "
    "History pages (instance and type) follow immutable version keys; _since and _at are supported. "
    "Not offered, answered 405 with an Allow header: batch/transaction, system search, system history, patch, "
    "conditional update, conditional delete, $validate and any other operation not listed. AuditEvent and "
    "OperationDefinition are written by the server only: read, vread, history and search. "
    "Formats: JSON only (application/fhir+json, FHIR 4.3); other formats or fhirVersion values are 406. "
    "Read and vread accept _elements (top-level names) or _summary (true, text, data, false); the part returned "
    "keeps id, meta and the mandatory elements and is tagged SUBSETTED."
)
SEARCH_RESULT_PARAMETERS = (
    ("_count", "number", "Page size (default and maximum set by the server)"),
    ("_sort", "special", "Sort order: a sortable parameter, '-' for descending"),
    ("_total", "token", "none | estimate | accurate"),
    ("_summary", "token", "count: return only the total"),
    ("_elements", "special", "Only these top-level elements (the result is tagged SUBSETTED)"),
)


def capability_statement(context: FHIRContext, base_url: str) -> dict[str, Any]:
    resources = []
    for resource_type in SUPPORTED_TYPES:
        parameters = context.registry.parameters(resource_type)
        read_only = resource_type in READ_ONLY_TYPES
        entry: dict[str, Any] = {
            "type": resource_type,
            "interaction": [{"code": code} for code in (READ_INTERACTIONS if read_only else INTERACTIONS)],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": not read_only,
            "conditionalCreate": not read_only,
            "conditionalRead": "not-supported",
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "searchParam": [
                {"name": p.name, "type": p.type, "documentation": p.description} for p in parameters.values()
            ]
            + [{"name": n, "type": t, "documentation": d} for n, t, d in SEARCH_RESULT_PARAMETERS],
        }
        if read_only:
            entry["documentation"] = f"Read-only: {READ_ONLY_TYPES[resource_type]}."
        reference_parameters = [p.name for p in parameters.values() if p.type == "reference"]
        if reference_parameters:
            entry["searchInclude"] = [f"{resource_type}:{name}" for name in reference_parameters]
        revincludes = [
            f"{source}:{p.name}"
            for source in SUPPORTED_TYPES
            for p in context.registry.parameters(source).values()
            if p.type == "reference" and (not (targets := reference_targets(p.kind)) or resource_type in targets)
        ]
        if revincludes:
            entry["searchRevInclude"] = revincludes
        operations = context.operations.capability_entries(resource_type)
        if operations:
            entry["operation"] = operations
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now().date().isoformat(),
        "publisher": "fhir-fax",
        "kind": "instance",
        "software": {"name": context.settings.software_name, "version": context.settings.software_version},
        "implementation": {"description": "fhir-fax FHIR server", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                **(
                    {"extension": [extend(base_url) for extend in context.rest_extensions]}
                    if context.rest_extensions
                    else {}
                ),  # e.g. where the subscription websocket is
                "documentation": REST_DOCUMENTATION.format(
                    minutes=context.settings.search_snapshot_seconds // 60, most=context.settings.search_snapshot_max
                ),
                **(
                    {"security": context.security(base_url.removesuffix(context.settings.fhir_path))}
                    if context.security is not None
                    else {}
                ),  # where to get a token (set by access control)
                "resource": resources,
                "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"],
                **({"operation": system} if (system := context.operations.capability_entries(None)) else {}),
            }
        ],
    }


def reference_targets(kind: Kind | None) -> tuple[str, ...]:
    """The types a reference parameter may point at (empty: any)."""
    return kind.targets if isinstance(kind, ReferenceKind) else ()
