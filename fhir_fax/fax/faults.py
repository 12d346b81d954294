"""Crash points for the crash-safety tests: ``FHIR_FAX_CRASH_AT=<name>`` makes the process die there.

Like a database's fail points, they let a test kill a worker at an exact step (after claiming
a job, after the carrier accepted it, ...) instead of hoping a random kill lands there.
Unset in normal use; costs one environment lookup.
"""

from __future__ import annotations

import os

CRASH_EXIT_CODE = 86


def crash_point(name: str) -> None:
    if os.environ.get("FHIR_FAX_CRASH_AT") == name:
        os._exit(CRASH_EXIT_CODE)
