"""Telnyx ``fax.received`` webhooks refused before anything is stored or fetched (in-process; e2e has the rest)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fhir_fax.fax.transports.telnyx.inbound import allowed_origin, inbound_notice
from fhir_fax.settings import Settings

from helpers import serving_fax
from inbound_helpers import CALLER, OUR_NUMBER, inbound_counts

KEY = Ed25519PrivateKey.generate()
PUBLIC = base64.b64encode(KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
MEDIA_HOST = "https://media.carrier.test"


def signed(body: bytes) -> dict[str, str]:
    stamp = str(int(time.time()))
    signature = base64.b64encode(KEY.sign(stamp.encode() + b"|" + body)).decode()
    return {"content-type": "application/json", "telnyx-signature-ed25519": signature, "telnyx-timestamp": stamp}


def received(**payload: Any) -> bytes:
    body = {
        "data": {
            "event_type": "fax.received",
            "id": str(uuid.uuid4()),
            "occurred_at": "2026-01-01T00:00:00Z",
            "record_type": "event",
            "payload": {
                "fax_id": str(uuid.uuid4()),
                "direction": "inbound",
                "from": CALLER,
                "to": OUR_NUMBER,
                "status": "received",
                "media_url": f"{MEDIA_HOST}/fax.pdf",
                "page_count": 1,
                "partial_content": False,
                **payload,
            },
        }
    }
    return json.dumps(body).encode()


async def test_inbound_webhooks_refused_store_nothing_and_failures_are_stopped(
    fax_settings: Settings, database: Any
) -> None:
    configured = fax_settings.model_copy(
        update={"telnyx_public_key": PUBLIC, "worker_enabled": False, "inbound_media_hosts": [MEDIA_HOST]}
    )
    async with serving_fax(configured, database) as http:
        before = await inbound_counts(database)
        body = received()
        unsigned = await http.post("/fax/webhooks/telnyx", content=body, headers={"content-type": "application/json"})
        assert unsigned.status_code == 401
        assert unsigned.json()["message"].startswith("The webhook is not signed")
        tampered = signed(body)
        forged = await http.post("/fax/webhooks/telnyx", content=received(to="+12223334445"), headers=tampered)
        assert forged.status_code == 401 and "signature does not match" in forged.json()["message"]
        for payload, status, message in (
            ({"media_url": "https://attacker.test/fax.pdf"}, 422, "is not on an allowed media host"),
            ({"media_url": "http://media.carrier.test/fax.pdf"}, 422, "is not on an allowed media host"),
            ({"media_url": "https://media.carrier.test.attacker.test/x"}, 422, "is not on an allowed media host"),
            ({"to": "+16175550199"}, 422, "'+16175550199' is not a fax number onboarded to this project"),
            ({"fax_id": "../../etc"}, 400, "payload.fax_id is not a Telnyx fax id"),
            ({"media_url": None}, 400, "has no usable payload.media_url"),
            ({"to": 12}, 400, "payload.to is not a phone number"),
        ):
            content = received(**payload)
            response = await http.post("/fax/webhooks/telnyx", content=content, headers=signed(content))
            assert response.status_code == status, (payload, response.text)
            assert message in response.json()["message"], (payload, response.text)
        other = received()
        outbound = other.replace(b'"direction": "inbound"', b'"direction": "outbound"')
        response = await http.post("/fax/webhooks/telnyx", content=outbound, headers=signed(outbound))
        assert response.json() == {"status": "ignored"}
        assert await inbound_counts(database) == before
        assert await database["webhook_receipts"].count_documents({}) == 1, "only the ignored outbound event"
        # a failed reception: a stopped Communication with its reason, no document, no Task
        failed = json.loads(received(failure_reason="receiver_call_dropped"))
        failed["data"]["event_type"] = "fax.failed"
        del failed["data"]["payload"]["media_url"]
        content = json.dumps(failed).encode()
        response = await http.post("/fax/webhooks/telnyx", content=content, headers=signed(content))
        assert response.json() == {"status": "received"}, response.text
        again = await http.post("/fax/webhooks/telnyx", content=content, headers=signed(content))
        assert again.json() == {"status": "duplicate"}
        [communication] = (await http.get("/fhir/Communication", params={"sender-number": CALLER})).json()["entry"]
        resource = communication["resource"]
        assert resource["status"] == "stopped"
        assert resource["statusReason"]["coding"][0] == {
            "system": "https://terminology.fhir.oystehr.com/CodeSystem/fax-failure-reason",
            "code": "FAILED",
        }
        assert resource["statusReason"]["text"] == "The call dropped during transmission."
        assert "payload" not in resource
        counts = await inbound_counts(database)
        assert (counts["inbound_faxes"], counts["Task"], counts["received documents"]) == (1, 0, 0)


def test_media_hosts_are_matched_by_scheme_host_and_port() -> None:
    hosts = ["https://s3.amazonaws.com", "https://*.s3.amazonaws.com", "http://127.0.0.1:8123"]
    assert allowed_origin("https://s3.amazonaws.com/bucket/fax.pdf?X-Amz-Signature=1", hosts)
    assert allowed_origin("https://faxes.s3.amazonaws.com/fax.pdf", hosts)
    assert allowed_origin("http://127.0.0.1:8123/media/1", hosts)
    for url in (
        "http://s3.amazonaws.com/fax.pdf",  # another scheme
        "https://s3.amazonaws.com:8443/fax.pdf",  # another port
        "https://evil-s3.amazonaws.com.attacker.test/fax.pdf",
        "https://user:pass@s3.amazonaws.com/fax.pdf",
        "http://127.0.0.1:8124/media/1",
        "file:///etc/passwd",
        "https://[::1/",
    ):
        assert not allowed_origin(url, hosts), url


def test_numbers_whose_plus_was_decoded_to_a_space_are_read() -> None:
    envelope = json.loads(received(**{"from": " 13122010119", "to": " 12223334444", "partial_content": True}))
    notice = inbound_notice(envelope)
    assert notice is not None
    assert (notice.from_number, notice.to_number, notice.partial) == ("+13122010119", "+12223334444", True)
    envelope["data"]["event_type"] = "fax.media.processing.started"
    assert inbound_notice(envelope) is None
