"""Sending queued notifications: claim, check access, deliver, and retry with back-off or hold on error.

Each notification is re-checked when it is sent, not when it was queued: the Subscription must still be
active, and whoever set it up (kept with it, see ``Gate.subscriber``) must still be allowed to read that
resource version through the gate (policy, scopes, patient compartment). A refusal finishes the
notification unsent and is audited; a delivery is audited as a disclosure.

rest-hook: a POST to the endpoint with the channel's headers plus ``X-FHIR-Fax-Subscription``,
``X-FHIR-Fax-Event`` (the Subscription's event number), ``X-FHIR-Fax-Resource`` (``Type/id/_history/v``)
and ``ETag`` (the version), so a receiver can drop duplicates. With ``payload: application/fhir+json`` the
body is that resource version; without, it is empty (R4). Redirects are not followed, the request has a
short timeout, and at most ``EXCERPT`` bytes of an answer are read, for the error message only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Protocol

import httpx

from ..fhir.errors import ResourceGone, ResourceNotFound
from ..fhir.models import now
from ..fhir.store import PRIVATE, RESERVED, ResourceStore, public
from ..settings import Settings
from .destination import Unsafe, checked_addresses
from .faults import crash_point
from .queue import Notification, Queue
from .resource import PAYLOAD, Channel, channel_of, ended, stopped

log = logging.getLogger("fhir_fax.subscriptions")
EXCERPT = 200  # bytes of an endpoint's answer kept for Subscription.error
BATCH = 32  # notifications claimed and sent concurrently per step


class NotificationGate(Protocol):
    """What the sender asks the access gate (``fhir_fax.auth.gate.Gate``)."""

    async def notification_refusal(self, subscriber: dict[str, Any] | None, resource: dict[str, Any]) -> str | None: ...
    async def notified(self, subscriber: dict[str, Any], resources: list[dict[str, Any]], endpoint: str) -> None: ...


class DeliveryFailed(Exception):
    """The endpoint did not take the notification (the message says how)."""


# Sends one websocket notification to the sockets bound here; False when none took it.
WebsocketSend = Callable[[str, dict[str, Any] | None, Notification], Awaitable[bool]]


class Sender:
    def __init__(
        self,
        settings: Settings,
        store: ResourceStore,
        queue: Queue,
        gate: NotificationGate,
        websockets: Any = None,  # the process's websocket hub (``websocket.Hub``), when it serves them
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.gate = gate
        self.websockets = websockets
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # Longer than one POST can take: a sender that dies holding a notification leaves it due after this.
        self.lease = timedelta(seconds=2 * settings.subscription_timeout_seconds + 1)
        self.client = httpx.AsyncClient(
            follow_redirects=False, timeout=settings.subscription_timeout_seconds, trust_env=False
        )
        self.pinned = httpx.AsyncClient(  # requests addressed to a checked address (see ``connect``)
            follow_redirects=False,
            timeout=settings.subscription_timeout_seconds,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def close(self) -> None:
        for client in (self.client, self.pinned):
            if not client.is_closed:
                await client.aclose()

    async def step(self) -> int:
        """Claim and send one batch of due notifications; how many were taken."""
        candidates = await self.queue.candidates(BATCH, channel="rest-hook")
        if self.websockets is not None and (bound := self.websockets.bound()):
            candidates += await self.queue.candidates(BATCH, bound, channel="websocket")
        # Claimed together: a later version of a pair is never claimable while an earlier one is due, claimed or not.
        taken = await asyncio.gather(*(self.queue.claim(c, self.owner, self.lease) for c in candidates))
        claimed = [n for n in taken if n is not None]
        if claimed:  # their Subscriptions, read once for the batch
            ids = sorted({n.subscription for n in claimed})
            cursor = self.store.collection("Subscription").find({"_id": {"$in": ids}})
            subscriptions = {document["_id"]: document async for document in cursor}
            await asyncio.gather(*(self.send(n, subscriptions.get(n.subscription)) for n in claimed))
        return len(claimed)

    async def send(self, notification: Notification, subscription: dict[str, Any] | None) -> None:
        """Send one claimed notification; ``subscription`` is its Subscription's stored document (None: gone)."""
        try:
            await self._send(notification, subscription)
        except Exception as error:  # one bad notification never blocks the others: it is retried later
            log.exception("notification %s could not be handled", notification.id)
            await self.queue.retry(notification, self.owner, now() + timedelta(seconds=30), f"{type(error).__name__}")

    async def _send(self, notification: Notification, subscription: dict[str, Any] | None) -> None:
        reason = stopped(subscription, now())
        if subscription is None or reason is not None:
            reason = reason or "the Subscription was deleted"
            await self.queue.finish(notification, self.owner, "dropped", reason)
            if self.websockets is not None:  # its sockets are told, and closed: they wait for nothing more
                await self.websockets.close(notification.subscription, reason)
            if subscription is not None and subscription.get("status") == "active":
                await self.turn_off(subscription["_id"])
            return
        if subscription.get("status") == "error":
            await self.queue.hold(notification.subscription, "the Subscription is in error", notification)
            return
        subscriber = subscription[RESERVED].get(PRIVATE)
        try:
            resource = await self.store.vread(
                notification.resource_type, notification.resource_id, str(notification.version)
            )
        except (ResourceNotFound, ResourceGone):
            await self.queue.finish(notification, self.owner, "dropped", "the resource version is gone")
            return
        refusal = await self.gate.notification_refusal(subscriber, resource)
        if refusal is not None:
            log.info("notification %s not sent: %s", notification.id, refusal)
            await self.queue.finish(notification, self.owner, "refused", refusal)
            return
        channel = channel_of(subscription)
        try:
            if channel.type == "websocket":  # live pings: a socket gone meanwhile is not retried
                taken = self.websockets is not None and await self.websockets.send(
                    subscription["_id"], channel, resource, notification
                )
                if not taken:
                    await self.queue.finish(notification, self.owner, "dropped", "no bound websocket took it")
                    return
            else:
                await self.post(channel, public(subscription), resource, notification)
        except DeliveryFailed as failure:
            await self.failed(notification, subscription, str(failure))
            return
        crash_point("subscription-posted")
        if await self.queue.finish(notification, self.owner, "sent"):
            await self.gate.notified(subscriber or {}, [resource], channel.endpoint or "websocket")

    async def turn_off(self, subscription_id: str) -> None:
        """R4: ``end`` is when the server turns the Subscription off. Done when the first notification after it
        is dropped, so an ended Subscription is matched no more (the dispatcher queues only for active ones)."""

        def off(current: dict[str, Any]) -> dict[str, Any] | None:
            if current.get("status") != "active" or ended(current, now()) is None:
                return None
            return {**current, "status": "off"}

        with contextlib.suppress(ResourceNotFound, ResourceGone):
            await self.store.modify("Subscription", subscription_id, off)

    async def post(
        self, channel: Channel, subscription: dict[str, Any], resource: dict[str, Any], notification: Notification
    ) -> None:
        headers = {name: value for name, value in channel.headers}
        headers.update(notification_headers(subscription["id"], resource, notification))
        body = b""
        if channel.payload == PAYLOAD:
            headers["Content-Type"] = PAYLOAD
            body = json.dumps(resource, separators=(",", ":")).encode()
        assert channel.endpoint is not None
        try:
            async with asyncio.timeout(self.settings.subscription_timeout_seconds):  # in all, not per read
                response = await self.connect(channel.endpoint, headers, body)
                try:
                    if 200 <= response.status_code < 300:
                        return
                    excerpt = b""
                    async for chunk in response.aiter_bytes():
                        excerpt += chunk
                        if len(excerpt) >= EXCERPT:
                            break
                finally:
                    await response.aclose()
        except TimeoutError:  # before OSError, which it is a kind of
            raise DeliveryFailed(
                f"POST {channel.endpoint} took longer than {self.settings.subscription_timeout_seconds:g} s"
            ) from None
        except Unsafe as refusal:
            raise DeliveryFailed(f"POST {channel.endpoint} not sent: {refusal}") from None
        except socket.gaierror as error:
            reason = f"POST {channel.endpoint} not sent: its host does not resolve ({error})"
            raise DeliveryFailed(reason[:300]) from None
        except httpx.HTTPError as error:
            raise DeliveryFailed(f"POST {channel.endpoint} failed: {type(error).__name__}: {error}"[:300]) from None
        text = excerpt[:EXCERPT].decode("utf-8", errors="replace")
        moved = " (redirects are not followed)" if 300 <= response.status_code < 400 else ""
        raise DeliveryFailed(f"POST {channel.endpoint} answered {response.status_code}{moved}: {text}")

    async def connect(self, endpoint: str, headers: dict[str, str], body: bytes) -> httpx.Response:
        """Send the POST (its answer streamed), to the checked addresses of the endpoint's host, each in turn.

        Each request names the address in its URL, so the connection cannot go anywhere else; the ``Host`` header
        and TLS (SNI and the certificate's name check) keep the host's name. These go through ``self.pinned``,
        which keeps no connection alive: its pool is keyed by address, and a connection whose certificate was
        checked for one name must never carry a request for another name at the same address.
        """
        client, requests = await self.requests(endpoint, headers, body)
        for request in requests[:-1]:
            with contextlib.suppress(httpx.ConnectError):  # that address is down: the next one
                return await client.send(request, stream=True)
        return await client.send(requests[-1], stream=True)

    async def requests(
        self, endpoint: str, headers: dict[str, str], body: bytes
    ) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
        """The client and the POST for each address to try: by name for an allowed host, else one per checked
        address (never empty)."""
        url = httpx.URL(endpoint)
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = await checked_addresses(url.host, port, self.settings.subscription_allowed_hosts)
        if addresses is None:
            return self.client, [self.client.build_request("POST", url, headers=headers, content=body)]
        named = {**headers, "Host": url.netloc.decode("ascii")}
        sni = {"sni_hostname": url.host}
        return self.pinned, [
            self.pinned.build_request("POST", url.copy_with(host=a), headers=named, content=body, extensions=sni)
            for a in addresses
        ]

    async def failed(self, notification: Notification, subscription: dict[str, Any], reason: str) -> None:
        """Retry later with back-off; after the last try the Subscription turns ``error`` and its queue is held."""
        tries = notification.attempts + 1
        if tries < self.settings.subscription_retry_attempts:
            wait = self.settings.subscription_retry_delay_seconds * 2 ** (tries - 1)
            log.info("notification %s failed (try %d): %s; next in %.1fs", notification.id, tries, reason, wait)
            await self.queue.retry(notification, self.owner, now() + timedelta(seconds=wait), reason)
            return
        message = f"Notification {notification.event} failed after {tries} tries: {reason}"
        log.warning("Subscription/%s is now in error: %s", subscription["_id"], message)

        def in_error(current: dict[str, Any]) -> dict[str, Any] | None:
            if current.get("status") != "active":
                return None
            return {**current, "status": "error", "error": message}

        await self.queue.hold(notification.subscription, message, notification)
        with contextlib.suppress(ResourceNotFound):
            await self.store.modify("Subscription", subscription["_id"], in_error)
        await self.queue.hold(notification.subscription)  # any queued while it was being marked


def notification_headers(subscription_id: str, resource: dict[str, Any], notification: Notification) -> dict[str, str]:
    """What every notification says about itself, so a receiver can order it and drop a duplicate."""
    version = resource.get("meta", {}).get("versionId", str(notification.version))
    return {
        "X-FHIR-Fax-Subscription": subscription_id,
        "X-FHIR-Fax-Event": str(notification.event),
        "X-FHIR-Fax-Resource": f"{resource['resourceType']}/{resource['id']}/_history/{version}",
        "ETag": f'W/"{version}"',
    }
