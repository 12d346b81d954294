"""``FaxModule``: mounts fhir-fax on any FastAPI application (routers plus start-up/shut-down work)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from .audit import Auditor
from .auth.assertions import ensure_indexes as assertion_indexes
from .auth.clients import Clients
from .auth.gate import Gate
from .auth.guard import Guard
from .auth.limiter import ensure_indexes as limiter_indexes
from .auth.m2m import m2m_router
from .auth.routes import AuthAPI
from .db import Database
from .fax import sandbox
from .fax.carriers import carriers_of, newest_of
from .fax.carriers import ensure_indexes as carrier_indexes
from .fax.media import Z3MediaChecker
from .fax.operation import OPERATION_URL, SEND_FAX_DEFINITION
from .fax.references import HttpResolver, LocalResolver, ReferenceResolver
from .fax.routes import FaxAPI
from .fax.send import FaxService
from .fax.tracking import Tracker
from .fax.webhooks import RECEIPTS, webhook_router
from .fax.worker import create_worker
from .fhir.context import FHIRContext, OperationSummary
from .fhir.models import SUPPORTED_TYPES
from .fhir.routes import build_fallback_router, build_fhir_router
from .fhir.store import ResourceStore
from .fixtures import load_fixtures
from .settings import Settings
from .z3.routes import Z3API
from .z3.store import Z3Store

log = logging.getLogger("fhir_fax")


class FaxModule:
    """The whole product as a plugin.

    ``database`` lets a host application hand over a database handle it already has
    (PyMongo async or Motor); without it the module opens its own client from
    ``settings.mongodb_uri``, or starts the embedded database when that is unset.
    """

    def __init__(self, settings: Settings | None = None, *, database: Any = None) -> None:
        self.settings = settings or Settings()
        self.fhir = FHIRContext(self.settings)
        self.fhir.operations.append(OperationSummary("Communication", "send-fax", OPERATION_URL))
        self.fax = FaxAPI(self.fhir)
        self.z3 = Z3API(self.settings, self.fhir)
        self.auth = AuthAPI(self.settings)
        self.guard = Guard(self.settings)
        self.gate = Gate(self.guard, self.fhir.registry)  # every access decision and read audit goes through it
        self.fhir.gate = self.gate
        self._resolver: ReferenceResolver | None = None
        self._given_database = database
        self._database: Database | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._auditor: Auditor | None = None

    def install(self, app: FastAPI) -> None:
        """Add the routers to ``app`` and run this module's start-up and shut-down around the app's own."""
        prefix = self.settings.fhir_path
        app.include_router(self.auth.router())  # token endpoint, JWKS, SMART configuration
        app.include_router(self.fax.fhir_router(), prefix=prefix)  # before the generic /{type}/{id} routes
        app.include_router(build_fhir_router(self.fhir), prefix=prefix)
        app.include_router(build_fallback_router(self.fhir), prefix=prefix)
        app.include_router(self.fax.sdk_router(), prefix=self.settings.fax_api_path)
        app.include_router(self.z3.router(), prefix=self.settings.project_api_path)
        clients = m2m_router(self.fhir, lambda: self.guard.database, self.gate)
        app.include_router(clients, prefix=self.settings.project_api_path)
        app.include_router(webhook_router(self.fax))  # at /fax/webhooks/{carrier}
        previous = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(application: FastAPI) -> AsyncIterator[Any]:
            async with self.running(), previous(application) as state:
                yield state

        app.router.lifespan_context = lifespan

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FaxModule]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    async def start(self) -> None:
        if self._given_database is not None:
            database = self._given_database
        else:
            # Blocking on purpose: the embedded database must be started from the main thread,
            # because Linux delivers its parent-death signal when the starting thread exits.
            self._database = Database(self.settings)
            database = self._database.connect()
        store = ResourceStore(database, self.fhir.registry.indexer)
        await store.ensure_indexes(SUPPORTED_TYPES)
        await self.fhir.registry.ensure_indexes(database)
        await store.put_if_changed(SEND_FAX_DEFINITION)
        self._resolver = self._reference_resolver(store)
        sandbox.configure(sandbox.Limits.of(self.settings))  # documents are read in a process with these limits
        service = FaxService(
            self.settings, database, store, self._resolver, Z3MediaChecker(Z3Store(database), self.settings.max_pages)
        )
        await service.ensure_indexes()
        self.fhir.attach(database, store)
        self.fax.service = service
        self.z3.database = database
        self.auth.database = database
        self.guard.database = database
        await carrier_indexes(database)
        self.gate.database = database
        self.gate.carriers = carriers_of(database)
        self.gate.newest = newest_of(database)
        clients = Clients(database)
        await clients.ensure_indexes()
        await assertion_indexes(database)
        await limiter_indexes(database)
        if self.settings.bootstrap_client_id and self.settings.bootstrap_client_secret:
            await clients.ensure_bootstrap(self.settings.bootstrap_client_id, self.settings.bootstrap_client_secret)
        auditor = Auditor(store)
        service.auditor = auditor
        self.guard.auditor = auditor
        self.auth.auditor = auditor
        self._auditor = auditor
        self.gate.auditor = auditor
        self.fax.tracker = Tracker(self.settings, store, service.outbox, auditor)
        await database[RECEIPTS].create_index("received", name="expiry", expireAfterSeconds=7 * 86_400)
        if self.settings.worker_enabled:
            worker = create_worker(self.settings, database, store)
            self._worker = asyncio.create_task(worker.run(), name="fhir-fax-worker")
        if self.settings.load_fixtures:
            await load_fixtures(store)
        embedded = self._database.embedded if self._database else None
        if embedded is not None and embedded.owned:
            self._supervisor = asyncio.create_task(embedded.supervise(), name="fhir-fax-db-supervisor")
        log.info("fhir-fax started (FHIR API at %s)", self.settings.fhir_path)

    def _reference_resolver(self, store: ResourceStore) -> ReferenceResolver:
        if self.settings.reference_fhir_base:
            return HttpResolver(
                self.settings.reference_fhir_base,
                token=self.settings.reference_fhir_token,
                timeout=self.settings.reference_timeout_seconds,
            )
        return LocalResolver(store)

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        if self._auditor is not None:
            await self._auditor.close()  # counted refusals are written before the database goes
            self._auditor = None
        self.fhir.detach()
        self.fax.service = None
        self.z3.database = None
        self.auth.database = None
        self.guard.database = None
        self.gate.database = None
        self.gate.carriers = None
        self.gate.newest = None
        if isinstance(self._resolver, HttpResolver):
            await self._resolver.close()
        self._resolver = None
        if self._database is not None:
            await self._database.close()
            self._database = None
