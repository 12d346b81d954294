"""Subscriptions in one process: the resource's checks and search, matching, the queue, access at send time.

Notifications go to a real HTTP listener process (``tests/servers/hook_listener.py``); the faxes are the
simulator's, sped up. The cross-process guarantees (a killed server, several senders) are in
``tests/e2e/test_subscription_delivery.py``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest
from pymongo import AsyncMongoClient

from fhir_fax.auth.clients import Clients
from fhir_fax.auth.smart_store import SmartStore
from fhir_fax.runtime import Runtime
from fhir_fax.settings import Settings
from fhir_fax.subscriptions.queue import NOTIFICATIONS
from fhir_fax.subscriptions.resource import check_subscription, ended
from fhir_fax.subscriptions.sender import Sender

from helpers import (
    FHIR_JSON,
    MEDIA,
    SEED_SENDER,
    Commands,
    eventually,
    login,
    outbound_status,
    serving,
    serving_fax,
    wait_final,
)
from hooks import Listener, header, resource_versions
from smart_helpers import Flow, make_app, make_user, token_for

FAST = {
    "simulator_speed": 10.0,  # slow enough that every status step is its own version (none superseded)
    "worker_poll_seconds": 0.02,
    "subscription_poll_seconds": 0.05,
    "subscription_retry_delay_seconds": 0.05,
}


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    found = Listener(tmp_path_factory.mktemp("hooks"))
    yield found
    found.stop()


@pytest.fixture
async def notifying(fax_settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with serving_fax(fax_settings.model_copy(update=FAST), database) as http:
        yield http


def subscription(criteria: str, endpoint: str | None, **channel: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "rest-hook", **channel}
    if endpoint is not None:
        body["endpoint"] = endpoint
    return {"resourceType": "Subscription", "status": "requested", "reason": "tests", "criteria": criteria,
            "channel": body}  # fmt: skip


async def subscribe(http: httpx.AsyncClient, resource: dict[str, Any]) -> dict[str, Any]:
    response = await http.post("/fhir/Subscription", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def send_fax(http: httpx.AsyncClient, patient: str | None, number: str = "+16175550143") -> str:
    body = {"media": MEDIA, "quality": "standard", "recipientNumber": number, "sender": SEED_SENDER}
    if patient:
        body["patient"] = patient
    response = await http.post("/fax/v1/send", json=body)
    assert response.status_code == 200, response.text
    communication_id: str = response.json()["communicationResource"]["id"]
    return communication_id


async def test_a_subscription_becomes_active_and_is_searchable(
    notifying: httpx.AsyncClient, listener: Listener
) -> None:
    endpoint = f"{listener.url}/search-{uuid.uuid4().hex[:6]}"
    created = await subscribe(notifying, subscription("Communication?medium=FAXWRIT&status=completed", endpoint))
    assert created["status"] == "active"
    for query in ("status=active", "criteria=communication?medium", f"url={endpoint}", f"_id={created['id']}"):
        bundle = (await notifying.get(f"/fhir/Subscription?{query}")).json()
        assert [e["resource"]["id"] for e in bundle.get("entry", [])] == [created["id"]], query
    bundle = (await notifying.get(f"/fhir/Subscription?url={endpoint}-other")).json()
    assert "entry" not in bundle
    assert (await notifying.delete(f"/fhir/Subscription/{created['id']}")).status_code == 204
    bundle = (await notifying.get(f"/fhir/Subscription?url={endpoint}")).json()
    assert "entry" not in bundle, "a deleted Subscription is found no more (nor matched)"


async def test_every_status_step_of_a_patients_fax_arrives_in_order_with_the_header(
    notifying: httpx.AsyncClient, listener: Listener, database: Any
) -> None:
    path = f"/patient-{uuid.uuid4().hex[:6]}"
    created = await subscribe(
        notifying,
        subscription("Communication?patient=Patient/james-oneil", f"{listener.url}{path}",
                     payload="application/fhir+json", header=["Authorization: Bearer hook-secret"]),
    )  # fmt: skip
    other = await send_fax(notifying, "Patient/maria-lopez", "+16175550144")
    mine = await send_fax(notifying, "Patient/james-oneil")
    final = await wait_final(notifying, mine)
    await wait_final(notifying, other)
    got = await listener.wait_for(path, 4)
    bodies = [json.loads(r["body"]) for r in got]
    assert [b["id"] for b in bodies] == [mine] * 4, "nothing about the other patient"
    assert [outbound_status(b) for b in bodies] == ["QUEUED", "PROCESSING", "SENDING", "DELIVERED"]
    assert [b["meta"]["versionId"] for b in bodies] == ["1", "2", "3", "4"]
    assert bodies[-1] == final
    for number, record in enumerate(got, 1):
        headers = {k.lower(): v for k, v in record["headers"].items()}
        assert headers["authorization"] == "Bearer hook-secret"
        assert headers["content-type"] == "application/fhir+json"
        assert headers["x-fhir-fax-subscription"] == created["id"]
        assert headers["x-fhir-fax-resource"] == f"Communication/{mine}/_history/{number}"
        assert headers["x-fhir-fax-event"] == str(number)
    states: list[str] = []

    async def all_recorded() -> bool | None:  # the listener may have the last POST before the queue records it
        states[:] = await database[NOTIFICATIONS].distinct("state", {"subscription": created["id"]})
        return True if states == ["sent"] else None

    await eventually(all_recorded, within=30, failure=lambda: f"notification states: {states}")


async def test_an_empty_payload_is_a_ping_naming_the_version(notifying: httpx.AsyncClient, listener: Listener) -> None:
    path = f"/ping-{uuid.uuid4().hex[:6]}"
    await subscribe(notifying, subscription("Communication?status=completed", f"{listener.url}{path}"))
    communication_id = await send_fax(notifying, None)
    await wait_final(notifying, communication_id)
    got = await listener.wait_for(path, 1)
    mine = [r for r in got if f"Communication/{communication_id}/" in header(r, "X-FHIR-Fax-Resource")]
    assert len(mine) == 1, "only the completed version matches"
    assert mine[0]["body"] == ""
    assert header(mine[0], "X-FHIR-Fax-Resource") == f"Communication/{communication_id}/_history/4"


BAD_INPUT = [
    ("Communication?patient=", None, "Subscription.criteria does not parse"),
    ("Communication?nonsense=1", None, "Unknown search parameter 'nonsense'"),
    ("Communication?_count=5", None, "'_count', which shapes search pages"),
    ("Patient?name=x", None, "this server sends notifications about Communication only"),
    ("Communication?status=completed", "ftp://example.com/hook", "must be an https URL"),
    ("Communication?status=completed", "http://hooks.example.com/x", "not an allowed host"),
    ("Communication?status=completed", "https://user:pw@hooks.example.com/x", "carries credentials"),
    # Inside the server's own network: the cloud metadata service, a private range, link-local IPv6, a name of
    # localhost, and 127.0.0.1 spelled as one number (the resolver's form); none is an allowed host here.
    ("Communication?status=completed", "https://169.254.169.254/latest/meta-data", "not a public internet address"),
    ("Communication?status=completed", "https://10.1.2.3/hook", "'10.1.2.3' is not a public internet address"),
    ("Communication?status=completed", "https://[fe80::1]/hook", "not a public internet address"),
    ("Communication?status=completed", "https://app.localhost/hook", "not a public internet address"),
    ("Communication?status=completed", "https://2130706433:8080/hook", "not a public internet address"),
    ("Communication?status=completed", "http://10.1.2.3/hook", "not a public internet address"),
]


BAD_CHANNELS = [
    ({"channel": {"type": "email", "endpoint": "mailto:a@example.com"}}, "channel.type 'email' is not offered"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://h.example.com", "payload": "text/plain"}},
     "payload 'text/plain' is not offered"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://h.example.com", "header": ["no colon"]}},
     "is not 'Name: value'"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://h.example.com", "header": ["Host: evil"]}},
     "is set by the server"),
    ({"status": "error"}, "send requested to re-activate"),
    ({"channel": {"type": "rest-hook"}}, "needs channel.endpoint"),
]  # fmt: skip


async def test_bad_subscriptions_are_refused_on_create_and_nothing_is_stored(
    api: httpx.AsyncClient, database: Any
) -> None:
    """Each bad input in turn (one server for all of them: they are independent requests)."""
    cases = [(subscription(c, e or "https://hooks.example.com/x"), m) for c, e, m in BAD_INPUT]
    good = subscription("Communication?status=completed", "https://hooks.example.com/x")
    cases += [({**good, **change}, message) for change, message in BAD_CHANNELS]
    for resource, message in cases:
        response = await api.post("/fhir/Subscription", json=resource, headers=FHIR_JSON)
        assert response.status_code == 400, (message, response.text)
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert message in outcome["issue"][0]["diagnostics"], message
        assert outcome["issue"][0]["expression"][0].startswith("Subscription."), message
        assert await database["Subscription"].count_documents({}) == 0, message
        assert await database[NOTIFICATIONS].count_documents({}) == 0, message


async def test_bad_updates_are_refused_and_leave_the_subscription_as_it_was(
    api: httpx.AsyncClient, database: Any
) -> None:
    good = subscription("Communication?status=completed", "https://hooks.example.com/x")
    stored = await subscribe(api, good)
    cases = [({**good, "criteria": c, "channel": {"type": "rest-hook", "endpoint": e or "https://h.example.com"}}, m)
             for c, e, m in BAD_INPUT]  # fmt: skip
    cases += [({**good, **change}, message) for change, message in BAD_CHANNELS]
    for resource, message in cases:
        body = {**resource, "id": stored["id"]}
        response = await api.put(f"/fhir/Subscription/{stored['id']}", json=body, headers=FHIR_JSON)
        assert response.status_code == 400, (message, response.text)
        assert message in response.json()["issue"][0]["diagnostics"], message
        document = await database["Subscription"].find_one({"_id": stored["id"]})
        assert document["_fhirfax"]["version"] == 1, f"{message}: the update stored nothing"
        assert await database["Subscription_history"].count_documents({}) == 0, message


async def test_the_subscriber_must_still_be_allowed_to_read_each_version_when_it_is_sent(
    notifying: httpx.AsyncClient, listener: Listener, database: Any
) -> None:
    """The rights are those of whoever wrote the Subscription, as they are when each notification is sent."""
    policy = {"rule": [
        {"resource": "FHIR:Subscription", "action": ["FHIR:Create", "FHIR:Read"], "effect": "Allow"},
        {"resource": "FHIR:Communication", "action": ["FHIR:Read", "FHIR:Search"], "effect": "Allow"},
    ]}  # fmt: skip
    record, secret = await Clients(database).create("subscriber", policy)
    path = f"/limited-{uuid.uuid4().hex[:6]}"
    criteria = f"Communication?category={path[1:]}"
    async with httpx.AsyncClient(transport=notifying._transport, base_url="http://fhir.test") as limited:
        await login(limited, record["clientId"], secret)
        created = await subscribe(limited, subscription(criteria, f"{listener.url}{path}"))
    denied_id = str(uuid.uuid4())
    narrowed = {"rule": [*policy["rule"], {"resource": f"FHIR:Communication:{denied_id}", "action": "FHIR:Read",
                                           "effect": "Deny"}]}  # fmt: skip
    await Clients(database).update(record["_id"], {"accessPolicy": narrowed})
    body = {"resourceType": "Communication", "status": "completed", "category": [{"coding": [{"code": path[1:]}]}]}
    response = await notifying.put(f"/fhir/Communication/{denied_id}", json={**body, "id": denied_id})
    assert response.status_code == 201, response.text
    allowed = (await notifying.post("/fhir/Communication", json=body)).json()["id"]
    got = await listener.wait_for(path, 1)

    async def refused() -> dict[str, Any] | None:
        found: dict[str, Any] | None = await database[NOTIFICATIONS].find_one(
            {"subscription": created["id"], "resource": f"Communication/{denied_id}", "state": "refused"}
        )
        return found

    notification = await eventually(refused, within=30, failure=lambda: "the denied version was not refused")
    assert f"does not allow FHIR:Read on FHIR:Communication:{denied_id}" in notification["detail"]
    assert [header(r, "X-FHIR-Fax-Resource") for r in listener.received(path)] == [
        f"Communication/{allowed}/_history/1"
    ]
    assert header(got[0], "X-FHIR-Fax-Subscription") == created["id"]
    refusals = [e["outcomeDesc"] async for e in database["AuditEvent"].find({"outcome": "4"})]
    assert f"FHIR:Read on FHIR:Communication:{denied_id} refused: notification: " in " ".join(refusals)

    async def disclosure() -> dict[str, Any] | None:  # the delivered one is audited as a read by the subscriber
        found: dict[str, Any] | None = await database["AuditEvent"].find_one(
            {"subtype.code": "subscription-notification", "entity.what.reference": f"Communication/{allowed}"}
        )
        return found

    audited = await eventually(disclosure, within=30, failure=lambda: "the notification was not audited")
    assert audited["agent"][0]["who"]["display"] == record["clientId"]


async def test_after_the_last_try_the_subscription_is_in_error_and_requested_brings_it_back(
    fax_settings: Settings, database: Any, listener: Listener
) -> None:
    fast = {**FAST, "subscription_retry_attempts": 3}
    path = f"/failing-{uuid.uuid4().hex[:6]}"
    async with serving_fax(fax_settings.model_copy(update=fast), database) as http:
        resource = subscription(f"Communication?category={path[1:]}", f"{listener.url}{path}")
        created = await subscribe(http, resource)
        body = {"resourceType": "Communication", "status": "completed", "category": [{"coding": [{"code": path[1:]}]}]}
        listener.down()
        try:
            first = (await http.post("/fhir/Communication", json=body)).json()["id"]

            async def in_error() -> dict[str, Any] | None:
                found: dict[str, Any] = (await http.get(f"/fhir/Subscription/{created['id']}")).json()
                return found if found["status"] == "error" else None

            errored = await eventually(in_error, within=30, failure=lambda: "the Subscription never turned error")
            assert "failed after 3 tries" in errored["error"]
            assert "answered 503: down for maintenance" in errored["error"]
            assert [r["status"] for r in listener.records(path)] == [503, 503, 503]
            second = (await http.post("/fhir/Communication", json=body)).json()["id"]
        finally:
            listener.up()
        again = await http.put(
            f"/fhir/Subscription/{created['id']}", json={**resource, "id": created["id"]}, headers=FHIR_JSON
        )
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "active" and "error" not in again.json()
        got = await listener.wait_for(path, 1)
    assert [header(r, "X-FHIR-Fax-Resource") for r in got] == [f"Communication/{first}/_history/1"]
    assert second not in json.dumps(listener.records(path)), "written while in error: not matched"


class ByHand:
    """A served app whose Subscription passes the test runs itself (no background loop), with one Subscription on
    Communications of a category of its own."""

    def __init__(self, http: httpx.AsyncClient, database: Any, resource: dict[str, Any], created: dict[str, Any]):
        self.http, self.database, self.resource, self.created = http, database, resource, created
        self.runtime: Runtime = http._transport.app.state.fax_module.runtime  # type: ignore[attr-defined]
        self.code = resource["criteria"].rpartition("=")[2]

    async def write(self) -> str:
        """A Communication the Subscription matches; its id."""
        body = {"resourceType": "Communication", "status": "completed", "category": [{"coding": [{"code": self.code}]}]}
        answer = await self.http.post("/fhir/Communication", json=body, headers=FHIR_JSON)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    async def passes(self) -> None:
        while await self.runtime.subscriptions.dispatcher.step():
            pass

    async def in_error(self) -> None:
        """As the sender marks it after the last try."""
        await self.runtime.store.modify(
            "Subscription",
            self.created["id"],
            lambda c: {**c, "status": "error", "error": "Notification 1 failed after 6 tries"},
        )

    async def reactivate(self) -> None:
        again = await self.http.put(
            f"/fhir/Subscription/{self.created['id']}", json={**self.resource, "id": self.created["id"]},
            headers=FHIR_JSON,
        )  # fmt: skip
        assert again.status_code == 200 and again.json()["status"] == "active", again.text

    async def queued(self) -> list[str]:
        """The resources of its queued notifications."""
        found = await self.database[NOTIFICATIONS].find({"subscription": self.created["id"]}).to_list(None)
        return [n["resource"] for n in found]


@asynccontextmanager
async def by_hand(settings: Settings, database: Any, name: str) -> AsyncIterator[ByHand]:
    quiet = settings.model_copy(update={"subscriptions_enabled": False, "worker_enabled": False})
    code = f"{name}-{uuid.uuid4().hex[:6]}"
    async with serving(quiet, database) as http:
        resource = subscription(f"Communication?category={code}", "https://hooks.example.com/x")
        yield ByHand(http, database, resource, await subscribe(http, resource))


async def test_a_version_written_while_in_error_is_not_matched_by_a_pass_that_runs_after_re_activation(
    settings: Settings, database: Any
) -> None:
    """Passes may run a little after the writes (a burst goes in one pass), so a pass can see a version written
    while its Subscription was in error only after the Subscription was made active again. It was not active when
    the version was written: it is not matched. Times are kept to the millisecond, hence the pauses of 2 ms."""
    async with by_hand(settings, database, "reactivated") as watched:
        before = await watched.write()
        await watched.passes()
        await watched.in_error()
        await asyncio.sleep(0.002)
        during = await watched.write()  # no pass runs before the Subscription is active again
        await asyncio.sleep(0.002)
        await watched.reactivate()
        after = await watched.write()
        await watched.passes()
        queued = await watched.queued()
    assert sorted(queued) == sorted(f"Communication/{i}" for i in (before, after))
    assert f"Communication/{during}" not in queued, "written while in error"


async def test_a_version_written_while_active_is_matched_by_a_pass_that_runs_after_an_error_and_re_activation(
    settings: Settings, database: Any
) -> None:
    """The other side of the rule: the version was written while the Subscription was active, and its pass only
    runs after the Subscription went to error (the server's write) and came back. It was written while active:
    it is matched. One written during the error is not."""
    async with by_hand(settings, database, "late") as watched:
        await watched.passes()  # the Subscription's own version
        active = await watched.write()  # no pass runs until the end
        await asyncio.sleep(0.002)  # the error comes in a later millisecond than that write
        await watched.in_error()
        await asyncio.sleep(0.002)
        during = await watched.write()
        await asyncio.sleep(0.002)
        await watched.reactivate()
        await watched.passes()
        stored = await database["Subscription"].find_one({"_id": watched.created["id"]})
        queued = await watched.queued()
    kept = stored["_fhirfax"]["private"]
    assert kept["deactivated"] < kept["activated"], kept
    assert queued == [f"Communication/{active}"], "written while active: matched"
    assert during != active


async def test_a_version_written_while_active_and_dispatched_while_in_error_is_held_not_lost(
    settings: Settings, database: Any
) -> None:
    """Its pass runs while the Subscription is in error: the version was written while it was active, so its
    notification is queued (the sender holds it until the Subscription is active again), and the mark cleared."""
    async with by_hand(settings, database, "held") as watched:
        await watched.passes()
        written = await watched.write()
        await asyncio.sleep(0.002)
        await watched.in_error()
        await watched.passes()
        queued = await watched.queued()
        stored = await database["Communication"].find_one({"_id": written})
    assert queued == [f"Communication/{written}"]
    assert "pending" not in stored["_fhirfax"]


async def test_rewriting_an_active_subscription_keeps_the_versions_written_before_it(
    settings: Settings, database: Any
) -> None:
    """Only a change to active (creation, or from error or off) moves the time versions are matched from: a
    Subscription rewritten while active (its reason, its headers) still matches a version written before the
    rewrite that no pass has looked at yet; the server's own error write leaves the time as it was."""
    async with by_hand(settings, database, "rewritten") as watched:
        http, created, resource = watched.http, watched.created, watched.resource

        async def activated() -> Any:
            stored = await database["Subscription"].find_one({"_id": created["id"]})
            return stored["_fhirfax"]["private"]["activated"]

        first = await activated()
        written = await watched.write()
        rewritten = {**resource, "id": created["id"], "reason": "tests, rewritten"}
        again = await http.put(f"/fhir/Subscription/{created['id']}", json=rewritten, headers=FHIR_JSON)
        assert again.status_code == 200 and again.json()["meta"]["versionId"] == "2", again.text
        assert await activated() == first, "active to active: unchanged"
        await watched.passes()
        assert await watched.queued() == [f"Communication/{written}"]
        await watched.in_error()
        assert await activated() == first, "the server's error write keeps it"
        off = await http.put(f"/fhir/Subscription/{created['id']}", json={**rewritten, "status": "off"},
                             headers=FHIR_JSON)  # fmt: skip
        assert off.status_code == 200, off.text
        back = await http.put(f"/fhir/Subscription/{created['id']}", json=rewritten, headers=FHIR_JSON)
        assert back.status_code == 200 and back.json()["status"] == "active", back.text
        assert await activated() > first, "off to active: moved to the re-activation"


@pytest.fixture
async def runtime(settings: Settings, database: Any) -> AsyncIterator[Runtime]:
    """A runtime whose dispatcher the test drives by hand (no background loop)."""
    built = Runtime.build(settings, database)
    await built.prepare()
    yield built
    await built.close()


async def stored_subscription(runtime: Runtime, criteria: str) -> str:
    resource = subscription(criteria, "https://hooks.example.com/x")
    checked, _ = check_subscription(resource, runtime.registry, [])
    stored = await runtime.store.create(checked, private={"client": "test-admin", "scopes": "", "patient": None})
    await runtime.subscriptions.dispatcher.step()  # the Subscription's own version
    return str(stored["id"])


async def test_versions_written_between_two_passes_each_get_their_notification(runtime: Runtime, database: Any) -> None:
    """Coalesced steps: every version is read back from history and matched as it was written."""
    every = await stored_subscription(runtime, "Communication?category=coalesced")
    completed = await stored_subscription(runtime, "Communication?category=coalesced&status=completed")
    by_id = await stored_subscription(runtime, "Communication?_id=fixed-id-1&status=in-progress")
    body = {"resourceType": "Communication", "id": "fixed-id-1", "category": [{"coding": [{"code": "coalesced"}]}]}
    for status in ("preparation", "in-progress", "completed"):
        await runtime.store.update("Communication", "fixed-id-1", {**body, "status": status})
    current = await database["Communication"].find_one({"_id": "fixed-id-1"})
    assert current["_fhirfax"]["pending"] == 1, "the first version not yet looked at"
    await runtime.subscriptions.dispatcher.step()
    queued = await database[NOTIFICATIONS].find({}).sort([("subscription", 1), ("version", 1)]).to_list(None)
    assert {(n["subscription"], n["version"]) for n in queued} == {
        (every, 1), (every, 2), (every, 3), (completed, 3), (by_id, 2)
    }  # fmt: skip
    assert "pending" not in (await database["Communication"].find_one({"_id": "fixed-id-1"}))["_fhirfax"]
    assert [n["event"] for n in queued if n["subscription"] == every] == [1, 2, 3]


async def test_dispatching_again_after_a_crash_adds_no_duplicate(runtime: Runtime, database: Any) -> None:
    """Queued but the mark not yet cleared (the process died in between): the next pass adds nothing."""
    subscription_id = await stored_subscription(runtime, "Communication?status=completed")
    created = await runtime.store.create({"resourceType": "Communication", "status": "completed"})
    await runtime.subscriptions.dispatcher.step()
    await database["Communication"].update_one({"_id": created["id"]}, {"$set": {"_fhirfax.pending": 1}})
    await runtime.subscriptions.dispatcher.step()
    queued = await database[NOTIFICATIONS].find({"subscription": subscription_id}).to_list(None)
    assert [(n["resource"], n["version"]) for n in queued] == [(f"Communication/{created['id']}", 1)]
    assert await database["Communication"].count_documents({"_fhirfax.pending": {"$gte": 1}}) == 0


async def test_the_pending_versions_of_a_batch_are_read_from_history_together(
    mongo_uri: str, settings: Settings
) -> None:
    """One history read per pass, whatever the number of marked resources with several versions pending; each
    version still gets its notification, and a pass redone after a crash before the clear adds nothing."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    commands = Commands(name)
    client: Any = AsyncMongoClient(mongo_uri, tz_aware=True, event_listeners=[commands])
    runtime = Runtime.build(settings, client[name])
    try:
        await runtime.prepare()
        database = client[name]
        code = f"together-{uuid.uuid4().hex[:6]}"
        subscription_id = await stored_subscription(runtime, f"Communication?category={code}")
        body = {"resourceType": "Communication", "category": [{"coding": [{"code": code}]}]}
        written = {}
        for count in (3, 2, 4, 1):  # versions per resource, none looked at yet
            created = await runtime.store.create({**body, "status": "preparation"})
            for _ in range(count - 1):
                await runtime.store.update("Communication", created["id"], {**body, "id": created["id"],
                                                                             "status": "in-progress"})  # fmt: skip
            written[created["id"]] = count
        commands.seen.clear()
        assert await runtime.subscriptions.dispatcher.step() == len(written)
        assert commands.seen.count(("find", "Communication_history")) == 1, commands.seen
        expected = sorted((f"Communication/{i}", v) for i, count in written.items() for v in range(1, count + 1))
        queued = await database[NOTIFICATIONS].find({"subscription": subscription_id}).to_list(None)
        assert sorted((n["resource"], n["version"]) for n in queued) == expected
        await database["Communication"].update_many({"_id": {"$in": list(written)}}, {"$set": {"_fhirfax.pending": 1}})
        commands.seen.clear()  # as if the process had died after queuing, before clearing the marks
        assert await runtime.subscriptions.dispatcher.step() == len(written)
        assert commands.seen.count(("find", "Communication_history")) == 1
        queued = await database[NOTIFICATIONS].find({"subscription": subscription_id}).to_list(None)
        assert sorted((n["resource"], n["version"]) for n in queued) == expected, "nothing added"
        assert await database["Communication"].count_documents({"_fhirfax.pending": {"$gte": 1}}) == 0
    finally:
        await runtime.close()
        await client.drop_database(name)
        await client.close()


async def test_the_first_notifications_of_a_subscription_queued_at_once_each_get_their_own_event(
    runtime: Runtime, database: Any
) -> None:
    """Queued at once, the first notifications all race to create the Subscription's event counter; each is
    queued (none fails and waits for the next pass), and no event number is given twice."""
    queue = runtime.subscriptions.queue
    for _ in range(3):
        subscription_id = f"counted-{uuid.uuid4().hex[:8]}"
        entries = [(subscription_id, "rest-hook", "Communication", f"c-{n}", 1) for n in range(8)]
        assert await asyncio.gather(*(queue.enqueue([entry]) for entry in entries)) == [1] * 8
        queued = await database[NOTIFICATIONS].find({"subscription": subscription_id}).to_list(None)
        assert len(queued) == 8 and len({n["event"] for n in queued}) == 8, "each its own number"


async def test_subscriptions_that_do_not_match_cost_no_criteria_run(runtime: Runtime, database: Any) -> None:
    """Matching looks only at Subscriptions filed under the version's own keys (and the catch-all ones)."""
    filed = []
    for number in range(200):  # the benchmark measures 1,000
        resource = subscription(f"Communication?patient=Patient/other-{number}", "https://hooks.example.com/x")
        checked, _ = check_subscription(resource, runtime.registry, [])
        filed.append(checked)
    await runtime.store.create_many(filed, validated=True)
    await runtime.store.collection("Subscription").update_many({}, {"$unset": {"_fhirfax.pending": ""}})
    mine = await stored_subscription(runtime, "Communication?patient=Patient/james-oneil")
    body = {"resourceType": "Communication", "status": "completed", "subject": {"reference": "Patient/james-oneil"}}
    created = await runtime.store.create(body)
    dispatcher = runtime.subscriptions.dispatcher
    dispatcher.evaluated = 0
    await dispatcher.step()
    assert dispatcher.evaluated == 1, "one criteria run: the matching one"
    queued = await database[NOTIFICATIONS].find({}).to_list(None)
    assert [(n["subscription"], n["resource"]) for n in queued] == [(mine, f"Communication/{created['id']}")]


async def test_several_senders_on_one_queue_deliver_each_notification_once(
    runtime: Runtime, database: Any, listener: Listener
) -> None:
    """Two senders (as in two server processes) claim from one queue by compare-and-set."""
    path = f"/shared-{uuid.uuid4().hex[:6]}"
    resource = subscription(f"Communication?category={path[1:]}", f"{listener.url}{path}")
    checked, _ = check_subscription(resource, runtime.registry, ["127.0.0.1"])
    await runtime.store.create(checked, private={"client": "test-admin", "scopes": "", "patient": None})
    body = {"resourceType": "Communication", "status": "completed", "category": [{"coding": [{"code": path[1:]}]}]}
    await runtime.store.create_many([dict(body) for _ in range(30)], validated=True)
    while await runtime.subscriptions.dispatcher.step():
        pass
    senders = [Sender(runtime.settings, runtime.store, runtime.subscriptions.queue, runtime.gate) for _ in range(2)]

    async def drain(sender: Sender) -> int:
        taken = 0
        while await database[NOTIFICATIONS].count_documents({"state": "due"}):
            taken += await sender.step()
        return taken

    try:
        shares = await asyncio.gather(*(drain(s) for s in senders))
    finally:
        for sender in senders:
            await sender.close()
    versions = resource_versions(listener.received(path))
    assert len(versions) == 30 and len(set(versions)) == 30, "each once"
    assert sum(shares) == 30
    assert await database[NOTIFICATIONS].distinct("state") == ["sent"]


def token_grant(access_token: str) -> str:
    """The grant (token family) an app's access token belongs to."""
    return str(jwt.decode(access_token, options={"verify_signature": False})["grant"])


async def test_a_subscription_made_by_a_signed_in_user_is_checked_against_that_users_grant(
    notifying: httpx.AsyncClient, listener: Listener, database: Any
) -> None:
    """A SMART app's user subscribes for a patient in context: notifications keep to that patient, and stop when
    the grant is revoked (the user's rights are those of the sign-in, as they are when each is sent)."""
    username = await make_user(database)
    app = await make_app(database)
    path = f"/user-{uuid.uuid4().hex[:6]}"
    criteria = f"Communication?category={path[1:]}"
    async with httpx.AsyncClient(transport=notifying._transport, base_url="http://fhir.test") as web:
        flow = Flow(app, "launch/patient patient/Communication.rs patient/Subscription.cruds")
        token = await token_for(web, flow, username, patient="maria-lopez")
        web.headers["authorization"] = f"Bearer {token['access_token']}"
        created = await subscribe(web, subscription(criteria, f"{listener.url}{path}"))
    body = {"resourceType": "Communication", "status": "completed", "category": [{"coding": [{"code": path[1:]}]}]}
    maria = await notifying.post("/fhir/Communication", json={**body, "subject": {"reference": "Patient/maria-lopez"}})
    james = await notifying.post("/fhir/Communication", json={**body, "subject": {"reference": "Patient/james-oneil"}})
    assert maria.status_code == james.status_code == 201
    await listener.wait_for(path, 1)

    async def settled(resource: str, state: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await database[NOTIFICATIONS].find_one(
            {"subscription": created["id"], "resource": resource, "state": state}
        )
        return found

    async def looked_at() -> bool | None:  # matched inside maria-lopez's compartment only: never queued
        pending = await database["Communication"].find_one(
            {"_id": james.json()["id"], "_fhirfax.pending": {"$exists": True}}
        )
        return True if pending is None else None

    await eventually(looked_at, within=30, failure=lambda: "not dispatched")
    assert (
        await database[NOTIFICATIONS].find_one(
            {"subscription": created["id"], "resource": f"Communication/{james.json()['id']}"}
        )
        is None
    )
    assert [header(r, "X-FHIR-Fax-Resource") for r in listener.received(path)] == [
        f"Communication/{maria.json()['id']}/_history/1"
    ]
    await SmartStore(database).revoke_grant(token_grant(token["access_token"]), "signed out")
    later = await notifying.post("/fhir/Communication", json={**body, "subject": {"reference": "Patient/maria-lopez"}})
    stopped = await eventually(
        lambda: settled(f"Communication/{later.json()['id']}", "refused"), within=30, failure=lambda: "not refused"
    )
    assert "revoked" in stopped["detail"]
    assert len(listener.received(path)) == 1


async def test_a_patient_limited_token_only_reaches_subscriptions_made_for_its_patient(
    notifying: httpx.AsyncClient, listener: Listener, database: Any
) -> None:
    """``patient/*`` scopes keep Subscriptions to those whose recorded subscriber has the same patient in context:
    another client's (and its channel.header secret) is neither found nor read, changed or deleted."""
    patient = "maria-lopez"
    secret = f"Authorization: Bearer s3cret-{uuid.uuid4().hex[:8]}"
    theirs = await subscribe(
        notifying, subscription(f"Communication?patient=Patient/{patient}", f"{listener.url}/x", header=[secret])
    )
    username = await make_user(database)
    app = await make_app(database)
    async with httpx.AsyncClient(transport=notifying._transport, base_url="http://fhir.test") as web:
        token = await token_for(web, Flow(app, "launch/patient patient/*.cruds"), username, patient=patient)
        web.headers["authorization"] = f"Bearer {token['access_token']}"
        mine = await subscribe(web, subscription(f"Communication?patient=Patient/{patient}", f"{listener.url}/mine"))
        found = await web.get("/fhir/Subscription", params={"_total": "accurate"})
        assert found.status_code == 200, found.text
        ids = [e["resource"]["id"] for e in found.json().get("entry", [])]
        assert mine["id"] in ids and theirs["id"] not in ids
        assert found.json()["total"] == len(ids) and "s3cret" not in found.text
        assert (await web.get(f"/fhir/Subscription/{mine['id']}")).status_code == 200
        refusals_before = await database["AuditEvent"].count_documents({"subtype.code": "access-refused"})
        changed = {**subscription("Communication?", f"{listener.url}/stolen"), "id": theirs["id"]}
        for answer in (
            await web.get(f"/fhir/Subscription/{theirs['id']}"),
            await web.put(f"/fhir/Subscription/{theirs['id']}", json=changed, headers=FHIR_JSON),
            await web.delete(f"/fhir/Subscription/{theirs['id']}"),
        ):
            assert answer.status_code == 403, answer.text
            message = answer.json()["issue"][0]["diagnostics"]
            assert f"limited to Patient/{patient}" in message and f"Subscription/{theirs['id']}" in message
            assert "s3cret" not in answer.text
    refusals = await database["AuditEvent"].find({"subtype.code": "access-refused"}).to_list(None)
    assert len(refusals) - refusals_before >= 3
    assert sum(f"FHIR:Subscription:{theirs['id']}" in e["outcomeDesc"] for e in refusals) >= 3
    kept = await notifying.get(f"/fhir/Subscription/{theirs['id']}")
    assert kept.status_code == 200 and kept.json()["meta"]["versionId"] == "1"
    assert kept.json()["channel"]["endpoint"] == f"{listener.url}/x"


async def test_a_dead_endpoint_with_many_queued_versions_does_not_delay_other_subscriptions(
    runtime: Runtime, database: Any, listener: Listener
) -> None:
    """Later versions waiting behind one being retried wait as long as it does, so they never fill the batch."""
    code = f"dead-{uuid.uuid4().hex[:6]}"
    dead, _ = check_subscription(subscription(f"Communication?category={code}", "http://127.0.0.1:1/dead"),
                                 runtime.registry, ["127.0.0.1"])  # fmt: skip
    kept = {"client": "test-admin", "scopes": "", "patient": None}
    dead_id = (await runtime.store.create(dead, private=kept))["id"]
    body = {"resourceType": "Communication", "status": "completed", "category": [{"coding": [{"code": code}]}]}
    written = await runtime.store.create(body)
    for _ in range(40):  # more later versions of one pair than a batch takes
        await runtime.store.update("Communication", written["id"], {**body, "id": written["id"]})
    dispatcher = runtime.subscriptions.dispatcher
    while await dispatcher.step():
        pass
    path = f"/healthy-{uuid.uuid4().hex[:6]}"
    healthy, _ = check_subscription(subscription(f"Communication?category={path[1:]}", f"{listener.url}{path}"),
                                    runtime.registry, ["127.0.0.1"])  # fmt: skip
    healthy_id = (await runtime.store.create(healthy, private=kept))["id"]
    other = {**body, "category": [{"coding": [{"code": path[1:]}]}]}
    await runtime.store.create(other)
    while await dispatcher.step():
        pass
    sender = Sender(runtime.settings, runtime.store, runtime.subscriptions.queue, runtime.gate)
    try:
        for _ in range(10):  # each pass claims what it can; none may be filled by blocked versions
            await sender.step()
            if await database[NOTIFICATIONS].find_one({"subscription": healthy_id, "state": "sent"}):
                break
    finally:
        await sender.close()
    assert await database[NOTIFICATIONS].find_one({"subscription": healthy_id, "state": "sent"}), "not delivered"
    assert len(listener.received(path)) == 1
    first = await database[NOTIFICATIONS].find_one({"subscription": dead_id, "version": 1})
    assert first["state"] == "due" and first["attempts"] == 1, "the dead endpoint's first version waits to retry"
    later = await database[NOTIFICATIONS].find({"subscription": dead_id, "version": {"$gt": 1}}).to_list(None)
    assert len(later) == 40 and all(n["state"] == "due" and n["attempts"] == 0 for n in later)
    assert all(n["due_at"] >= first["due_at"] for n in later), "each waits as long as the version before it"


@pytest.mark.parametrize("allowed", [[], ["localhost"]], ids=["not-allowed", "allowed"])
async def test_a_name_that_resolves_inside_the_network_is_not_posted_to_unless_allowed(
    settings: Settings, database: Any, listener: Listener, allowed: list[str]
) -> None:
    """The send-time check: a stored endpoint whose name resolves to loopback (stored before the rule, or a name
    that changed where it points) is refused when sent, and the listener behind it hears nothing. The same
    Subscription is delivered when its host is allowed, so the refusal is the rule, not a dead endpoint."""
    built = Runtime.build(settings.model_copy(update={"subscription_allowed_hosts": allowed}), database)
    await built.prepare()
    code = f"inside-{uuid.uuid4().hex[:6]}"
    path = f"/{code}"
    endpoint = listener.url.replace("127.0.0.1", "localhost") + path
    stored = await built.store.create(
        {**subscription(f"Communication?category={code}", endpoint), "status": "active"},
        private={"client": "test-admin", "scopes": "", "patient": None},
    )
    body = {"resourceType": "Communication", "status": "completed", "category": [{"coding": [{"code": code}]}]}
    await built.store.create(body)
    while await built.subscriptions.dispatcher.step():
        pass
    sender = Sender(built.settings, built.store, built.subscriptions.queue, built.gate)
    try:
        await sender.step()
    finally:
        await sender.close()
        await built.close()
    queued = await database[NOTIFICATIONS].find({"subscription": stored["id"]}).to_list(None)
    assert len(queued) == 1, queued
    if allowed:
        assert queued[0]["state"] == "sent", queued
        assert len(listener.received(path)) == 1
        return
    assert listener.records(path) == [], "nothing reached the endpoint"
    for notification in queued:
        assert notification["state"] == "due" and notification["attempts"] == 1
        assert "not sent: localhost resolves to" in notification["detail"], notification["detail"]
        assert "which is not a public address" in notification["detail"]


async def test_re_keying_at_start_up_keeps_a_subscriptions_match_keys(runtime: Runtime, database: Any) -> None:
    """When Subscription's parameters change, start-up re-keys stored ones with the store's indexer, so they
    stay filed under their criteria and still match."""
    code = f"rekey-{uuid.uuid4().hex[:6]}"
    checked, _ = check_subscription(subscription(f"Communication?category={code}", "https://hooks.example.com/x"),
                                    runtime.registry, [])  # fmt: skip
    created = await runtime.store.create(checked, private={"client": "test-admin", "scopes": "", "patient": None})
    before = (await database["Subscription"].find_one({"_id": created["id"]}))["_fhirfax"]["keys"]
    assert before["match"]
    await database["Subscription"].update_one({"_id": created["id"]}, {"$unset": {"_fhirfax.keys.status": ""}})
    await database["search_keys"].update_one({"_id": "Subscription"}, {"$set": {"parameters": "an older release"}})
    await runtime.prepare()  # a start-up
    after = (await database["Subscription"].find_one({"_id": created["id"]}))["_fhirfax"]["keys"]
    assert after == before, "re-keyed (status is back), match keys kept"
    body = {"resourceType": "Communication", "status": "completed", "category": [{"coding": [{"code": code}]}]}
    written = await runtime.store.create(body)
    while await runtime.subscriptions.dispatcher.step():
        pass
    queued = await database[NOTIFICATIONS].find({"subscription": created["id"]}).to_list(None)
    assert [n["resource"] for n in queued] == [f"Communication/{written['id']}"]


async def test_a_patient_limited_subscription_queues_nothing_about_other_patients(
    notifying: httpx.AsyncClient, listener: Listener, database: Any
) -> None:
    """Its criteria are narrowed to the patient's compartment when matched: another patient's faxes are not queued,
    numbered or refused (so the event numbers it gets say nothing about them)."""
    username = await make_user(database)
    app = await make_app(database)
    path = f"/narrow-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(transport=notifying._transport, base_url="http://fhir.test") as web:
        flow = Flow(app, "launch/patient patient/Communication.rs patient/Subscription.cruds")
        token = await token_for(web, flow, username, patient="maria-lopez")
        web.headers["authorization"] = f"Bearer {token['access_token']}"
        created = await subscribe(web, subscription(f"Communication?category={path[1:]}", f"{listener.url}{path}"))
    body = {"resourceType": "Communication", "status": "completed", "category": [{"coding": [{"code": path[1:]}]}]}
    others = []
    for _ in range(2):
        answer = await notifying.post(
            "/fhir/Communication", json={**body, "subject": {"reference": "Patient/james-oneil"}}
        )
        assert answer.status_code == 201
        others.append(answer.json()["id"])

    async def looked_at() -> bool | None:
        marked = await database["Communication"].count_documents(
            {"_id": {"$in": others}, "_fhirfax.pending": {"$exists": True}}
        )
        return True if marked == 0 else None

    await eventually(looked_at, within=30, failure=lambda: "not dispatched")
    maria = await notifying.post("/fhir/Communication", json={**body, "subject": {"reference": "Patient/maria-lopez"}})
    [got] = await listener.wait_for(path, 1)
    assert header(got, "X-FHIR-Fax-Resource") == f"Communication/{maria.json()['id']}/_history/1"
    assert header(got, "X-FHIR-Fax-Event") == "1"
    queued = await database[NOTIFICATIONS].find({"subscription": created["id"]}).to_list(None)
    assert [n["resource"] for n in queued] == [f"Communication/{maria.json()['id']}"]


async def test_a_patient_limited_token_may_not_subscribe_to_another_patient(
    notifying: httpx.AsyncClient, database: Any
) -> None:
    """A token like the fax app's (``patient/*.rs``, Subscription ``c``/``d``; ``u`` here to try an update too)
    subscribes to its own patient's faxes; naming another patient in the criteria, on create or update, is a 403
    that says what to subscribe to, with nothing stored."""
    username = await make_user(database)
    app = await make_app(database)
    async with httpx.AsyncClient(transport=notifying._transport, base_url="http://fhir.test") as web:
        flow = Flow(app, "launch/patient patient/*.rs patient/Communication.c patient/Subscription.cud")
        token = await token_for(web, flow, username, patient="maria-lopez")
        web.headers["authorization"] = f"Bearer {token['access_token']}"
        live = {"resourceType": "Subscription", "status": "requested", "reason": "tests",
                "channel": {"type": "websocket"}}  # fmt: skip
        mine = await subscribe(web, {**live, "criteria": "Communication?patient=Patient/maria-lopez"})
        assert mine["status"] == "active"
        before = await database["Subscription"].count_documents({})
        for criteria, named in (
            ("Communication?patient=Patient/james-oneil", "Patient/james-oneil"),
            ("Communication?patient=maria-lopez,james-oneil", "Patient/james-oneil"),
            ("Communication?subject=Patient/maria-lopez&recipient=Patient/james-oneil", "Patient/james-oneil"),
            ("Communication?subject=james-oneil", "james-oneil"),  # a bare id: the patient, without its type
        ):
            refused = await web.post("/fhir/Subscription", json={**live, "criteria": criteria}, headers=FHIR_JSON)
            assert refused.status_code == 403, refused.text
            issue = refused.json()["issue"][0]
            assert issue["diagnostics"] == (
                f"This token is limited to Patient/maria-lopez; Subscription.criteria names {named}. "
                "Subscribe to Patient/maria-lopez's faxes only, e.g. Communication?patient=Patient/maria-lopez."
            )
            assert issue["expression"] == ["Subscription.criteria"]
        assert await database["Subscription"].count_documents({}) == before, "nothing stored"
        own_bare = await subscribe(web, {**live, "criteria": "Communication?subject=maria-lopez"})
        assert own_bare["status"] == "active", "its own patient by bare id is fine"
        assert (await web.delete(f"/fhir/Subscription/{own_bare['id']}")).status_code in (200, 204)
        changed = {**live, "id": mine["id"], "criteria": "Communication?patient=Patient/james-oneil"}
        answer = await web.put(f"/fhir/Subscription/{mine['id']}", json=changed, headers=FHIR_JSON)
        assert answer.status_code == 403 and "names Patient/james-oneil" in answer.text
        kept = await web.get(f"/fhir/Subscription/{mine['id']}")
        assert kept.json()["meta"]["versionId"] == "1"
        assert kept.json()["criteria"] == "Communication?patient=Patient/maria-lopez"
        assert (await web.delete(f"/fhir/Subscription/{mine['id']}")).status_code in (200, 204)
    assert (await notifying.get(f"/fhir/Subscription/{mine['id']}")).status_code == 410, "removed when done"


async def test_nothing_is_sent_after_a_subscriptions_end(runtime: Runtime, database: Any, listener: Listener) -> None:
    """R4's ``end``: the server turns the Subscription off then; what matches afterwards is dropped, not sent."""
    code = f"end-{uuid.uuid4().hex[:6]}"
    kept = {"client": "test-admin", "scopes": "", "patient": None}
    made = {}
    for name, end in (("over", "2020-01-02T03:04:05Z"), ("later", "2999-01-01T00:00:00Z")):
        resource = {**subscription(f"Communication?category={code}", f"{listener.url}/{code}-{name}"), "end": end}
        checked, _ = check_subscription(resource, runtime.registry, ["127.0.0.1"])
        made[name] = (await runtime.store.create(checked, private=kept))["id"]
    body = {"resourceType": "Communication", "status": "completed", "category": [{"coding": [{"code": code}]}]}
    written = await runtime.store.create(body)
    while await runtime.subscriptions.dispatcher.step():
        pass
    sender = Sender(runtime.settings, runtime.store, runtime.subscriptions.queue, runtime.gate)
    try:
        for _ in range(10):
            await sender.step()
            if await database[NOTIFICATIONS].count_documents({"subscription": {"$in": list(made.values())},
                                                              "state": "due"}) == 0:  # fmt: skip
                break
    finally:
        await sender.close()
    over = await database[NOTIFICATIONS].find_one({"subscription": made["over"]})
    assert (over["state"], over["detail"]) == ("dropped", "the Subscription ended at 2020-01-02T03:04:05Z")
    later = await database[NOTIFICATIONS].find_one({"subscription": made["later"]})
    assert later["state"] == "sent" and later["resource"] == f"Communication/{written['id']}"
    assert listener.received(f"/{code}-over") == [] and len(listener.received(f"/{code}-later")) == 1
    # Turned off by the server then (R4's meaning of end), so it is matched no more: nothing is queued for it.
    turned = await runtime.store.read("Subscription", made["over"])
    assert (turned["status"], turned["meta"]["versionId"], turned["end"]) == ("off", "2", "2020-01-02T03:04:05Z")
    await runtime.store.create(body)
    while await runtime.subscriptions.dispatcher.step():
        pass
    assert await database[NOTIFICATIONS].count_documents({"subscription": made["over"]}) == 1
    assert await database[NOTIFICATIONS].count_documents({"subscription": made["later"]}) == 2


def test_an_end_in_a_leap_second_or_one_that_cannot_be_read_has_passed() -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    assert ended({"end": "2016-12-31T23:59:60Z"}, moment) == "2016-12-31T23:59:60Z"
    assert ended({"end": "2999-12-31T23:59:60Z"}, moment) is None
    assert ended({"end": "not a time"}, moment) == "not a time"
    assert ended({}, moment) is None
