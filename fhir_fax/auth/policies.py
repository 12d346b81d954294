"""Access policies in the hosted service's shape, and the decision they make.

``{"rule": [{"resource": str | [str], "action": str | [str], "effect": "Allow" | "Deny"}]}`` (``rule``
may be a single object). Resources are ``service:type:id``, each part ``*`` or omitted (``FHIR``,
``FHIR:*`` and ``FHIR:*:*`` are the same); a wildcard is never followed by a specific part. Z3 resources
are paths: ``Z3:bucket``, ``Z3:bucket/dir/*`` (``*`` stays within one path segment) and
``Z3:bucket/**/file.pdf`` (``**`` spans any number of segments). Actions are ``Service:Action`` with
``*`` allowed (``FHIR:*``, ``*``). Decision: default deny, any matching Deny wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

EFFECTS = ("Allow", "Deny")


class PolicyError(ValueError):
    """A policy that cannot be used (the message says which rule and why)."""


@dataclass(frozen=True)
class Rule:
    resources: tuple[str, ...]
    actions: tuple[str, ...]
    effect: str


def _strings(value: Any, what: str, index: int) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise PolicyError(f"rule {index}: {what} must be a non-empty string or list of strings.")
    return tuple(items)


def parse_policy(policy: Any) -> tuple[Rule, ...]:
    """Check and normalise a policy; PolicyError names the rule that is wrong."""
    if not isinstance(policy, dict) or "rule" not in policy:
        raise PolicyError('An access policy is an object with "rule": a rule or a list of rules.')
    raw_rules = policy["rule"] if isinstance(policy["rule"], list) else [policy["rule"]]
    rules = []
    for index, raw in enumerate(raw_rules):
        if not isinstance(raw, dict):
            raise PolicyError(f"rule {index}: must be an object with resource, action and effect.")
        effect = raw.get("effect")
        if effect not in EFFECTS:
            raise PolicyError(f"rule {index}: effect must be Allow or Deny, got {effect!r}.")
        resources = _strings(raw.get("resource"), "resource", index)
        actions = _strings(raw.get("action"), "action", index)
        for resource in resources:
            _check_resource(resource, index)
        for action in actions:
            if action != "*" and not re.fullmatch(r"[A-Za-z0-9]+:(\*|[A-Za-z0-9]+)", action):
                raise PolicyError(f"rule {index}: action {action!r} must look like Service:Action, Service:* or *.")
        rules.append(Rule(resources, actions, effect))
    return tuple(rules)


def _check_resource(resource: str, index: int) -> None:
    if resource == "*":
        return
    service, _, rest = resource.partition(":")
    if not re.fullmatch(r"[A-Za-z0-9]+", service):
        raise PolicyError(f"rule {index}: resource {resource!r} must start with a service name such as FHIR or Z3.")
    if service == "Z3":
        if rest and ("//" in rest or "***" in rest or any(part in ("..", ".") for part in rest.split("/"))):
            raise PolicyError(f"rule {index}: Z3 resource {resource!r} is not a valid path pattern.")
        return
    parts = rest.split(":") if rest else []
    if len(parts) > 2:
        raise PolicyError(f"rule {index}: resource {resource!r} has more than service:type:id.")
    seen_wildcard = False
    for part in parts:
        if part == "*":
            seen_wildcard = True
        elif seen_wildcard:
            raise PolicyError(f"rule {index}: in {resource!r} a wildcard is followed by a specific part.")
        elif not re.fullmatch(r"[A-Za-z0-9\-.]+", part):
            raise PolicyError(f"rule {index}: {part!r} in {resource!r} is not a type or id.")


@lru_cache(maxsize=4096)
def _z3_pattern(pattern: str) -> re.Pattern[str]:
    regex = ""
    for token in re.split(r"(\*\*/?|\*)", pattern):
        if token in ("**", "**/"):
            regex += "(?:.*/)?" if token == "**/" else ".*"
        elif token == "*":
            regex += "[^/]*"
        else:
            regex += re.escape(token)
    return re.compile(regex)


def resource_matches(pattern: str, resource: str) -> bool:
    """Does ``pattern`` (from a policy) cover ``resource`` (what a request touches)?"""
    if pattern == "*":
        return True
    p_service, _, p_rest = pattern.partition(":")
    r_service, _, r_rest = resource.partition(":")
    if p_service != r_service:
        return False
    if p_service == "Z3":
        return p_rest in ("", "*", "**") or _z3_pattern(p_rest).fullmatch(r_rest) is not None
    wanted = p_rest.split(":") if p_rest else []
    actual = r_rest.split(":") if r_rest else []
    for index, part in enumerate(wanted):
        if part == "*":
            return True
        if index >= len(actual) or actual[index] != part:
            return False
    return True  # omitted trailing parts are wildcards


def action_matches(pattern: str, action: str) -> bool:
    if pattern == "*" or pattern == action:
        return True
    service, _, name = pattern.partition(":")
    return name == "*" and action.partition(":")[0] == service


def denies(rules: tuple[Rule, ...], action: str, resource: str) -> bool:
    """Does a Deny rule match (whatever the Allows say)?"""
    return any(
        rule.effect == "Deny"
        and any(action_matches(a, action) for a in rule.actions)
        and any(resource_matches(r, resource) for r in rule.resources)
        for rule in rules
    )


def allows(rules: tuple[Rule, ...], action: str, resource: str) -> bool:
    """Default deny; any matching Deny wins over any Allow."""
    allowed = False
    for rule in rules:
        if any(action_matches(a, action) for a in rule.actions) and any(
            resource_matches(r, resource) for r in rule.resources
        ):
            if rule.effect == "Deny":
                return False
            allowed = True
    return allowed


# -- per-id rules as a search filter ----------------------------------------------------------------------


@dataclass(frozen=True)
class IdScope:
    """The ids of one FHIR type that rules let an action reach: every id but ``denied``, or only ``allowed``.

    ``type_denied``: a Deny covers the whole type. Search turns this into a query filter, so that pages
    and totals only ever count what may be shown.
    """

    every: bool
    allowed: frozenset[str]
    denied: frozenset[str]
    type_denied: bool = False

    @property
    def empty(self) -> bool:
        return self.type_denied or (not self.every and not (self.allowed - self.denied))

    def narrowed(self, other: IdScope) -> IdScope:
        """Only what both reach."""
        if self.every and other.every:
            return IdScope(True, frozenset(), self.denied | other.denied, self.type_denied or other.type_denied)
        allowed = (
            (self.allowed if not self.every else other.allowed)
            if self.every != other.every
            else (self.allowed & other.allowed)
        )
        return IdScope(False, allowed, self.denied | other.denied, self.type_denied or other.type_denied)

    def without(self, other: IdScope) -> IdScope:
        """What this reaches except what ``other`` denies."""
        return IdScope(self.every, self.allowed, self.denied | other.denied, self.type_denied or other.type_denied)

    def mongo_filter(self) -> dict[str, Any]:
        if self.every:
            return {"_id": {"$nin": sorted(self.denied)}} if self.denied else {}
        return {"_id": {"$in": sorted(self.allowed - self.denied)}}


def id_scope(rules: tuple[Rule, ...], action: str, resource_type: str) -> IdScope:
    """Which ids of ``resource_type`` the rules let ``action`` reach (FHIR resources ``FHIR:Type:id``)."""
    whole = f"FHIR:{resource_type}"
    every, type_denied = False, False
    allowed: set[str] = set()
    denied: set[str] = set()
    for rule in rules:
        if not any(action_matches(a, action) for a in rule.actions):
            continue
        for pattern in rule.resources:
            if resource_matches(pattern, whole):
                if rule.effect == "Deny":
                    type_denied = True
                else:
                    every = True
                continue
            parts = pattern.split(":")
            if len(parts) == 3 and parts[0] == "FHIR" and parts[1] == resource_type and parts[2] != "*":
                (denied if rule.effect == "Deny" else allowed).add(parts[2])
    return IdScope(every, frozenset(allowed), frozenset(denied), type_denied)


# -- one policy within another (a client never grants more than it has) -------------------------------------


def _action_covers(wide: str, narrow: str) -> bool:
    if wide == "*" or wide == narrow:
        return True
    service, _, name = wide.partition(":")
    return name == "*" and narrow != "*" and narrow.partition(":")[0] == service


def _z3_everything(rest: str) -> bool:
    return rest in ("", "*", "**")


def _resource_covers(wide: str, narrow: str) -> bool:
    """Does every resource ``narrow`` (a pattern) can match also match ``wide``? (False when unsure.)"""
    if wide == "*":
        return True
    if narrow == "*":
        return False
    w_service, _, w_rest = wide.partition(":")
    n_service, _, n_rest = narrow.partition(":")
    if w_service != n_service:
        return False
    if w_service == "Z3":
        if _z3_everything(w_rest) or w_rest == n_rest:
            return True
        if _z3_everything(n_rest):
            return False
        if "*" not in n_rest:
            return _z3_pattern(w_rest).fullmatch(n_rest) is not None
        prefix = w_rest[:-2]
        return w_rest.endswith("/**") and "*" not in prefix and n_rest.startswith(prefix)
    wanted, actual = (w_rest.split(":") if w_rest else []), (n_rest.split(":") if n_rest else [])
    for index, part in enumerate(wanted):
        if part == "*":
            return True
        if index >= len(actual) or actual[index] in ("*", "") or actual[index] != part:
            return False
    return True


def _resource_overlap(one: str, other: str) -> bool:
    """Could some resource match both patterns? (True when unsure.)"""
    if _resource_covers(one, other) or _resource_covers(other, one):
        return True
    one_service, _, one_rest = one.partition(":")
    other_service, _, other_rest = other.partition(":")
    if one_service != other_service or one_service != "Z3":
        return False  # service:type:id patterns are nested or disjoint
    one_fixed, other_fixed = one_rest.split("*")[0], other_rest.split("*")[0]
    if "*" not in one_rest and "*" not in other_rest:
        return one_rest == other_rest
    return one_fixed.startswith(other_fixed) or other_fixed.startswith(one_fixed)


def _grants(rules: tuple[Rule, ...], effect: str, action: str, resource: str) -> bool:
    return any(
        rule.effect == effect
        and any(_action_covers(a, action) for a in rule.actions)
        and any(_resource_covers(r, resource) for r in rule.resources)
        for rule in rules
    )


def beyond(policy: tuple[Rule, ...], own: tuple[Rule, ...]) -> str | None:
    """The first grant of ``policy`` that ``own`` does not cover (``"Allow A on R"``), or None when none.

    Each Allow of ``policy`` must be covered by one Allow of ``own``, and wherever it reaches into a Deny
    of ``own``, ``policy`` must deny that too. The comparison is of patterns, so it errs on the side of
    refusing (a grant covered only by the union of several rules is reported; narrow it to fit).
    """
    for rule in policy:
        if rule.effect != "Allow":
            continue
        for action in rule.actions:
            for resource in rule.resources:
                grant = f"Allow {action} on {resource}"
                if not _grants(own, "Allow", action, resource):
                    return grant
                for deny in (r for r in own if r.effect == "Deny"):
                    for denied_action in deny.actions:
                        if not (_action_covers(denied_action, action) or _action_covers(action, denied_action)):
                            continue
                        for denied in deny.resources:
                            if not _resource_overlap(denied, resource):
                                continue
                            both_action = action if _action_covers(denied_action, action) else denied_action
                            if _resource_covers(resource, denied):
                                both_resource = denied
                            elif _resource_covers(denied, resource):
                                both_resource = resource
                            else:
                                return f"{grant} (it overlaps your Deny of {denied_action} on {denied})"
                            if not _grants(policy, "Deny", both_action, both_resource):
                                return f"{grant} (your policy denies {denied_action} on {denied})"
    return None
