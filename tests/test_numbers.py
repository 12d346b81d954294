"""Fax numbers: onboard, offboard and configuration over the SDK routes and the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_fax.settings import Settings

from helpers import seed_request, serving, stored_counts


async def test_the_simulator_assigns_a_test_number_once(api: httpx.AsyncClient) -> None:
    assert (await api.get("/fax/v1/config")).json() == {"configured": False, "faxNumbers": []}
    first = await api.post("/fax/v1/onboard", json={})
    assert first.status_code == 200 and first.json() == {"faxNumber": "+12025550100"}
    again = await api.post("/fax/v1/onboard", content=b"")
    assert again.json() == {"faxNumber": "+12025550100"}, "the project keeps its number"
    assert (await api.get("/fax/v1/config")).json() == {"configured": True, "faxNumbers": ["+12025550100"]}


async def test_a_named_number_is_registered_and_released(api: httpx.AsyncClient) -> None:
    assert (await api.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"})).json() == {
        "faxNumber": "+12223334444"
    }
    await api.post("/fax/v1/onboard", json={"faxNumber": "+16175550199"})
    assert (await api.get("/fax/v1/config")).json()["faxNumbers"] == ["+12223334444", "+16175550199"]
    released = await api.post("/fax/v1/offboard", json={"faxNumber": "+12223334444"})
    assert released.json() == {"released": ["+12223334444"]}
    assert (await api.get("/fax/v1/config")).json()["faxNumbers"] == ["+16175550199"]
    assert (await api.post("/fax/v1/offboard", json={})).json() == {"released": ["+16175550199"]}
    assert (await api.get("/fax/v1/config")).json() == {"configured": False, "faxNumbers": []}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"faxNumber": "2223334444"}', 400, "faxNumber: '2223334444' is not in E.164 form"),
        (b'{"faxNumber": 5}', 400, "faxNumber: 5 is not in E.164 form"),
        (b'{"number": "+12223334444"}', 400, 'may only hold "faxNumber"'),
        (b"not json", 400, "The body must be JSON"),
    ],
)
async def test_bad_onboard_bodies(
    api: httpx.AsyncClient, database: Any, body: bytes, status: int, message: str
) -> None:
    response = await api.post("/fax/v1/onboard", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.json() == {"message": response.json()["message"], "code": status}
    assert message in response.json()["message"]
    assert await database.fax_numbers.count_documents({}) == 0


async def test_offboarding_an_unknown_number_is_404(api: httpx.AsyncClient) -> None:
    response = await api.post("/fax/v1/offboard", json={"faxNumber": "+12223334444"})
    assert response.status_code == 404
    assert response.json()["message"].startswith("+12223334444 is not onboarded")


async def test_a_real_carrier_onboards_its_configured_number(settings: Settings, database: Any) -> None:
    for configured, expected in ((None, 422), ("+13125550123", 200)):
        carrier = settings.model_copy(
            update={"carrier": "telnyx", "carrier_fax_number": configured, "worker_enabled": False}
        )
        async with serving(carrier, database) as api:
            response = await api.post("/fax/v1/onboard", json={})
            assert response.status_code == expected
            if configured is None:
                assert "set FHIR_FAX_CARRIER_FAX_NUMBER" in response.json()["message"]
            else:
                assert response.json() == {"faxNumber": configured}


async def test_offboarded_senders_can_no_longer_send(fax_api: httpx.AsyncClient, database: Any) -> None:
    await fax_api.post("/fax/v1/offboard", json={})
    response = await fax_api.post("/fax/v1/send", json=seed_request())
    assert response.status_code == 422 and "is not onboarded" in response.json()["message"]
    assert (await stored_counts(database))["Communication"] == 0


def run_cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fhir_fax.cli", "numbers", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.e2e  # each call is a command-line process that starts its own embedded database
def test_the_numbers_command_line(tmp_path: Path) -> None:
    assert run_cli("list", data_dir=tmp_path).stdout.strip() == "no numbers onboarded"
    assert run_cli("onboard", data_dir=tmp_path).stdout.strip() == "onboarded +12025550100"
    assert run_cli("onboard", "+12223334444", data_dir=tmp_path).returncode == 0
    assert run_cli("list", data_dir=tmp_path).stdout.split() == [
        "onboarded", "+12025550100", "onboarded", "+12223334444",
    ]  # fmt: skip
    bad = run_cli("onboard", "12223334444", data_dir=tmp_path)
    assert bad.returncode == 2 and "not in E.164 form" in bad.stderr
    unnamed = run_cli("offboard", data_dir=tmp_path)
    assert unnamed.returncode == 2 and "pass --all" in unnamed.stderr
    unknown = run_cli("offboard", "+19998887777", data_dir=tmp_path)
    assert unknown.returncode == 1 and "is not onboarded" in unknown.stderr
    assert run_cli("offboard", "--all", data_dir=tmp_path).stdout.split() == [
        "offboarded", "+12025550100", "offboarded", "+12223334444",
    ]  # fmt: skip
    assert run_cli("list", data_dir=tmp_path).stdout.strip() == "no numbers onboarded"
