"""What FHIR routes need at request time, handed over explicitly (no global state)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from ..settings import Settings
from .errors import FHIRError
from .search import SearchRegistry
from .search_params import default_registry
from .store import ResourceStore


class ServiceUnavailable(FHIRError):
    status_code = 503
    issue_code = "transient"


@dataclass
class OperationSummary:
    """An operation to list in the CapabilityStatement."""

    resource_type: str
    name: str
    definition: str


@dataclass
class FHIRContext:
    """Shared state of the FHIR API: settings, search registry and (once started) the store."""

    settings: Settings
    registry: SearchRegistry = field(default_factory=default_registry)
    operations: list[OperationSummary] = field(default_factory=list)
    database: Any = None
    _store: ResourceStore | None = None
    # Set by whoever installs access control: raises 401/403 unless the caller may do ``action`` on ``resource``.
    guard: Callable[[Request, str, str], Awaitable[Any]] | None = None

    identify: Callable[[Request], Awaitable[Any]] | None = None
    # The patient whose compartment (request, FHIR action, type) is kept to, for tokens limited to one patient.
    limit_to_patient: Callable[[Request, str, str], Awaitable[str | None]] | None = None
    # Called after resources were read or searched: (request, interaction, resources); the audit trail.
    on_read: Callable[[Request, str, list[dict[str, Any]]], Awaitable[None]] | None = None

    async def was_read(self, request: Request, interaction: str, resources: list[dict[str, Any]]) -> None:
        if self.on_read is not None and resources:
            await self.on_read(request, interaction, resources)

    async def authenticate(self, request: Request) -> None:
        """Only that the caller has a valid token (401 otherwise); permissions are checked by ``authorize``."""
        if self.identify is None:
            raise ServiceUnavailable("Access control is not configured; refusing to serve unauthenticated requests.")
        await self.identify(request)

    async def authorize(self, request: Request, action: str, resource: str) -> None:
        if self.guard is None:
            raise ServiceUnavailable("Access control is not configured; refusing to serve unauthenticated requests.")
        await self.guard(request, action, resource)

    async def patient_limit(self, request: Request, fhir_action: str, resource_type: str) -> str | None:
        """None, or the patient id whose compartment this work must stay in (call after ``authorize``)."""
        if self.limit_to_patient is None:
            return None
        return await self.limit_to_patient(request, fhir_action, resource_type)

    def attach(self, database: Any, store: ResourceStore) -> None:
        self.database = database
        self._store = store

    def detach(self) -> None:
        self.database = None
        self._store = None

    @property
    def store(self) -> ResourceStore:
        if self._store is None:
            raise ServiceUnavailable("The FHIR datastore is not running yet; retry in a moment.")
        return self._store

    def base_url(self, request: Request) -> str:
        """The FHIR base URL as clients should see it, e.g. ``http://host:8080/fhir``."""
        return self.settings.public_base(str(request.base_url)) + self.settings.fhir_path
