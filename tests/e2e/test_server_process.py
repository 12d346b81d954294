"""``fhir-fax serve`` as a real process on the embedded database: restarts, kill -9, Ctrl-C, fixtures."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from processes import CLI, FaxServer

FHIR = {"content-type": "application/fhir+json"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def wait_dead(pid: int, timeout: float = 60) -> bool:
    """Has ``pid`` exited within ``timeout``? Generous: a database told to stop on a loaded machine first finishes
    its writes, which took more than 15 s while both test workers were busy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def create_patient(server: FaxServer, family: str) -> str:
    response = httpx.post(
        f"{server.url}/fhir/Patient",
        json={"resourceType": "Patient", "name": [{"family": family}]},
        headers={**FHIR, **server.headers},
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_kill_9_of_the_server_takes_the_database_down_and_a_restart_keeps_the_data(data_dir: Path) -> None:
    server = FaxServer(data_dir)
    ids = [create_patient(server, f"Before-{i}") for i in range(20)]
    db_pid = server.database_pid()
    server.stop(signal.SIGKILL)
    assert wait_dead(db_pid), "the embedded database must not outlive a killed server"
    again = FaxServer(data_dir)
    try:
        for resource_id in ids:
            assert httpx.get(f"{again.url}/fhir/Patient/{resource_id}", headers=again.headers).status_code == 200
    finally:
        again.stop()


def test_kill_9_of_the_database_is_survived(data_dir: Path) -> None:
    server = FaxServer(data_dir)
    try:
        before = create_patient(server, "Before")
        old_pid = server.database_pid()
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and server.database_pid() == old_pid:
            time.sleep(0.1)
        assert server.database_pid() != old_pid, "the server restarts its database"
        after = None
        while after is None and time.monotonic() < deadline + 10:
            try:
                after = create_patient(server, "After")
            except (AssertionError, httpx.TransportError):
                time.sleep(0.2)
        assert after is not None
        read = {"headers": server.headers}
        assert httpx.get(f"{server.url}/fhir/Patient/{before}", **read).json()["name"][0]["family"] == "Before"
        assert httpx.get(f"{server.url}/fhir/Patient/{after}", **read).json()["name"][0]["family"] == "After"
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_shuts_down_gracefully_with_the_database(data_dir: Path, sig: int) -> None:
    server = FaxServer(data_dir)
    db_pid = server.database_pid()
    server.stop(sig)
    assert "Application shutdown complete" in server.log.read_text()
    assert wait_dead(db_pid)
    assert not (data_dir / "db.json").exists()


def test_fixtures_load_with_the_server_and_again_from_the_cli_idempotently(data_dir: Path) -> None:
    server = FaxServer(data_dir, "--load-fixtures")
    try:
        sender = httpx.get(
            f"{server.url}/fhir/HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964", headers=server.headers
        ).json()
        assert {"system": "fax", "value": "+12223334444", "use": "work", "rank": 1} in sender["telecom"]
        loaded = subprocess.run(
            [*CLI, "fixtures", "load", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert loaded.returncode == 0, loaded.stderr
        assert "0 written, 8 unchanged" in loaded.stdout  # 7 resources and the letter in Z3
        history = httpx.get(f"{server.url}/fhir/Patient/maria-lopez/_history", headers=server.headers).json()
        assert history["total"] == 1  # loading again made no new version
    finally:
        server.stop()


def test_with_a_mongodb_uri_nothing_is_started(data_dir: Path, mongo_uri: str) -> None:
    uri = mongo_uri.replace("/?", "/?appName=e2e&")
    server = FaxServer(data_dir, env={"FHIR_FAX_MONGODB_URI": uri, "FHIR_FAX_DATABASE_NAME": "e2e_uri"})
    try:
        assert create_patient(server, "External")
        assert not (data_dir / "db").exists() and not (data_dir / "db.json").exists()
    finally:
        server.stop()
