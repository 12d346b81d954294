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
