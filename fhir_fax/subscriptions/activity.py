"""When a Subscription was active, so that each version is matched by the Subscriptions active when it was written.

A pass may run a while after a version is written (a burst of writes goes in one pass; a process that wrote it may
have died and another's full pass finds it). By then a Subscription may have gone to ``error`` or ``off`` and come
back. Each Subscription keeps, in its private part, when its stored status last became active (``activated``) and
when it last stopped being active (``deactivated``). A version written between the two was written while it was
not active and is not matched, however late its pass; one written before it stopped is, even by a pass that runs
while the Subscription is in ``error`` (its notification is then held, and sent once it is active again). Both
times are set by the store at every write of a Subscription (``ResourceStore.keep_with``), inside the write's
retry, so they are decided on the version each write replaces, whoever writes it (a client's PUT, the server's
``error``/``off``).

Times are kept to the millisecond, as the database keeps a version's write time, and compared as text. A version
written in the millisecond of a change is matched (an extra notification rather than a lost one). Only the last
stop and start are kept: a pass late enough to see a version from an earlier inactive period (two cycles of error
or off since) matches it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..fhir.models import now
from ..fhir.store import PRIVATE, RESERVED, as_utc

ACTIVATED = "activated"
DEACTIVATED = "deactivated"


def moment_text(moment: datetime) -> str:
    """A moment as a version's write time reads as text (UTC, to the millisecond, as BSON keeps it)."""
    moment = as_utc(moment)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000).strftime("%Y-%m-%dT%H:%M:%S.%f")


def keep_activity(
    current: dict[str, Any] | None, resource: dict[str, Any], private: dict[str, Any] | None
) -> dict[str, Any] | None:
    """``ResourceStore.keep_with`` for Subscription: ``private`` plus the activity times, carried over from the
    stored version ``current`` (None: a new one) and moved when this write changes whether it is active."""
    prior = current[RESERVED].get(PRIVATE) if current is not None else None
    kept = dict(private or {})
    for key in (ACTIVATED, DEACTIVATED):
        if isinstance(prior, dict) and isinstance(prior.get(key), str):
            kept[key] = prior[key]
    was_active = current is not None and current.get("status") == "active"
    active = resource.get("status") == "active"
    if active != was_active:
        kept[ACTIVATED if active else DEACTIVATED] = moment_text(now())
    return kept if kept or private is not None else None


def matches_as_written(subscription: dict[str, Any], written: str) -> bool:
    """Whether the Subscription, as stored now, was active when a version was written at ``written``
    (``moment_text``): an active one unless the version came after it last stopped (or before it first started)
    and before it last started; one in ``error`` if the version came before it stopped; never one that is off."""
    private = subscription[RESERVED].get(PRIVATE)
    times = private if isinstance(private, dict) else {}
    activated, deactivated = times.get(ACTIVATED), times.get(DEACTIVATED)
    status = subscription.get("status")
    if status == "error":
        return isinstance(deactivated, str) and written <= deactivated
    if status != "active":
        return False
    if not isinstance(activated, str) or written >= activated:
        return True
    return isinstance(deactivated, str) and written <= deactivated
