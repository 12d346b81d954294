"""SMART scopes: v2 letters, v1 read/write, and what they permit."""

from __future__ import annotations

import pytest

from fhir_fax.auth.guard import Principal
from fhir_fax.auth.policies import parse_policy
from fhir_fax.auth.scopes import ScopeError, parse_scopes, permits


@pytest.mark.parametrize(
    ("scope", "action", "resource_type", "expected"),
    [
        ("system/Communication.rs", "FHIR:Read", "Communication", True),
        ("system/Communication.rs", "FHIR:Search", "Communication", True),
        ("system/Communication.rs", "FHIR:Create", "Communication", False),
        ("system/Communication.rs", "FHIR:Read", "Patient", False),
        ("user/*.read", "FHIR:History", "Patient", True),
        ("user/*.read", "FHIR:Update", "Patient", False),
        ("user/*.write", "FHIR:Delete", "Patient", True),
        ("user/*.write", "FHIR:Read", "Patient", False),
        ("system/*.*", "FHIR:Update", "Device", True),
        ("patient/Patient.cruds", "FHIR:Create", "Patient", True),
        ("system/Patient.c", "FHIR:Unknown", "Patient", False),
    ],
)
def test_what_a_scope_permits(scope: str, action: str, resource_type: str, expected: bool) -> None:
    assert permits(parse_scopes(scope), action, resource_type) is expected


def test_non_resource_scopes_are_ignored() -> None:
    scopes = parse_scopes("openid fhirUser launch/patient admin/Patient.r patient/Communication.rs patient/Patient.r")
    assert [str(s) for s in scopes] == ["patient/Communication.rs", "patient/Patient.r"]


def test_patient_scopes_limit_only_the_work_that_they_alone_grant() -> None:
    everything = parse_policy({"rule": [{"resource": "*", "action": "*", "effect": "Allow"}]})
    scopes = parse_scopes("patient/Communication.rs patient/Practitioner.r system/Patient.r")
    principal = Principal("app", everything, scopes, patient="p1")
    assert principal.patient_limit("FHIR:Search", "Communication") == "p1"
    assert principal.patient_limit("FHIR:Read", "Patient") is None  # a system scope grants it too
    assert principal.patient_limit("FHIR:Read", "Practitioner") is None  # outside the Patient compartment
    assert principal.may("FHIR:Read", "FHIR:Patient:p2")  # the system scope reads any patient
    limited = Principal("app", everything, parse_scopes("patient/*.rs"), patient="p1")
    assert limited.may("FHIR:Read", "FHIR:Patient:p1") and not limited.may("FHIR:Read", "FHIR:Patient:p2")
    assert Principal("app", everything, ()).patient_limit("FHIR:Read", "Communication") is None
    without = Principal("app", everything, parse_scopes("patient/Communication.rs"))
    assert "names no patient in context" in (without.refusal("FHIR:Search", "FHIR:Communication") or "")


@pytest.mark.parametrize(
    "scope", ["system/Communication.sr", "system/patient.r", "system/Patient.", "system/Patient.x"]
)
def test_malformed_scopes_are_refused(scope: str) -> None:
    with pytest.raises(ScopeError, match="is not a SMART scope"):
        parse_scopes(scope)
