"""Access policies: parsing (with the errors people make) and decisions (default deny, Deny wins)."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_fax.auth.policies import PolicyError, allows, parse_policy

SEND = {"rule": [{"resource": ["Fax:Fax:*"], "action": ["Fax:Send"], "effect": "Allow"}]}


def decide(policy: dict[str, Any], action: str, resource: str) -> bool:
    return allows(parse_policy(policy), action, resource)


def test_the_seed_policy_allows_sending_and_nothing_else() -> None:
    assert decide(SEND, "Fax:Send", "Fax:Fax")
    assert decide(SEND, "Fax:Send", "Fax:Fax:123")
    assert not decide(SEND, "Fax:Onboard", "Fax:Number")
    assert not decide(SEND, "FHIR:Read", "FHIR:Patient:1")


@pytest.mark.parametrize("pattern", ["FHIR", "FHIR:*", "FHIR:*:*"])
def test_omitted_and_wildcard_parts_are_the_same(pattern: str) -> None:
    policy = {"rule": {"resource": pattern, "action": "FHIR:Read", "effect": "Allow"}}
    for resource in ("FHIR:Patient", "FHIR:Patient:1", "FHIR:Communication:abc"):
        assert decide(policy, "FHIR:Read", resource)
    assert not decide(policy, "FHIR:Read", "Z3:bucket/a.pdf")


def test_type_and_id_narrow_the_resource() -> None:
    policy = {"rule": [{"resource": ["FHIR:Patient", "FHIR:Practitioner:p1"], "action": "FHIR:*", "effect": "Allow"}]}
    assert decide(policy, "FHIR:Read", "FHIR:Patient:any")
    assert decide(policy, "FHIR:Update", "FHIR:Practitioner:p1")
    assert not decide(policy, "FHIR:Read", "FHIR:Practitioner:p2")
    assert not decide(policy, "FHIR:Read", "FHIR:Patientx:1")


def test_any_matching_deny_wins_and_the_default_is_deny() -> None:
    policy = {
        "rule": [
            {"resource": "FHIR:*", "action": "*", "effect": "Allow"},
            {"resource": "FHIR:Patient:secret", "action": "FHIR:Read", "effect": "Deny"},
        ]
    }
    assert decide(policy, "FHIR:Read", "FHIR:Patient:other")
    assert not decide(policy, "FHIR:Read", "FHIR:Patient:secret")
    assert decide(policy, "FHIR:Update", "FHIR:Patient:secret")
    assert not decide({"rule": []}, "FHIR:Read", "FHIR:Patient:1")


@pytest.mark.parametrize(
    ("pattern", "resource", "expected"),
    [
        ("Z3:*", "Z3:letters/2026/a.pdf", True),
        ("Z3:letters/*", "Z3:letters/a.pdf", True),
        ("Z3:letters/*", "Z3:letters/2026/a.pdf", False),
        ("Z3:letters/**", "Z3:letters/2026/01/a.pdf", True),
        ("Z3:letters/**/a.pdf", "Z3:letters/a.pdf", True),
        ("Z3:letters/**/a.pdf", "Z3:letters/2026/01/a.pdf", True),
        ("Z3:letters/**/a.pdf", "Z3:letters/2026/b.pdf", False),
        ("Z3:letters", "Z3:letters", True),
        ("Z3:letters", "Z3:letters-private/a.pdf", False),
        ("Z3:letters/*", "Z3:other/a.pdf", False),
        ("Z3:LETTERS/*", "Z3:letters/a.pdf", False),
    ],
)
def test_z3_path_patterns(pattern: str, resource: str, expected: bool) -> None:
    policy = {"rule": {"resource": pattern, "action": "Z3:GetObject", "effect": "Allow"}}
    assert decide(policy, "Z3:GetObject", resource) is expected


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({}, 'an object with "rule"'),
        ({"rule": [{"resource": "FHIR:*", "action": "FHIR:Read", "effect": "Maybe"}]}, "effect must be Allow or Deny"),
        ({"rule": [{"resource": "FHIR:*:123", "action": "FHIR:Read", "effect": "Allow"}]}, "wildcard is followed"),
        ({"rule": [{"resource": "FHIR:Patient:1:2", "action": "FHIR:Read", "effect": "Allow"}]}, "more than service"),
        ({"rule": [{"resource": [], "action": "FHIR:Read", "effect": "Allow"}]}, "resource must be a non-empty"),
        ({"rule": [{"resource": "FHIR", "action": "Read", "effect": "Allow"}]}, "must look like Service:Action"),
        ({"rule": [{"resource": "Z3:letters/../secret", "action": "Z3:*", "effect": "Allow"}]}, "not a valid path"),
        ({"rule": ["Allow everything"]}, "must be an object"),
    ],
)
def test_bad_policies_are_refused_naming_the_rule(policy: Any, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(policy)
