"""The token lock-out: per client and address, atomic, shared by every process, and hashing off the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fhir_fax.app import create_app
from fhir_fax.auth import clients as clients_module
from fhir_fax.settings import Settings

from helpers import ADMIN_ID, ADMIN_SECRET

ATTACKER, REAL_CLIENT = "198.51.100.66", "192.0.2.10"
FORM = {"grant_type": "client_credentials", "client_id": ADMIN_ID}


@asynccontextmanager
async def started(settings: Settings, database: Any) -> AsyncIterator[FastAPI]:
    app = create_app(settings.model_copy(update={"worker_enabled": False}), database=database)
    async with app.router.lifespan_context(app):
        yield app


async def counts(database: Any) -> tuple[set[str], int, int]:
    """The pairs counted, and their failures and checks in flight (summed over minutes)."""
    stored = await database["token_failures"].find({}).to_list(None)
    pairs = {d["_id"].rsplit("|", 1)[0] for d in stored}
    return pairs, sum(d.get("failed", 0) for d in stored), sum(d.get("pending", 0) for d in stored)


def caller(app: FastAPI, address: str) -> httpx.AsyncClient:
    """An HTTP client whose connections come from ``address`` (the ASGI peer the server sees)."""
    transport = httpx.ASGITransport(app=app, client=(address, 40_000))
    return httpx.AsyncClient(transport=transport, base_url="http://fhir.test")


async def guess(http: httpx.AsyncClient, secret: str) -> httpx.Response:
    return await http.post("/oauth/token", data={**FORM, "client_secret": secret})


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The secrets that reached the hash (the costly check the limit rations), in order."""
    seen: list[str] = []
    original = clients_module.hash_secret

    def counting(secret: str, salt: bytes) -> bytes:
        seen.append(secret)
        return original(secret, salt)

    monkeypatch.setattr(clients_module, "hash_secret", counting)
    return seen


async def test_an_attacker_elsewhere_cannot_lock_the_real_client_out(settings: Settings, database: Any) -> None:
    async with started(settings, database) as app, caller(app, ATTACKER) as attacker, caller(app, REAL_CLIENT) as real:
        statuses = [(await guess(attacker, f"guess-{n}")).status_code for n in range(14)]
        assert statuses == [401] * 10 + [429] * 4
        locked = await guess(attacker, ADMIN_SECRET)
        assert (locked.status_code, locked.json()["error"]) == (429, "slow_down")
        assert "access_token" not in locked.json(), "the attacker's address stays locked, even with the right secret"
        response = await guess(real, ADMIN_SECRET)
        assert response.status_code == 200, response.text
        assert response.json()["access_token"]
        one_wrong = await guess(real, "typo")
        assert one_wrong.status_code == 401, "the real client's own count starts at zero"


