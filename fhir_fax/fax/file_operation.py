"""``POST [base]/Communication/{id}/$file``: file a received fax to a patient, once.

In one transaction it creates the DocumentReference (subject: the patient; content: the stored PDF;
context.related: the Communication), sets ``Communication.subject``, completes the triage Task, marks the
reception record filed and writes the AuditEvent. Filing again to the same patient changes nothing and
answers the same DocumentReference; filing to another patient is a 409 (the fax is someone's record now).
A fax whose triage Task is no longer ``requested`` (marked "not patient-related" by someone else, or closed
otherwise) is a 409 too: filing it would leave a completed Task that says both things. The Task's status is
checked again inside the transaction, so a dismissal that lands between the check and the write still wins.

Access: ``FHIR:Update`` on the Communication (and its patient-compartment rules), ``FHIR:Read`` on the
patient, ``FHIR:Create`` on DocumentReference and ``FHIR:Update`` on the triage Task: all checked before
anything is written. A patient that does not exist or was deleted is a 422 naming it. Never done
automatically: suggestions (``suggestions.py``) only propose.

Filing puts the Task in the patient's compartment (``Task.for``), so the Task keeps no suggestion of any
other patient: their names, identifiers and birth dates are not the filed patient's to read.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import Request, Response
from pymongo.errors import PyMongoError

from ..audit import FAX_EVENTS, SUCCESS, audit_event
from ..db import in_transaction
from ..errors import Conflict, Gone, Invalid, NotFound, Unavailable, Unprocessable
from ..fhir.http import FHIRResponse, version_headers
from ..fhir.models import format_instant, now
from ..fhir.operations import Operation, OperationCall
from .inbound import COLLECTION as INBOUND
from .suggestions import filed_inputs
from .terminology import FILED_DOCUMENT_SYSTEM, INBOUND_STATUS_EXTENSION

if TYPE_CHECKING:
    from .routes import FaxAPI

LOINC = "http://loinc.org"
# Document kinds a clinic files faxes as (LOINC document ontology); other LOINC codes are taken as given.
DOCUMENT_TYPES = {
    "57133-1": "Referral note",
    "11488-4": "Consult note",
    "11502-2": "Laboratory report",
    "18842-5": "Discharge summary",
    "11506-3": "Progress note",
    "34117-2": "History and physical note",
    "18748-4": "Diagnostic imaging study",
    "10160-0": "History of medication use",
    "64290-0": "Insurance card",
}
CATEGORY_SYSTEM = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
LOINC_CODE = r"[0-9]{1,7}-[0-9]"

FILE_DEFINITION: dict[str, Any] = {
    "resourceType": "OperationDefinition",
    "id": "file",
    "url": "urn:fhir-fax:OperationDefinition:file",
    "version": "1.0.0",
    "name": "FileFax",
    "title": "File a received fax to a patient",
    "status": "active",
    "kind": "operation",
    "affectsState": True,
    "code": "file",
    "description": (
        "Files a received fax to a patient: creates a DocumentReference for the stored PDF, sets the "
        "Communication's subject and completes its triage Task, in one transaction. Filing again to the same "
        "patient changes nothing and returns the same DocumentReference."
    ),
    "resource": ["Communication"],
    "system": False,
    "type": False,
    "instance": True,
    "parameter": [
        {
            "name": "patient",
            "use": "in",
            "min": 1,
            "max": "1",
            "type": "Reference",
            "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Patient"],
            "documentation": "The patient the fax is about, e.g. Patient/123.",
        },
        {
            "name": "type",
            "use": "in",
            "min": 0,
            "max": "1",
            "type": "code",
            "documentation": "LOINC document type, e.g. 57133-1 (referral note) or 11502-2 (laboratory report).",
        },
        {
            "name": "category",
            "use": "in",
            "min": 0,
            "max": "1",
            "type": "code",
            "documentation": "Document category (US Core): clinical-note, or a LOINC code such as 11502-2.",
        },
        {"name": "note", "use": "in", "min": 0, "max": "1", "type": "string", "documentation": "A note for the file."},
        {"name": "return", "use": "out", "min": 1, "max": "1", "type": "DocumentReference"},
    ],
}


def concept(parameter: str, code: str | None) -> dict[str, Any] | None:
    """The CodeableConcept of a ``type`` or ``category`` code; 400 naming the parameter when it is no code."""
    if code is None:
        return None
    if parameter == "category" and code == "clinical-note":
        return {"coding": [{"system": CATEGORY_SYSTEM, "code": code, "display": "Clinical Note"}]}
    if not re.fullmatch(LOINC_CODE, code):
        raise Invalid(
            f"{parameter}: {code!r} is not a LOINC code (digits, '-', a check digit: e.g. 57133-1 for a referral note)"
            + (" nor clinical-note." if parameter == "category" else "."),
            expression=[parameter],
        )
    coding: dict[str, Any] = {"system": LOINC, "code": code}
    if code in DOCUMENT_TYPES:
        coding["display"] = DOCUMENT_TYPES[code]
    return {"coding": [coding]}


def is_received_fax(communication: dict[str, Any]) -> bool:
    return any(e.get("url") == INBOUND_STATUS_EXTENSION for e in communication.get("extension", []))


def document_reference(
    communication: dict[str, Any], patient: str, fax_id: str, kind: Any, category: Any, note: str | None
) -> dict[str, Any]:
    attachment = dict(communication["payload"][0]["contentAttachment"])
    document: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "identifier": [{"system": FILED_DOCUMENT_SYSTEM, "value": fax_id}],
        "status": "current",
        "docStatus": "final",
        "subject": {"reference": patient},
        "date": format_instant(now()),
        "description": note or attachment.get("title") or "Received fax",
        "content": [{"attachment": attachment}],
        "context": {"related": [{"reference": f"Communication/{communication['id']}"}]},
    }
    if kind is not None:
        document["type"] = kind
    if category is not None:
        document["category"] = [category]
    return document


class AlreadyHandled(Conflict):
    """The triage Task was closed by something other than this filing: the fax is not filed."""


def unless_handled(communication_id: str, task: dict[str, Any]) -> None:
    """409 when the triage Task is no longer waiting to be filed, naming its status and business status."""
    if task.get("status") == "requested":
        return
    business = task.get("businessStatus") or {}
    reason = business.get("text") or next(
        (c.get("display") or c.get("code") for c in business.get("coding", []) if c.get("display") or c.get("code")),
        None,
    )
    status = f"{task.get('status')}: {reason}" if reason else str(task.get("status"))
    raise AlreadyHandled(
        f"Communication/{communication_id}: this fax was already handled (its Task/{task['id']} is {status}); "
        "it is not filed. Reopen the Task (status requested) to file it.",
        expression=["Communication"],
    )


def file_operation(fax: FaxAPI) -> Operation:
    """``$file`` on a Communication instance, answered from ``fax``'s runtime."""

    async def file(call: OperationCall) -> Response:
        request, inputs = call.request, call.inputs
        communication_id = call.resource_id or ""
        runtime = fax.runtime()
        store, context = runtime.store, fax.fhir
        await context.authorize(request, "FHIR:Update", f"FHIR:Communication:{communication_id}")
        patient = str(inputs["patient"])
        kind_, _, patient_id = patient.partition("/")
        if kind_ != "Patient" or not patient_id or "/" in patient_id:
            raise Invalid(f"patient: {patient!r} is not a reference such as Patient/123.", expression=["patient"])
        kind, category = concept("type", inputs.get("type")), concept("category", inputs.get("category"))
        note = inputs.get("note")
        communication = await store.read("Communication", communication_id)
        await context.admit(request, "FHIR:Update", communication)
        record = await runtime.database[INBOUND].find_one({"communication_id": communication_id})
        if record is None or not is_received_fax(communication):
            raise Unprocessable(
                f"Communication/{communication_id} is not a received fax; only received faxes are filed.",
                expression=["Communication"],
            )
        await context.authorize(request, "FHIR:Read", f"FHIR:Patient:{patient_id}")
        try:
            found = await store.read("Patient", patient_id)
        except (NotFound, Gone) as error:
            what = "was deleted" if isinstance(error, Gone) else "does not exist"
            raise Unprocessable(
                f"patient: Patient/{patient_id} {what}; file the fax to an existing patient.", expression=["patient"]
            ) from None
        await context.admit(request, "FHIR:Read", found)
        filed = record.get("filed")
        if filed is not None:
            return await earlier(request, filed, patient)
        if not communication.get("payload"):
            raise Unprocessable(f"Communication/{communication_id} has no document to file.", expression=["patient"])
        principal = await context.require_gate().identify(request)
        document_id = str(uuid.uuid4())
        document = document_reference(communication, patient, record["fax_id"], kind, category, note)
        # what is written besides the Communication: the caller must be allowed to write it too
        await context.authorize(request, "FHIR:Create", "FHIR:DocumentReference")
        await context.admit(request, "FHIR:Create", {**document, "id": document_id})
        if record.get("task_id"):
            await context.authorize(request, "FHIR:Update", f"FHIR:Task:{record['task_id']}")
            task = await store.read("Task", record["task_id"])
            await context.admit(request, "FHIR:Update", task)
            unless_handled(communication_id, task)
        moment = now()

        def with_subject(current: dict[str, Any]) -> dict[str, Any]:
            return {**current, "subject": {"reference": patient}}

        def completed(current: dict[str, Any]) -> dict[str, Any]:
            unless_handled(communication_id, current)  # dismissed since it was read: the transaction is undone
            task = {
                **current,
                "input": filed_inputs(current.get("input", []), patient),
                "status": "completed",
                "for": {"reference": patient},
                "lastModified": format_instant(moment),
            }
            task["output"] = [
                {
                    "type": {"text": "Filed document"},
                    "valueReference": {"reference": f"DocumentReference/{document_id}"},
                }
            ]
            if not task["input"]:
                del task["input"]
            if note:
                task["note"] = [*current.get("note", []), {"text": note, "time": format_instant(moment)}]
            return task

        async def write(session: Any) -> dict[str, Any]:
            marked = await runtime.database[INBOUND].update_one(
                {"_id": record["_id"], "filed": {"$exists": False}},
                {"$set": {"filed": {"patient": patient, "document": document_id, "at": moment}}},
                session=session,
            )
            if marked.modified_count != 1:
                raise Conflict("The fax was filed by another request at the same time.")
            saved = await store.create(document, resource_id=document_id, moment=moment, session=session)
            await store.modify("Communication", communication_id, with_subject, session=session)
            if record.get("task_id"):
                await store.modify("Task", record["task_id"], completed, session=session)
            event = audit_event(
                subtype=(FAX_EVENTS, "file-fax"), action="U", outcome=SUCCESS, who=principal.client_id,
                address=runtime.guard.address(request),
                entities=[f"Communication/{communication_id}", patient, f"DocumentReference/{document_id}"]
                + ([f"Task/{record['task_id']}"] if record.get("task_id") else []),
                description=f"A received fax was filed to {patient}.",
            )  # fmt: skip
            await store.create(event, moment=moment, session=session, validated=True)
            return saved

        try:
            saved = await in_transaction(runtime.database.client, write)
        except AlreadyHandled:
            raise
        except Conflict:
            again = await runtime.database[INBOUND].find_one({"_id": record["_id"]})
            return await earlier(request, (again or {}).get("filed"), patient)
        except PyMongoError:
            raise Unavailable("The fax could not be filed (the database did not take the write); retry.") from None
        return FHIRResponse(saved, status_code=201, headers=version_headers(saved))

    async def earlier(request: Request, filed: dict[str, Any] | None, patient: str) -> Response:
        """The answer for a fax filed before: its DocumentReference, admitted and audited as any read of it."""
        if filed is None:
            raise Unavailable("The fax could not be filed; retry.")
        if filed["patient"] != patient:
            raise Conflict(
                f"patient: this fax is already filed to {filed['patient']}; it cannot be filed to {patient} as well.",
                expression=["patient"],
            )
        existing = await fax.runtime().store.read("DocumentReference", filed["document"])
        await fax.fhir.admit(request, "FHIR:Read", existing)
        await fax.fhir.was_read(request, "read", [existing])
        return FHIRResponse(existing, status_code=200, headers=version_headers(existing))

    return Operation(
        FILE_DEFINITION,
        file,
        access=("FHIR:Update", "FHIR:Communication"),
        summary="File a received fax to a patient",
        tags=["Fax (FHIR)"],
    )
