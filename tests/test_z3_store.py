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
