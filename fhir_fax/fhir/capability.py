"""The CapabilityStatement, generated from what is really registered."""

from __future__ import annotations

from typing import Any

from .context import FHIRContext
from .models import FHIR_VERSION, SUPPORTED_TYPES, now

INTERACTIONS = ("read", "vread", "update", "delete", "history-instance", "create", "search-type")
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
        entry: dict[str, Any] = {
            "type": resource_type,
            "interaction": [{"code": code} for code in INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "searchParam": [
                {"name": p.name, "type": p.type, "documentation": p.description} for p in parameters.values()
            ]
            + [{"name": n, "type": t, "documentation": d} for n, t, d in SEARCH_RESULT_PARAMETERS],
        }
        reference_parameters = [p.name for p in parameters.values() if p.type == "reference"]
        if reference_parameters:
            entry["searchInclude"] = [f"{resource_type}:{name}" for name in reference_parameters]
        revincludes = [
            f"{source}:{p.name}"
            for source in SUPPORTED_TYPES
            for p in context.registry.parameters(source).values()
            if p.type == "reference" and (not getattr(p.kind, "targets", ()) or resource_type in p.kind.targets)
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
                "resource": resources,
                "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"],
                **({"operation": system} if (system := context.operations.capability_entries(None)) else {}),
            }
        ],
    }
