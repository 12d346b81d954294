"""Telnyx Programmable Fax v2: the whole carrier (transport, webhooks, value checks) and its registration."""

from __future__ import annotations

from ..base import Carrier
from .client import NAME, Telnyx
from .events import CARRIER_ID, CarrierEventProblem, decode_state, encode_state, event_from_webhook
from .webhooks import TelnyxWebhooks, telnyx_signature_problem

CARRIER = Carrier(name=NAME, title="Telnyx", transport=Telnyx, webhooks=TelnyxWebhooks)

__all__ = [
    "CARRIER",
    "CARRIER_ID",
    "CarrierEventProblem",
    "Telnyx",
    "TelnyxWebhooks",
    "decode_state",
    "encode_state",
    "event_from_webhook",
    "telnyx_signature_problem",
]
