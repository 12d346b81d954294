"""Z3 objects in GridFS: bucket ``z3``, file name ``{bucket}/{key}``; buckets listed in ``z3_buckets``.

Existence checks read the GridFS files collection directly (the collection API PyMongo
and Motor share), so they work on whichever driver the host application handed over.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gridfs import AsyncGridFSBucket
from pymongo.asynchronous.database import AsyncDatabase

from ..fhir.models import now
from .locations import Z3Location

GRIDFS_BUCKET = "z3"
BUCKETS = "z3_buckets"


@dataclass(frozen=True)
class ObjectInfo:
    location: Z3Location
    size: int
    content_type: str | None
    uploaded: datetime


class Z3Store:
    def __init__(self, database: Any) -> None:
        self.database = database
        self.files = database[f"{GRIDFS_BUCKET}.files"]

    async def ensure_indexes(self) -> None:
        await self.files.create_index([("filename", 1), ("uploadDate", -1)], name="filename")

    async def create_bucket(self, bucket: str) -> bool:
        """Create ``bucket``; False when it already existed."""
        result = await self.database[BUCKETS].update_one(
            {"_id": bucket}, {"$setOnInsert": {"created": now()}}, upsert=True
        )
        return result.upserted_id is not None

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
        await self.create_bucket(location.bucket)
        await self.gridfs().upload_from_stream(
            f"{location.bucket}/{location.key}", data, metadata={"contentType": content_type}
        )

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
        )

    async def read(self, location: Z3Location) -> bytes | None:
        """The newest content stored at ``location``, or None."""
        from gridfs.errors import NoFile

        try:
            stream = await self.gridfs().open_download_stream_by_name(f"{location.bucket}/{location.key}")
        except NoFile:
            return None
        return await stream.read()
