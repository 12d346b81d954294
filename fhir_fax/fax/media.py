"""Where a fax document may come from: this project's Z3 storage, and nowhere else; and which bytes are faxed.

Refusing every other URL means a send can never make the server fetch an arbitrary address. The send
pins the exact upload (version) it inspected, the job records it, and the worker and the preview read
that version and nothing else (``pinned_document``), so replacing or deleting the key after the send
never changes what is faxed, and the Communication's hash, size and pages describe what is faxed.

Why the version id rather than a content-addressed copy: every upload is already its own immutable
GridFS file, so pinning costs one keyed update and no copy of up to 50 MB per send; inspections are
already remembered per version; and a copy would need the same retention rules anyway.
"""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Protocol

from ..z3.locations import Z3Location, Z3UrlError, parse_z3_url
from ..z3.store import ObjectInfo, Z3Store
from .documents import DocumentProblem, inspect, run_pdfium
from .jobs import Job


class MediaProblem(ValueError):
    """Why ``media`` is refused (the message says what to send instead)."""


def parse_media_url(url: str, project_api_bases: tuple[str, ...]) -> Z3Location:
    try:
        return parse_z3_url(url, project_api_bases)
    except Z3UrlError as error:
        raise MediaProblem(str(error)) from None


@dataclass(frozen=True)
class MediaInfo:
    """What is known about the document when the fax is accepted."""

    content_type: str | None
    size: int
    pages: int | None = None
    sha1: str | None = None
    version: Any = None  # the Z3 upload (GridFS file id) inspected and pinned: what the fax will carry
    pinned: bool = False  # that version was found already pinned for this very content: pinning again is a no-op


class MediaChecker(Protocol):
    """Confirms that a Z3 object exists and may be read by the caller; raises MediaProblem if not."""

    async def check(self, location: Z3Location, *, authorization: str | None) -> MediaInfo: ...


class Z3MediaChecker:
    """The object must exist in this project's Z3 and be something a fax machine can receive.

    Each upload is immutable and has its own version id, so what inspecting it found (pages, hash, or why it
    cannot be faxed) is remembered per version: sending the same document again costs one metadata look-up,
    not a download and a PDF parse. A new upload to the same key is a new version and is inspected afresh.
    """

    def __init__(self, store: Z3Store, max_pages: int = 350, remembered: int = 512) -> None:
        self.store = store
        self.max_pages = max_pages
        self.remembered = remembered
        self._inspected: OrderedDict[Any, MediaInfo | str] = OrderedDict()

    async def check(self, location: Z3Location, *, authorization: str | None) -> MediaInfo:
        info = await self.store.stat(location)
        if info is None:
            raise MediaProblem(
                f"There is no Z3 object at {location}; upload the document there first (check the bucket and key)."
            )
        found = self._inspected.get(info.version)
        if found is None:
            found = await self._inspect(location, info)
            self._inspected[info.version] = found
            while len(self._inspected) > self.remembered:
                self._inspected.popitem(last=False)
        else:
            self._inspected.move_to_end(info.version)
        if isinstance(found, str):
            raise MediaProblem(f"{location} cannot be faxed: {found}")
        # The send pins it once every other check has passed; a version an earlier fax pinned stays pinned.
        pinned = found.sha1 is not None and info.pinned_sha1 == found.sha1
        return replace(found, version=info.version, pinned=pinned)

    async def _inspect(self, location: Z3Location, info: ObjectInfo) -> MediaInfo | str:
        data = await self.store.read_known(info.version, info.size)
        if data is None:  # replaced (and removed) between the look-up and the download
            raise MediaProblem(f"The Z3 object at {location} changed while it was checked; send again.")
        try:
            document = await run_pdfium(inspect, data, self.max_pages)
        except DocumentProblem as problem:
            return str(problem)
        return MediaInfo(document.content_type, document.size, document.pages, document.sha1)


def media_fields(media: MediaInfo) -> dict[str, Any]:
    """What the job records about the pinned document (the worker checks the bytes against ``media_sha1``)."""
    return {
        "media_version": media.version,
        "media_sha1": media.sha1,
        "media_size": media.size,
        "media_pages": media.pages,
    }


def document_fields(media: MediaInfo) -> dict[str, Any]:
    """One document of a packet as the job lists it (``jobs.Job.documents``)."""
    return {
        "version": media.version,
        "sha1": media.sha1,
        "size": media.size,
        "pages": media.pages,
        "content_type": media.content_type,
    }


@dataclass(frozen=True)
class PinnedDocument:
    """One document a job faxes: where it was sent from and the version the send pinned."""

    media: str
    version: Any
    sha1: str | None
    size: int | None
    pages: int | None
    content_type: str | None = None

    def info(self) -> MediaInfo:
        """As a send sees a checked document (a resend sends exactly this again)."""
        return MediaInfo(self.content_type, self.size or 0, self.pages, self.sha1, self.version)


def job_documents(job: Job) -> list[PinnedDocument]:
    """The documents ``job`` faxes, in order (a job from before packets: its one ``media``)."""
    if job.documents is None:
        return [PinnedDocument(job.media, job.media_version, job.media_sha1, job.media_size, job.media_pages)]
    return [
        PinnedDocument(
            str(d["media"]), d.get("version"), d.get("sha1"), d.get("size"), d.get("pages"), d.get("content_type")
        )
        for d in job.documents
    ]


async def pinned_bytes(store: Z3Store, document: PinnedDocument) -> bytes:
    """The exact bytes the send checked of one document; DocumentProblem when they are gone or changed."""
    if document.version is None:
        data = await store.read(parse_z3_url(document.media, ()))
        if data is None:
            raise DocumentProblem(f"Document generation error: {document.media} was deleted before the fax was sent.")
        return data
    if document.sha1:  # the hash below proves the bytes: one read of the chunks is enough
        data = await store.read_known(document.version)
    else:
        data = await store.read_version(document.version)
    if data is None:
        raise DocumentProblem(
            f"Document generation error: {document.media} was checked when the fax was sent, but that version "
            "is no longer stored; send the document again."
        )
    if document.sha1 and base64.b64encode(hashlib.sha1(data).digest()).decode() != document.sha1:
        raise DocumentProblem(
            f"Document generation error: the stored copy of {document.media} does not match the hash checked when "
            "the fax was sent; it was not faxed. Send the document again."
        )
    return data


async def pinned_document(store: Z3Store, job: Job) -> bytes:
    """The exact bytes the send checked of a job's (first) document; DocumentProblem (the fax stops with this
    reason) when they are gone. Jobs queued before versions were pinned read the key's newest version."""
    return await pinned_bytes(store, job_documents(job)[0])
