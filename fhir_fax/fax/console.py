"""``fhir-fax send`` and ``fhir-fax demo``: send a fax from the terminal and watch its status change live.

Both work on the configured database directly (joining the embedded one if a server runs), through
the same ``Runtime`` as the HTTP API (so the same FaxService, auditor and carrier: a fax sent here
leaves the same AuditEvents as one sent over HTTP), and run that runtime's delivery worker while they
watch; any other worker (the server's) may take the job instead, as workers coordinate through the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fixtures import FIXTURES_DIR, load_fixtures
from ..z3.locations import Z3Location
from .documents import DocumentProblem, count_pages, run_pdfium, sniff_type
from .operation import SendFaxRequest
from .send import Caller
from .status import ATTEMPT_EXTENSION
from .terminology import OUTBOUND_STATUS_EXTENSION

if TYPE_CHECKING:
    from ..runtime import Runtime

Printer = Callable[[str], None]
FIXTURE_SENDER = "HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964"
FIXTURE_SENDER_NUMBER = "+12223334444"


def _status(communication: dict[str, Any]) -> str:
    extension = next(e for e in communication["extension"] if e["url"] == OUTBOUND_STATUS_EXTENSION)
    return str(extension["valueCodeableConcept"]["coding"][0]["code"])


def _attempt(communication: dict[str, Any]) -> int:
    return next((e["valueInteger"] for e in communication["extension"] if e["url"] == ATTEMPT_EXTENSION), 1)


def operator() -> str:
    """Who sends from the terminal, for the audit trail: the local account."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (some containers)
        return "local"


class Console:
    def __init__(self, runtime: Runtime, say: Printer = print) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.say = say
        self.store = self.runtime.store
        self.z3 = self.runtime.z3
        self.service = self.runtime.service
        self._prepared = False

    async def prepare(self) -> None:
        """Indexes and the rest of start-up, as the server does them (once)."""
        if not self._prepared:
            await self.runtime.prepare()
            self._prepared = True

    async def upload(self, path: Path) -> str:
        data = await asyncio.to_thread(path.read_bytes)
        kind = sniff_type(data)
        if kind is None:
            raise DocumentProblem(f"{path} is not a PDF, TIFF, PNG or JPEG.")
        pages = await run_pdfium(count_pages, data)
        location = Z3Location("uploads", f"{datetime.now(UTC):%Y/%m/%d}/{uuid.uuid4().hex[:8]}-{path.name}")
        await self.z3.put(location, data, kind)
        self.say(f"uploaded {path.name} ({pages} page{'s' if pages != 1 else ''}) to {location}")
        return str(location)

    async def send_and_watch(self, request: SendFaxRequest, within_seconds: float = 3600) -> str:
        """Send, then print each status change until the fax is delivered or stopped; returns the final status."""
        await self.prepare()
        caller = Caller(authorization=None, idempotency_key=None, fhir_bases=(), project_api_bases=(), who=operator())
        communication = (await self.service.send(request, caller)).communication
        self.say(f"Communication/{communication['id']} created")
        worker = asyncio.create_task(self.runtime.worker().run())
        try:
            return await self._watch(communication["id"], within_seconds)
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    async def _watch(self, communication_id: str, within_seconds: float) -> str:
        """Print every version of the Communication as it appears, so no step is missed however fast."""
        shown_version = 0
        deadline = asyncio.get_running_loop().time() + within_seconds
        while asyncio.get_running_loop().time() < deadline:
            versions = await self.store.history("Communication", communication_id, limit=1000)
            for version in sorted(versions, key=lambda v: v.version):
                if version.version <= shown_version or version.resource is None:
                    continue
                shown_version = version.version
                communication = version.resource
                status = _status(communication)
                moment = version.last_updated.astimezone()
                self.say(f"{moment:%H:%M:%S}  {status.lower():<10}  attempt {_attempt(communication)}")
                if status in ("DELIVERED", "STOPPED"):
                    self.say(self._final_line(communication))
                    return status
            await asyncio.sleep(0.1)
        self.say("still not finished; the server's worker will carry on")
        return "PENDING"

    @staticmethod
    def _final_line(communication: dict[str, Any]) -> str:
        if communication["status"] == "completed":
            pages = next((e["valueInteger"] for e in communication["extension"] if e["url"].endswith("fax-pages")), "?")
            return f"Delivered: {pages} pages at {communication['received']}."
        reason = communication["statusReason"]
        return f"Stopped: {reason['coding'][0]['code']} - {reason['text']}"

    async def demo(self) -> int:
        """The product description's story on the fixtures: a referral that arrives, and one that cannot."""
        await self.prepare()
        counts = await load_fixtures(self.store, FIXTURES_DIR)
        self.say(f"fixtures: {counts['written']} written, {counts['unchanged']} unchanged")
        await self.service.numbers.onboard(FIXTURE_SENDER_NUMBER, self.settings.carrier)
        self.say(f"onboarded {FIXTURE_SENDER_NUMBER} (Riverside Family Medicine's fax line)")
        self.say("\n1. A referral letter to Dr. Amelia Chen, about Maria Lopez:")
        delivered = await self.send_and_watch(
            SendFaxRequest(
                media="z3://fixtures/referral-letter.pdf",
                quality="fine",
                sender=FIXTURE_SENDER,
                recipient="Practitioner/51940f7e-7311-4006-b9aa-83bbc0c5b62c",
                patient="Patient/maria-lopez",
            )
        )
        self.say("\n2. The same letter to a line that is always busy (+16175550002), retried then stopped:")
        stopped = await self.send_and_watch(
            SendFaxRequest(
                media="z3://fixtures/referral-letter.pdf",
                quality="standard",
                sender=FIXTURE_SENDER,
                recipientNumber="+16175550002",
            )
        )
        self.say("\nEvery fax about Maria Lopez: GET /fhir/Communication?patient=maria-lopez")
        return 0 if (delivered, stopped) == ("DELIVERED", "STOPPED") else 1
