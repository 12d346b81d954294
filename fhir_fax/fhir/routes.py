"""FHIR REST interactions: create, read, vread, update, delete, history, search, capabilities."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Request, Response

from .capability import capability_statement
from .compartments import PATIENT_COMPARTMENT, compartment_filter
from .context import FHIRContext
from .errors import Forbidden, InvalidRequest, PreconditionFailed, ResourceNotFound
from .history import HistoryPage, HistoryQuery, history_link, history_page, parse_history
from .http import FHIRResponse, FHIRRoute, prefer, read_json, version_headers
from .interactions import check_acceptable, fhir_segments, refuse_unoffered
from .models import format_instant, is_supported, validate_resource
from .operations import build_operation_router
from .read_shape import parse_read_shape, shape
from .search import merge_clauses, parse_search
from .search_results import execute_search
from .store import RESERVED, Version, public

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def require_type(resource_type: str) -> str:
    if not is_supported(resource_type):
        raise ResourceNotFound(
            f"Resource type {resource_type!r} is not supported by this server; see /metadata for the supported types."
        )
    return resource_type


def written_response(request: Request, resource: dict[str, Any], status: int, location: str | None) -> Response:
    """Answer a create/update as the client's ``Prefer: return=`` asks."""
    headers = version_headers(resource)
    if location:
        headers["Location"] = location
    wanted = prefer(request, "return") or "representation"
    if wanted == "minimal":
        return Response(status_code=status, headers=headers)
    if wanted == "OperationOutcome":
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information",
                    "code": "informational",
                    "diagnostics": f"{resource['resourceType']}/{resource['id']} stored as version "
                    f"{resource['meta']['versionId']}.",
                }
            ],
        }
        return FHIRResponse(outcome, status_code=status, headers=headers)
    return FHIRResponse(resource, status_code=status, headers=headers)


async def include_nothing(_resource_type: str) -> None:
    """For searches whose results are only looked at, never returned (conditional create)."""
    return None


def offered_interactions(context: FHIRContext) -> Any:
    """A dependency run before every FHIR route: 406 for formats not served, 405 for interactions not offered."""

    async def check(request: Request) -> None:
        check_acceptable(request.headers.get("accept"), request.query_params.get("_format"))
        segments = fhir_segments(request.scope, context.settings.fhir_path)
        if segments is not None:
            operations = context.operations.offered()
            refuse_unoffered(request.method, segments, operations)

    return Depends(check)


