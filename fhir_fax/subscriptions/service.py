"""``Subscriptions``: the one object the runtime builds for notifications (checks, dispatcher, sender, websockets).

``run()`` is one loop: dispatch marked versions into the queue, then send what is due. It wakes when this
process writes a watched resource (``ResourceStore.on_write``; after a pass that had work, the next starts at
most ``TICK`` after it, so that a burst of writes is one pass; a woken pass reads only the types written and sends
only when it queued something; a late pass does not match a version written while a Subscription was in error
or off: see ``activity``) and otherwise makes a
full pass every ``subscription_poll_seconds``, which is how it finds work written by other processes, retries
that came due, or what a crash left.
Any number of processes may run it on one database: the pending marks are cleared by compare-and-set,
the queue's keys are unique, and every notification is claimed by compare-and-set.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from fastapi import Request

from ..db import stop_if_cancelled, wait_for_event
from ..errors import Forbidden
from ..fhir.compartments import SUBSCRIBER_PATIENT
from ..fhir.models import now
from ..fhir.search import SearchRegistry
from ..fhir.store import ResourceStore
from ..settings import Settings
from .activity import keep_activity
from .criteria import patients_named
from .dispatch import Dispatcher
from .queue import Queue
from .resource import MATCH_FIELD, check_subscription
from .sender import Sender
from .websocket import UNBOUND_SECONDS, BindingGate, Hub

log = logging.getLogger("fhir_fax.subscriptions")
SWEEP_EVERY = 5.0  # seconds between drops of websocket notifications nobody listens to, and closes of sockets
# bound to Subscriptions that stopped (deleted, off, or past their end)
TICK = 0.1  # seconds: under load passes start at most this often, so the versions of a burst go in one pass


class Subscriptions:
    def __init__(self, settings: Settings, store: ResourceStore, registry: SearchRegistry, gate: BindingGate) -> None:
        self.settings = settings
        self.store = store
        store.keep_with["Subscription"] = keep_activity  # when each became active, or stopped (``activity``)
        self.registry = registry
        self.gate = gate
        self.base_url = settings.base_url or ""
        self.queue = Queue(store.database)
        self.dispatcher = Dispatcher(store, registry, self.queue, self.base_url)
        self.hub = Hub(gate)
        self.sender = Sender(settings, store, self.queue, gate, self.hub)
        self._wake = asyncio.Event()
        self._written: set[str] = set()  # watched types this process wrote since the last pass looked
        self._sending = False  # the last send step had work: the next pass sends too
        self._last_sweep = 0.0
        store.on_write = self.wake

    async def ensure_indexes(self) -> None:
        await self.queue.ensure_indexes()
        # Each Subscription's match keys: a version finds the few that could match it with one lookup.
        await self.store.collection("Subscription").create_index(MATCH_FIELD, name="match")
        # A patient-limited token's searches keep to the Subscriptions made for its patient (auth/gate.py).
        await self.store.collection("Subscription").create_index(SUBSCRIBER_PATIENT, name="subscriber_patient")

    def wake(self, resource_type: str = "", resource_id: str = "") -> None:
        if resource_type:
            self._written.add(resource_type)
        self._wake.set()

    async def check_write(
        self, request: Request, resource: dict[str, Any], current: dict[str, Any] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A Subscription about to be stored: checked and made active, kept with whoever wrote it.

        A token limited to one patient may not name another patient in the criteria (it would never be told
        about them anyway, since its Subscriptions are matched inside its patient's compartment only): 403,
        nothing stored, rather than a Subscription that silently never fires.
        """
        stored, criteria = check_subscription(
            resource, self.registry, self.settings.subscription_allowed_hosts, self.base_url
        )
        subscriber = await self.gate.subscriber(request)
        patient = subscriber.get("patient")
        own = (f"Patient/{patient}", patient)
        others = [p for p in patients_named(criteria.filter) if p not in own] if patient else []
        if others:
            raise Forbidden(
                f"This token is limited to Patient/{patient}; Subscription.criteria names {others[0]}. Subscribe "
                f"to Patient/{patient}'s faxes only, e.g. Communication?patient=Patient/{patient}.",
                expression=["Subscription.criteria"],
            )
        return stored, subscriber  # the store adds when it became active or stopped (``activity``)

    async def step(self, types: set[str] | None = None) -> int:
        """One pass: dispatch, then send; how much was done.

        ``types``: a pass woken by this process's writes looks only at the marked resources of the types it
        wrote, and sends only when it queued something or the last send had work; a full pass (None) looks
        at everything (work of other processes, retries that came due, what a crash left).
        """
        queued = self.dispatcher.queued
        done = await self.dispatcher.step(types)
        if types is None or self.dispatcher.queued > queued or self._sending:
            sent = await self.sender.step()
            self._sending = sent > 0
            done += sent
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_sweep >= SWEEP_EVERY:
            self._last_sweep = loop.time()
            await self.queue.drop_stale("websocket", now() - timedelta(seconds=UNBOUND_SECONDS), self.hub.bound())
            await self.hub.sweep(self.store, now())
        return done

    async def run(self) -> None:
        """Dispatch and send until cancelled."""
        log.info("subscription delivery %s started", self.sender.owner)
        loop = asyncio.get_running_loop()
        poll = self.settings.subscription_poll_seconds
        last_full = -poll
        try:
            while True:
                started = loop.time()
                self._wake.clear()
                full = started - last_full >= poll
                if full:
                    last_full = started
                types, self._written = (None if full else self._written), set()
                try:
                    busy = await self.step(types)
                except Exception:
                    stop_if_cancelled()
                    log.exception("subscription step failed; continuing")
                    busy = 0
                if not busy:  # idle: the next write is dispatched at once
                    await wait_for_event(self._wake, last_full + poll - loop.time())
                elif (rest := TICK - (loop.time() - started)) > 0:  # busy: the writes meanwhile go in one pass
                    await asyncio.sleep(rest)
        finally:
            await self.sender.close()
