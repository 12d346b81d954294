"""``db.GroupWrites``: writes that arrive together are stored together, and every caller learns its own outcome."""

from __future__ import annotations

import asyncio

import pytest

from fhir_fax.db import GroupWrites


async def test_writes_within_the_linger_go_in_one_group_and_each_caller_waits_for_it() -> None:
    groups: list[list[int]] = []

    async def write(items: list[int]) -> None:
        groups.append(items)

    writes = GroupWrites(write, linger=0.05)
    await asyncio.gather(*(writes.add(n) for n in range(5)))
    assert groups == [[0, 1, 2, 3, 4]]
    await writes.add(5)
    assert groups == [[0, 1, 2, 3, 4], [5]], "a write alone is written alone"


async def test_without_a_linger_the_writes_made_during_one_go_in_the_next() -> None:
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
    assert groups == [[0], [1, 2], [3]], "at most ``most`` a group"


async def test_a_failed_write_reaches_every_caller_of_its_group_and_close_waits_for_what_was_added() -> None:
    async def write(items: list[int]) -> None:
        raise ConnectionError(f"{len(items)} items not stored")

    writes = GroupWrites(write, linger=0.01)
    results = await asyncio.gather(writes.add(1), writes.add(2), return_exceptions=True)
    assert [str(r) for r in results] == ["2 items not stored", "2 items not stored"]
    stored: list[int] = []

    async def keep(items: list[int]) -> None:
        stored.extend(items)

    writes = GroupWrites(keep, linger=0.05)
    waiting = asyncio.create_task(writes.add(7))
    await asyncio.sleep(0)
    waiting.cancel()  # the caller went away (its request was cancelled): the item is still written
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await writes.close()
    assert stored == [7]
