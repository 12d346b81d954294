"""The Telnyx Programmable Fax v2 transport over httpx: submit by media URL, find after a crash, poll to reconcile.

Telnyx fetches the document from a short-lived signed Z3 download URL, echoes our attempt reference back in
``client_state`` (base64), and reports by webhook (``webhooks.py`` in this package). Telnyx has no idempotency
key for sends, so after a worker died mid-submit the takeover lists recent faxes to the same number and
matches ``client_state``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx

from ....settings import Settings
from ....z3.locations import parse_z3_url
from ....z3.signing import presign, signing_key
from ...status import StatusEvent
from ..base import Capabilities, EventSink, Submission, TransportError, webhook_path
from .events import QUALITY, decode_state, encode_state, make_event, parse_time

NAME = "telnyx"


class Telnyx:
    name = NAME
    capabilities = Capabilities(fetches_by_url=True, inbound=True)  # inbound: fax.received (inbound.py)

    def __init__(self, settings: Settings, database: Any) -> None:
        if not (settings.telnyx_api_key and settings.telnyx_connection_id and settings.base_url):
            raise ValueError(
                "The telnyx carrier needs FHIR_FAX_TELNYX_API_KEY, FHIR_FAX_TELNYX_CONNECTION_ID and FHIR_FAX_BASE_URL "
                "(the public address Telnyx fetches documents from and sends webhooks to)."
            )
        self.settings = settings
        self.database = database
        self.client = httpx.AsyncClient(
            base_url=settings.telnyx_api_base.rstrip("/"),
            headers={"authorization": f"Bearer {settings.telnyx_api_key}"},
            timeout=settings.telnyx_timeout_seconds,
        )

    async def start(self, sink: EventSink) -> None:
        """News arrives by webhook (``webhooks.py``), so there is nothing to start."""

    async def stop(self) -> None:
        await self.client.aclose()

    async def media_url(self, media: str, version: str | None = None) -> str:
        """A signed download URL of the pinned version (what was checked at send), not of whatever the key holds."""
        base = (self.settings.base_url or "").rstrip("/") + self.settings.project_api_path
        key = await signing_key(self.database)
        ttl = self.settings.z3_url_ttl_seconds
        return presign(key, base, parse_z3_url(media, ()), "download", ttl, version=version)

    async def submit(self, submission: Submission) -> str:
        body = {
            "connection_id": self.settings.telnyx_connection_id,
            "to": submission.to_number,
            "from": submission.from_number,
            "media_url": await self.media_url(submission.media, submission.media_version),
            "quality": QUALITY[submission.quality],
            "client_state": encode_state(submission.reference),
            "webhook_url": (self.settings.base_url or "").rstrip("/") + webhook_path(NAME),
            "store_media": False,
        }
        response = await self._request("POST", "/faxes", json=body, submitting=True)
        if response.status_code in (200, 201, 202):
            return str(response.json()["data"]["id"])
        detail = _error_detail(response)
        if response.status_code in (408, 429) or response.status_code >= 500:
            raise TransportError(
                "CARRIER_UNAVAILABLE",
                f"Telnyx is unavailable ({response.status_code}): {detail}",
                maybe_taken=response.status_code != 429,  # a 429 is a refusal; a timeout or 5xx is no answer
            )
        raise TransportError("FAILED", f"Telnyx refused the fax ({response.status_code}): {detail}")

    async def find(self, reference: str, to_number: str, since: datetime) -> str | None:
        state = encode_state(reference)
        for page in range(1, 11):
            params = {
                "filter[to][eq]": to_number,
                "filter[direction][eq]": "outbound",
                "filter[created_at][gte]": (since - timedelta(minutes=1)).isoformat(),
                "page[size]": "50",
                "page[number]": str(page),
            }
            response = await self._request("GET", "/faxes", params=params)
            if response.status_code != 200:
                raise TransportError("CARRIER_UNAVAILABLE", f"Telnyx could not list faxes ({response.status_code}).")
            faxes = response.json().get("data", [])
            for fax in faxes:
                if fax.get("client_state") == state:
                    return str(fax["id"])
            if len(faxes) < 50:
                return None
        return None

    async def poll(self, carrier_id: str) -> list[StatusEvent]:
        response = await self._request("GET", f"/faxes/{carrier_id}")
        if response.status_code != 200:
            return []
        try:
            fax = response.json()["data"]
        except (ValueError, KeyError, TypeError):
            return []
        reference = decode_state(fax.get("client_state")) if isinstance(fax, dict) else None
        if reference is None:
            return []
        event = make_event(reference, fax.get("status"), parse_time(fax.get("updated_at")), fax, carrier_id, "poll")
        return [] if event is None else [event]

    async def _request(self, method: str, path: str, *, submitting: bool = False, **kwargs: Any) -> httpx.Response:
        try:
            return await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            # Only a connection that never opened proves the fax was not sent.
            unsent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
            raise TransportError(
                "CARRIER_UNAVAILABLE",
                f"Telnyx could not be reached ({type(error).__name__}).",
                maybe_taken=submitting and not unsent,
            ) from None


def _error_detail(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        return "; ".join(e.get("detail") or e.get("title") or "" for e in errors) or response.text[:200]
    except ValueError:
        return response.text[:200]
