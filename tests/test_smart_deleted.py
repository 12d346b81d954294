"""A PUT on a deleted resource is judged against its last live version too: a token limited to one patient
cannot take over (re-create under its patient) another patient's deleted Communication, whose faxed documents
would then count as carried by a fax in its compartment."""

from __future__ import annotations

from typing import Any

import httpx

from smart_helpers import Flow, make_app, make_user, token_for

MARIA, JAMES = "maria-lopez", "james-oneil"


def _communication(patient: str) -> dict[str, Any]:
    return {"resourceType": "Communication", "status": "completed", "subject": {"reference": f"Patient/{patient}"}}


async def test_a_patient_token_cannot_recreate_another_patients_deleted_communication(
    fax_api: httpx.AsyncClient, database: Any
) -> None:
    ids = {}
    for patient in (JAMES, MARIA):
        made = await fax_api.post("/fhir/Communication", json=_communication(patient))
        assert made.status_code == 201, made.text
        ids[patient] = made.json()["id"]
        assert (await fax_api.delete(f"/fhir/Communication/{ids[patient]}")).status_code == 204
    username = await make_user(database)
    app = await make_app(database)
    async with httpx.AsyncClient(transport=fax_api._transport, base_url="http://fhir.test") as web:
        body = await token_for(web, Flow(app, "launch/patient patient/*.cruds"), username, patient=MARIA)
        web.headers["authorization"] = f"Bearer {body['access_token']}"
        james = f"/fhir/Communication/{ids[JAMES]}"
        refused = await web.put(james, json={**_communication(MARIA), "id": ids[JAMES]})
        assert refused.status_code == 403, refused.text
        assert "limited to Patient/maria-lopez" in refused.json()["issue"][0]["diagnostics"]
        assert (await fax_api.get(james)).status_code == 410, "still deleted"
        mine = f"/fhir/Communication/{ids[MARIA]}"
        restored = await web.put(mine, json={**_communication(MARIA), "id": ids[MARIA]})
        assert restored.status_code in (200, 201), restored.text
