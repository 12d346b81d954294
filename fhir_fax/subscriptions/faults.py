"""Crash points for the crash-safety tests (``FHIR_FAX_CRASH_AT=<name>``), as ``fax.faults`` has for delivery.

``subscription-queued``: notifications queued, the version's pending mark not yet cleared.
``subscription-posted``: the endpoint took the notification, the queue does not know yet.
Unset in normal use; costs one environment lookup.
"""

from __future__ import annotations

import os

CRASH_EXIT_CODE = 86


def crash_point(name: str) -> None:
    if os.environ.get("FHIR_FAX_CRASH_AT") == name:
        os._exit(CRASH_EXIT_CODE)
