"""``FaxModule``: mounts fhir-fax on any FastAPI application (routers plus start-up/shut-down work)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from .apps.fax_app import BUCKET, fax_app_router, register_fax_app
from .auth.apps_http import smart_apps_router
from .auth.discovery import rest_security
from .auth.m2m import m2m_router
from .auth.routes import AuthAPI
from .db import Database
from .fax.file_operation import file_operation
from .fax.inbound_routes import inbound_router
from .fax.operation import preview_fax_operation, send_fax_operation
from .fax.resend import resend_operation
from .fax.routes import FaxAPI
from .fax.webhooks import webhook_router
from .fhir.context import FHIRContext
from .fhir.routes import build_fallback_router, build_fhir_router
from .fixtures import load_fixtures
from .runtime import Runtime, RuntimeSlot, fhir_settings
from .settings import Settings
from .subscriptions.websocket import websocket_extension, websocket_router
from .z3.routes import Z3API

log = logging.getLogger("fhir_fax")


class FaxModule:
    """The whole product as a plugin.

    ``database`` lets a host application hand over a database handle it already has
    (PyMongo async or Motor); without it the module opens its own client from
    ``settings.mongodb_uri``, or starts the embedded database when that is unset.

    Routers are built by ``install``; what they serve with is the ``Runtime`` built by ``start``
    and handed to them through one ``RuntimeSlot`` (503 while it is empty). Operations are
    declared on ``self.fhir.operations`` before ``install``: that one registration routes them,
    lists them in ``/metadata`` and stores their definitions.
    """

    def __init__(self, settings: Settings | None = None, *, database: Any = None) -> None:
        self.settings = settings or Settings()
        self.slot = RuntimeSlot()
        self.fhir = FHIRContext(fhir_settings(self.settings), security=rest_security)
        self.fax = FaxAPI(self.fhir, self.settings, self.slot)
        self.fhir.operations.add(send_fax_operation(self.fax))
        self.fhir.operations.add(preview_fax_operation(self.fax))
        self.fhir.operations.add(resend_operation(self.fax))
        self.fhir.operations.add(file_operation(self.fax))  # file a received fax to a patient
        self.z3 = Z3API(self.settings, self.fhir, self.slot)
        self.auth = AuthAPI(self.settings, self.slot)
        self._given_database = database
        self._database: Database | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._notifier: asyncio.Task[None] | None = None
        self.websocket_path = f"{self.settings.fhir_path}/websocket"  # the R4 subscription websocket
        self.fhir.write_checks["Subscription"] = self._check_subscription
        self.fhir.rest_extensions.append(websocket_extension(self.websocket_path))

    async def _check_subscription(
        self, request: Any, resource: dict[str, Any], current: dict[str, Any] | None
    ) -> tuple[dict[str, Any], Any]:
        return await self.slot().subscriptions.check_write(request, resource, current)

    @property
    def runtime(self) -> Runtime | None:
        return self.slot.current

    def install(self, app: FastAPI) -> None:
        """Add the routers to ``app`` and run this module's start-up and shut-down around the app's own."""
        prefix = self.settings.fhir_path
        app.include_router(self.auth.router())  # token endpoint, JWKS, SMART configuration
        app.include_router(build_fhir_router(self.fhir), prefix=prefix)  # REST interactions and operations
        app.include_router(build_fallback_router(self.fhir), prefix=prefix)
        app.include_router(self.fax.sdk_router(), prefix=self.settings.fax_api_path)
        app.include_router(inbound_router(self.fax), prefix=self.settings.fax_api_path)  # reception (Fax:Receive)
        app.include_router(self.z3.router(), prefix=self.settings.project_api_path)
        app.include_router(m2m_router(self.fhir, self.slot), prefix=self.settings.project_api_path)
        app.include_router(smart_apps_router(self.fhir, self.slot), prefix=self.settings.project_api_path)
        app.include_router(webhook_router(self.fax))  # at /fax/webhooks/{carrier}
        app.include_router(websocket_router(self.websocket_path, lambda: self.slot().subscriptions))
        if self.settings.fax_app_enabled:
            app.include_router(fax_app_router(self.settings))  # the fax app at /apps/fax/
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

    def _connect(self) -> Any:
        if self._given_database is not None:
            return self._given_database
        # Blocking on purpose: the embedded database must be started from the main thread,
        # because Linux delivers its parent-death signal when the starting thread exits.
        self._database = Database(self.settings)
        return self._database.connect()

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()  # a start that failed part-way leaves no database, worker or task behind
            raise

    async def _start(self) -> None:
        runtime = Runtime.build(
            self.settings,
            self._connect(),
            registry=self.fhir.registry,
            definitions=self.fhir.operations.definitions(),
        )
        await runtime.prepare()
        self.fhir.attach(runtime.database, runtime.store, runtime.gate)
        self.slot.current = runtime
        if self.settings.fax_app_enabled:
            await register_fax_app(runtime.database, self.settings)
            await runtime.z3.create_bucket(BUCKET)  # where the app uploads the documents it faxes
        if self.settings.worker_enabled:
            self._worker = asyncio.create_task(runtime.worker().run(), name="fhir-fax-worker")
        if self.settings.subscriptions_enabled:
            self._notifier = asyncio.create_task(runtime.subscriptions.run(), name="fhir-fax-subscriptions")
        if self.settings.load_fixtures:
            await load_fixtures(runtime.store)
        embedded = self._database.embedded if self._database else None
        if embedded is not None and embedded.owned:
            self._supervisor = asyncio.create_task(embedded.supervise(), name="fhir-fax-db-supervisor")
        log.info("fhir-fax started (FHIR API at %s)", self.settings.fhir_path)

    async def stop(self) -> None:
        for task in (self._worker, self._notifier, self._supervisor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._worker = self._notifier = self._supervisor = None
        runtime, self.slot.current = self.slot.current, None
        self.fhir.detach()
        if runtime is not None:
            await runtime.close()  # counted refusals are written before the database goes
        if self._database is not None:
            await self._database.close()
            self._database = None
