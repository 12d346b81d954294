"""SMART App Launch scopes (v2 ``patient/Communication.rs``, v1 ``user/*.read``) and what they permit.

A scope is ``context/Type.permissions``: context ``patient``, ``user`` or ``system``; ``Type`` a
resource type or ``*``; permissions the v2 letters ``c r u d s`` in that order, or v1 ``read``
(= ``rs``), ``write`` (= ``cud``) or ``*`` (= ``cruds``). Scopes only ever narrow what the access
policy allows, and they narrow every action, not only FHIR ones (``SCOPE_OF_ACTION``).

How actions that are not FHIR interactions map to scopes, and why:

- A document in Z3 is the content of a fax, i.e. part of a Communication (its ``payload``): reading,
  writing, deleting and listing documents need ``r``, ``c``, ``d`` and ``s`` on ``Communication``, and a
  patient-limited token only reaches documents carried by faxes in its patient's compartment (the gate
  checks that). Sending a fax creates a Communication: ``c`` on ``Communication``.
- Everything else (buckets, fax numbers, the fax configuration, M2M clients) is administration of the
  server, not anyone's record: it needs a ``system/*`` or ``user/*`` scope with the matching letter (list
  ``s``, get ``r``, create ``c``, change ``u``, delete ``d``); a ``patient/`` scope never grants it.
- An action this table does not know needs ``*`` with every letter (nothing that scopes narrow gets through).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCOPE = re.compile(r"(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(\*|read|write|c?r?u?d?s?)")  # matched whole
V1 = {"read": "rs", "write": "cud", "*": "cruds"}
LETTER_OF_ACTION = {"Create": "c", "Read": "r", "History": "r", "Update": "u", "Delete": "d", "Search": "s"}
ADMINISTRATION = "*"  # the scope resource type of actions on no FHIR resource (buckets, numbers, clients)
SCOPE_OF_ACTION: dict[str, tuple[str, str]] = {
    "Fax:Send": ("Communication", "c"),
    "Z3:GetObject": ("Communication", "r"),
    "Z3:PutObject": ("Communication", "c"),
    "Z3:DeleteObject": ("Communication", "d"),
    "Z3:ListObjects": ("Communication", "s"),
    "Z3:ListBuckets": (ADMINISTRATION, "s"),
    "Z3:CreateBucket": (ADMINISTRATION, "c"),
    "Z3:DeleteBucket": (ADMINISTRATION, "d"),
    "Fax:Onboard": (ADMINISTRATION, "c"),
    "Fax:Offboard": (ADMINISTRATION, "d"),
    "Fax:GetConfiguration": (ADMINISTRATION, "r"),
    "Fax:Receive": (ADMINISTRATION, "c"),  # simulating a received fax, reading the reception settings
    "App:CreateM2MClient": (ADMINISTRATION, "c"),
    "App:ListAllM2MClients": (ADMINISTRATION, "s"),
    "App:GetM2MClient": (ADMINISTRATION, "r"),
    "App:UpdateM2MClient": (ADMINISTRATION, "u"),
    "App:DeleteM2MClient": (ADMINISTRATION, "d"),
    "App:RotateM2MClientSecret": (ADMINISTRATION, "u"),
    "App:Launch": (ADMINISTRATION, "c"),  # an EHR making a launch context (it also needs to read the patient)
    "App:RegisterSmartApp": (ADMINISTRATION, "c"),
    "App:ListSmartApps": (ADMINISTRATION, "s"),
    "App:DeleteSmartApp": (ADMINISTRATION, "d"),
}


class ScopeError(ValueError):
    """A scope string that is not a SMART scope."""


@dataclass(frozen=True)
class Scope:
    context: str
    resource_type: str
    letters: str

    def __str__(self) -> str:
        return f"{self.context}/{self.resource_type}.{self.letters}"


def parse_scopes(text: str) -> tuple[Scope, ...]:
    """Resource scopes from a space-separated list; other scopes (openid, launch, ...) are ignored."""
    scopes = []
    for item in text.split():
        if not item.startswith(("patient/", "user/", "system/")):
            continue  # openid, fhirUser, offline_access, launch/patient...: not about resources
        match = SCOPE.fullmatch(item)
        if match is None or not match[3]:
            raise ScopeError(f"{item!r} is not a SMART scope such as system/Communication.rs or user/*.read.")
        context, resource_type, permissions = match.groups()
        scopes.append(Scope(context, resource_type, V1.get(permissions, permissions)))
    return tuple(scopes)


def scope_terms(action: str, resource: str) -> tuple[str, str]:
    """The resource type and permission letters (all needed) that scopes judge ``action`` on ``resource`` by."""
    service, _, name = action.partition(":")
    if service == "FHIR" and name in LETTER_OF_ACTION:
        parts = resource.split(":")
        return (parts[1] if len(parts) > 1 else "*"), LETTER_OF_ACTION[name]
    return SCOPE_OF_ACTION.get(action, (ADMINISTRATION, "cruds"))


def granting(scopes: tuple[Scope, ...], resource_type: str, letter: str) -> list[Scope]:
    """The scopes that grant ``letter`` on ``resource_type`` (administration: only system/user ``*`` scopes)."""
    if resource_type == ADMINISTRATION:
        return [s for s in scopes if s.resource_type == "*" and s.context != "patient" and letter in s.letters]
    return [s for s in scopes if s.resource_type in ("*", resource_type) and letter in s.letters]


def permits(scopes: tuple[Scope, ...], fhir_action: str, resource_type: str) -> bool:
    """Do the scopes allow a FHIR interaction (``FHIR:Read``...) on ``resource_type``?"""
    letter = LETTER_OF_ACTION.get(fhir_action.partition(":")[2])
    if letter is None:
        return False
    return bool(granting(scopes, resource_type, letter))


def permits_action(scopes: tuple[Scope, ...], action: str, resource: str) -> bool:
    """Do the scopes allow ``action`` on ``resource`` (any action: see ``SCOPE_OF_ACTION``)?"""
    resource_type, letters = scope_terms(action, resource)
    return all(granting(scopes, resource_type, letter) for letter in letters)
