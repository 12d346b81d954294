"""What FHIR routes need at request time, handed over explicitly (no global state)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import Request

from .errors import ServiceUnavailable
from .operations import OperationRegistry
from .search import SearchRegistry
from .search_params import default_registry
from .settings import FHIRSettings
from .store import ResourceStore

# Checks (and may complete) a resource of one type before it is stored: (request, resource, current or None)
# -> (the resource to store, private data kept with it or None). Raises a FHIR error to refuse the write.
WriteCheck = Callable[[Request, dict[str, Any], dict[str, Any] | None], Awaitable[tuple[dict[str, Any], Any]]]


class AccessGate(Protocol):
    """The access layer every handler asks (implemented by ``fhir_fax.auth.gate.Gate``; see there)."""

    async def identify(self, request: Request) -> Any: ...
    async def authorize(self, request: Request, action: str, resource: str) -> Any: ...
    async def admit(self, request: Request, action: str, resources: list[dict[str, Any] | None]) -> None: ...
    async def search_filter(self, request: Request, resource_type: str) -> dict[str, Any]: ...
    async def include_filter(self, request: Request, resource_type: str) -> dict[str, Any] | None: ...
    async def patient_limit(self, request: Request, fhir_action: str, resource_type: str) -> str | None: ...
    async def document(
        self, request: Request, action: str, resource: str, *, attaching: bool = False, version: Any = None
    ) -> Any: ...
    async def allowed_among(self, request: Request, action: str, resources: list[str]) -> set[str]: ...
    async def disclosed(self, request: Request, interaction: str, resources: list[dict[str, Any]]) -> None: ...
    async def document_disclosed(self, request: Request, resource: str, version: Any = None) -> None: ...


@dataclass
class FHIRContext:
    """Shared state of the FHIR API: settings, search registry and (once started) the store."""

    settings: FHIRSettings = field(default_factory=FHIRSettings)
    registry: SearchRegistry = field(default_factory=default_registry)
    operations: OperationRegistry = field(default_factory=OperationRegistry)
    database: Any = None
    _store: ResourceStore | None = None
    # The one access layer (``fhir_fax.auth.gate.Gate``), set by whoever installs access control. Without
    # it every protected route answers 503: nothing is served unchecked.
    gate: AccessGate | None = None
    # ``CapabilityStatement.rest.security`` for a server base URL (how to get a token), from the same installer.
    security: Callable[[str], dict[str, Any]] | None = None
    # Per resource type, a check every create and update of it passes before it is stored (e.g. Subscription).
    write_checks: dict[str, WriteCheck] = field(default_factory=dict)
    # Extensions of ``CapabilityStatement.rest`` for a server base URL (e.g. the subscription websocket's URL).
    rest_extensions: list[Callable[[str], dict[str, Any]]] = field(default_factory=list)

    def require_gate(self) -> AccessGate:
        if self.gate is None:
            raise ServiceUnavailable("The server is not running yet (nothing to check access with); retry in a moment.")
        return self.gate

    async def authenticate(self, request: Request) -> None:
        """Only that the caller has a valid token (401 otherwise); permissions are checked by ``authorize``."""
        await self.require_gate().identify(request)

    async def authorize(self, request: Request, action: str, resource: str) -> None:
        """401/403 unless the caller may do ``action`` on ``resource`` (policy and scopes), before any work."""
        await self.require_gate().authorize(request, action, resource)

    async def admit(self, request: Request, action: str, *resources: dict[str, Any] | None) -> None:
        """403 unless ``action`` may touch each loaded resource (its id's rules, the patient's compartment)."""
        await self.require_gate().admit(request, action, list(resources))

    async def search_filter(self, request: Request, resource_type: str) -> dict[str, Any]:
        """What a search of ``resource_type`` is narrowed to (403 when nothing could be shown)."""
        return await self.require_gate().search_filter(request, resource_type)

    async def include_filter(self, request: Request, resource_type: str) -> dict[str, Any] | None:
        """What ``_include``d resources of ``resource_type`` are narrowed to (None: leave them all out)."""
        return await self.require_gate().include_filter(request, resource_type)

    async def patient_limit(self, request: Request, fhir_action: str, resource_type: str) -> str | None:
        """None, or the patient id whose compartment this work must stay in (call after ``authorize``)."""
        return await self.require_gate().patient_limit(request, fhir_action, resource_type)

    async def document(
        self, request: Request, action: str, resource: str, *, attaching: bool = False, version: Any = None
    ) -> None:
        """401/403 unless ``action`` may reach the document ``resource`` (``Z3:bucket/key``, at ``version``)."""
        await self.require_gate().document(request, action, resource, attaching=attaching, version=version)

    async def allowed_among(self, request: Request, action: str, resources: list[str]) -> set[str]:
        """Which of ``resources`` ``action`` may reach one by one: a listing shows only those."""
        return await self.require_gate().allowed_among(request, action, resources)

    async def was_read(self, request: Request, interaction: str, resources: list[dict[str, Any]]) -> None:
        """Resources were disclosed: the gate writes the audit record."""
        if resources:
            await self.require_gate().disclosed(request, interaction, resources)

    async def document_was_read(self, request: Request, resource: str, version: Any = None) -> None:
        await self.require_gate().document_disclosed(request, resource, version)

    async def check_write(
        self, request: Request, resource: dict[str, Any], current: dict[str, Any] | None
    ) -> tuple[dict[str, Any], Any]:
        """The resource to store and the private data kept with it, after its type's check (if any)."""
        check = self.write_checks.get(resource["resourceType"])
        if check is None:
            return resource, None
        return await check(request, resource, current)

    def attach(self, database: Any, store: ResourceStore, gate: AccessGate) -> None:
        """What the running server provides (``fhir_fax.runtime``): until then, and after ``detach``, 503."""
        self.database = database
        self._store = store
        self.gate = gate

    def detach(self) -> None:
        self.database = None
        self._store = None
        self.gate = None

    @property
    def store(self) -> ResourceStore:
        if self._store is None:
            raise ServiceUnavailable("The FHIR datastore is not running yet; retry in a moment.")
        return self._store

    def base_url(self, request: Request) -> str:
        """The FHIR base URL as clients should see it, e.g. ``http://host:8080/fhir``."""
        return self.settings.public_base(str(request.base_url)) + self.settings.fhir_path
