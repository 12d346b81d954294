"""SMART scopes: v2 letters, v1 read/write, and what they permit."""

from __future__ import annotations

import pytest

from fhir_fax.auth.scopes import ScopeError, parse_scopes, patient_context, permits


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


def test_non_resource_scopes_are_ignored_and_patient_context_is_recognised() -> None:
    scopes = parse_scopes("openid fhirUser launch/patient admin/Patient.r patient/Communication.rs patient/Patient.r")
    assert [str(s) for s in scopes] == ["patient/Communication.rs", "patient/Patient.r"]
    assert patient_context(scopes)
    assert not patient_context(parse_scopes("patient/Communication.rs system/Patient.r"))
    assert not patient_context(())


@pytest.mark.parametrize(
    "scope", ["system/Communication.sr", "system/patient.r", "system/Patient.", "system/Patient.x"]
)
def test_malformed_scopes_are_refused(scope: str) -> None:
    with pytest.raises(ScopeError, match="is not a SMART scope"):
        parse_scopes(scope)
