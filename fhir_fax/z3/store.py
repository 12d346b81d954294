"""Z3 objects in GridFS: bucket ``z3``, file name ``{bucket}/{key}``; buckets listed in ``z3_buckets``.

Existence checks read the GridFS files collection directly (the collection API PyMongo
and Motor share), so they work on whichever driver the host application handed over.

Versions. Every upload is its own GridFS file (its ``_id`` is the version id) and is never changed; the
newest one of a name is what the key holds. A fax pins the version it checked (``pin``: ``metadata.pinned``,
with the version's SHA-1 and its ``bucket/key``), and a pinned version is never removed by this module:
an upload through a signed URL prunes the older *unpinned* versions of its key (``prune``), and deleting a
key removes its unpinned versions and moves pinned ones out of the key's name (``~deleted/{version}``), so
the key is gone for every client while the faxes that use them still read them by version id. Removal is
one conditional ``delete_one`` per version (``pinned`` not set), so a pin and a removal racing each other
are decided by the database: either the pin lands first and the version stays, or the removal does and the
pin finds nothing (the send is then refused and asks to send again).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import Binary, ObjectId
from gridfs import AsyncGridFSBucket
from gridfs.errors import CorruptGridFile, NoFile
from pymongo.asynchronous.database import AsyncDatabase

from ..errors import Conflict, NotFound
from ..fhir.models import now
from .locations import Z3Location
from .signing import USED_UPLOAD_URLS

GRIDFS_BUCKET = "z3"
CHUNK_SIZE = 255 * 1024  # GridFS's default chunk size
KEPT_BYTES = 16 * 1024 * 1024  # bytes of recently read versions kept in memory (``Z3Store.read_known``)
DELETED_PREFIX = "~deleted/"  # where pinned versions of a deleted key live; "~" never starts a bucket name


class ObjectTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"Objects may be at most {limit} bytes.")
        self.limit = limit


BUCKETS = "z3_buckets"


@dataclass(frozen=True)
class ObjectInfo:
    location: Z3Location
    size: int
    content_type: str | None
    uploaded: datetime
    version: Any = None  # the upload's file id: each upload is a new, immutable version
    pinned_sha1: str | None = None  # the content hash recorded when a fax pinned this version; None: not pinned


def _newest_first() -> list[tuple[str, int]]:
    """Newest upload first; the id breaks ties between uploads in the same millisecond (ObjectIds grow)."""
    return [("uploadDate", -1), ("_id", -1)]


class Z3Store:
    def __init__(self, database: Any) -> None:
        self.database = database
        self.files = database[f"{GRIDFS_BUCKET}.files"]
        # The bytes of versions read lately (``read_known``): a version never changes, so the worker taking a fax
        # moments after its send inspected the document reads nothing again. Bounded by size, oldest out first.
        self._kept: OrderedDict[Any, bytes] = OrderedDict()
        self._kept_bytes = 0

    async def ensure_indexes(self) -> None:
        await self.files.create_index([("filename", 1), ("uploadDate", -1)], name="filename")
        await self.files.create_index([("metadata.location", 1), ("metadata.sha1", 1)], name="pinned")
        await self.files.create_index([("metadata.renderingOf", 1), ("metadata.quality", 1)], name="renderings")
        await self.database[f"{GRIDFS_BUCKET}.chunks"].create_index(
            [("files_id", 1), ("n", 1)], name="files_id_1_n_1", unique=True
        )
        await self.database[USED_UPLOAD_URLS].create_index("expires", name="expiry", expireAfterSeconds=0)

    async def create_bucket(self, bucket: str) -> bool:
        """Create ``bucket``; False when it already existed."""
        result = await self.database[BUCKETS].update_one(
            {"_id": bucket}, {"$setOnInsert": {"created": now()}}, upsert=True
        )
        return result.upserted_id is not None

    async def list_buckets(self) -> list[dict[str, Any]]:
        buckets: list[dict[str, Any]] = await self.database[BUCKETS].find({}).sort("_id", 1).to_list(None)
        return buckets

    async def delete_bucket(self, bucket: str) -> None:
        """Delete an empty bucket; NotFound when unknown, Conflict when it still holds objects."""
        if not await self.bucket_exists(bucket):
            raise NotFound(f"There is no bucket {bucket!r}.")
        if await self.files.count_documents({"filename": {"$gte": f"{bucket}/", "$lt": f"{bucket}0"}}, limit=1):
            raise Conflict(f"The bucket {bucket!r} is not empty; delete its objects first.")
        await self.database[BUCKETS].delete_one({"_id": bucket})

    async def list_objects(self, bucket: str, prefix: str, limit: int = 1000) -> list[dict[str, Any]]:
        """Objects whose key starts with ``prefix`` (newest upload of each key), in key order."""
        start = f"{bucket}/{prefix}"
        cursor = self.files.find(
            {"filename": {"$gte": start, "$lt": start + "\U0010ffff"}}, {"filename": 1, "uploadDate": 1}
        ).sort([("filename", 1), ("uploadDate", -1)])
        latest: dict[str, Any] = {}
        async for document in cursor:
            latest.setdefault(document["filename"], document["uploadDate"])
            if len(latest) > limit:
                break
        return [
            {"key": name[len(bucket) + 1 :], "lastModified": moment} for name, moment in list(latest.items())[:limit]
        ]

    async def delete_object(self, location: Z3Location) -> bool:
        """Delete the key ``location``: its unpinned versions go, pinned ones leave its name; False when none.

        A fax already sent keeps reading its pinned version by id, so deleting a key never breaks a fax in
        flight, and the key is free for a new, unrelated upload.
        """
        ids = [d["_id"] async for d in self.files.find({"filename": f"{location.bucket}/{location.key}"}, {"_id": 1})]
        for file_id in ids:
            if not await self._remove_unpinned(file_id):
                await self.files.update_one(
                    {"_id": file_id, "metadata.pinned": True},
                    {"$set": {"filename": f"{DELETED_PREFIX}{file_id}", "metadata.deleted": now()}},
                )
        return bool(ids)

    async def prune(self, newest: ObjectInfo) -> int:
        """Remove the versions of ``newest``'s key uploaded before it that no fax pinned; how many went.

        Only older ones: a concurrent upload that finished later is newer and stays.
        """
        location = newest.location
        older = self.files.find(
            {
                "filename": f"{location.bucket}/{location.key}",
                "$or": [
                    {"uploadDate": {"$lt": newest.uploaded}},
                    {"uploadDate": newest.uploaded, "_id": {"$lt": newest.version}},
                ],
                "metadata.pinned": {"$ne": True},
            },
            {"_id": 1},
        )
        removed = 0
        for file_id in [d["_id"] async for d in older]:
            removed += await self._remove_unpinned(file_id)
        return removed

    async def discard(self, version: Any) -> bool:
        """Remove one unpinned version (an upload that lost a race to be used); False when pinned or gone."""
        return await self._remove_unpinned(version)

    async def _remove_unpinned(self, file_id: Any) -> bool:
        """Remove one version unless it is pinned (atomically: the condition and the removal are one command)."""
        result = await self.files.delete_one({"_id": file_id, "metadata.pinned": {"$ne": True}})
        if result.deleted_count:
            await self.database[f"{GRIDFS_BUCKET}.chunks"].delete_many({"files_id": file_id})
        return bool(result.deleted_count)

    async def pin(self, version: Any, location: Z3Location, sha1: str | None, session: Any = None) -> bool:
        """Keep ``version`` for as long as a fax may need it; False when it is already gone.

        Idempotent: pinning a pinned version changes nothing (and writes nothing), so sending the same
        document many times costs one keyed update each. ``session``: pinned in the caller's transaction.
        """
        fields = {"metadata.pinned": True, "metadata.location": f"{location.bucket}/{location.key}"}
        if sha1:
            fields["metadata.sha1"] = sha1
        result = await self.files.update_one({"_id": version}, {"$set": fields}, session=session)
        return bool(result.matched_count == 1)

    async def pinned_version(self, location: Z3Location, sha1: str) -> Any:
        """The id of a pinned version of ``location`` with this SHA-1 (a faxed document), or None."""
        document = await self.files.find_one(
            {"metadata.location": f"{location.bucket}/{location.key}", "metadata.sha1": sha1, "metadata.pinned": True},
            {"_id": 1},
            sort=_newest_first(),
        )
        return document["_id"] if document else None

    async def version_info(self, version: Any) -> ObjectInfo | None:
        """What is stored as ``version`` (under its key's name, or moved out of it when the key was deleted)."""
        document = await self.files.find_one({"_id": version})
        return self._info(document) if document else None

    async def uploaded_for(self, version: Any) -> str | None:
        """The patient in context of the token that uploaded ``version`` (``metadata.uploadedFor``), if any."""
        document = await self.files.find_one({"_id": version}, {"metadata.uploadedFor": 1})
        found = ((document or {}).get("metadata") or {}).get("uploadedFor")
        return found if isinstance(found, str) else None

    async def put_stream(
        self,
        location: Z3Location,
        pieces: AsyncIterator[bytes],
        content_type: str | None,
        max_bytes: int,
        metadata: dict[str, Any] | None = None,
    ) -> ObjectInfo:
        """Store an upload chunk by chunk, in the GridFS layout, as a new version; ObjectTooLarge past ``max_bytes``.

        Written by hand rather than through GridIn, which holds up to 48 MB of chunk documents
        (and their encoding) before each insert: here at most one 255 KB chunk is in memory. The
        files document is written last, so a partial upload is never visible, and an abort removes
        its chunks.
        """
        await self.create_bucket(location.bucket)
        file_id, number, size = ObjectId(), 0, 0
        buffer = bytearray()
        chunks = self.database[f"{GRIDFS_BUCKET}.chunks"]
        try:
            async for piece in pieces:
                size += len(piece)
                if size > max_bytes:
                    raise ObjectTooLarge(max_bytes)
                buffer.extend(piece)
                while len(buffer) >= CHUNK_SIZE:
                    await chunks.insert_one(
                        {"files_id": file_id, "n": number, "data": Binary(bytes(buffer[:CHUNK_SIZE]))}
                    )
                    del buffer[:CHUNK_SIZE]
                    number += 1
            if buffer:
                await chunks.insert_one({"files_id": file_id, "n": number, "data": Binary(bytes(buffer))})
            document = {
                "_id": file_id,
                "filename": f"{location.bucket}/{location.key}",
                "length": size,
                "chunkSize": CHUNK_SIZE,
                "uploadDate": now(),
                "metadata": {**(metadata or {}), "contentType": content_type},
            }
            await self.files.insert_one(document)
        except BaseException:
            await chunks.delete_many({"files_id": file_id})
            raise
        return self._info(document)

    async def read_chunks(self, version: Any) -> AsyncIterator[bytes] | None:
        """One version's content as a stream of chunks, or None when it is gone."""
        try:
            stream = await self.gridfs().open_download_stream(version)
        except NoFile:
            return None

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await stream.readchunk():
                yield chunk

        return chunks()

    async def bucket_exists(self, bucket: str) -> bool:
        return bool(await self.database[BUCKETS].count_documents({"_id": bucket}, limit=1) == 1)

    def gridfs(self) -> Any:
        """The GridFS bucket class of whichever driver the database handle belongs to."""
        if isinstance(self.database, AsyncDatabase):
            return AsyncGridFSBucket(self.database, bucket_name=GRIDFS_BUCKET)
        from motor.motor_asyncio import AsyncIOMotorGridFSBucket

        return AsyncIOMotorGridFSBucket(self.database, bucket_name=GRIDFS_BUCKET)

    async def put(
        self,
        location: Z3Location,
        data: bytes,
        content_type: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ObjectInfo:
        """Store ``data`` as a new version; the newest upload of a key is what the key holds."""

        async def one_piece() -> AsyncIterator[bytes]:
            yield data

        return await self.put_stream(location, one_piece(), content_type, max_bytes=len(data), metadata=metadata)

    async def stat(self, location: Z3Location) -> ObjectInfo | None:
        """The newest version at ``location``, or None."""
        document = await self.files.find_one({"filename": f"{location.bucket}/{location.key}"}, sort=_newest_first())
        return self._info(document) if document else None

    @staticmethod
    def _info(document: dict[str, Any]) -> ObjectInfo:
        metadata = document.get("metadata") or {}
        name = metadata.get("location") if document["filename"].startswith(DELETED_PREFIX) else document["filename"]
        bucket, _, key = str(name).partition("/")
        return ObjectInfo(
            location=Z3Location(bucket, key),
            size=document["length"],
            content_type=metadata.get("contentType"),
            uploaded=document["uploadDate"],
            version=document["_id"],
            pinned_sha1=metadata.get("sha1") if metadata.get("pinned") is True else None,
        )

    async def read_version(self, version: Any) -> bytes | None:
        """The content of one upload (``ObjectInfo.version``), or None when it is gone (or lost chunks)."""
        try:
            stream = await self.gridfs().open_download_stream(version)
            content: bytes = await stream.read()
            return content
        except (NoFile, CorruptGridFile):
            return None

    async def read_known(self, version: Any, size: int | None = None) -> bytes | None:
        """The content of a version the caller already knows, in one read of its chunks; None when it is gone.

        ``read_version`` reads the files document first, for the length and to know the version exists; the
        callers of this one have that already: the send's look-up gives ``size``, and a job records the hash
        of what it pinned, which its reader checks. A read that finds a gap in the chunks, or another length
        than ``size``, is of a version being removed: None. A version with no bytes has no chunks to tell it
        exists, so that one is read the long way.
        """
        if size == 0:
            return await self.read_version(version)
        kept = self._kept.get(version)
        if kept is not None and (size is None or len(kept) == size):
            self._kept.move_to_end(version)
            return kept
        chunks = self.database[f"{GRIDFS_BUCKET}.chunks"].find({"files_id": version}).sort("n", 1)
        pieces = [chunk async for chunk in chunks]
        if not pieces or [chunk["n"] for chunk in pieces] != list(range(len(pieces))):
            return None
        content = b"".join(bytes(chunk["data"]) for chunk in pieces)
        if size is not None and len(content) != size:
            return None
        self._keep(version, content)
        return content

    def _keep(self, version: Any, content: bytes) -> None:
        if len(content) > KEPT_BYTES // 4:
            return
        replaced = self._kept.pop(version, None)
        if replaced is not None:
            self._kept_bytes -= len(replaced)
        self._kept[version] = content
        self._kept_bytes += len(content)
        while self._kept_bytes > KEPT_BYTES:
            _, dropped = self._kept.popitem(last=False)
            self._kept_bytes -= len(dropped)

    async def read(self, location: Z3Location) -> bytes | None:
        """The newest content stored at ``location``, or None."""
        info = await self.stat(location)
        return None if info is None else await self.read_version(info.version)

    async def put_rendering(self, location: Z3Location, source: Any, quality: str, tiff: bytes) -> ObjectInfo:
        """Keep the fax-line rendering of version ``source`` at ``location``, findable by its source version."""
        return await self.put(location, tiff, "image/tiff", {"renderingOf": source, "quality": quality})

    async def read_rendering(self, source: Any, quality: str) -> bytes | None:
        """The rendering of version ``source`` at ``quality``, found by what it renders, never by name.

        A client may upload anything under a rendering's name; only the server writes ``renderingOf``.
        """
        document = await self.files.find_one(
            {"metadata.renderingOf": source, "metadata.quality": quality}, {"_id": 1}, sort=_newest_first()
        )
        return None if document is None else await self.read_version(document["_id"])
