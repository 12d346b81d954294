"""A token granted its client's whole reach (no scope asked for) may do exactly what the policy allows.

The scopes are computed from the policy, so they must never take anything away from it: for every action
the server performs, on resources inside and outside the policy, the decision with the computed scopes is
the policy's own decision. Scopes asked for are cut to the same reach.
"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_fax.auth.grants import ScopeNotGranted, grant, narrows, reach
from fhir_fax.auth.guard import Principal
from fhir_fax.auth.policies import allows, parse_policy
from fhir_fax.auth.scopes import LETTER_OF_ACTION, SCOPE_OF_ACTION, parse_scopes

POLICIES: dict[str, dict[str, Any]] = {
    "everything": {"rule": [{"resource": "*", "action": "*", "effect": "Allow"}]},
    "one fax": {"rule": [{"resource": "FHIR:Communication:c1", "action": "FHIR:Read", "effect": "Allow"}]},
    "read but not patients": {
        "rule": [
            {"resource": "FHIR:*", "action": ["FHIR:Read", "FHIR:Search"], "effect": "Allow"},
            {"resource": "FHIR:Patient", "action": "*", "effect": "Deny"},
        ]
    },
    "sender": {
        "rule": [
            {"resource": "Fax:Fax:*", "action": "Fax:Send", "effect": "Allow"},
            {"resource": ["FHIR:*", "Z3:*"], "action": ["FHIR:Read", "Z3:GetObject"], "effect": "Allow"},
        ]
    },
    "one bucket": {"rule": [{"resource": "Z3:letters/**", "action": "Z3:*", "effect": "Allow"}]},
    "client admin": {"rule": [{"resource": "App:*", "action": "App:*", "effect": "Allow"}]},
    "nothing useful": {"rule": [{"resource": "Nothing:*", "action": "Nothing:Do", "effect": "Allow"}]},
}
RESOURCES = [
    *(f"FHIR:{t}:{i}" for t in ("Communication", "Patient", "Practitioner") for i in ("c1", "p1")),
    "FHIR:Communication",
    "Z3:letters/a.pdf",
    "Z3:other/a.pdf",
    "Fax:Fax:f1",
    "App:M2MClient:x",
]
ACTIONS = [*(f"FHIR:{name}" for name in LETTER_OF_ACTION), *SCOPE_OF_ACTION]


@pytest.mark.parametrize("name", POLICIES)
def test_the_whole_reach_takes_nothing_from_the_policy(name: str) -> None:
    rules = parse_policy(POLICIES[name])
    scopes = grant("", rules)
    principal = Principal("c", rules, scopes)
    for action in ACTIONS:
        for resource in RESOURCES:
            assert principal.may(action, resource) == allows(rules, action, resource), (name, action, resource)
    assert not narrows(scopes, rules)


def test_reach_in_scope_terms() -> None:
    def text(name: str) -> str:
        return " ".join(str(s) for s in reach(parse_policy(POLICIES[name])))

    assert text("everything") == "system/*.cruds"
    assert text("one fax") == "system/Communication.r"
    assert "system/Patient" not in text("read but not patients")
    assert text("nothing useful") == ""


def test_asked_scopes_are_cut_to_the_reach_and_narrowing_is_seen() -> None:
    rules = parse_policy(POLICIES["one fax"])
    assert [str(s) for s in grant("system/*.rs openid", rules)] == ["system/Communication.r"]
    with pytest.raises(ScopeNotGranted, match=r"here system/Communication\.r"):
        grant("system/Patient.r", rules)
    everything = parse_policy(POLICIES["everything"])
    assert narrows(parse_scopes("system/*.rs"), everything)
    assert not narrows(parse_scopes("system/*.cruds"), everything)
