"""Resolving ``sender``, ``recipient`` and ``patient`` references, locally or on another FHIR server.

A plugin lives inside someone else's FHIR server, so the look-up sits behind one small
interface: this module's own datastore (default), or any FHIR server over HTTP
(``FHIR_FAX_REFERENCE_FHIR_BASE``), e.g. HAPI, a cloud FHIR service or a fhirstarter app.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from ..errors import Gone, NotFound
from ..fhir.store import ResourceStore

REFERENCE = re.compile(r"(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})")  # matched whole


@dataclass(frozen=True)
class Reference:
    resource_type: str
    id: str

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.id}"


class ResolutionError(Exception):
    """A reference could not be resolved; ``kind`` says why, ``detail`` says what happened."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # "not-found" | "deleted" | "refused" | "timeout" | "bad-answer" | "unreachable"
        self.detail = detail


def parse_reference(value: str, known_bases: tuple[str, ...] = ()) -> Reference | None:
    """``Type/id``, or an absolute URL under one of ``known_bases``; None when malformed."""
    text = value
    for base in known_bases:
        prefix = base.rstrip("/") + "/"
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    match = REFERENCE.fullmatch(text)
    return Reference(match["type"], match["id"]) if match else None


class ReferenceResolver(Protocol):
    """Reads the resource a reference points to."""

    async def resolve(self, reference: Reference, *, authorization: str | None) -> dict[str, Any]: ...


class LocalResolver:
    """Looks references up in this module's own datastore."""

    def __init__(self, store: ResourceStore) -> None:
        self.store = store

    async def resolve(self, reference: Reference, *, authorization: str | None) -> dict[str, Any]:
        try:
            return await self.store.read(reference.resource_type, reference.id)
        except NotFound:
            raise ResolutionError("not-found", f"{reference} does not exist") from None
        except Gone:
            raise ResolutionError("deleted", f"{reference} was deleted") from None


class HttpResolver:
    """Looks references up on another FHIR server with ``GET {base}/{type}/{id}``.

    Sends the configured service token, or else forwards the caller's own
    ``Authorization`` header, so the other server applies its own access rules.
    """

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def close(self) -> None:
        await self.client.aclose()

    async def resolve(self, reference: Reference, *, authorization: str | None) -> dict[str, Any]:
        headers = {"accept": "application/fhir+json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        elif authorization:
            headers["authorization"] = authorization
        url = f"{self.base_url}/{reference}"
        try:
            response = await self.client.get(url, headers=headers)
        except httpx.TimeoutException:
            raise ResolutionError(
                "timeout", f"the FHIR server at {self.base_url} did not answer for {reference} in time"
            ) from None
        except httpx.HTTPError as error:
            raise ResolutionError(
                "unreachable",
                f"the FHIR server at {self.base_url} could not be reached ({type(error).__name__})",
            ) from None
        if response.status_code == 404:
            raise ResolutionError("not-found", f"{reference} does not exist on {self.base_url}")
        if response.status_code == 410:
            raise ResolutionError("deleted", f"{reference} was deleted on {self.base_url}")
        if response.status_code in (401, 403):
            raise ResolutionError(
                "refused",
                f"the FHIR server at {self.base_url} refused to show {reference} ({response.status_code})",
            )
        if response.status_code != 200:
            raise ResolutionError(
                "bad-answer",
                f"the FHIR server at {self.base_url} answered {response.status_code} for {reference}",
            )
        resource = _json_object(response)
        if resource is None or resource.get("resourceType") != reference.resource_type:
            raise ResolutionError(
                "bad-answer",
                f"the FHIR server at {self.base_url} did not answer with the {reference} resource",
            )
        if resource.get("id") != reference.id:
            raise ResolutionError(
                "bad-answer",
                f"the FHIR server at {self.base_url} answered with a different resource for {reference}",
            )
        return resource


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    content_type = response.headers.get("content-type", "")
    if "json" not in content_type:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