async def test_concurrent_guesses_get_at_most_the_limit_through(
    settings: Settings, database: Any, checked: list[str]
) -> None:
    """All 32 arrive together: each takes its place by an atomic increment before its secret is checked."""
    async with started(settings, database) as app, caller(app, ATTACKER) as attacker:
        checked.clear()  # the bootstrap client's secret was hashed at start-up
        responses = await asyncio.gather(*(guess(attacker, f"guess-{n}") for n in range(32)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [401] * 10 + [429] * 22
    assert len(checked) == 10, "a refused guess never reaches the secret check"
    assert all(r.json()["error"] in ("invalid_client", "slow_down") for r in responses)


async def test_every_server_process_shares_the_pair_count(settings: Settings, database: Any) -> None:
    """A second app on the same database refuses the same client and address: the count is in the database."""
    async with started(settings, database) as first_app, caller(first_app, ATTACKER) as first:
        for n in range(10):
            assert (await guess(first, f"guess-{n}")).status_code == 401
        async with started(settings, database) as second_app, caller(second_app, ATTACKER) as second:
            refused = await guess(second, "guess-10")
            assert (refused.status_code, refused.headers["retry-after"]) == (429, "60")
            async with caller(second_app, REAL_CLIENT) as real:
                assert (await guess(real, ADMIN_SECRET)).status_code == 200
    keys = {d["_id"].rsplit("|", 1)[0] async for d in database["token_failures"].find({"failed": {"$gt": 0}})}
    assert keys == {f"{ADMIN_ID}@{ATTACKER}"}, "only the guessing pair is counted; a success is not a failure"


async def test_guessing_goes_on_counting_while_locked(settings: Settings, database: Any) -> None:
    """Back-off: attempts made while locked are counted too, so a guesser that keeps trying stays locked."""
    async with started(settings, database) as app, caller(app, ATTACKER) as attacker:
        for n in range(25):
            await guess(attacker, f"guess-{n}")
    assert await counts(database) == ({f"{ADMIN_ID}@{ATTACKER}"}, 25, 0)


async def test_an_honest_burst_is_slowed_not_refused(settings: Settings, database: Any) -> None:
    """16 concurrent requests with the right secret: those beyond the limit wait for the checks in flight."""
    async with started(settings, database) as app, caller(app, REAL_CLIENT) as real:
        responses = await asyncio.gather(*(guess(real, ADMIN_SECRET) for _ in range(16)))
    assert [r.status_code for r in responses] == [200] * 16
    assert await counts(database) == ({f"{ADMIN_ID}@{REAL_CLIENT}"}, 0, 0)


async def test_a_burst_of_wrong_and_right_secrets_keeps_the_limit(
    settings: Settings, database: Any, checked: list[str]
) -> None:
    """The right secret in a burst of guesses from the same address: at most the limit is checked in all."""
    async with started(settings, database) as app, caller(app, ATTACKER) as attacker:
        checked.clear()  # the bootstrap client's secret was hashed at start-up
        secrets = [f"guess-{n}" for n in range(20)] + [ADMIN_SECRET] * 5
        responses = await asyncio.gather(*(guess(attacker, secret) for secret in secrets))
    wrong = [r.status_code for r in responses[:20]]
    assert wrong.count(401) <= 10 and set(wrong) <= {401, 429}
    assert checked.count(ADMIN_SECRET) == sum(r.status_code == 200 for r in responses[20:])
    assert len([s for s in checked if s != ADMIN_SECRET]) == wrong.count(401) <= 10


async def test_ipv6_guessers_are_counted_per_64_prefix(settings: Settings, database: Any) -> None:
    """One IPv6 allocation (a /64) is one address for the lock-out: rotating the interface id does not reset it."""
    async with started(settings, database) as app:
        statuses = []
        for n in range(12):
            async with caller(app, f"2001:db8:1:2::{n + 1:x}") as attacker:
                statuses.append((await guess(attacker, f"guess-{n}")).status_code)
        assert statuses == [401] * 10 + [429] * 2
        async with caller(app, "2001:db8:1:3::1") as neighbour:
            assert (await guess(neighbour, ADMIN_SECRET)).status_code == 200


async def test_secret_hashing_runs_off_the_event_loop(settings: Settings, database: Any) -> None:
    """While one token request is hashing, the server keeps answering: the hash runs in a worker thread."""
    original = clients_module.hash_secret
    hashing, release = threading.Event(), threading.Event()
    threads: list[str] = []
    released: list[bool] = []

    def held(secret: str, salt: bytes) -> bytes:
        threads.append(threading.current_thread().name)
        if secret == "held":
            hashing.set()
            released.append(release.wait(timeout=20))  # on the event loop this would stall every request
        return original(secret, salt)

    async with started(settings, database) as app, caller(app, REAL_CLIENT) as http:
        clients_module.hash_secret = held
        try:
            pending = asyncio.create_task(guess(http, "held"))
            assert await asyncio.to_thread(hashing.wait, 20), "the token request never reached the hash"
            health = await http.get("/healthz")  # answered while the hash is still held
            release.set()
            response = await pending
            await guess(http, ADMIN_SECRET)
        finally:
            clients_module.hash_secret = original
            release.set()
    assert health.status_code == 200
    assert released == [True], "the hash was still held when /healthz answered"
    assert response.status_code == 401
    loop_thread = threading.main_thread().name
    assert threads and all(name != loop_thread and name.startswith("fhir-fax-hash") for name in threads), threads


async def test_creating_and_rotating_secrets_hash_off_the_event_loop(database: Any) -> None:
    original = clients_module.hash_secret
    threads: list[str] = []

    def recording(secret: str, salt: bytes) -> bytes:
        threads.append(threading.current_thread().name)
        return original(secret, salt)

    clients_module.hash_secret = recording
    try:
        registry = clients_module.Clients(database)
        record, _ = await registry.create(
            "billing", {"rule": {"resource": "Fax:*", "action": "Fax:Send", "effect": "Allow"}}
        )
        rotated = await registry.rotate_secret(record["_id"])
        assert rotated and await registry.authenticate(record["clientId"], rotated) is not None
        await registry.ensure_bootstrap("boot", "a-long-bootstrap-secret")
    finally:
        clients_module.hash_secret = original
    assert len(threads) >= 4 and all(name.startswith("fhir-fax-hash") for name in threads), threads


@pytest.mark.parametrize("address", [ATTACKER, "2001:db8::1"])
async def test_the_count_key_names_client_and_address(settings: Settings, database: Any, address: str) -> None:
    async with started(settings, database) as app, caller(app, address) as attacker:
        assert (await guess(attacker, "wrong")).status_code == 401
    expected = ATTACKER if address == ATTACKER else "2001:db8::/64"
    assert await counts(database) == ({f"{ADMIN_ID}@{expected}"}, 1, 0)


async def test_a_burst_that_cannot_wait_is_told_to_retry_without_a_failure(settings: Settings, database: Any) -> None:
    """Beyond the limit of checks in flight, an attempt that waited its longest gets 429, Retry-After 1, uncounted."""
    original = clients_module.hash_secret
    release = threading.Event()

    def held(secret: str, salt: bytes) -> bytes:
        release.wait(timeout=20)  # every admitted check stays in flight until the busy ones are answered
        return original(secret, salt)

    async with started(settings, database) as app, caller(app, REAL_CLIENT) as real:
        app.state.fax_module.auth.limiter.MAX_WAIT_SECONDS = 0.0
        clients_module.hash_secret = held
        try:
            tasks = [asyncio.create_task(guess(real, ADMIN_SECRET)) for _ in range(16)]
            answered: set[asyncio.Task[httpx.Response]] = set()
            while len(answered) < 6:
                done, _ = await asyncio.wait(set(tasks) - answered, timeout=20, return_when=asyncio.FIRST_COMPLETED)
                assert done, "the attempts beyond the limit were never answered"
                answered |= done
            release.set()
            responses = [await task for task in tasks]
        finally:
            clients_module.hash_secret = original
            release.set()
    # Two attempts that arrive together may each see the other in flight and both step back (stricter, never
    # looser), so the exact split depends on scheduling; what may never happen is more than 10 checks at once.
    admitted = [r for r in responses if r.status_code == 200]
    busy = [r for r in responses if r.status_code != 200]
    assert 1 <= len(admitted) <= 10 and len(busy) >= 6
    assert {(r.status_code, r.headers["retry-after"]) for r in busy} == {(429, "1")}
    assert all("at once" in r.json()["error_description"] for r in busy)
    assert await counts(database) == ({f"{ADMIN_ID}@{REAL_CLIENT}"}, 0, 0)


async def test_a_flood_of_secret_checks_is_shed_not_queued(
    settings: Settings, database: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond ``max_waiting`` secret checks queued for a hashing thread, token requests get 503 at once."""
    original = clients_module.hash_secret
    release = threading.Event()

    def held(secret: str, salt: bytes) -> bytes:
        release.wait(timeout=20)
        return original(secret, salt)

    monkeypatch.setattr(clients_module.HASHING, "max_waiting", 2)
    async with started(settings, database) as app, caller(app, ATTACKER) as attacker:
        clients_module.hash_secret = held
        try:
            forms = [{**FORM, "client_id": f"client-{n}", "client_secret": "x"} for n in range(5)]
            tasks = [asyncio.create_task(attacker.post("/oauth/token", data=form)) for form in forms]
            answered: set[asyncio.Task[httpx.Response]] = set()
            while len(answered) < 3:
                done, _ = await asyncio.wait(set(tasks) - answered, timeout=20, return_when=asyncio.FIRST_COMPLETED)
                assert done, "the requests beyond the queue were not answered while the hashes were held"
                answered |= done
            shed = [task.result() for task in answered]
            release.set()
            checked = [await task for task in tasks if task not in answered]
        finally:
            clients_module.hash_secret = original
            release.set()
    assert [(r.status_code, r.json()["error"], r.headers["retry-after"]) for r in shed] == [
        (503, "temporarily_unavailable", "1")
    ] * 3
    assert all("retry in a moment" in r.json()["error_description"] for r in shed)
    assert [r.status_code for r in checked] == [401, 401]
    pairs, failed, pending = await counts(database)
    # The five made-up client ids share one count for the address; only the two checked secrets failed.
    assert (len(pairs), failed, pending) == (1, 2, 0), "a shed request is not counted as a failure"
    assert clients_module.HASHING.waiting == 0


async def test_made_up_client_ids_share_one_count_per_address(
    settings: Settings, database: Any, checked: list[str]
) -> None:
    """A new, unknown client id on every request must not buy a fresh budget of secret checks each time.

    Otherwise one address could keep the shared hashing threads busy for every client. Unknown ids from one
    address are counted together; a real client from the same address keeps its own count.
    """
    async with started(settings, database) as app, caller(app, ATTACKER) as attacker:
        checked.clear()  # the bootstrap client's secret was hashed at start-up
        made_up = [
            await attacker.post("/oauth/token", data={**FORM, "client_id": f"nobody-{n}", "client_secret": "x"})
            for n in range(14)
        ]
        assert [r.status_code for r in made_up] == [401] * 10 + [429] * 4
        assert len(checked) == 10, "refused attempts never reach the secret check"
        assert (await guess(attacker, ADMIN_SECRET)).status_code == 200, "the real client keeps its own count"
