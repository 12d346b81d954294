"""Background loops stop when cancelled, even when the cancel arrives just as the event they wait for is set.

On Python 3.11, ``asyncio.wait_for`` returns the inner result when the inner wait has finished by the time the
cancellation is handled, and the cancellation is lost: a loop around it then goes on forever, and a server
shutting down waits for it forever (seen: the in-process app's shut-down hung after a send woke its worker).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fhir_fax.db import wait_for_event
from fhir_fax.runtime import Runtime
from fhir_fax.settings import Settings


async def test_a_cancel_that_arrives_as_the_event_is_set_is_not_lost() -> None:
    event = asyncio.Event()
    rounds = 0

    async def loop_forever() -> None:
        nonlocal rounds
        while True:
            await wait_for_event(event, 10)
            event.clear()
            rounds += 1

    task = asyncio.create_task(loop_forever())
    await asyncio.sleep(0)  # waiting on the event now
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), 5)
    assert task.cancelled()


async def test_wait_for_event_says_whether_the_event_came() -> None:
    event = asyncio.Event()
    assert await wait_for_event(event, 0.01) is False
    event.set()
    assert await wait_for_event(event, 10) is True


async def test_the_worker_stops_when_cancelled_as_a_send_wakes_it(fax_settings: Settings, database: Any) -> None:
    runtime = Runtime.build(fax_settings, database)
    await runtime.prepare()
    worker = runtime.worker()
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(500):  # until it waits for work
            if worker._enqueued is not None:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        runtime.outbox.committed()  # what a send does once its transaction commits
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), 10)
    finally:
        if not task.done():
            task.cancel()
        await runtime.close()
