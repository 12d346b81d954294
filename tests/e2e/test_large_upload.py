"""A 100 MB upload streams into GridFS: the server's peak memory must not grow by the file's size.

The test has an embedded database of its own: 100 MB of chunks is a large share of what the suite's shared
database holds, and the measure is the server's memory, not how the shared database copes by then (late in a
full run it was slow enough to stall the upload).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from fhir_fax.embedded import EmbeddedDatabase

from processes import FaxServer

SIZE = 100 * 1024 * 1024
CHUNK = 1024 * 1024


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def chunks() -> Iterator[bytes]:
    block = bytes(range(256)) * (CHUNK // 256)
    for _ in range(SIZE // CHUNK):
        yield block


@pytest.fixture
def own_database(tmp_path: Path) -> Iterator[str]:
    database = EmbeddedDatabase(tmp_path / "mongo")
    yield database.start()
    database.stop()


def test_a_100_mb_upload_is_streamed_not_buffered(tmp_path: Path, own_database: str) -> None:
    mongo_uri = own_database
    name = f"big_{uuid.uuid4().hex[:8]}"
    env = {
        "FHIR_FAX_MONGODB_URI": mongo_uri,
        "FHIR_FAX_DATABASE_NAME": name,
        "FHIR_FAX_WORKER_ENABLED": "false",
        "FHIR_FAX_Z3_MAX_OBJECT_BYTES": str(200 * 1024 * 1024),
    }
    server = FaxServer(tmp_path / "data", env=env)
    try:
        with httpx.Client(base_url=server.url, timeout=300) as http:

            def signed() -> str:  # each signed upload URL is good for one upload
                answer = http.post("/v1/z3/scans/big.pdf", json={"action": "upload"}, headers=server.headers)
                return answer.json()["signedUrl"]

            http.put(signed(), content=b"warm-up")  # let the server reach its steady state first
            url = signed()
            before = peak_rss_mb(server.process.pid)
            response = http.put(url, content=chunks())
            after = peak_rss_mb(server.process.pid)
        assert response.status_code == 200, response.text
        with MongoClient(mongo_uri) as client:
            stored = client[name]["z3.files"].find_one({"filename": "scans/big.pdf"}, sort=[("uploadDate", -1)])
            assert stored["length"] == SIZE
            client.drop_database(name)
        assert after - before < 50, f"peak memory grew by {after - before:.0f} MB for a 100 MB upload"
    finally:
        server.stop()
