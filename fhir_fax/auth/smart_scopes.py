"""Scopes of the authorization-code flow: what an app may ask for, what the user is shown, what is granted.

- *Within the app's registration* (``beyond_app``): a word scope (``openid``, ``launch/patient``...) must be
  registered as is; a resource scope must be covered by a registered one of the same context (``patient/*.rs``
  covers ``patient/Communication.r``). Anything else refuses the whole request (``invalid_scope``).
- *In plain words* (``describe``): the consent page shows each scope as a sentence, so the person can leave out
  what they do not want to share.
- *Within the user's reach* (``within_user``): resource scopes are cut down to what the user's access policy
  reaches (``grants.py``), so the token response's ``scope`` says what the token can really do. A scope granted
  whole keeps the exact spelling the app used (``patient/*.read`` stays v1).
"""

from __future__ import annotations

from .grants import _letters, _within
from .policies import Rule
from .scopes import Scope, ScopeError, parse_scopes

CONTEXT_WORDS = {"patient": "of the chosen patient only", "user": "that you may see", "system": "on the whole server"}
LETTER_WORDS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
WORD_SCOPES = {
    "openid": "Confirm who you are (your sign-in identity).",
    "fhirUser": "Know which person you are in the record (your Practitioner or Patient entry).",
    "profile": "See your name and username.",
    "launch": "Open in the context the EHR launched it in (the patient or encounter shown there).",
    "launch/patient": "Know which patient you chose to work on.",
    "launch/encounter": "Know which encounter you are working in.",
    "offline_access": "Keep access after you sign out, until you revoke it (a long-lived refresh token).",
    "online_access": "Keep access while you are working (a refresh token that lasts a working day).",
}


def _resource(scope: str) -> Scope | None:
    if not scope.startswith(("patient/", "user/", "system/")):
        return None
    found = parse_scopes(scope)  # ScopeError when malformed
    return found[0] if found else None


def beyond_app(requested: list[str], registered: list[str]) -> list[str]:
    """The requested scopes the app is not registered for (ScopeError for a malformed one)."""
    allowed = [s for s in (_resource(r) for r in registered) if s is not None]
    outside = []
    for scope in requested:
        resource = _resource(scope)
        if resource is None:
            if scope not in registered:
                outside.append(scope)
            continue
        covered = any(
            a.context == resource.context
            and a.resource_type in ("*", resource.resource_type)
            and set(resource.letters) <= set(a.letters)
            for a in allowed
        )
        if not covered:
            outside.append(scope)
    return outside


def describe(scope: str) -> str:
    """One scope as a sentence for the consent page."""
    if scope in WORD_SCOPES:
        return WORD_SCOPES[scope]
    try:
        resource = _resource(scope)
    except ScopeError:
        resource = None
    if resource is None:
        return f"Use the permission {scope!r}."
    verbs = [LETTER_WORDS[letter] for letter in resource.letters]
    what = "all kinds of records" if resource.resource_type == "*" else f"{resource.resource_type} records"
    spoken = ", ".join(verbs[:-1]) + (" and " if len(verbs) > 1 else "") + verbs[-1]
    return f"{spoken.capitalize()} {what} ({CONTEXT_WORDS[resource.context]})."


def within_user(scopes: list[str], rules: tuple[Rule, ...]) -> list[str]:
    """``scopes`` with each resource scope cut down to the user's reach (dropped when nothing is left)."""
    letters = _letters(rules, tuple(_served()))
    granted: list[str] = []
    for scope in scopes:
        resource = _resource(scope)
        if resource is None:
            granted.append(scope)
            continue
        kept = _within(resource, letters)
        if len(kept) == 1 and kept[0] == resource:
            granted.append(scope)  # whole: the app's own spelling
        else:
            granted.extend(str(s) for s in kept)
    return list(dict.fromkeys(granted))


def resource_scopes(scopes: list[str]) -> list[str]:
    return [s for s in scopes if s.startswith(("patient/", "user/", "system/"))]


def _served() -> tuple[str, ...]:
    from ..fhir.models import SUPPORTED_TYPES

    return tuple(SUPPORTED_TYPES)
