"""Hostile documents and bodies against a real server: its peak memory, and the document sandbox's.

    python benchmarks/hostile_documents.py

Starts ``fhir-fax serve`` (embedded database, worker on) in a temporary directory, then for each hostile
document uploads it, sends it (``POST /fax/v1/send``) and records the answer, the server's peak RSS over
its RSS before the send, and the peak RSS of the sandbox process that read it (Linux ``/proc``: VmHWM is
reset through ``clear_refs`` before each case, and sampled every 5 ms). Then it streams 300 MB bodies at
the endpoints that read a body before any check, and measures what the sandbox adds to one send-time
check (in this process: ``inspect`` called directly, and through the sandbox). Not a test: figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from serving import wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

ADMIN = {"FHIR_FAX_BOOTSTRAP_CLIENT_ID": "bench-admin", "FHIR_FAX_BOOTSTRAP_CLIENT_SECRET": "bench-admin-secret"}
SERVER_BOUND_MB = 50  # what one hostile document or body may add to the server's peak RSS
CHECK_SECONDS = 10  # FHIR_FAX_DOCUMENT_CHECK_SECONDS for this run (the default is 30)


def status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def sandboxes(server: int) -> list[int]:
    """The server's document sandbox children."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == server and b"fhir_fax.fax.sandbox" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


class Peaks:
    """Samples the server's VmHWM and its sandboxes' peak RSS while a case runs."""

    def __init__(self, server: int) -> None:
        self.server = server
        self.sandbox_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Peaks:
        reset_peak(self.server)
        for pid in sandboxes(self.server):
            reset_peak(pid)
        self.before_kb = status_kb(self.server, "VmRSS")
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            for pid in sandboxes(self.server):
                self.sandbox_kb = max(self.sandbox_kb, status_kb(pid, "VmHWM"), status_kb(pid, "VmRSS"))
            time.sleep(0.005)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.server_peak_kb = status_kb(self.server, "VmHWM")

    def row(self) -> dict[str, float]:
        return {
            "server_rss_before_mb": round(self.before_kb / 1024, 1),
            "server_peak_over_before_mb": round((self.server_peak_kb - self.before_kb) / 1024, 1),
            "sandbox_peak_mb": round(self.sandbox_kb / 1024, 1),
        }


def hostile_documents() -> list[tuple[str, bytes]]:
    from PIL import Image
    from test_documents import LETTER, encrypted_letter, pdf_with_pages
    from test_hostile_documents import (
        HTML,
        jpeg_claiming,
        many_pages,
        nested_forms,
        owner_password_only,
        png_header_only,
        tiff_claiming,
    )

    def png(side: int) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (side, side), (255, 255, 255)).save(out, format="PNG", compress_level=1)
        return out.getvalue()

    return [
        ("referral letter (3 pages, accepted)", LETTER),
        ("thin page 72 x 14400 pt (714 bytes)", pdf_with_pages([(72, 14400)])),
        ("narrower page 10 x 14400 pt", pdf_with_pages([(10, 14400)])),
        ("20000 pages (2 MB)", many_pages(20_000)),
        ("9000 x 9000 PNG", png(9000)),
        ("6000 x 6000 RGB PNG (under budget, accepted)", png(6000)),
        ("PNG claiming 100000 x 100000", png_header_only(100_000, 100_000)),
        ("JPEG claiming 60000 x 60000", jpeg_claiming(60_000, 60_000)),
        ("TIFF claiming 60000 x 60000", tiff_claiming(60_000, 60_000)),
        ("PDF, user password", encrypted_letter()),
        ("PDF, owner password only", owner_password_only()),
        ("PDF drawing 10^12 squares (1.7 KB)", nested_forms()),
        ("PDF with HTML appended", LETTER + HTML),
        ("PNG with a PDF appended", png(64) + LETTER),
        ("truncated PDF", LETTER[:700]),
    ]


