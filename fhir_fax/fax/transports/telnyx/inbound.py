"""Telnyx inbound faxes: ``fax.received`` (and an inbound ``fax.failed``) read, and the media fetched safely.

A received fax is announced by ``fax.received`` with ``media_url`` (where Telnyx keeps the document, a
short-lived storage URL), ``page_count`` and ``partial_content`` (only part of the fax came through; the media
holds what did). Other inbound events (``fax.media.processing.started``...) carry no news we act on. Numbers
may arrive with the ``+`` decoded to a space (" 13122010119" in Telnyx's own example): they are read as E.164.

The media is fetched only from the configured media hosts (``FHIR_FAX_INBOUND_MEDIA_HOSTS``: scheme, host and
port must match; a ``*.`` host covers its subdomains), without following redirects, within
``FHIR_FAX_INBOUND_MAX_BYTES`` and ``FHIR_FAX_INBOUND_MEDIA_TIMEOUT_SECONDS``. A signed webhook could still
name any URL; the allow-list is what keeps the server from fetching from anywhere it is told to.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import httpx

from ....settings import Settings
from ..base import InboundMedia, InboundNotice, MediaRefused, VerifiedWebhook
from .events import CARRIER_ID, CarrierEventProblem, failure_of, pages_of, parse_time

log = logging.getLogger("fhir_fax.telnyx")

MAX_URL = 4096
MAX_NUMBER = 40


def number_of(value: object, field: str) -> str:
    """An E.164 number from Telnyx's ``from``/``to`` ("+1...", or digits whose "+" became a space)."""
    if not isinstance(value, str) or len(value) > MAX_NUMBER:
        raise CarrierEventProblem(f"The webhook's payload.{field} is not a phone number; nothing was applied.")
    text = value.strip()
    if text.isdigit():
        text = "+" + text
    return text


def inbound_notice(envelope: dict[str, Any]) -> InboundNotice | None:
    """The received fax a Telnyx webhook tells of, or None (outbound news, or an inbound step we do not act on)."""
    data = envelope.get("data")
    data = data if isinstance(data, dict) else {}
    payload = data.get("payload")
    payload = payload if isinstance(payload, dict) else {}
    event_type = data.get("event_type")
    if payload.get("direction") != "inbound" or event_type not in ("fax.received", "fax.failed"):
        return None
    fax_id = payload.get("fax_id")
    if not isinstance(fax_id, str) or not CARRIER_ID.fullmatch(fax_id):
        raise CarrierEventProblem("The webhook's payload.fax_id is not a Telnyx fax id; nothing was applied.")
    caller = payload.get("from")
    notice: dict[str, Any] = {
        "carrier_fax_id": fax_id,
        "from_number": number_of(caller, "from") if caller not in (None, "") else "anonymous",
        "to_number": number_of(payload.get("to"), "to"),
        "occurred_at": parse_time(data.get("occurred_at")),
    }
    if event_type == "fax.failed":
        return InboundNotice(**notice, failure=failure_of(payload.get("failure_reason")))
    media_url = payload.get("media_url")
    if not isinstance(media_url, str) or not media_url or len(media_url) > MAX_URL:
        raise CarrierEventProblem("The fax.received webhook has no usable payload.media_url; nothing was applied.")
    partial = payload.get("partial_content")
    return InboundNotice(
        **notice,
        media_url=media_url,
        pages=pages_of(payload.get("page_count")),
        partial=partial is True,
    )


def allowed_origin(url: str, hosts: list[str]) -> bool:
    """Is ``url`` on one of the allowed origins (``scheme://host[:port]``, host possibly ``*.domain``)?"""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return False
    host = parts.hostname.lower()
    port = port or (443 if parts.scheme == "https" else 80)
    for entry in hosts:
        allowed = urlsplit(entry if "://" in entry else f"https://{entry}")
        allowed_host = (allowed.netloc.rsplit(":", 1)[0] if allowed.port else allowed.netloc).lower()
        allowed_port = allowed.port or (443 if allowed.scheme == "https" else 80)
        if allowed.scheme != parts.scheme or allowed_port != port:
            continue
        if allowed_host.startswith("*."):
            if host.endswith(allowed_host[1:]) and host != allowed_host[2:]:
                return True
        elif host == allowed_host:
            return True
    return False


async def fetch_media(notice: InboundNotice, settings: Settings) -> InboundMedia:
    """Download ``notice.media_url`` from an allowed host: no redirects, at most the size limit, within the timeout."""
    url = notice.media_url or ""
    if not allowed_origin(url, settings.inbound_media_hosts):
        log.warning("Telnyx fax %s: media at %.100r is not on an allowed host; refused", notice.carrier_fax_id, url)
        raise MediaRefused(
            f"The fax's media_url is not on an allowed media host ({', '.join(settings.inbound_media_hosts)}); "
            "nothing was fetched or stored. Add the carrier's media host to FHIR_FAX_INBOUND_MEDIA_HOSTS if it "
            "is theirs."
        )
    limit = settings.inbound_max_bytes
    timeout = httpx.Timeout(settings.inbound_media_timeout_seconds)
    try:
        async with (
            httpx.AsyncClient(follow_redirects=False, timeout=timeout, trust_env=False) as http,
            http.stream("GET", url) as response,
        ):
            if response.is_redirect:
                raise MediaRefused(
                    f"The media host answered {response.status_code} (a redirect); redirects are not followed, "
                    "nothing was stored."
                )
            if response.status_code >= 500 or response.status_code == 429:
                raise MediaRefused(f"The media host answered {response.status_code}; retry later.", transient=True)
            if response.status_code != 200:
                raise MediaRefused(f"The media host answered {response.status_code}; nothing was stored.")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise MediaRefused(
                    f"The fax's media is {declared} bytes, over the {limit} allowed; nothing was stored."
                )
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data.extend(chunk)
                if len(data) > limit:
                    raise MediaRefused(f"The fax's media is over the {limit} bytes allowed; nothing was stored.")
            content_type = response.headers.get("content-type")
    except httpx.HTTPError as error:
        raise MediaRefused(
            f"The fax's media could not be fetched ({type(error).__name__}); retry later.", transient=True
        ) from None
    return InboundMedia(bytes(data), content_type)


class TelnyxInbound:
    """The inbound half of Telnyx's webhook reader (mixed into ``TelnyxWebhooks``)."""

    settings: Settings

    def inbound(self, webhook: VerifiedWebhook) -> InboundNotice | None:
        body = webhook.body if isinstance(webhook.body, dict) else {}
        return inbound_notice(body)

    async def fetch_media(self, notice: InboundNotice) -> InboundMedia:
        return await fetch_media(notice, self.settings)