def build_fhir_router(context: FHIRContext) -> APIRouter:
    """The generic REST API and every operation registered on ``context.operations``."""
    settings = context.settings
    route_class = FHIRRoute.limited(settings.max_body_bytes)
    router = APIRouter(route_class=route_class, tags=["FHIR"], dependencies=[offered_interactions(context)])
    router.include_router(build_operation_router(context))  # POST .../$name: no route of the REST API matches

    def version_location(request: Request, resource: dict[str, Any]) -> str:
        return (
            f"{context.base_url(request)}/{resource['resourceType']}/{resource['id']}"
            f"/_history/{resource['meta']['versionId']}"
        )

    async def search(
        request: Request,
        resource_type: str,
        params: list[tuple[str, str]],
        *,
        compartment: tuple[str, str] | None = None,
    ) -> Response:
        require_type(resource_type)
        clauses = [await context.search_filter(request, resource_type)]  # the gate's: policy, scopes, patient
        path = resource_type
        if compartment is not None:
            clauses.append(await owner_filter(compartment, resource_type))
            path = f"{compartment[0]}/{compartment[1]}/{resource_type}"
        unique = [c for i, c in enumerate(clauses) if c and c not in clauses[:i]]
        query = parse_search(
            resource_type,
            params,
            context.registry,
            default_count=settings.search_default_count,
            max_count=settings.search_max_count,
            base_url=context.base_url(request),
            lenient=prefer(request, "handling") == "lenient",
            extra_filter=merge_clauses(unique) if unique else None,
            snapshot_max=settings.search_snapshot_max,
            snapshot_seconds=settings.search_snapshot_seconds,
        )
        query.path = path

        async def included(included_type: str) -> dict[str, Any] | None:
            return await context.include_filter(request, included_type)

        bundle = await execute_search(context.store.database, query, context.base_url(request), included)
        shown = [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] in ("match", "include")]
        await context.was_read(request, "search-type", shown)
        return FHIRResponse(bundle)

    async def owner_filter(compartment: tuple[str, str], resource_type: str) -> dict[str, Any]:
        """Resources of ``resource_type`` in a Patient's compartment (FHIR's compartment definition)."""
        owner_type, owner_id = compartment
        if owner_type != "Patient" or resource_type not in PATIENT_COMPARTMENT:
            raise ResourceNotFound(
                f"{owner_type} compartments hold no {resource_type}; supported: "
                + ", ".join(f"Patient/{{id}}/{t}" for t in PATIENT_COMPARTMENT)
                + "."
            )
        await context.store.read(owner_type, owner_id)  # 404 / 410 for an unknown or deleted patient
        return compartment_filter(resource_type, owner_id)

    async def current(resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The current version, or None when there is none (missing or deleted)."""
        document = await context.store.find_current(resource_type, resource_id)
        return None if document is None or document[RESERVED]["deleted"] else public(document)

    async def last_live(resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The newest version that was not a deletion, of a deleted resource (None if it never existed)."""
        if await context.store.find_current(resource_type, resource_id) is None:
            return None
        for version in await context.store.history(resource_type, resource_id, 2):  # a deletion follows a live one
            if version.resource is not None:
                return version.resource
        return None

    @router.get("/metadata", summary="CapabilityStatement")
    async def metadata(request: Request) -> Response:
        return FHIRResponse(capability_statement(context, context.base_url(request)))

    @router.get("/{resource_type}", summary="Search")
    async def search_get(request: Request, resource_type: str) -> Response:
        return await search(request, resource_type, list(request.query_params.multi_items()))

    @router.post("/{resource_type}/_search", summary="Search with a form body")
    async def search_post(request: Request, resource_type: str) -> Response:
        require_type(resource_type)
        await context.search_filter(request, resource_type)  # refused before the body is read
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("application/x-www-form-urlencoded", ""):
            raise InvalidRequest(
                f"POST _search takes its parameters as application/x-www-form-urlencoded; got {content_type!r}."
            )
        body = (await request.body()).decode("utf-8", errors="replace")
        params = list(request.query_params.multi_items()) + parse_qsl(body, keep_blank_values=True)
        return await search(request, resource_type, params)

    @router.post("/{resource_type}", summary="Create")
    async def create(request: Request, resource_type: str) -> Response:
        require_type(resource_type)
        await context.authorize(request, "FHIR:Create", f"FHIR:{resource_type}")
        resource = validate_resource(await read_json(request, settings.max_body_bytes), resource_type)
        await context.admit(request, "FHIR:Create", resource)
        condition = create_condition(request)
        if condition:
            existing = await conditional_match(request, resource_type, condition)
            await context.admit(request, "FHIR:Read", existing)  # answering with it discloses it
            if existing is not None:
                return written_response(request, existing, 200, None)
        resource, private = await context.check_write(request, resource, None)
        stored = await context.store.create(resource, validated=True, private=private)  # validated above
        return written_response(request, stored, 201, version_location(request, stored))

    def create_condition(request: Request) -> str | None:
        """If-None-Exist, or search parameters in the POST's query string (as fhirpy's get_or_create sends them).

        A query string on a create used to be ignored, so a client asking "create unless it exists" got a
        duplicate; it is now the same condition as If-None-Exist.
        """
        header = request.headers.get("if-none-exist")
        query = [(k, v) for k, v in request.query_params.multi_items() if k not in ("_format", "_pretty")]
        if header and query:
            raise InvalidRequest(
                "Give the create condition once: as If-None-Exist or as the query string, not both.",
                expression=["If-None-Exist"],
            )
        return header or (urlencode(query) if query else None)

    async def conditional_match(request: Request, resource_type: str, condition: str) -> dict[str, Any] | None:
        params = parse_qsl(condition.lstrip("?"), keep_blank_values=True)
        if not params:
            raise InvalidRequest("If-None-Exist must hold search parameters, e.g. identifier=system|value.")
        query = parse_search(resource_type, [*params, ("_count", "2")], context.registry, default_count=2, max_count=2)
        bundle = await execute_search(context.store.database, query, context.base_url(request), include_nothing)
        matches = [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        if len(matches) > 1:
            raise PreconditionFailed(
                f"If-None-Exist ({condition}) matches more than one {resource_type}; make the condition more specific."
            )
        return matches[0] if matches else None

    @router.get("/{resource_type}/_history", summary="Type history")
    async def type_history(request: Request, resource_type: str) -> Response:
        require_type(resource_type)
        await context.authorize(request, "FHIR:History", f"FHIR:{resource_type}")
        if await context.patient_limit(request, "FHIR:History", resource_type) is not None:
            raise Forbidden(
                f"This token is limited to one patient's compartment; the history of every {resource_type} is "
                "outside it. Read the history of one resource instead (GET /{type}/{id}/_history)."
            )
        query = history_query(request, resource_type, None)
        page = await history_page(context.store.database, query)
        # Each version shown passes the gate like any read: a per-id Deny of reading one refuses the page.
        await context.admit(request, "FHIR:History", *(v.resource for v in page.versions))
        await context.was_read(request, "history-type", [v.resource for v in page.versions if v.resource])
        return FHIRResponse(history_bundle(request, query, page, None))

    @router.get("/{resource_type}/{resource_id}", summary="Read")
    async def read(request: Request, resource_type: str, resource_id: str) -> Response:
        require_type(resource_type)
        await context.authorize(request, "FHIR:Read", f"FHIR:{resource_type}:{resource_id}")
        wanted = parse_read_shape(list(request.query_params.multi_items()), resource_type)  # _elements, _summary
        resource = await context.store.read(resource_type, resource_id)
        await context.admit(request, "FHIR:Read", resource)
        await context.was_read(request, "read", [resource])
        return FHIRResponse(shape(resource, wanted), headers=version_headers(resource))

    @router.put("/{resource_type}/{resource_id}", summary="Update (or create with this id)")
    async def update(request: Request, resource_type: str, resource_id: str) -> Response:
        require_type(resource_type)
        await context.authorize(request, "FHIR:Update", f"FHIR:{resource_type}:{resource_id}")
        body = await read_json(request, settings.max_body_bytes)
        private = None
        if isinstance(body, dict):  # both what it was and what it becomes must be the caller's to change
            replacement = {**body, "resourceType": resource_type, "id": resource_id}
            existing = await current(resource_type, resource_id)
            # A deleted resource still belongs to whom it was about (a fax's documents stay tied to its id):
            # re-creating it is judged against its last live version too.
            judged = existing if existing is not None else await last_live(resource_type, resource_id)
            await context.admit(request, "FHIR:Update", replacement, judged)
            if resource_type in context.write_checks:
                body, private = await context.check_write(request, validate_resource(body, resource_type), existing)
        stored, created = await context.store.update(
            resource_type, resource_id, body, if_match=request.headers.get("if-match"), private=private
        )
        return written_response(
            request, stored, 201 if created else 200, version_location(request, stored) if created else None
        )

    @router.delete("/{resource_type}/{resource_id}", summary="Delete")
    async def delete(request: Request, resource_type: str, resource_id: str) -> Response:
        require_type(resource_type)
        await context.authorize(request, "FHIR:Delete", f"FHIR:{resource_type}:{resource_id}")
        await context.admit(request, "FHIR:Delete", await current(resource_type, resource_id))
        version = await context.store.delete(resource_type, resource_id)
        headers = {"ETag": f'W/"{version}"'} if version is not None else {}
        return Response(status_code=204, headers=headers)

    @router.get("/{resource_type}/{resource_id}/_history", summary="Instance history")
    async def history(request: Request, resource_type: str, resource_id: str) -> Response:
        require_type(resource_type)
        await context.authorize(request, "FHIR:History", f"FHIR:{resource_type}:{resource_id}")
        query = history_query(request, resource_type, resource_id)
        current_version = await context.store.count_versions(resource_type, resource_id)
        if current_version == 0:
            raise ResourceNotFound(f"{resource_type}/{resource_id} does not exist.")
        page = await history_page(context.store.database, query)
        await context.admit(request, "FHIR:History", *(v.resource for v in page.versions))
        await context.was_read(request, "history-instance", [v.resource for v in page.versions if v.resource])
        total = None if query.filtered else current_version
        return FHIRResponse(history_bundle(request, query, page, total))

    def history_query(request: Request, resource_type: str, resource_id: str | None) -> HistoryQuery:
        return parse_history(
            resource_type,
            resource_id,
            list(request.query_params.multi_items()),
            default_count=settings.search_default_count,
            max_count=settings.search_max_count,
            lenient=prefer(request, "handling") == "lenient",
        )

    def history_bundle(request: Request, query: HistoryQuery, page: HistoryPage, total: int | None) -> dict[str, Any]:
        base = context.base_url(request)
        instance = f"/{query.resource_id}" if query.resource_id else ""
        page_url = f"{base}/{query.resource_type}{instance}/_history"
        links = [{"relation": "self", "url": history_link(page_url, query, query.cursor)}]
        for relation, cursor in (("next", page.next), ("previous", page.previous)):
            if cursor is not None:
                links.append({"relation": relation, "url": history_link(page_url, query, cursor)})
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history"}
        if total is not None:
            bundle["total"] = total
        bundle["link"] = links
        if page.versions:
            bundle["entry"] = [history_entry(base, v) for v in page.versions]
        return bundle

    @router.get("/{compartment_type}/{compartment_id}/{resource_type}", summary="Compartment search")
    async def compartment_search(
        request: Request, compartment_type: str, compartment_id: str, resource_type: str
    ) -> Response:
        require_type(compartment_type)
        await context.authorize(request, "FHIR:Read", f"FHIR:{compartment_type}:{compartment_id}")
        params = list(request.query_params.multi_items())
        return await search(request, resource_type, params, compartment=(compartment_type, compartment_id))

    @router.get("/{resource_type}/{resource_id}/_history/{version_id}", summary="Version read")
    async def vread(request: Request, resource_type: str, resource_id: str, version_id: str) -> Response:
        require_type(resource_type)
        await context.authorize(request, "FHIR:Read", f"FHIR:{resource_type}:{resource_id}")
        wanted = parse_read_shape(list(request.query_params.multi_items()), resource_type)  # _elements, _summary
        resource = await context.store.vread(resource_type, resource_id, version_id)
        await context.admit(request, "FHIR:Read", resource)
        await context.was_read(request, "vread", [resource])
        return FHIRResponse(shape(resource, wanted), headers=version_headers(resource))

    return router


def history_entry(base: str, version: Version) -> dict[str, Any]:
    url = f"{version.resource_type}/{version.id}"
    entry: dict[str, Any] = {"fullUrl": f"{base}/{url}"}
    if version.resource is not None:
        entry["resource"] = version.resource
    entry["request"] = {
        "method": version.method,
        "url": url if version.method != "POST" else version.resource_type,
    }
    entry["response"] = {
        "status": {"POST": "201 Created", "DELETE": "204 No Content"}.get(version.method, "200 OK"),
        "etag": f'W/"{version.version}"',
        "lastModified": format_instant(version.last_updated),
    }
    return entry


def build_fallback_router(context: FHIRContext | None = None) -> APIRouter:
    """Answers paths under the FHIR base that match no interaction: 405 for one not offered, else 404."""
    dependencies = [offered_interactions(context)] if context is not None else []
    router = APIRouter(route_class=FHIRRoute, include_in_schema=False, dependencies=dependencies)

    @router.api_route("", methods=ALL_METHODS)
    @router.api_route("/{path:path}", methods=ALL_METHODS)
    async def unknown(request: Request, path: str = "") -> Response:
        raise ResourceNotFound(
            f"{request.method} {request.url.path} is not an interaction this server supports; "
            "see /metadata for what it offers."
        )

    return router
