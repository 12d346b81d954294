"""The rest-hook listener process (``tests/servers/hook_listener.py``) and what it recorded, for tests."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

from helpers import eventually
from processes import ServerProcess

LISTENER = Path(__file__).resolve().parent / "servers" / "hook_listener.py"


class Listener:
    """A real HTTP endpoint in its own process; ``down()``/``up()`` make it answer 503 or 200."""

    def __init__(self, folder: Path) -> None:
        self.log = folder / f"hooks-{uuid.uuid4().hex[:6]}.jsonl"
        self.fail_file = folder / f"down-{uuid.uuid4().hex[:6]}"
        self.process = ServerProcess(
            [sys.executable, str(LISTENER), "{port}", str(self.log), str(self.fail_file)],
            log_dir=folder,
            ready_path="/healthz",
        )
        self.url = self.process.url

    def down(self) -> None:
        self.fail_file.touch()

    def up(self) -> None:
        self.fail_file.unlink(missing_ok=True)

    def stop(self) -> None:
        self.process.stop(9)

    def records(self, path: str | None = None) -> list[dict[str, Any]]:
        """Every request (``path``'s only, when given), in arrival order, with the status it was answered."""
        if not self.log.exists():
            return []
        found = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in found if path is None or r["path"] == path]

    def received(self, path: str) -> list[dict[str, Any]]:
        """What was taken (answered 200) at ``path``, in arrival order."""
        return [r for r in self.records(path) if r["status"] == 200]

    async def wait_for(self, path: str, count: int, within: float = 30) -> list[dict[str, Any]]:
        """The first ``count`` notifications taken at ``path`` (waiting until there are that many)."""

        async def probe() -> list[dict[str, Any]] | None:
            found = self.received(path)
            return found if len(found) >= count else None

        return await eventually(probe, within=within, failure=lambda: f"{path} got {self.records(path)}")


def header(record: dict[str, Any], name: str) -> str:
    """A request header of a recorded notification, by name in any case."""
    return next((v for k, v in record["headers"].items() if k.lower() == name.lower()), "")


def resource_versions(records: list[dict[str, Any]]) -> list[str]:
    """``Type/id/_history/v`` of each notification, in arrival order."""
    return [header(r, "X-FHIR-Fax-Resource") for r in records]
