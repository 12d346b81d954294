"""Subscriptions over real processes: a fhir-fax server, a rest-hook listener, kills, and a websocket client.

The listener (``tests/servers/hook_listener.py``) records every POST it gets; the faxes are the simulator's,
sped up. Every notification names the resource version it carries (``X-FHIR-Fax-Resource``), which is how a
receiver drops the duplicates at-least-once delivery may bring after a crash.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import websocket
from pymongo import MongoClient

from fhir_fax.subscriptions.faults import CRASH_EXIT_CODE

from helpers import FHIR_JSON, eventually, outbound_status, wait_final_at
from hooks import Listener, header, resource_versions
from processes import CLI, FaxServer

SENDER = "HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964"
FAST = {
    "FHIR_FAX_SIMULATOR_SPEED": "10",  # every status step its own version (at 1000x SENDING is superseded)
    "FHIR_FAX_WORKER_POLL_SECONDS": "0.05",
    "FHIR_FAX_LEASE_SECONDS": "1",
    "FHIR_FAX_SUBSCRIPTION_POLL_SECONDS": "0.05",
    # 6 tries 0.2 s, 0.4 s, ... apart: a listener down for a moment is retried well past it.
    "FHIR_FAX_SUBSCRIPTION_RETRY_DELAY_SECONDS": "0.2",
    "FHIR_FAX_SUBSCRIPTION_TIMEOUT_SECONDS": "2",  # a sender killed mid-POST leaves its claim after 5 s
}
STEPS = ["QUEUED", "PROCESSING", "SENDING", "DELIVERED"]


class Deployment:
    """Server processes one after the other on one database (so a killed one's work is found by the next)."""

    def __init__(self, tmp_path: Path, mongo_uri: str, name: str) -> None:
        self.tmp_path = tmp_path
        self.env = {"FHIR_FAX_MONGODB_URI": mongo_uri, "FHIR_FAX_DATABASE_NAME": name, **FAST}

    def server(self, **env: str) -> FaxServer:
        return FaxServer(self.tmp_path / f"server-{uuid.uuid4().hex[:6]}", "--load-fixtures", env={**self.env, **env})

    def worker(self) -> subprocess.Popen[bytes]:
        """``fhir-fax worker`` alone: delivery and subscription notifications, no HTTP."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_FAX_")} | self.env
        log = open(self.tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log", "wb")  # noqa: SIM115
        return subprocess.Popen([*CLI, "worker"], stdout=log, stderr=subprocess.STDOUT, env=env)


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    found = Listener(tmp_path_factory.mktemp("hooks"))
    yield found
    found.stop()


@pytest.fixture
def deployment(tmp_path: Path, mongo_uri: str) -> Iterator[Deployment]:
    name = f"subs_{uuid.uuid4().hex[:8]}"
    yield Deployment(tmp_path, mongo_uri, name)
    with MongoClient(mongo_uri) as client:
        client.drop_database(name)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str) -> Iterator[FaxServer]:
    """One server for the tests that do not kill it (each uses its own listener path and subscription)."""
    deployment = Deployment(tmp_path_factory.mktemp("subs"), mongo_uri, f"subs_{uuid.uuid4().hex[:8]}")
    found = deployment.server()
    onboard(found)
    yield found
    found.stop()


def onboard(server: FaxServer) -> None:
    response = httpx.post(f"{server.url}/fax/v1/onboard", json={"faxNumber": "+12223334444"}, headers=server.headers)
    assert response.status_code == 200, response.text


def subscribe(server: FaxServer, criteria: str, channel: dict[str, Any], token: str | None = None) -> str:
    resource = {"resourceType": "Subscription", "status": "requested", "reason": "e2e", "criteria": criteria,
                "channel": channel}  # fmt: skip
    headers = {**FHIR_JSON, **({"authorization": f"Bearer {token}"} if token else server.headers)}
    response = httpx.post(f"{server.url}/fhir/Subscription", json=resource, headers=headers, timeout=10)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "active"
    subscription_id: str = response.json()["id"]
    return subscription_id


def send(server: FaxServer, patient: str, number: str = "+16175550143") -> str:
    body = {"media": "z3://fixtures/referral-letter.pdf", "quality": "standard", "recipientNumber": number,
            "sender": SENDER, "patient": f"Patient/{patient}"}  # fmt: skip
    response = httpx.post(f"{server.url}/fax/v1/send", json=body, headers=server.headers, timeout=30)
    assert response.status_code == 200, response.text
    communication_id: str = response.json()["communicationResource"]["id"]
    return communication_id


def hook(listener: Listener, path: str, *headers: str) -> dict[str, Any]:
    return {"type": "rest-hook", "endpoint": f"{listener.url}{path}", "payload": "application/fhir+json",
            "header": list(headers)}  # fmt: skip


def versions_of(communication_id: str, count: int = 4) -> list[str]:
    return [f"Communication/{communication_id}/_history/{v}" for v in range(1, count + 1)]


def test_every_step_of_a_patients_fax_arrives_in_order_and_nothing_about_others(
    server: FaxServer, listener: Listener
) -> None:
    path = f"/patient-{uuid.uuid4().hex[:6]}"
    subscription = subscribe(server, "Communication?patient=Patient/james-oneil", hook(listener, path, "X-Tenant: 7"))
    other = send(server, "maria-lopez", "+16175550144")
    mine = send(server, "james-oneil")
    wait_final_at(server.url, server.headers, [mine, other])
    got = asyncio.run(listener.wait_for(path, 4))
    time.sleep(0.3)  # anything about the other patient would have come by now, with the rest
    got = listener.received(path)
    assert resource_versions(got) == versions_of(mine)
    assert [outbound_status(json.loads(r["body"])) for r in got] == STEPS
    assert {header(r, "X-Tenant") for r in got} == {"7"}
    assert {header(r, "X-FHIR-Fax-Subscription") for r in got} == {subscription}
    assert [header(r, "X-FHIR-Fax-Event") for r in got] == ["1", "2", "3", "4"]


def test_a_listener_that_answers_503_for_a_while_loses_nothing(server: FaxServer, tmp_path: Path) -> None:
    listener = Listener(tmp_path)
    try:
        path = "/flaky"
        subscribe(server, "Communication?patient=Patient/maria-lopez", hook(listener, path))
        listener.down()
        communication_id = send(server, "maria-lopez", "+16175550145")

        async def refused_twice() -> bool | None:
            return True if len(listener.records(path)) >= 2 else None

        asyncio.run(eventually(refused_twice, within=30, failure=lambda: f"no tries yet: {listener.records(path)}"))
        listener.up()
        wait_final_at(server.url, server.headers, [communication_id])
        got = asyncio.run(listener.wait_for(path, 4))
    finally:
        listener.stop()
    assert resource_versions(got) == versions_of(communication_id)
    assert {r["status"] for r in listener.records(path)[:2]} == {503}


@pytest.mark.parametrize("crash", ["kill -9 before delivery", "subscription-posted"])
def test_a_server_killed_between_the_write_and_the_notification_sends_it_after_restart(
    deployment: Deployment, listener: Listener, crash: str
) -> None:
    """Killed with the versions written but nothing dispatched (a server restarts), or dead right after a POST
    was taken, the fax still in flight (a ``fhir-fax worker`` takes over delivery and notifications).

    (Dying after queueing, before the pending mark is cleared, is ``test_subscriptions``' re-dispatch test.)
    """
    path = f"/crash-{uuid.uuid4().hex[:6]}"
    if crash.startswith("kill"):  # notifications off: the versions are written, nothing is dispatched
        first = deployment.server(FHIR_FAX_SUBSCRIPTIONS_ENABLED="false")
    else:
        first = deployment.server(FHIR_FAX_CRASH_AT=crash)
    onboard(first)
    subscribe(first, "Communication?patient=Patient/james-oneil", hook(listener, path))
    communication_id = send(first, "james-oneil")
    if crash.startswith("kill"):
        wait_final_at(first.url, first.headers, [communication_id])
        assert listener.records(path) == []
        first.stop(signal.SIGKILL)
    else:
        assert first.process.wait(60) == CRASH_EXIT_CODE
    if crash.startswith("kill"):
        second = deployment.server()
        try:
            wait_final_at(second.url, second.headers, [communication_id])
            asyncio.run(listener.wait_for(path, 4))
            time.sleep(0.3)  # a repeat would come with the rest
        finally:
            second.stop()
    else:
        worker = deployment.worker()
        try:
            asyncio.run(listener.wait_for(path, 5))  # the DELIVERED version is the last to come
            time.sleep(0.3)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
    arrived = resource_versions(listener.received(path))
    assert list(dict.fromkeys(arrived)) == versions_of(communication_id), "every version, in order"
    # At least once: only the notification whose POST the crash cut off from its record comes twice.
    assert len(arrived) == (5 if crash == "subscription-posted" else 4)


def test_a_websocket_bound_with_a_token_gets_pings_and_one_that_may_not_read_is_refused(
    server: FaxServer,
) -> None:
    subscription = subscribe(
        server, "Communication?patient=Patient/james-oneil", {"type": "websocket", "payload": "application/fhir+json"}
    )
    metadata = httpx.get(f"{server.url}/fhir/metadata", timeout=10).json()
    url = next(e["valueUri"] for e in metadata["rest"][0]["extension"] if e["url"].endswith("-websocket"))
    assert url == server.url.replace("http://", "ws://") + "/fhir/websocket"
    refused = no_reader_token(server)
    socket = websocket.create_connection(url, timeout=30)
    try:
        socket.send(f"bind {subscription} {refused}")
        answer = socket.recv()
        assert answer.startswith(f"error {subscription} ") and "FHIR:Search" in answer, answer
        # One whose end has passed is off: no socket binds to it.
        body = {"resourceType": "Subscription", "status": "requested", "reason": "e2e", "end": "2020-01-02T03:04:05Z",
                "criteria": "Communication?patient=Patient/james-oneil", "channel": {"type": "websocket"}}  # fmt: skip
        ended = httpx.post(f"{server.url}/fhir/Subscription", json=body, headers={**FHIR_JSON, **server.headers})
        assert ended.status_code == 201, ended.text
        gone = ended.json()["id"]
        socket.send(f"bind {gone} {server.headers['authorization'].removeprefix('Bearer ')}")
        assert socket.recv() == f"error {gone} Subscription/{gone} ended at 2020-01-02T03:04:05Z; create a new one."
        socket.send(f"bind {subscription} {server.headers['authorization'].removeprefix('Bearer ')}")
        assert socket.recv() == f"bound {subscription}"
        communication_id = send(server, "james-oneil", "+16175550146")
        messages = [socket.recv() for _ in range(8)]
    finally:
        socket.close()
    assert messages[0::2] == [f"ping {subscription}"] * 4
    resources = [json.loads(m) for m in messages[1::2]]
    assert [r["id"] for r in resources] == [communication_id] * 4
    assert [outbound_status(r) for r in resources] == STEPS


def test_a_bound_socket_is_told_and_closed_when_its_subscription_is_deleted_or_ends(server: FaxServer) -> None:
    """A client showing "live" must not wait on a Subscription that stopped: the server says why and closes."""
    token = server.headers["authorization"].removeprefix("Bearer ")
    body = {"resourceType": "Subscription", "status": "requested", "reason": "e2e", "channel": {"type": "websocket"},
            "criteria": "Communication?patient=Patient/james-oneil"}  # fmt: skip
    soon = (datetime.now(UTC) + timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    made = []
    for extra in ({}, {"end": soon}):
        headers = {**FHIR_JSON, **server.headers}
        created = httpx.post(f"{server.url}/fhir/Subscription", json={**body, **extra}, headers=headers)
        assert created.status_code == 201, created.text
        made.append(created.json()["id"])
    deleted, ending = made
    url = server.url.replace("http://", "ws://") + "/fhir/websocket"
    sockets = [websocket.create_connection(url, timeout=30) for _ in made]
    try:
        for socket, subscription_id in zip(sockets, made, strict=True):
            socket.send(f"bind {subscription_id} {token}")
            assert socket.recv() == f"bound {subscription_id}"
        gone = httpx.delete(f"{server.url}/fhir/Subscription/{deleted}", headers=server.headers)
        assert gone.status_code in (200, 204), gone.text
        assert sockets[0].recv() == f"error {deleted} the Subscription was deleted or turned off"
        assert sockets[1].recv() == f"error {ending} the Subscription ended at {soon}"
        for socket in sockets:
            opcode, _ = socket.recv_data(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE, "closed by the server"
    finally:
        for socket in sockets:
            socket.close()


def no_reader_token(server: FaxServer) -> str:
    """A token whose client may read the Subscription but not search Communications (made through the M2M API)."""
    policy = {"rule": [{"resource": "FHIR:Subscription", "action": "FHIR:Read", "effect": "Allow"}]}
    body = {"name": "subscription reader", "accessPolicy": policy}
    created = httpx.post(f"{server.url}/v1/m2m", json=body, headers=server.headers, timeout=10)
    assert created.status_code == 201, created.text
    secret = httpx.post(f"{server.url}/v1/m2m/{created.json()['id']}/rotate-secret", headers=server.headers)
    assert secret.status_code == 200, secret.text
    form = {"grant_type": "client_credentials", "client_id": created.json()["clientId"],
            "client_secret": secret.json()["secret"]}  # fmt: skip
    response = httpx.post(f"{server.url}/oauth/token", data=form, timeout=10)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token
