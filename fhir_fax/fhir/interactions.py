"""Which interactions each path under the FHIR base offers: 405 (with ``Allow``) for the others, 406 for formats.

One table answers both the routes (a request whose method the path does not offer is refused before any
work is done) and the CapabilityStatement, so what the server says it offers and what it does are the same.

- ``[base]``: nothing (no batch/transaction, no system search); ``[base]/_history``: nothing (no system history).
- ``[type]``: search (GET) and create (POST); no conditional update, patch or delete (PUT/PATCH/DELETE).
- ``[type]/{id}``: read, update, delete; no PATCH. ``[type]/_history``, ``[type]/{id}/_history[/{vid}]``: GET.
- ``[type]/$op``: the registered operations (``Communication/$send-fax``, POST only); nothing else (``$validate``).
- Server-owned types are read-only: AuditEvent (the audit trail, appended to by the server only) and
  OperationDefinition (the server's own operations). They answer read, vread, history and search only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .errors import MethodNotAllowed, NotAcceptable
from .models import FHIR_VERSION, is_supported

READ_ONLY_TYPES = {
    "AuditEvent": "AuditEvent is the server's audit trail: the server appends to it, nobody can change it",
    "OperationDefinition": "OperationDefinition holds this server's own operations, which only the server defines",
}
SYSTEM_PATHS = {
    "": "batch/transaction (POST [base]) and system search (GET [base])",
    "_history": "system history (GET [base]/_history); use [type]/_history",
    "_search": "system search",
    "metadata": "",
}


def allowed_methods(segments: list[str], operations: Iterable[tuple[str, str]]) -> list[str] | None:
    """The methods ``[base]/segments`` offers, or None when the path names nothing this server knows (404)."""
    if not segments or segments[0] in SYSTEM_PATHS:
        if len(segments) > 1:
            return None
        return ["GET"] if segments and segments[0] == "metadata" else []
    resource_type, rest = segments[0], segments[1:]
    if not is_supported(resource_type):
        return None
    read_only = resource_type in READ_ONLY_TYPES
    if not rest:
        return ["GET"] if read_only else ["GET", "POST"]
    if rest[0].startswith("$"):
        offered = {f"${name}" for owner, name in operations if owner == resource_type}
        return ["POST"] if len(rest) == 1 and rest[0] in offered else []
    if rest == ["_search"]:
        return ["POST"]
    if rest == ["_history"]:
        return ["GET"]
    if len(rest) == 1:
        return ["GET"] if read_only else ["GET", "PUT", "DELETE"]
    if rest[1] == "_history" and len(rest) in (2, 3):
        return ["GET"]
    if len(rest) == 2 and resource_type == "Patient" and is_supported(rest[1]):
        return ["GET"]  # compartment search
    if len(rest) == 2 and rest[1].startswith("$"):  # instance-level operations, as declared
        offered = {f"${name}" for owner, name in operations if owner == f"{resource_type}/{{id}}"}
        return ["POST"] if rest[1] in offered else []
    if len(rest) >= 2 and rest[1].startswith("$"):
        return []
    return None


def refuse_unoffered(method: str, segments: list[str], operations: Iterable[tuple[str, str]]) -> None:
    """405 with ``Allow`` and an OperationOutcome that says what is not offered and what to do instead."""
    allowed = allowed_methods(segments, operations)
    if allowed is None:
        return
    offered = set(allowed) | ({"HEAD"} if "GET" in allowed else set())
    if method in offered:
        return
    raise MethodNotAllowed(_explain(method, segments, allowed), headers={"Allow": ", ".join(allowed)})


def _explain(method: str, segments: list[str], allowed: list[str]) -> str:
    path = "[base]" + "".join(f"/{segment}" for segment in segments)
    also = f" This path offers {', '.join(allowed)}." if allowed else " This path offers no method."
    if not segments or segments[0] in SYSTEM_PATHS:
        what = SYSTEM_PATHS.get(segments[0] if segments else "", "") or f"{method} {path}"
        return f"{method} {path} is not offered: this server does not support {what}.{also} See /metadata."
    resource_type = segments[0]
    if resource_type in READ_ONLY_TYPES and method in ("POST", "PUT", "PATCH", "DELETE"):
        return f"{method} {path} is refused: {READ_ONLY_TYPES[resource_type]}; it can only be read.{also}"
    if method == "PATCH":
        return (
            f"PATCH {path} is not offered: this server does not support patch. Read the resource and PUT it back "
            f"with If-Match.{also}"
        )
    if len(segments) == 1 and method in ("PUT", "DELETE"):
        kind = "update" if method == "PUT" else "delete"
        return (
            f"Conditional {kind} ({method} {path}?...) is not offered. Search for the resource, then "
            f"{method} [base]/{resource_type}/{{id}}{' with If-Match' if method == 'PUT' else ''}.{also}"
        )
    operation = next((s for s in segments if s.startswith("$")), None)
    if operation is not None:
        if allowed:
            return f"{operation} is invoked with {', '.join(allowed)} only.{also}"
        return f"The operation {operation} is not offered on {path}; see /metadata for the operations offered.{also}"
    return f"{method} {path} is not offered.{also} See /metadata."


# application/json+fhir is the DSTU2 spelling some older clients still send.
ACCEPTED_TYPES = ("*/*", "application/*", "application/fhir+json", "application/json", "application/json+fhir")
FORMATS = ("json", "application/json", "application/fhir+json")
FHIR_MIME_VERSIONS = (FHIR_VERSION, FHIR_VERSION.rsplit(".", 1)[0])


def fhir_segments(scope: Mapping[str, Any], fhir_path: str) -> list[str] | None:
    """The path segments after the FHIR base (``[]`` for the base itself), or None outside it."""
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    if not path.startswith(fhir_path):
        return None
    rest = path[len(fhir_path) :]
    if rest and not rest.startswith("/"):
        return None
    return [segment for segment in rest.split("/") if segment]


def check_acceptable(accept: str | None, format_parameter: str | None) -> None:
    """406 when the client accepts only formats or FHIR versions this server does not produce."""
    if format_parameter is not None and format_parameter.split(";")[0].strip().lower() not in FORMATS:
        raise NotAcceptable(
            f"_format={format_parameter} is not served: this server answers in JSON only "
            "(_format=json or application/fhir+json).",
            expression=["_format"],
        )
    if not accept or not accept.strip():
        return
    versions_seen: list[str] = []
    for media_range in accept.split(","):
        media_type, *parameters = (part.strip() for part in media_range.split(";"))
        options = dict(p.partition("=")[::2] for p in parameters if "=" in p)
        options = {k.strip().lower(): v.strip().strip('"') for k, v in options.items()}
        if options.get("q", "1") in ("0", "0.0", "0.00", "0.000"):
            continue
        if media_type.lower() not in ACCEPTED_TYPES:
            continue
        version = options.get("fhirversion")
        if version is not None and version not in FHIR_MIME_VERSIONS:
            versions_seen.append(version)
            continue
        return
    if versions_seen:
        raise NotAcceptable(
            f"Accept asks for FHIR version {', '.join(versions_seen)}; this server serves FHIR {FHIR_VERSION} "
            f"(R4B) only: ask for application/fhir+json; fhirVersion={FHIR_MIME_VERSIONS[1]}, or leave it out."
        )
    raise NotAcceptable(
        f"Accept {accept!r} names no format this server produces; it answers application/fhir+json (or "
        "application/json) only."
    )
