"""Telnyx webhooks that are signed correctly but carry nothing usable."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fhir_fax.settings import Settings

from helpers import serving

KEY = Ed25519PrivateKey.generate()
PUBLIC = base64.b64encode(KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def signed(body: bytes) -> dict[str, str]:
    stamp = str(int(time.time()))
    signature = base64.b64encode(KEY.sign(stamp.encode() + b"|" + body)).decode()
    return {"content-type": "application/json", "telnyx-signature-ed25519": signature, "telnyx-timestamp": stamp}


async def test_signed_but_unusable_webhooks(settings: Settings, database: Any) -> None:
    configured = settings.model_copy(update={"telnyx_public_key": PUBLIC, "worker_enabled": False})
    async with serving(configured, database, authenticated=False) as http:
        for body in (b"not json", b"[1]", b'{"data": {}}'):
            response = await http.post("/fax/webhooks/telnyx", content=body, headers=signed(body))
            assert response.status_code == 400, body
            assert "not a Telnyx event envelope" in response.json()["message"]
        foreign = json.dumps({"data": {"id": "e1", "event_type": "fax.delivered", "payload": {"client_state": None}}})
        response = await http.post("/fax/webhooks/telnyx", content=foreign.encode(), headers=signed(foreign.encode()))
        assert response.json() == {"status": "ignored"}, "an event for a fax that is not ours changes nothing"
    assert await database.fax_jobs.count_documents({}) == 0
