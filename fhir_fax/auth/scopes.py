"""SMART App Launch scopes (v2 ``patient/Communication.rs``, v1 ``user/*.read``) and what they permit.

A scope is ``context/Type.permissions``: context ``patient``, ``user`` or ``system``; ``Type`` a
resource type or ``*``; permissions the v2 letters ``c r u d s`` in that order, or v1 ``read``
(= ``rs``), ``write`` (= ``cud``) or ``*`` (= ``cruds``). Scopes only ever narrow what the access
policy allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCOPE = re.compile(r"(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(\*|read|write|c?r?u?d?s?)")  # matched whole
V1 = {"read": "rs", "write": "cud", "*": "cruds"}
LETTER_OF_ACTION = {"Create": "c", "Read": "r", "History": "r", "Update": "u", "Delete": "d", "Search": "s"}


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


def permits(scopes: tuple[Scope, ...], fhir_action: str, resource_type: str) -> bool:
    """Do the scopes allow a FHIR interaction (``FHIR:Read``...) on ``resource_type``?"""
    letter = LETTER_OF_ACTION.get(fhir_action.partition(":")[2])
    if letter is None:
        return False
    return any(s.resource_type in ("*", resource_type) and letter in s.letters for s in scopes)
