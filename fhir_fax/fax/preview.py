"""``GET /fax/v1/faxes/{communication-id}/preview?page=N``: a page as the recipient will see it (PNG).

A preview shows the document, so the route lets the access gate judge the Communication (read, patient
compartment) and ``check_document`` judge the document (``Z3:GetObject``) before anything is read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..fhir.errors import InvalidRequest, ResourceNotFound, UnprocessableEntity
from ..z3.locations import Z3Location, parse_z3_url
from ..z3.store import Z3Store
from .documents import DocumentProblem, run_pdfium
from .outbox import Outbox
from .render import preview_png, render_fax, rendering_location, tiff_pages


async def preview(
    database: Any,
    communication_id: str,
    page: str | None,
    check_document: Callable[[Z3Location], Awaitable[None]],
) -> bytes:
    if page is None or not page.isdigit() or int(page) < 1:
        raise InvalidRequest("page must be a page number from 1 up, e.g. ?page=1.", expression=["page"])
    job = await Outbox(database).for_communication(communication_id)
    if job is None:
        raise ResourceNotFound(f"There is no fax for Communication/{communication_id}.")
    z3 = Z3Store(database)
    original = parse_z3_url(job["media"], ())
    await check_document(original)
    target = rendering_location(original, job["quality"])
    tiff = await z3.read(target)
    if tiff is None:
        document = await z3.read(original)
        if document is None:
            raise UnprocessableEntity(f"The document {original} was deleted; there is nothing to preview.")
        try:
            tiff = await run_pdfium(render_fax, document, job["quality"])
        except DocumentProblem as problem:
            raise UnprocessableEntity(str(problem)) from None
        await z3.put(target, tiff, "image/tiff")
    pages = await run_pdfium(tiff_pages, tiff)
    if int(page) > pages:
        raise ResourceNotFound(f"The fax has {pages} pages; ask for page 1 to {pages}.", expression=["page"])
    return await run_pdfium(preview_png, tiff, int(page))
