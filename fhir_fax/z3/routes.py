"""Z3 over HTTP, as the Oystehr SDK calls it at ``{projectApiUrl}/z3``: presigned URLs, signed upload and download.

``POST /z3/{bucket}/{key}`` with ``{"action": "upload" | "download"}`` answers ``{"signedUrl": ...}``;
``PUT`` to a signed upload URL stores the body as a new version (once per URL); ``GET`` on a signed
download URL returns the version the URL names: the key's newest when it was signed (what access was judged
on), or the one a fax pinned. Signed URLs need no bearer token, expire, and are bound to one object and one
action. ``{"action": "download", "hash":
<a Communication's contentAttachment.hash>}`` signs a download of the version that fax pinned.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from bson import ObjectId
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from ..errors import Conflict, Forbidden, Invalid, NotFound, TooLarge, Unauthorized
from ..fhir.context import FHIRContext
from ..fhir.inputs import ascii_int
from ..sdk_http import SDKRoute
from ..settings import Settings
from .locations import Z3Location, Z3UrlError, parse_z3_url
from .signing import (
    ACTION,
    EXPIRES,
    NONCE,
    PATIENT,
    SIGNATURE,
    VERSION,
    claim_upload,
    presign,
    release_upload,
    signing_key,
    verify,
)
from .store import ObjectInfo, ObjectTooLarge, Z3Store

ACTIONS = ("upload", "download")


# The uploader chose the content type: a download is never a page that could run scripts on this origin.
DOWNLOAD_HEADERS = {"x-content-type-options": "nosniff", "content-security-policy": "sandbox; default-src 'none'"}


def attachment(key: str) -> str:
    """``Content-Disposition`` for a download, naming the key's last segment (ASCII-safe, RFC 6266)."""
    name = key.rsplit("/", 1)[-1]
    plain = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    if plain == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


