"""Waiting for a server process a benchmark started (benchmarks never import the tests' helpers)."""

from __future__ import annotations

import subprocess
import time

import httpx


def wait_until_serving(process: subprocess.Popen[bytes], url: str, log: object, seconds: float = 60) -> None:
    """Until ``GET {url}/healthz`` answers 200; if it never does, kill the process and exit naming ``log``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the server did not start; see {log}")
