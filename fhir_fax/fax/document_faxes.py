"""Which faxes carry a document: what the access gate asks when a token limited to one patient reaches Z3.

A document belongs to the Communications of the faxes sent with it (``fax_jobs.media``; since documents
are frozen at send, the version each fax pinned is ``fax_jobs.media_version``) and so does its rendering
(``fax_jobs.rendered``; for a packet, the rendering of the whole fax). A packet (a cover and/or several
documents) lists each of its documents in ``fax_jobs.documents`` with the version it pinned, and every one of
them belongs to the fax's Communication just as a single document does. Only the send path writes these
fields, after checking that the caller may read the document, so a client cannot attach someone else's
document to its own patient's record by writing a Communication by hand.
A received fax's documents belong to its Communication, as the reception recorded it
(``inbound_faxes.documents``, written only by ``inbound.Reception``).
"""

from __future__ import annotations

from typing import Any

from ..z3.locations import parse_z3_url
from ..z3.store import Z3Store
from .inbound import COLLECTION as INBOUND
from .outbox import COLLECTION, Outbox

FIELDS = ("media", "rendered")


async def ensure_indexes(database: Any) -> None:
    """The indexes the queries below use; the outbox owns every index and write of its collection."""
    await Outbox(database).ensure_indexes()


def carriers_of(database: Any) -> Any:
    """``carriers(url, version)``: the Communication ids of the faxes whose document (or its rendering) is
    ``url``; with a ``version``, only the faxes that pinned that upload (or pinned none: jobs from before)."""

    async def carriers(url: str, version: Any = None) -> list[str]:
        found: list[str] = []
        for name in FIELDS:  # one indexed equality each (no $or: some servers scan for it)
            query: dict[str, Any] = {name: url}
            if version is not None and name == "media":
                query["media_version"] = {"$in": [version, None]}
            async for job in database[COLLECTION].find(query, {"communication_id": 1}):
                found.append(job["communication_id"])
        # A packet lists every document it carries (``documents``), each with the version it pinned.
        member: dict[str, Any] = {"media": url}
        if version is not None:
            member["version"] = {"$in": [version, None]}
        packets = {"documents.media": url, "documents": {"$elemMatch": member}}
        async for job in database[COLLECTION].find(packets, {"communication_id": 1}):
            found.append(job["communication_id"])
        async for received in database[INBOUND].find({"documents": url}, {"communication_id": 1}):
            found.append(received["communication_id"])
        return list(dict.fromkeys(found))

    return carriers


def newest_of(database: Any) -> Any:
    """``newest(url)``: the version a send would pin now (the key's newest upload), or None."""

    async def newest(url: str) -> Any:
        info = await Z3Store(database).stat(parse_z3_url(url, ()))
        return None if info is None else info.version

    return newest


def uploader_of(database: Any) -> Any:
    """``uploaded_for(version)``: the patient the upload ``version`` was made under (its uploader's token's
    patient in context, kept by the signed upload URL), or None (an unlimited client's upload, or an old one)."""

    async def uploaded_for(version: Any) -> str | None:
        return await Z3Store(database).uploaded_for(version)

    return uploaded_for
