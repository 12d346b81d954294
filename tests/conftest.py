"""Shared fixtures: one real embedded database server per test session, a fresh database per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import AsyncMongoClient

from fhir_fax.embedded import EmbeddedDatabase
from fhir_fax.settings import Settings

from helpers import BOOTSTRAP, serving, serving_fax


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real secantusd-py server in its own process, started by the product's own launcher.

    Test commands are on so that tests can arm ``failCommand`` fail points.
    """
    server = EmbeddedDatabase(tmp_path_factory.mktemp("mongo"), extra_args=("--enable-test-commands",))
    uri = server.start()
    yield uri
    server.stop()


@pytest.fixture
async def client(mongo_uri: str) -> AsyncIterator[AsyncMongoClient]:
    mongo = AsyncMongoClient(mongo_uri, tz_aware=True)
    yield mongo
    await mongo.close()


@pytest.fixture
async def database(client: AsyncMongoClient) -> AsyncIterator[Any]:
    """An empty database of its own for each test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield client[name]
    await client.drop_database(name)


@pytest.fixture(params=["pymongo", "motor"])
async def any_database(request: pytest.FixtureRequest, mongo_uri: str) -> AsyncIterator[Any]:
    """The same empty database through each supported driver (PyMongo async and Motor)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    if request.param == "pymongo":
        mongo: Any = AsyncMongoClient(mongo_uri, tz_aware=True)
        yield mongo[name]
        await mongo.drop_database(name)
        await mongo.close()
    else:
        mongo = AsyncIOMotorClient(mongo_uri)
        yield mongo[name]
        await mongo.drop_database(name)
        mongo.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", base_url="http://fhir.test", _env_file=None, **BOOTSTRAP)


@pytest.fixture
async def api(settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The standalone app, started (lifespan) on the test's database, called over ASGI as the admin."""
    async with serving(settings, database) as http:
        yield http


@pytest.fixture
def fax_settings(tmp_path: Path) -> Settings:
    """Fixtures loaded; the hosted service's project-API URL accepted as an alias, as in the seed."""
    return Settings(
        data_dir=tmp_path / "data",
        base_url="http://fhir.test",
        load_fixtures=True,
        z3_url_aliases=["https://project-api.zapehr.com/v1"],
        _env_file=None,
        **BOOTSTRAP,
    )


@pytest.fixture
async def fax_api(fax_settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app with fixtures, the sender's number onboarded and the seed's document in Z3 (as the admin)."""
    async with serving_fax(fax_settings, database) as http:
        yield http
