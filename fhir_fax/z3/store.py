"""Z3 objects in GridFS: bucket ``z3``, file name ``{bucket}/{key}``; buckets listed in ``z3_buckets``.

Existence checks read the GridFS files collection directly (the collection API PyMongo
and Motor share), so they work on whichever driver the host application handed over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import Binary, ObjectId
from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo.asynchronous.database import AsyncDatabase

from ..fhir.errors import Conflict, ResourceNotFound
from ..fhir.models import now
from .locations import Z3Location

GRIDFS_BUCKET = "z3"
CHUNK_SIZE = 255 * 1024  # GridFS's default chunk size


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


class Z3Store:
    def __init__(self, database: Any) -> None:
        self.database = database
        self.files = database[f"{GRIDFS_BUCKET}.files"]

    async def ensure_indexes(self) -> None:
        await self.files.create_index([("filename", 1), ("uploadDate", -1)], name="filename")
        await self.database[f"{GRIDFS_BUCKET}.chunks"].create_index(
            [("files_id", 1), ("n", 1)], name="files_id_1_n_1", unique=True
        )

    async def create_bucket(self, bucket: str) -> bool:
        """Create ``bucket``; False when it already existed."""
        result = await self.database[BUCKETS].update_one(
            {"_id": bucket}, {"$setOnInsert": {"created": now()}}, upsert=True
        )
        return result.upserted_id is not None

    async def list_buckets(self) -> list[dict[str, Any]]:
        return await self.database[BUCKETS].find({}).sort("_id", 1).to_list(None)

    async def delete_bucket(self, bucket: str) -> None:
        """Delete an empty bucket; 404 when unknown, 409 when it still holds objects."""
        if not await self.bucket_exists(bucket):
            raise ResourceNotFound(f"There is no bucket {bucket!r}.")
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
        """Delete every stored version of ``location``; False when there was none."""
        gridfs = self.gridfs()
        ids = [d["_id"] async for d in self.files.find({"filename": f"{location.bucket}/{location.key}"}, {"_id": 1})]
        for file_id in ids:
            await gridfs.delete(file_id)
        return bool(ids)

    async def put_stream(
        self, location: Z3Location, pieces: AsyncIterator[bytes], content_type: str | None, max_bytes: int
    ) -> int:
        """Store an upload chunk by chunk, in the GridFS layout; ObjectTooLarge past ``max_bytes``.

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
            await self.files.insert_one(
                {
                    "_id": file_id,
                    "filename": f"{location.bucket}/{location.key}",
                    "length": size,
                    "chunkSize": CHUNK_SIZE,
                    "uploadDate": now(),
                    "metadata": {"contentType": content_type},
                }
            )
        except BaseException:
            await chunks.delete_many({"files_id": file_id})
            raise
        return size

    async def read_chunks(self, location: Z3Location) -> AsyncIterator[bytes] | None:
        """The newest content at ``location`` as a stream of chunks, or None."""
        try:
            stream = await self.gridfs().open_download_stream_by_name(f"{location.bucket}/{location.key}")
        except NoFile:
            return None

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await stream.readchunk():
                yield chunk

        return chunks()

    async def bucket_exists(self, bucket: str) -> bool:
        return await self.database[BUCKETS].count_documents({"_id": bucket}, limit=1) == 1

    def gridfs(self) -> Any:
        """The GridFS bucket class of whichever driver the database handle belongs to."""
        if isinstance(self.database, AsyncDatabase):
            return AsyncGridFSBucket(self.database, bucket_name=GRIDFS_BUCKET)
        from motor.motor_asyncio import AsyncIOMotorGridFSBucket

        return AsyncIOMotorGridFSBucket(self.database, bucket_name=GRIDFS_BUCKET)

    async def put(self, location: Z3Location, data: bytes, content_type: str | None = None) -> None:
        """Store ``data``; the newest upload of a key wins."""

        async def one_piece() -> AsyncIterator[bytes]:
            yield data

        await self.put_stream(location, one_piece(), content_type, max_bytes=len(data))

    async def stat(self, location: Z3Location) -> ObjectInfo | None:
        document = await self.files.find_one(
            {"filename": f"{location.bucket}/{location.key}"}, sort=[("uploadDate", -1)]
        )
        if document is None:
            return None
        return ObjectInfo(
            location=location,
            size=document["length"],
            content_type=(document.get("metadata") or {}).get("contentType"),
            uploaded=document["uploadDate"],
            version=document["_id"],
        )

    async def read_version(self, version: Any) -> bytes | None:
        """The content of one upload (``ObjectInfo.version``), or None when it has been replaced and removed."""
        try:
            stream = await self.gridfs().open_download_stream(version)
        except NoFile:
            return None
        return await stream.read()

    async def read(self, location: Z3Location) -> bytes | None:
        """The newest content stored at ``location``, or None."""
        try:
            stream = await self.gridfs().open_download_stream_by_name(f"{location.bucket}/{location.key}")
        except NoFile:
            return None
        return await stream.read()
