"""``db.GroupWrites``: writes that arrive together are stored together, and every caller learns its own outcome."""

from __future__ import annotations

import asyncio

import pytest

from fhir_fax.db import GroupWrites


async def test_writes_made_while_one_is_in_flight_go_in_the_next_at_most_most_at_a_time() -> None:
    groups: list[list[int]] = []
    release = asyncio.Event()

    async def write(items: list[int]) -> None:
        groups.append(items)
        if len(groups) == 1:
            await release.wait()

    writes = GroupWrites(write, most=2)
    first = asyncio.create_task(writes.add(0))
    await asyncio.sleep(0)
    later = [asyncio.create_task(writes.add(n)) for n in (1, 2, 3)]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, *later)
    assert groups == [[0], [1, 2], [3]]
    await writes.add(4)
    assert groups[-1] == [4], "a write alone is written at once, alone"


async def test_writes_made_together_go_in_one_group() -> None:
    groups: list[list[int]] = []

    async def write(items: list[int]) -> None:
        groups.append(items)

    writes = GroupWrites(write)
    await asyncio.gather(*(writes.add(n) for n in range(5)))
    assert groups == [[0, 1, 2, 3, 4]]


async def test_a_failed_write_reaches_every_caller_of_its_group_and_close_waits_for_what_was_added() -> None:
    async def write(items: list[int]) -> None:
        raise ConnectionError(f"{len(items)} items not stored")

    failing = GroupWrites(write)
    results = await asyncio.gather(failing.add(1), failing.add(2), return_exceptions=True)
    assert [str(r) for r in results] == ["2 items not stored", "2 items not stored"]
    stored: list[int] = []
    release = asyncio.Event()

    async def keep(items: list[int]) -> None:
        await release.wait()
        stored.extend(items)

    writes = GroupWrites(keep)
    waiting = asyncio.create_task(writes.add(7))
    await asyncio.sleep(0)
    waiting.cancel()  # the caller went away (its request was cancelled): the item is still written
    with pytest.raises(asyncio.CancelledError):
        await waiting
    closing = asyncio.create_task(writes.close())
    await asyncio.sleep(0)
    assert not closing.done(), "close waits for the write on its way"
    release.set()
    await closing
    assert stored == [7]


async def test_a_caller_alone_never_waits_for_the_linger() -> None:
    """One caller after another (a reconciliation pass, one webhook at a time): each write goes at once, however
    long the linger. ``asyncio.timeout`` only keeps a broken build from hanging the suite."""
    groups: list[list[int]] = []

    async def write(items: list[int]) -> None:
        groups.append(items)

    writes = GroupWrites(write, linger=60.0)
    async with asyncio.timeout(10):
        for n in range(3):
            await writes.add(n)
        await asyncio.gather(writes.add(3), writes.add(4))  # the last group was of one: no wait, one group
    assert groups == [[0], [1], [2], [3, 4]]


async def test_after_writes_came_together_the_next_group_waits_for_more() -> None:
    groups: list[list[int]] = []

    async def write(items: list[int]) -> None:
        groups.append(items)

    writes = GroupWrites(write, linger=0.5)
    await asyncio.gather(writes.add(0), writes.add(1))  # together: one group of two
    first = asyncio.create_task(writes.add(2))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(writes.add(3))  # well within the wait that the group of two switched on
    await asyncio.gather(first, second)
    assert groups == [[0, 1], [2, 3]]
