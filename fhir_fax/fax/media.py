"""Where a fax document may come from: this project's Z3 storage, and nowhere else.

Refusing every other URL means a send can never make the server fetch an arbitrary address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..z3.locations import Z3Location, Z3UrlError, parse_z3_url
from ..z3.store import Z3Store
from .documents import DocumentProblem, inspect, run_pdfium


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


class MediaChecker(Protocol):
    """Confirms that a Z3 object exists and may be read by the caller; raises MediaProblem if not."""

    async def check(self, location: Z3Location, *, authorization: str | None) -> MediaInfo: ...


class Z3MediaChecker:
    """The object must exist in this project's Z3 and be something a fax machine can receive."""

    def __init__(self, store: Z3Store, max_pages: int = 350) -> None:
        self.store = store
        self.max_pages = max_pages

    async def check(self, location: Z3Location, *, authorization: str | None) -> MediaInfo:
        info = await self.store.stat(location)
        if info is None:
            raise MediaProblem(
                f"There is no Z3 object at {location}; upload the document there first (check the bucket and key)."
            )
        data = await self.store.read(location)
        if data is None:
            raise MediaProblem(f"There is no Z3 object at {location}; upload the document there first.")
        try:
            document = await run_pdfium(inspect, data, self.max_pages)
        except DocumentProblem as problem:
            raise MediaProblem(f"{location} cannot be faxed: {problem}") from None
        return MediaInfo(document.content_type, document.size, document.pages, document.sha1)
