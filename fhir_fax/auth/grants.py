"""Which scopes a token of ours is granted: what was asked for, within what the client's access policy reaches.

The ``scope`` of a token response (and the token's ``scope`` claim, which is the same string) states what the
token can do, in SMART's terms: per resource type, which of ``c r u d s`` it may use. It is computed, never
echoed:

- The client's *reach* is what its access policy allows, as scopes: ``(type, letter)`` for every FHIR
  interaction the policy allows on some resource of a served type (``policies.id_scope``: a policy granting
  only some ids still reaches the type), and for every other action it allows, the type and letters that
  ``scopes.SCOPE_OF_ACTION`` judges that action by. Administration (buckets, numbers, clients) can only be
  expressed as ``system/*``, so its letters are in the ``system/*`` scope.
- No scope asked for: the token is granted its reach (the bootstrap administrator: ``system/*.cruds``).
- Scopes asked for: each resource scope is cut down to the reach; the rest are not granted and are left out
  of the response: ``openid``, ``launch``... (no user or launch context in a client-credentials grant), any
  other word, and ``patient/`` scopes (a client-credentials token has no patient in context, so such a scope
  could only refuse). When nothing that was asked for is granted, there is no token: ``invalid_scope``.

The policy is still checked on every request (it may limit a type to some ids or buckets, which scopes cannot
say, and it may have changed since); the scopes only ever narrow it.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..fhir.models import SUPPORTED_TYPES
from .policies import PolicyError, Rule, action_matches, id_scope, parse_policy
from .scopes import ADMINISTRATION, LETTER_OF_ACTION, SCOPE_OF_ACTION, Scope, ScopeError, granting, parse_scopes

LETTERS = "cruds"
GRANTED_CONTEXTS = ("system", "user")  # user/ is accepted as before; it acts like system/ in this grant


class ScopeNotGranted(ScopeError):
    """A scope request of which nothing can be granted (RFC 6749 ``invalid_scope``)."""


def _ordered(letters: Iterable[str]) -> str:
    present = set(letters)
    return "".join(letter for letter in LETTERS if letter in present)


def _letters(rules: tuple[Rule, ...], types: tuple[str, ...]) -> dict[str, set[str]]:
    """Per served type (and ``*`` = administration), the letters the policy allows somewhere."""
    letters: dict[str, set[str]] = {t: set() for t in (*types, ADMINISTRATION)}
    for name, letter in LETTER_OF_ACTION.items():
        action = f"FHIR:{name}"
        for resource_type in types:
            if not id_scope(rules, action, resource_type).empty:
                letters[resource_type].add(letter)
    for action, (resource_type, needed) in SCOPE_OF_ACTION.items():
        if any(rule.effect == "Allow" and any(action_matches(a, action) for a in rule.actions) for rule in rules):
            letters.setdefault(resource_type, set()).update(needed)
    everywhere = {letter for letter in LETTERS if types and all(letter in letters[t] for t in types)}
    letters[ADMINISTRATION] |= everywhere  # system/* says both: administration, and every type
    return letters


def _scopes(context: str, letters: dict[str, set[str]]) -> tuple[Scope, ...]:
    """``context/*`` with the administration letters, then each type's letters beyond those."""
    everywhere = letters.get(ADMINISTRATION, set())
    found = [Scope(context, ADMINISTRATION, _ordered(everywhere))] if everywhere else []
    for resource_type in sorted(t for t in letters if t != ADMINISTRATION):
        extra = letters[resource_type] - everywhere
        if extra:
            found.append(Scope(context, resource_type, _ordered(extra)))
    return tuple(found)


def reach(rules: tuple[Rule, ...], resource_types: Iterable[str] = SUPPORTED_TYPES) -> tuple[Scope, ...]:
    """The ``system/`` scopes that say, per type, which letters the policy allows somewhere (see module doc)."""
    return _scopes("system", _letters(rules, tuple(resource_types)))


def _within(asked: Scope, letters: dict[str, set[str]]) -> tuple[Scope, ...]:
    """``asked`` cut down to what the policy allows (``letters``), in ``asked``'s context."""
    wanted = set(asked.letters)
    if asked.resource_type == ADMINISTRATION:
        return _scopes(asked.context, {t: wanted & have for t, have in letters.items()})
    have = letters.get(asked.resource_type, set()) | letters.get(ADMINISTRATION, set())
    kept = _ordered(wanted & have)
    return (Scope(asked.context, asked.resource_type, kept),) if kept else ()


def _normalised(scopes: Iterable[Scope]) -> tuple[Scope, ...]:
    """One scope per context and type, letters merged; a type's letters already in ``context/*`` left out."""
    merged: dict[tuple[str, str], set[str]] = {}
    for scope in scopes:
        merged.setdefault((scope.context, scope.resource_type), set()).update(scope.letters)
    result = []
    for (context, resource_type), letters in merged.items():
        if resource_type != ADMINISTRATION:
            letters = letters - merged.get((context, ADMINISTRATION), set())
        if letters:
            result.append(Scope(context, resource_type, _ordered(letters)))
    return tuple(sorted(result, key=lambda s: (s.context, s.resource_type != ADMINISTRATION, s.resource_type)))


def grant(requested: str, rules: tuple[Rule, ...]) -> tuple[Scope, ...]:
    """The scopes a token gets for a ``scope`` request; ScopeError (malformed) or ScopeNotGranted (nothing)."""
    letters = _letters(rules, SUPPORTED_TYPES)
    available = _scopes("system", letters)
    if not requested.split():
        return available  # empty when the policy reaches nothing: scope "", and the policy refuses everything
    asked = parse_scopes(requested)  # ScopeError for a malformed resource scope
    granted = _normalised(
        found for scope in asked if scope.context in GRANTED_CONTEXTS for found in _within(scope, letters)
    )
    if not granted:
        offer = " ".join(str(s) for s in available) or "nothing"
        raise ScopeNotGranted(
            f"None of the requested scopes ({' '.join(requested.split())}) can be granted to this client. "
            f"This server grants system/ scopes (client credentials: no user, launch or patient context) within "
            f"the client's access policy, here {offer}; ask for some of those, or leave scope out."
        )
    return granted


def grant_for(requested: str, policy: object) -> tuple[Scope, ...]:
    """``grant`` for a client's stored policy (a policy that cannot be used grants nothing)."""
    try:
        rules = parse_policy(policy)
    except PolicyError as error:
        raise ScopeNotGranted(f"This client's access policy cannot be used ({error}), so no token is issued.") from None
    return grant(requested, rules)


def narrows(scopes: tuple[Scope, ...], rules: tuple[Rule, ...]) -> bool:
    """Do ``scopes`` take away anything ``rules`` allow (some type and letter the policy reaches, not granted)?

    A token granted its client's whole reach (no scope asked for) narrows nothing: with it, the client may
    hand its rights on (``gate.Gate.grant``) as with a token without scopes.
    """
    if not scopes:
        return False
    return any(not granting(scopes, s.resource_type, letter) for s in reach(rules) for letter in s.letters)
