"""The built wheel on its own: installed in a fresh virtualenv, run from outside the checkout.

``fhir-fax demo`` and ``--load-fixtures`` need the demo fixtures; they must travel inside the wheel, not sit
next to the sources. The fresh virtualenv gets only the wheel; its dependencies come from the test's own
environment through a path file (so installing downloads nothing; the build gets its setuptools as any
``pip wheel`` does), and the test checks that ``fhir_fax`` is imported from the virtualenv, never from the
checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from pathlib import Path

import httpx
import pytest
from pymongo import AsyncMongoClient

from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

from helpers import BOOTSTRAP, FIXTURES, login
from processes import ServerProcess

REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGING_INPUTS = ("pyproject.toml", "README.md", "LICENSE")
FIXTURE_FILES = {
    "HealthcareService-79ac80be-e0c5-4d15-8733-dcadd807f964.json",
    "Organization-harbor-cardiology.json",
    "Organization-riverside-family-medicine.json",
    "Patient-james-oneil.json",
    "Patient-maria-lopez.json",
    "Practitioner-51940f7e-7311-4006-b9aa-83bbc0c5b62c.json",
    "PractitionerRole-chen-harbor-cardiology.json",
    "referral-letter.pdf",
}


def clean_environment(**env: str) -> dict[str, str]:
    """No PYTHONPATH (it may point at the checkout, whose fhir_fax would win) and no FHIR_FAX_ settings."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_FAX_") and k != "PYTHONPATH"}
    return {**environment, **env}


def build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the packaging inputs, so that the checkout gets no build/ folder."""
    source = tmp_path / "source"
    source.mkdir()
    for name in PACKAGING_INPUTS:
        shutil.copy2(REPOSITORY / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPOSITORY / "fhir_fax", source / "fhir_fax", ignore=ignore)
    dist = tmp_path / "dist"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(dist), str(source)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("fhir_fax-*.whl")
    return wheel


def fresh_virtualenv(tmp_path: Path, wheel: Path) -> Path:
    """A new virtualenv holding the wheel; the dependencies are the test environment's installed packages."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300, env=clean_environment())
    # Only now (pip would otherwise see the test environment's fhir-fax as installed already), and as a plain path
    # line: the test environment's own .pth files (its editable install of the checkout) stay unread.
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def outside_the_checkout(venv: Path, workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        cwd=workdir, env=clean_environment(**env), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(wheel, virtualenv, an empty working directory outside the checkout)."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(tmp_path)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    return wheel, fresh_virtualenv(tmp_path, wheel), workdir


def test_the_wheel_holds_the_fixtures(installed: tuple[Path, Path, Path]) -> None:
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {name.rsplit("/", 1)[-1] for name in names if name.startswith("fhir_fax/data/fixtures/")}
    assert shipped >= FIXTURE_FILES


def test_the_wheel_holds_the_fax_app_and_its_smart_client(installed: tuple[Path, Path, Path]) -> None:
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    app = REPOSITORY / "fhir_fax" / "apps" / "fax"
    files = {str(p.relative_to(REPOSITORY)) for p in app.rglob("*") if p.is_file() and p.suffix != ".pyc"}
    assert "fhir_fax/apps/fax/vendor/fhir-client.min.js" in files and "fhir_fax/apps/fax/index.html" in files
    assert files <= names, "every file of the app is in the wheel: an installed server needs no Node"


def test_the_virtualenv_runs_the_wheel_not_the_checkout(installed: tuple[Path, Path, Path]) -> None:
    _, venv, workdir = installed
    found = outside_the_checkout(venv, workdir, "python", "-c", "import fhir_fax; print(fhir_fax.__file__)")
    assert found.returncode == 0, found.stderr
    module = Path(found.stdout.strip())
    assert module.is_relative_to(venv) and not module.is_relative_to(REPOSITORY)


def test_an_installed_wheel_runs_the_demo_and_loads_the_fixtures(
    installed: tuple[Path, Path, Path], mongo_uri: str
) -> None:
    _, venv, workdir = installed
    database = {"FHIR_FAX_MONGODB_URI": mongo_uri, "FHIR_FAX_DATABASE_NAME": f"wheel_{uuid.uuid4().hex[:12]}"}
    fast = {"FHIR_FAX_SIMULATOR_SPEED": "1000", "FHIR_FAX_RETRY_DELAY_SECONDS": "0.05"}
    demo = outside_the_checkout(venv, workdir, "fhir-fax", "demo", **database, **fast)
    assert demo.returncode == 0, demo.stderr
    assert "fixtures: 8 written, 0 unchanged" in demo.stdout
    assert "Delivered: 3 pages at " in demo.stdout
    assert "Stopped: BUSY - The line was busy." in demo.stdout
    again = outside_the_checkout(venv, workdir, "fhir-fax", "fixtures", "load", **database)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "fixtures: 0 written, 8 unchanged"


async def test_an_installed_wheel_serves_with_load_fixtures(installed: tuple[Path, Path, Path], mongo_uri: str) -> None:
    _, venv, workdir = installed
    name = f"wheel_{uuid.uuid4().hex[:12]}"
    env = {
        "PYTHONPATH": "",  # an empty one adds nothing: the checkout stays out of the server's path
        "FHIR_FAX_MONGODB_URI": mongo_uri,
        "FHIR_FAX_DATABASE_NAME": name,
        "FHIR_FAX_WORKER_ENABLED": "false",
        **{f"FHIR_FAX_{key.upper()}": value for key, value in BOOTSTRAP.items()},
    }
    command = [str(venv / "bin" / "fhir-fax"), "serve", "--port", "{port}", "--load-fixtures"]
    server = ServerProcess(command, log_dir=workdir.parent, ready_path="/healthz", env=env, cwd=workdir)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            await login(http)
            patient = await http.get("/fhir/Patient/maria-lopez")
            assert patient.status_code == 200, patient.text
            assert patient.json()["name"][0]["family"] == "Lopez"
    finally:
        server.stop()
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        letter = await Z3Store(mongo[name]).stat(Z3Location("fixtures", "referral-letter.pdf"))
    finally:
        await mongo.close()
    assert letter is not None and letter.size == (FIXTURES / "referral-letter.pdf").stat().st_size
