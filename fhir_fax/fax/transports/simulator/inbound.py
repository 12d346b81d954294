"""The simulator's inbound side: a file "faxed" to one of our numbers, as a carrier would announce it.

There is no line and no carrier: the document is in hand, so the notice carries no media URL and the
media is handed to the reception directly. Each call is a new fax unless ``fax_id`` repeats one (which is
how a test, or a careful script, delivers the same fax twice). ``failure`` (a failure-reason code: BUSY,
NO_ANSWER, FAILED, UNKNOWN or a SIP code such as 486) plays a reception that failed: no document.
"""

from __future__ import annotations

import re
import uuid

from ....fhir.models import now
from ...status import FAILURE_MESSAGES, Failure
from ..base import InboundMedia, InboundNotice

NAME = "simulator"


def simulated_failure(code: str) -> Failure:
    """The failure of a simulated reception; ValueError for a code that is not a failure-reason code."""
    if code in FAILURE_MESSAGES:
        return Failure(code, FAILURE_MESSAGES[code])
    if re.fullmatch(r"[3-6][0-9]{2}", code):
        return Failure(code, f"The call failed with SIP {code}.")
    raise ValueError(f"{code!r} is not a failure code; use {', '.join(FAILURE_MESSAGES)} or a SIP code such as 486.")


def simulated_fax(
    data: bytes, from_number: str, to_number: str, fax_id: str | None = None, failure: str | None = None
) -> tuple[InboundNotice, InboundMedia | None]:
    """The notice and media of a simulated received fax (``sim-in-...`` ids, like the simulator's ``sim-...``)."""
    notice = InboundNotice(
        carrier_fax_id=fax_id or f"sim-in-{uuid.uuid4()}",
        from_number=from_number,
        to_number=to_number,
        occurred_at=now(),
        failure=None if failure is None else simulated_failure(failure),
    )
    return notice, None if failure is not None else InboundMedia(data, None)
