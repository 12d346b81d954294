"""The Z3 object store on GridFS, through both drivers."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_fax.z3.locations import Z3Location, Z3UrlError, parse_z3_url
from fhir_fax.z3.store import Z3Store


async def test_put_then_stat_on_either_driver(any_database: Any) -> None:
    store = Z3Store(any_database)
    location = Z3Location("letters", "2026/referral.pdf")
    assert await store.stat(location) is None
    assert not await store.bucket_exists("letters")
    await store.put(location, b"%PDF-1.4 first", "application/pdf")
    await store.put(location, b"%PDF-1.4 second version", "application/pdf")
    info = await store.stat(location)
    assert info is not None
    assert (info.size, info.content_type) == (len(b"%PDF-1.4 second version"), "application/pdf")
    assert await store.bucket_exists("letters")
    assert await store.create_bucket("letters") is False


@pytest.mark.parametrize(
    ("url", "bucket", "key"),
    [
        ("z3://letters/a/b.pdf", "letters", "a/b.pdf"),
        ("http://fhir.test/v1/z3/letters/a%20b.pdf", "letters", "a b.pdf"),
    ],
)
def test_z3_urls_name_a_bucket_and_key(url: str, bucket: str, key: str) -> None:
    assert parse_z3_url(url, ("http://fhir.test/v1",)) == Z3Location(bucket, key)


@pytest.mark.parametrize(
    "url",
    [
        "http://other.test/v1/z3/letters/a.pdf",
        "http://fhir.test/v1/z3letters/a.pdf",
        "z3://letters/a/./b.pdf",
        "z3://letters/a\x00b.pdf",
        "z3://xx/a.pdf".replace("xx", "x"),
        "z3://-letters/a.pdf",
    ],
)
def test_anything_else_is_refused(url: str) -> None:
    with pytest.raises(Z3UrlError):
        parse_z3_url(url, ("http://fhir.test/v1",))


async def test_pinned_versions_outlive_pruning_and_deletion_on_either_driver(any_database: Any) -> None:
    """A pin and a removal are decided per version by the database: pinned versions are never removed."""
    store = Z3Store(any_database)
    location = Z3Location("letters", "referral.pdf")
    first = await store.put(location, b"%PDF-1.4 first")
    second = await store.put(location, b"%PDF-1.4 second")
    assert await store.pin(first.version, location, "c2hhMQ==") is True
    third = await store.put(location, b"%PDF-1.4 third")
    assert await store.prune(third) == 1, "the unpinned second version went, the pinned first stayed"
    assert await store.read_version(second.version) is None
    assert await store.pin(second.version, location, None) is False, "a removed version cannot be pinned"
    assert await store.read(location) == b"%PDF-1.4 third"
    assert await store.delete_object(location) is True
    assert await store.stat(location) is None and await store.read(location) is None
    assert await store.list_objects("letters", "") == []
    assert await store.read_version(first.version) == b"%PDF-1.4 first", "kept for the fax that pinned it"
    info = await store.version_info(first.version)
    assert info is not None and info.location == location
    assert await store.pinned_version(location, "c2hhMQ==") == first.version
    assert await store.delete_object(location) is False, "nothing is left under the key"
    await store.delete_bucket("letters")  # the kept version no longer counts as the bucket's object


async def test_renderings_are_found_by_the_version_they_render_not_by_name(any_database: Any) -> None:
    store = Z3Store(any_database)
    source = await store.put(Z3Location("letters", "a.pdf"), b"%PDF-1.4 a")
    name = Z3Location("letters", "a.pdf.fine.fax.tif")
    await store.put(name, b"II*\x00 uploaded by a client under the rendering's name")
    assert await store.read_rendering(source.version, "fine") is None
    await store.put_rendering(name, source.version, "fine", b"II*\x00 rendered")
    await store.put(name, b"II*\x00 uploaded again")
    assert await store.read_rendering(source.version, "fine") == b"II*\x00 rendered"
    assert await store.read_rendering(source.version, "standard") is None
