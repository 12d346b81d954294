"""The embedded database launcher: start, join, stop, restart after kill -9, and durable writes."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest
from pymongo import MongoClient

from fhir_fax.embedded import EmbeddedDatabase, EmbeddedDatabaseError, find_server_executable, ping


def write_acknowledged(uri: str, count: int) -> None:
    with MongoClient(uri, w="majority", journal=True) as client:
        for i in range(count):
            client.app.items.insert_one({"_id": i})


def stored_count(uri: str) -> int:
    with MongoClient(uri) as client:
        return client.app.items.count_documents({})


def test_start_join_and_stop(tmp_path: Path) -> None:
    owner = EmbeddedDatabase(tmp_path)
    uri = owner.start()
    try:
        assert ping(uri) and owner.owned
        assert (tmp_path / "db.json").exists() and (tmp_path / "logs" / "secantusd.log").exists()
        joiner = EmbeddedDatabase(tmp_path)
        assert joiner.start() == uri and not joiner.owned
        joiner.stop()
        assert ping(uri), "a process that only joined must not stop the server"
    finally:
        owner.stop()
    assert not ping(uri, timeout_ms=300)
    assert not (tmp_path / "db.json").exists()


def test_data_survives_a_restart(tmp_path: Path) -> None:
    first = EmbeddedDatabase(tmp_path)
    write_acknowledged(first.start(), 50)
    first.stop()
    second = EmbeddedDatabase(tmp_path)
    try:
        assert stored_count(second.start()) == 50
    finally:
        second.stop()


def test_acknowledged_writes_survive_kill_9_and_the_server_is_restarted(tmp_path: Path) -> None:
    server = EmbeddedDatabase(tmp_path)
    uri = server.start()
    try:
        write_acknowledged(uri, 300)
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        assert server.ensure_running() is True
        assert server.uri == uri, "restarted on the same port so clients reconnect by themselves"
        assert stored_count(uri) == 300
        assert server.ensure_running() is False  # running: nothing to do
    finally:
        server.stop()


def test_missing_executable_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedDatabaseError, match=r"fhir-fax\[embedded\].*FHIR_FAX_MONGODB_URI"):
        find_server_executable()


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = EmbeddedDatabase(tmp_path, port=busy.getsockname()[1], startup_timeout=20)
        with pytest.raises(EmbeddedDatabaseError, match=r"secantusd\.log"):
            server.start()
