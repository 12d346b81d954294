"""The simulator's inbound side: a file "faxed" to one of our numbers, as a carrier would announce it.

There is no line and no carrier: the document is in hand, so the notice carries no media URL and the
media is handed to the reception directly. Each call is a new fax unless ``fax_id`` repeats one (which is
how a test, or a careful script, delivers the same fax twice).
"""

from __future__ import annotations

import uuid

from ....fhir.models import now
from ..base import InboundMedia, InboundNotice

NAME = "simulator"


def simulated_fax(
    data: bytes, from_number: str, to_number: str, fax_id: str | None = None
) -> tuple[InboundNotice, InboundMedia]:
    """The notice and media of a simulated received fax (``sim-in-...`` ids, like the simulator's ``sim-...``)."""
    notice = InboundNotice(
        carrier_fax_id=fax_id or f"sim-in-{uuid.uuid4()}",
        from_number=from_number,
        to_number=to_number,
        occurred_at=now(),
    )
    return notice, InboundMedia(data, None)
