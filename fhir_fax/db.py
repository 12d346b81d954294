"""Database client lifecycle, and the few driver calls that differ between PyMongo and Motor.

The rest of the code takes a database handle and uses only the collection API that
PyMongo's native async driver (``AsyncMongoClient``) and Motor share, so a host
application can hand over either.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from pymongo import AsyncMongoClient, WriteConcern

from .embedded import EmbeddedDatabase
from .settings import Settings

T = TypeVar("T")

# Acknowledged writes must survive a crash: ask for journaled, majority writes.
DURABLE = WriteConcern(w="majority", j=True)


def open_client(uri: str) -> AsyncMongoClient[dict[str, Any]]:
    return AsyncMongoClient(uri, tz_aware=True, w="majority", journal=True)


async def maybe_await(value: Any) -> Any:
    """Motor returns awaitables where PyMongo's async API sometimes returns values."""
    return await value if inspect.isawaitable(value) else value


async def wait_for_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set, at most ``seconds``; whether it was set.

    For the waits of background loops. On Python 3.11 ``asyncio.wait_for`` loses a cancellation that arrives
    just as the awaited event is set (it returns the result instead), and the loop around it then never stops;
    ``asyncio.timeout`` tells its own timeout from a cancellation, so this never loses one.
    """
    try:
        async with asyncio.timeout(max(0.0, seconds)):
            await event.wait()
    except TimeoutError:
        return False
    return True


def stop_if_cancelled() -> None:
    """Call in ``except Exception`` of a loop that logs and carries on: re-raise a cancellation the driver hid.

    A cancellation that arrives in the middle of a database operation can come out of the driver as a
    connection error; a loop that logs errors and goes round again would then never stop, and a server shutting
    down would wait for it forever. ``Task.cancelling()`` still says it was asked to stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def in_transaction(client: Any, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(session)`` in a transaction, retried on transient errors, on either driver."""
    session = await maybe_await(client.start_session())
    async with session:
        result: T = await session.with_transaction(work, write_concern=DURABLE)
        return result


class Database:
    """Owns the client (and the embedded server when no URI is configured)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded: EmbeddedDatabase | None = None
        self.client: AsyncMongoClient[dict[str, Any]] | None = None

    def connect(self) -> Any:
        """Start what is needed and return the database handle."""
        uri = self.settings.mongodb_uri
        if not uri:
            self.embedded = EmbeddedDatabase(self.settings.data_dir)
            uri = self.embedded.start()
        self.client = open_client(uri)
        return self.client[self.settings.database_name]

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None


class GroupWrites(Generic[T]):
    """Writes that arrive while one is in flight go together in the next: a burst costs one round trip, and a
    write made alone waits for nothing.

    ``write`` stores a list of items; ``add`` returns once its item is stored, or raises what ``write``
    raised for its group (each waiting caller learns it).

    ``linger`` (seconds), for background work: while items come from many callers at once (the last group held
    more than one), a group waits that long for more before it is written. A caller alone (a reconciliation pass
    handling jobs one after another, one webhook at a time) makes groups of one, and then nothing waits.
    """

    def __init__(self, write: Callable[[list[T]], Awaitable[None]], most: int = 500, linger: float = 0.0) -> None:
        self.write = write
        self.most = most
        self.linger = linger
        self._last_group = 0
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def add(self, item: T) -> None:
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        await done

    async def close(self) -> None:
        """Wait until what was added is written (the server is stopping)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer

    async def _write_waiting(self) -> None:
        if self.linger > 0 and self._last_group > 1:
            await asyncio.sleep(self.linger)
        while self._waiting:
            group, self._waiting = self._waiting[: self.most], self._waiting[self.most :]
            self._last_group = len(group)
            try:
                await self.write([item for item, _ in group])
            except Exception as error:
                for _, done in group:
                    if not done.done():
                        done.set_exception(error)
            else:
                for _, done in group:
                    if not done.done():
                        done.set_result(None)
