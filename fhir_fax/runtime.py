"""The runtime: every long-lived object of fhir-fax, built once, in one place, from ``Settings`` and a database.

The HTTP module (``FaxModule``), the delivery worker (``fhir-fax worker``), the console (``fhir-fax
send``/``demo``) and the rest of the command line all build a ``Runtime`` and take what they need from
it, so none of them can forget a part: a fax sent from the terminal writes the same AuditEvents as one
sent over HTTP, because both go through the same FaxService with the same Auditor.

Routes reach it through one ``RuntimeSlot`` handed to the routers (and usable as a FastAPI dependency):
the routers are built when the module is installed, the runtime when the application starts, and the
slot answers 503 in between.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from . import __version__
from .audit import Auditor
from .auth import assertions, limiter
from .auth.clients import Clients
from .auth.gate import Gate
from .auth.guard import Guard
from .auth.smart_store import ensure_smart_indexes
from .auth.users import Users
from .errors import Unavailable
from .fax import document_faxes, sandbox
from .fax.inbound import Reception
from .fax.media import Z3MediaChecker
from .fax.outbox import Outbox
from .fax.references import HttpResolver, LocalResolver, ReferenceResolver
from .fax.send import FaxService
from .fax.tracking import Tracker
from .fax.transports import make_transport
from .fax.transports.base import Transport
from .fax.webhooks import RECEIPTS
from .fax.worker import Worker
from .fhir.models import SUPPORTED_TYPES
from .fhir.search import SearchRegistry
from .fhir.search_params import default_registry
from .fhir.settings import FHIRSettings
from .fhir.store import ResourceStore
from .settings import Settings
from .subscriptions.criteria import WATCHED_TYPES
from .subscriptions.resource import register_parameters, subscription_indexer
from .subscriptions.service import Subscriptions
from .z3.store import Z3Store


def fhir_settings(settings: Settings) -> FHIRSettings:
    """The part of the configuration the FHIR layer sees."""
    return FHIRSettings(
        fhir_path=settings.fhir_path,
        base_url=settings.base_url,
        max_body_bytes=settings.max_body_bytes,
        search_default_count=settings.search_default_count,
        search_max_count=settings.search_max_count,
        search_snapshot_max=settings.search_snapshot_max,
        search_snapshot_seconds=settings.search_snapshot_seconds,
        software_version=__version__,
    )


def reference_resolver(settings: Settings, store: ResourceStore) -> ReferenceResolver:
    """Where the references of a send are looked up: another FHIR server when configured, else this one."""
    if settings.reference_fhir_base:
        return HttpResolver(
            settings.reference_fhir_base,
            token=settings.reference_fhir_token,
            timeout=settings.reference_timeout_seconds,
        )
    return LocalResolver(store)


@dataclass
class Runtime:
    """Store, outbox, access (guard and gate), auditor, carrier and services of one running fhir-fax.

    Build it with ``Runtime.build`` (constructs only), ``await prepare()`` once before serving (indexes,
    stored OperationDefinitions, the bootstrap client), and ``await close()`` at the end.
    """

    settings: Settings
    database: Any
    registry: SearchRegistry
    store: ResourceStore
    auditor: Auditor
    guard: Guard
    gate: Gate
    z3: Z3Store
    resolver: ReferenceResolver
    service: FaxService
    tracker: Tracker
    subscriptions: Subscriptions
    definitions: list[dict[str, Any]] = field(default_factory=list)  # OperationDefinitions stored at start

    @classmethod
    def build(
        cls,
        settings: Settings,
        database: Any,
        *,
        registry: SearchRegistry | None = None,
        definitions: Iterable[dict[str, Any]] = (),
    ) -> Runtime:
        registry = registry or default_registry()
        register_parameters(registry)
        # Communications (and Subscriptions) are marked pending in each write: notifications are recovered from it.
        watched = frozenset({*WATCHED_TYPES, "Subscription"})
        store = ResourceStore(database, subscription_indexer(registry, settings.base_url or ""), watched=watched)
        auditor = Auditor(store)
        guard = Guard(settings, database=database, auditor=auditor)
        gate = Gate(
            guard,
            registry,
            database=database,
            carriers=document_faxes.carriers_of(database),
            newest=document_faxes.newest_of(database),
            uploader=document_faxes.uploader_of(database),
            auditor=auditor,
        )
        z3 = Z3Store(database)
        resolver = reference_resolver(settings, store)
        media = Z3MediaChecker(z3, settings.max_pages)
        service = FaxService(settings, database, store, resolver, media, auditor=auditor)
        tracker = Tracker(settings, store, service.outbox, auditor)
        subscriptions = Subscriptions(settings, store, registry, gate)
        return cls(
            settings=settings,
            database=database,
            registry=registry,
            store=store,
            auditor=auditor,
            guard=guard,
            gate=gate,
            z3=z3,
            resolver=resolver,
            service=service,
            tracker=tracker,
            subscriptions=subscriptions,
            definitions=list(definitions),
        )

    @cached_property
    def transport(self) -> Transport:
        """The carrier, made on first use (a server without a worker needs no carrier credentials)."""
        return make_transport(self.settings, self.database)  # the one place a carrier is made

    @cached_property
    def reception(self) -> Reception:
        """Receives faxes (carrier webhooks, the simulator, ``fhir-fax inbound simulate``)."""
        base = self.settings.base_url
        api = base.rstrip("/") + self.settings.project_api_path if base else None
        return Reception(self.settings, self.database, self.store, self.z3, self.service.numbers, project_api_base=api)

    @property
    def outbox(self) -> Outbox:
        return self.service.outbox

    async def prepare(self) -> None:
        """Indexes, the stored OperationDefinitions and the bootstrap client; safe to repeat."""
        sandbox.configure(sandbox.Limits.of(self.settings))  # documents are read in a process with these limits
        await self.store.ensure_indexes(SUPPORTED_TYPES)
        await self.registry.ensure_indexes(self.database, self.store.indexer_for)  # the keys the store writes
        for definition in self.definitions:
            await self.store.put_if_changed(definition)
        await self.service.ensure_indexes()
        await document_faxes.ensure_indexes(self.database)
        await self.reception.ensure_indexes()
        await self.subscriptions.ensure_indexes()
        clients = Clients(self.database)
        await clients.ensure_indexes()
        await assertions.ensure_indexes(self.database)
        await limiter.ensure_indexes(self.database)
        if self.settings.bootstrap_client_id and self.settings.bootstrap_client_secret:
            await clients.ensure_bootstrap(self.settings.bootstrap_client_id, self.settings.bootstrap_client_secret)
        await ensure_smart_indexes(self.database)  # users, apps, codes, refresh tokens, launches
        if self.settings.bootstrap_user and self.settings.bootstrap_password:
            await Users(self.database).ensure_bootstrap(self.settings.bootstrap_user, self.settings.bootstrap_password)
        await self.database[RECEIPTS].create_index("received", name="expiry", expireAfterSeconds=7 * 86_400)

    def worker(self) -> Worker:
        """A delivery worker on this runtime's outbox, tracker (and so auditor) and carrier."""
        sandbox.configure(sandbox.Limits.of(self.settings))
        return Worker(self.settings, self.outbox, self.tracker, self.transport, self.z3)

    async def close(self) -> None:
        """Write what the auditor and the outbox still hold, and close outbound connections; the database stays
        open."""
        await self.subscriptions.sender.close()
        await self.outbox.close()
        await self.auditor.close()
        if "reception" in self.__dict__:  # made on first use (a cached property)
            await self.reception.close()
        if isinstance(self.resolver, HttpResolver):
            await self.resolver.close()


class RuntimeSlot:
    """Where the routers find the running runtime: empty before start-up and after shut-down (503).

    Call it (``slot()``) or use it as a FastAPI dependency (``Depends(slot)``).
    """

    def __init__(self) -> None:
        self.current: Runtime | None = None

    def __call__(self) -> Runtime:
        if self.current is None:
            raise Unavailable("The server is starting or stopping; retry in a moment.")
        return self.current
