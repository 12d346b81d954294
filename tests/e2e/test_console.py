"""``fhir-fax send`` and ``fhir-fax demo`` as a person runs them: real processes, embedded database."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from helpers import FIXTURES
from processes import CLI


def run(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_FAX_")}
    environment.update({"FHIR_FAX_SIMULATOR_SPEED": "1000", "FHIR_FAX_RETRY_DELAY_SECONDS": "0.05", **env})
    return subprocess.run(
        [*CLI, *args, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=120, env=environment
    )


def test_demo_tells_the_whole_story(tmp_path: Path) -> None:
    result = run("demo", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    statuses = [line.split()[1] for line in lines if line[:2].isdigit() and line[2] == ":"]
    assert statuses[:4] == ["queued", "processing", "sending", "delivered"]
    assert "Delivered: 3 pages at " in result.stdout
    assert "Stopped: BUSY - The line was busy." in result.stdout
    assert statuses.count("queued") == 1 + 3, "the busy line was tried three times"


def test_send_uploads_sends_and_reports_the_end(tmp_path: Path) -> None:
    assert run("demo", data_dir=tmp_path).returncode == 0  # fixtures and the onboarded number
    letter = str(FIXTURES / "referral-letter.pdf")
    delivered = run(
        "send", "--media", letter, "--to", "+16175550143", "--patient", "Patient/james-oneil", data_dir=tmp_path
    )
    assert delivered.returncode == 0, delivered.stderr
    assert "uploaded referral-letter.pdf (3 pages) to z3://uploads/" in delivered.stdout
    assert delivered.stdout.strip().splitlines()[-1].startswith("Delivered: 3 pages at ")
    failed = run("send", "--media", letter, "--to", "+16175550004", "--quality", "superfine", data_dir=tmp_path)
    assert failed.returncode == 1
    assert failed.stdout.strip().splitlines()[-1] == "Stopped: FAILED - The fax could not be sent."


def test_send_refuses_what_it_cannot_fax(tmp_path: Path) -> None:
    assert run("demo", data_dir=tmp_path).returncode == 0
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a document a fax machine can print")
    refused = run("send", "--media", str(text_file), "--to", "+16175550143", data_dir=tmp_path)
    assert refused.returncode == 2
    assert "is not a PDF, TIFF, PNG or JPEG" in refused.stderr
    bad_number = run("send", "--media", str(FIXTURES / "referral-letter.pdf"), "--to", "+1 617", data_dir=tmp_path)
    assert bad_number.returncode == 2
    assert "recipientNumber: '+1 617' is not in E.164 form" in bad_number.stderr


def test_z3_put_and_get(tmp_path: Path) -> None:
    letter = FIXTURES / "referral-letter.pdf"
    stored = run("z3", "put", str(letter), "z3://letters/2026/referral.pdf", data_dir=tmp_path)
    assert stored.returncode == 0, stored.stderr
    assert stored.stdout.strip() == f"stored {letter} ({letter.stat().st_size} bytes) at z3://letters/2026/referral.pdf"
    copy = tmp_path / "copy.pdf"
    fetched = run("z3", "get", "z3://letters/2026/referral.pdf", str(copy), data_dir=tmp_path)
    assert fetched.returncode == 0 and copy.read_bytes() == letter.read_bytes()
    missing = run("z3", "get", "z3://letters/nothing.pdf", str(copy), data_dir=tmp_path)
    assert missing.returncode == 1 and "there is no object at z3://letters/nothing.pdf" in missing.stderr
    no_file = run("z3", "put", str(tmp_path / "missing.pdf"), "z3://letters/x.pdf", data_dir=tmp_path)
    assert no_file.returncode == 2 and "is not a file" in no_file.stderr
    bad = run("z3", "put", str(letter), "https://elsewhere.example/x.pdf", data_dir=tmp_path)
    assert bad.returncode == 2 and "is not a Z3 URL" in bad.stderr


def test_clients_command_line(tmp_path: Path) -> None:
    import json

    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"rule": [{"resource": ["Fax:Fax:*"], "action": ["Fax:Send"], "effect": "Allow"}]}))
    created = run("clients", "create", "--name", "billing", "--policy", str(policy), data_dir=tmp_path)
    assert created.returncode == 0, created.stderr
    client = json.loads(created.stdout)
    assert client["name"] == "billing" and len(client["secret"]) > 30
    listed = run("clients", "list", data_dir=tmp_path)
    assert f"{client['id']}  {client['clientId']}  billing" in listed.stdout
    assert client["secret"] not in listed.stdout
    rotated = run("clients", "rotate-secret", client["id"], data_dir=tmp_path)
    assert rotated.returncode == 0 and client["secret"] not in rotated.stdout
    assert run("clients", "delete", client["id"], data_dir=tmp_path).returncode == 0
    assert run("clients", "delete", client["id"], data_dir=tmp_path).returncode == 1
    policy.write_text(json.dumps({"rule": [{"resource": "FHIR:*:1", "action": "FHIR:Read", "effect": "Allow"}]}))
    refused = run("clients", "create", "--name", "bad", "--policy", str(policy), data_dir=tmp_path)
    assert refused.returncode == 2 and "wildcard is followed by a specific part" in refused.stderr