def start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_FAX_")}
    env.update(ADMIN, FHIR_FAX_DOCUMENT_CHECK_SECONDS=str(CHECK_SECONDS), PYTHONPATH=str(ROOT))
    env["FHIR_FAX_TELNYX_PUBLIC_KEY"] = "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="
    log = open(data_dir / "server.log", "wb")  # noqa: SIM115 - the server writes to it until it stops
    process = subprocess.Popen(
        [sys.executable, "-m", "fhir_fax.cli", "serve", "--port", str(port), "--data-dir", str(data_dir / "data"),
         "--load-fixtures"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(process, url, data_dir / "server.log")
    return process, url


def send_documents(url: str, pid: int) -> list[dict[str, Any]]:
    form = {"grant_type": "client_credentials", "client_id": "bench-admin", "client_secret": "bench-admin-secret"}
    with httpx.Client(base_url=url, timeout=120) as http:
        http.headers["authorization"] = "Bearer " + http.post("/oauth/token", data=form).json()["access_token"]
        http.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"})
        rows = []
        for index, (name, data) in enumerate(hostile_documents()):
            key = f"case-{index}.pdf"
            signed = http.post(f"/v1/z3/bench/{key}", json={"action": "upload"}).json()["signedUrl"]
            http.put(signed, content=data)
            body = {"media": f"z3://bench/{key}", "quality": "superfine", "recipientNumber": "+16175550143",
                    "sender": "HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964"}  # fmt: skip
            with Peaks(pid) as peaks:
                started = time.perf_counter()
                response = http.post("/fax/v1/send", json=body)
                seconds = time.perf_counter() - started
            answer = response.json()
            message = answer.get("message", "accepted")
            rows.append({"case": name, "bytes": len(data), "status": response.status_code,
                         "seconds": round(seconds, 2), "message": message.split("cannot be faxed: ")[-1][:110],
                         **peaks.row()})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
            if response.status_code == 200:  # and the rendering (the preview renders in the render sandbox)
                communication = answer["communicationResource"]["id"]
                with Peaks(pid) as peaks:
                    preview = http.get(f"/fax/v1/faxes/{communication}/preview", params={"page": "1"})
                rows.append({"case": "  rendering it at superfine (preview page 1)", "bytes": len(data),
                             "status": preview.status_code, "seconds": None, "message": "", **peaks.row()})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    return rows


def stream_body(url: str, path: str, total: int, pid: int) -> dict[str, Any]:
    """Stream ``total`` bytes (chunked, no Content-Length) until the server answers or hangs up."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with Peaks(pid) as peaks, socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
                     "Content-Type: application/json\r\n\r\n".encode())  # fmt: skip
        block = b"x" * (1 << 20)
        try:
            while sent < total:
                sock.sendall(b"%x\r\n" % len(block) + block + b"\r\n")
                sent += len(block)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed the connection: the rest was never read
        try:
            answer = sock.recv(200).split(b"\r\n", 1)[0].decode()
        except OSError:
            answer = "connection reset after the answer"
    return {"case": f"300 MB chunked body to {path}", "bytes": total, "status": answer, "seconds": None,
            "message": f"{sent / (1 << 20):.0f} MB written before the server hung up", **peaks.row()}  # fmt: skip


def median_ms(function: Callable[[], Any], runs: int = 30) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def check_latency() -> list[dict[str, Any]]:
    """What running the send-time check in the sandbox adds: direct call vs through the sandbox, warm."""
    from render import letter_pdf
    from test_documents import LETTER

    from fhir_fax.fax.documents import inspect, run_pdfium

    loop = asyncio.new_event_loop()
    rows = []
    for name, data in (("referral letter, 3 pages, 2 KB", LETTER), ("50-page letter PDF", letter_pdf(50))):
        loop.run_until_complete(run_pdfium(inspect, data, 350))  # start the child
        direct = median_ms(lambda data=data: inspect(data, 350))
        sandboxed = median_ms(lambda data=data: loop.run_until_complete(run_pdfium(inspect, data, 350)))
        rows.append({"document": name, "bytes": len(data), "direct_ms": direct, "sandbox_ms": sandboxed,
                     "added_ms": round(sandboxed - direct, 2)})  # fmt: skip
    started = time.perf_counter()
    from fhir_fax.fax import sandbox

    sandbox.configure(sandbox.Limits(check_seconds=29))  # a new child
    loop.run_until_complete(run_pdfium(inspect, LETTER, 350))
    rows.append({"document": "first check after a (re)start of the sandbox", "bytes": len(LETTER),
                 "direct_ms": None, "sandbox_ms": round((time.perf_counter() - started) * 1000, 1),
                 "added_ms": None})  # fmt: skip
    loop.close()
    return rows


def main() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    with tempfile.TemporaryDirectory(prefix="hostile-bench-") as temporary:
        process, url = start_server(Path(temporary))
        try:
            rows = send_documents(url, process.pid)
            for path in ("/oauth/token", "/fax/webhooks/telnyx"):
                rows.append(stream_body(url, path, 300 << 20, process.pid))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            process.terminate()
            process.wait(timeout=60)
    latency = check_latency()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    RESULTS.mkdir(exist_ok=True)
    result = {"machine": machine, "server_bound_mb": SERVER_BOUND_MB, "rows": rows, "latency": latency}
    (RESULTS / "hostile_documents.json").write_text(json.dumps(result, indent=2))
    print(f"\nMachine: {machine}. Sandbox memory limit 1024 MB, check time limit {CHECK_SECONDS} s.\n")
    print("| Case | Answer | Server peak RSS over before (MB) | Sandbox peak RSS (MB) | Why |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row['status']} | {row['server_peak_over_before_mb']} | "
              f"{row['sandbox_peak_mb']} | {row['message']} |")  # fmt: skip
    print("\n| Send-time check of | Direct (ms) | In the sandbox (ms) | Added (ms) |\n|---|---|---|---|")
    for row in latency:
        print(f"| {row['document']} | {row['direct_ms']} | {row['sandbox_ms']} | {row['added_ms']} |")
    worst = max(row["server_peak_over_before_mb"] for row in rows)
    print(f"\nLargest growth of the server's peak RSS: {worst} MB (bound: {SERVER_BOUND_MB} MB).")
    if worst > SERVER_BOUND_MB:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
