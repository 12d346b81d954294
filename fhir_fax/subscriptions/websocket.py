"""The R4 websocket channel: ``bind {id}`` -> ``bound {id}``, then ``ping {id}`` per notification.

A client connects to the URL the CapabilityStatement names (extension
``http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket``) and sends ``bind {id}``, with a
bearer token in the handshake's ``Authorization`` header or as a third word (``bind {id} {token}``, for
browsers, which cannot set headers on a websocket). The token must be allowed to read that Subscription and
to search the type its criteria watches; otherwise the server answers ``error {id} {reason}`` and does not
bind. Each notification is then checked again for the bound token (and for the Subscription's creator, by
the sender) before ``ping {id}`` is sent; with ``channel.payload = application/fhir+json`` the resource
version follows the ping as a second message (opt-in).

Sockets live in the process that accepted them; the sender of that process delivers the notifications of
the Subscriptions bound there. A websocket notification that no process has a socket for is dropped after
``UNBOUND_SECONDS`` (R4 websockets are live pings, not a mailbox).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.requests import Request

from ..errors import DomainError
from ..fhir.models import now
from ..fhir.store import RESERVED, ResourceStore
from .queue import Notification
from .resource import PAYLOAD, Channel, channel_of, ended, stopped
from .sender import NotificationGate

log = logging.getLogger("fhir_fax.subscriptions")
UNBOUND_SECONDS = 60.0
WEBSOCKET_EXTENSION = "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket"


class BindingGate(NotificationGate, Protocol):
    async def authorize(self, request: Request, action: str, resource: str) -> Any: ...
    async def admit(self, request: Request, action: str, resources: list[dict[str, Any] | None]) -> None: ...
    async def search_filter(self, request: Request, resource_type: str) -> dict[str, Any]: ...
    async def subscriber(self, request: Request) -> dict[str, Any]: ...


@dataclass(eq=False)
class Binding:
    socket: WebSocket
    subscriber: dict[str, Any]


@dataclass
class Hub:
    """The websockets bound in this process, by Subscription id."""

    gate: NotificationGate
    bindings: dict[str, list[Binding]] = field(default_factory=dict)

    def bound(self) -> list[str]:
        return [key for key, found in self.bindings.items() if found]

    def add(self, subscription_id: str, binding: Binding) -> None:
        self.bindings.setdefault(subscription_id, []).append(binding)

    def remove(self, socket: WebSocket) -> None:
        for key in list(self.bindings):
            self.bindings[key] = [b for b in self.bindings[key] if b.socket is not socket]
            if not self.bindings[key]:
                del self.bindings[key]

    async def close(self, subscription_id: str, reason: str) -> None:
        """Tell every socket bound to it that nothing more will come (``error {id} {reason}``), and close them:
        a client that still shows live updates would otherwise wait on a Subscription that has stopped."""
        for binding in self.bindings.pop(subscription_id, []):
            with contextlib.suppress(Exception):  # a socket that went away meanwhile
                await binding.socket.send_text(f"error {subscription_id} {reason}")
                await binding.socket.close(code=1000)

    async def sweep(self, store: ResourceStore, moment: datetime) -> None:
        """Close the sockets bound here to Subscriptions that were deleted, turned off or reached their end
        (one read by id for all of them; nothing when no socket is bound)."""
        bound = self.bound()
        if not bound:
            return
        projection = {"status": 1, "end": 1, f"{RESERVED}.deleted": 1}
        found = {d["_id"]: d async for d in store.collection("Subscription").find({"_id": {"$in": bound}}, projection)}
        for subscription_id in bound:
            reason = stopped(found.get(subscription_id), moment)
            if reason is not None:
                await self.close(subscription_id, reason)

    async def send(
        self, subscription_id: str, channel: Channel, resource: dict[str, Any], notification: Notification
    ) -> bool:
        """Ping every socket bound to it whose token may read ``resource``; True when one was pinged."""
        sent = False
        for binding in list(self.bindings.get(subscription_id, ())):
            if await self.gate.notification_refusal(binding.subscriber, resource) is not None:
                continue
            try:
                await binding.socket.send_text(f"ping {subscription_id}")
                if channel.payload == PAYLOAD:
                    await binding.socket.send_text(json.dumps(resource, separators=(",", ":")))
            except Exception:  # a socket that went away: forget it
                self.remove(binding.socket)
                continue
            sent = True
        return sent


class WebsocketServices(Protocol):
    """What the websocket route takes from the running service."""

    @property
    def store(self) -> ResourceStore: ...
    @property
    def gate(self) -> BindingGate: ...
    @property
    def hub(self) -> Hub: ...


def as_request(socket: WebSocket, token: str | None) -> Request:
    """The handshake as the HTTP request the gate reads (ws -> http, so tokens name the same audience)."""
    scope = dict(socket.scope)
    scope["type"] = "http"
    scope["scheme"] = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "ws"), "http")
    scope["method"] = "GET"
    scope["state"] = {}  # each bind is judged afresh (the gate caches the caller on the request's state)
    if token:
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"authorization"]
        scope["headers"] = [*headers, (b"authorization", f"Bearer {token}".encode("latin-1", errors="replace"))]
    return Request(scope)


def websocket_router(path: str, services: Callable[[], WebsocketServices]) -> APIRouter:
    router = APIRouter()

    @router.websocket(path)
    async def subscription_socket(socket: WebSocket) -> None:
        await socket.accept()
        try:
            while True:
                words = (await socket.receive_text()).split()
                if len(words) in (2, 3) and words[0] == "bind":
                    await bind(socket, words[1], words[2] if len(words) == 3 else None)
                else:
                    await socket.send_text("error - send 'bind {subscription id}' (optionally followed by a token)")
        except WebSocketDisconnect:
            pass
        finally:
            with contextlib.suppress(DomainError):
                services().hub.remove(socket)

    async def bind(socket: WebSocket, subscription_id: str, token: str | None) -> None:
        request = as_request(socket, token)
        try:
            running = services()
            await running.gate.authorize(request, "FHIR:Read", f"FHIR:Subscription:{subscription_id}")
            subscription = await running.store.read("Subscription", subscription_id)
            await running.gate.admit(request, "FHIR:Read", [subscription])
            channel = channel_of(subscription)
            if channel.type != "websocket":
                raise _Refused(f"Subscription/{subscription_id} has channel {channel.type!r}, not websocket.")
            end = ended(subscription, now())
            if end is not None:
                raise _Refused(f"Subscription/{subscription_id} ended at {end}; create a new one.")
            watched = str(subscription.get("criteria", "")).partition("?")[0]
            await running.gate.search_filter(request, watched)  # the token may read what it would be told about
            subscriber = await running.gate.subscriber(request)
        except (DomainError, _Refused) as error:
            await socket.send_text(f"error {subscription_id} {error}")
            return
        running.hub.add(subscription_id, Binding(socket, subscriber))
        await socket.send_text(f"bound {subscription_id}")

    return router


class _Refused(Exception):
    pass


def websocket_extension(path: str) -> Callable[[str], dict[str, Any]]:
    """The CapabilityStatement.rest extension naming the websocket URL, for a server's FHIR base URL."""

    def extension(base_url: str) -> dict[str, Any]:
        origin = base_url.split("/", 3)  # scheme:, "", host[:port], path
        url = f"{origin[0]}//{origin[2]}{path}".replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        return {"url": WEBSOCKET_EXTENSION, "valueUri": url}  # the extension is defined with a uri value

    return extension
