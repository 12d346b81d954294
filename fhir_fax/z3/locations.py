"""Z3 object addresses: ``z3://{bucket}/{key}`` and ``{project-api}/z3/{bucket}/{key}``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")  # matched whole (fullmatch)


@dataclass(frozen=True)
class Z3Location:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"z3://{self.bucket}/{self.key}"


class Z3UrlError(ValueError):
    """Why a string is not a Z3 object URL of this project (the message says what to send instead)."""


def parse_z3_url(url: str, project_api_bases: tuple[str, ...]) -> Z3Location:
    """Bucket and key of a Z3 URL; every other URL is refused.

    ``project_api_bases`` are this server's ``{base}/v1`` and any configured aliases.
    """
    if url.startswith("z3://"):
        path = url[len("z3://") :]
    else:
        path = ""
        for base in project_api_bases:
            prefix = base.rstrip("/") + "/z3/"
            if url.startswith(prefix):
                path = url[len(prefix) :]
                break
        if not path:
            accepted = " or ".join(f"{b.rstrip('/')}/z3/{{bucket}}/{{key}}" for b in project_api_bases)
            raise Z3UrlError(
                f"{url!r} is not a Z3 URL of this project; upload the document to Z3 first and send "
                "z3://{bucket}/{key}" + (f" or {accepted}" if accepted else "") + "."
            )
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise Z3UrlError(f"{url!r} has a query or fragment; send the plain Z3 object URL.")
    bucket, _, raw_key = path.partition("/")
    key = unquote(raw_key)
    if not BUCKET.fullmatch(bucket):
        raise Z3UrlError(f"{url!r} names the bucket {bucket!r}, which is not a valid bucket name.")
    segments = key.split("/")
    if not key or any(s in ("", ".", "..") for s in segments) or any(ord(c) < 32 or c == "\x7f" for c in key):
        raise Z3UrlError(
            f"{url!r} has no valid object key; keys are non-empty path segments without '.', '..' "
            "or control characters."
        )
    return Z3Location(bucket, key)