class Z3API:
    """The Z3 routes; storage is the running runtime's (``runtime()`` answers 503 before start-up)."""

    def __init__(self, settings: Settings, fhir: FHIRContext, runtime: Callable[[], Any]) -> None:
        self.settings = settings
        self.fhir = fhir  # for access control
        self.runtime = runtime

    @property
    def database(self) -> Any:
        return self.runtime().database

    def require_store(self) -> Z3Store:
        store: Z3Store = self.runtime().z3
        return store

    def project_api(self, request: Request) -> str:
        return self.settings.public_base(str(request.base_url)) + self.settings.project_api_path

    def location(self, bucket: str, key: str) -> Z3Location:
        try:
            return parse_z3_url(f"z3://{bucket}/{key}", ())
        except Z3UrlError as error:
            raise Invalid(str(error)) from None

    async def check_signature(self, request: Request, location: Z3Location, action: str) -> None:
        params = request.query_params
        if SIGNATURE not in params:
            raise Unauthorized(
                f"This URL needs a signature; ask for one with POST {self.settings.project_api_path}/z3/"
                f'{location.bucket}/{location.key} {{"action": "{action}"}}.'
            )
        if params.get(ACTION) != action:
            raise Forbidden(f"This signed URL is not for {action}.")
        problem = verify(
            await signing_key(self.database),
            location,
            action,
            params.get(EXPIRES, ""),
            params[SIGNATURE],
            nonce=params.get(NONCE),
            version=params.get(VERSION),
            patient=params.get(PATIENT),
        )
        if problem:
            raise Forbidden(problem)

    async def pinned_version(self, store: Z3Store, location: Z3Location, digest: Any) -> str:
        """The version a fax pinned, named by the Communication's ``contentAttachment.hash``."""
        if not isinstance(digest, str) or not digest:
            raise Invalid("hash must be the base64 SHA-1 of a faxed document (contentAttachment.hash).")
        version = await store.pinned_version(location, digest)
        if version is None:
            raise NotFound(f"No document with hash {digest} was faxed from {location}.")
        return str(version)

    async def read_signed(self, store: Z3Store, location: Z3Location, version: str | None) -> ObjectInfo | None:
        """What a signed download returns: the version it names (only if it belongs to this key), else the newest."""
        if version is None:
            return await store.stat(location)
        if not ObjectId.is_valid(version):
            return None
        info = await store.version_info(ObjectId(version))
        return info if info is not None and info.location == location else None

    def router(self) -> APIRouter:
        router = APIRouter(route_class=SDKRoute.limited(self.settings.max_body_bytes), tags=["Z3"])

        @router.post("/z3/{bucket}/{key:path}", summary="Presigned URL for upload or download")
        async def presigned(request: Request, bucket: str, key: str) -> dict[str, str]:
            await self.fhir.authenticate(request)
            store = self.require_store()
            location = self.location(bucket, key)
            try:
                body = json.loads(await request.body() or b"{}")
            except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
                raise Invalid('The body must be JSON: {"action": "upload"} or {"action": "download"}.') from None
            action = body.get("action") if isinstance(body, dict) else None
            if action not in ACTIONS:
                raise Invalid('action must be "upload" or "download".')
            permission = "Z3:PutObject" if action == "upload" else "Z3:GetObject"
            resource = f"Z3:{location.bucket}/{location.key}"
            await self.fhir.authorize(request, permission, resource)  # before anything is looked up
            version, pinned = None, None
            if action == "download" and "hash" in body:
                version = await self.pinned_version(store, location, body["hash"])
                pinned = ObjectId(version)
            elif action == "download":
                newest = await store.stat(location)
                if newest is None:
                    raise NotFound(f"There is no object at {location}.")
                pinned = newest.version
                version = str(pinned)  # the URL serves the version judged (and audited) now, not a later upload
            await self.fhir.document(request, permission, resource, version=pinned)
            key_bytes = await signing_key(self.database)
            ttl = self.settings.z3_url_ttl_seconds
            # The uploader's patient in context goes with the upload: a token limited to a patient may then attach
            # a document no fax carries only if it was uploaded under that patient (see the gate's ``document``).
            principal = getattr(request.state, "principal", None)
            patient = getattr(principal, "patient", None) if action == "upload" else None
            url = presign(key_bytes, self.project_api(request), location, action, ttl, version=version, patient=patient)
            if action == "download":  # handing out the URL is the disclosure: it is on record
                await self.fhir.document_was_read(request, resource, version=pinned)
            return {"signedUrl": url}

        @router.get("/z3", summary="List buckets")
        async def list_buckets(request: Request) -> list[dict[str, str]]:
            await self.fhir.authorize(request, "Z3:ListBuckets", "Z3")
            buckets = await self.require_store().list_buckets()
            return [{"id": b["_id"], "name": b["_id"], "creationDate": _iso(b["created"])} for b in buckets]

        @router.put("/z3/{bucket}", summary="Create a bucket")
        async def create_bucket(request: Request, bucket: str) -> dict[str, str]:
            await self.fhir.authorize(request, "Z3:CreateBucket", f"Z3:{bucket}")
            self.location(bucket, "check")
            if not await self.require_store().create_bucket(bucket):
                raise Conflict(f"The bucket {bucket!r} already exists.")
            return {"id": bucket, "name": bucket}

        @router.delete("/z3/{bucket}", summary="Delete an empty bucket")
        async def delete_bucket(request: Request, bucket: str) -> Response:
            await self.fhir.authorize(request, "Z3:DeleteBucket", f"Z3:{bucket}")
            await self.require_store().delete_bucket(bucket)
            return Response(status_code=204)

        async def upload(request: Request, bucket: str, key: str) -> Response:
            store = self.require_store()
            location = self.location(bucket, key)
            await self.check_signature(request, location, "upload")
            declared = ascii_int(request.headers.get("content-length"))
            limit = self.settings.z3_max_object_bytes
            if declared is not None and declared > limit:
                raise TooLarge(f"Objects may be at most {limit} bytes.")
            nonce = request.query_params[NONCE]
            if not await claim_upload(self.database, nonce, request.query_params[EXPIRES]):
                raise Forbidden(
                    "This signed upload URL has already been used (each is good for one upload); ask for a new one "
                    f"with POST {self.settings.project_api_path}/z3/{location.bucket}/{location.key} "
                    '{"action": "upload"}.'
                )
            try:
                uploaded_for = request.query_params.get(PATIENT)  # signed: checked above
                metadata = {"uploadedFor": uploaded_for} if uploaded_for else None
                stored = await store.put_stream(
                    location, request.stream(), request.headers.get("content-type"), limit, metadata=metadata
                )
            except ObjectTooLarge as error:
                await release_upload(self.database, nonce)
                raise TooLarge(str(error)) from None
            except BaseException:
                await release_upload(self.database, nonce)
                raise
            await store.prune(stored)  # older versions no fax pinned; pinned ones stay (see Z3Store)
            return Response(status_code=200, headers={"x-z3-version-id": str(stored.version)})

        # Uploads alone stream up to the object limit; every other Z3 body is JSON under FHIR_FAX_MAX_BODY_BYTES.
        upload_route = SDKRoute.limited(self.settings.z3_max_object_bytes)
        router.add_api_route("/z3/{bucket}/{key:path}", upload, methods=["PUT"], summary="Upload to a signed URL",
                             route_class_override=upload_route)  # fmt: skip

        @router.get("/z3/{bucket}/{key:path}", summary="Download from a signed URL, or list objects under a prefix")
        async def download_or_list(request: Request, bucket: str, key: str) -> Response:
            store = self.require_store()
            if SIGNATURE not in request.query_params:
                await self.fhir.document(request, "Z3:ListObjects", f"Z3:{bucket}/{key}")
                if not await store.bucket_exists(bucket):
                    raise NotFound(f"There is no bucket {bucket!r}.")
                objects = await store.list_objects(bucket, key)
                names = [f"Z3:{bucket}/{o['key']}" for o in objects]
                shown = await self.fhir.allowed_among(request, "Z3:ListObjects", names)  # per-key rules too
                objects = [o for o, name in zip(objects, names, strict=True) if name in shown]
                return JSONResponse([{"key": o["key"], "lastModified": _iso(o["lastModified"])} for o in objects])
            location = self.location(bucket, key)
            await self.check_signature(request, location, "download")
            info = await self.read_signed(store, location, request.query_params.get(VERSION))
            chunks = await store.read_chunks(info.version) if info is not None else None
            if info is None or chunks is None:
                if request.query_params.get(VERSION) is not None:
                    raise NotFound(
                        f"The version of {location} this URL was signed for is no longer stored (the key was replaced "
                        "or deleted); ask for a new download URL."
                    )
                raise NotFound(f"There is no object at {location}.")
            headers = {"content-length": str(info.size), **DOWNLOAD_HEADERS, "content-disposition": attachment(key)}
            return StreamingResponse(
                chunks, media_type=info.content_type or "application/octet-stream", headers=headers
            )

        @router.delete("/z3/{bucket}/{key:path}", summary="Delete an object")
        async def delete_object(request: Request, bucket: str, key: str) -> Response:
            await self.fhir.authenticate(request)
            location = self.location(bucket, key)
            await self.fhir.document(request, "Z3:DeleteObject", f"Z3:{location.bucket}/{location.key}")
            if not await self.require_store().delete_object(location):
                raise NotFound(f"There is no object at {location}.")
            return Response(status_code=204)

        return router


def _iso(moment: Any) -> str:
    return moment.isoformat().replace("+00:00", "Z") if hasattr(moment, "isoformat") else str(moment)
