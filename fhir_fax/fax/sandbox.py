"""Untrusted documents are opened, checked and drawn in a child process with memory and time limits.

PDFium and Pillow parse whatever a client uploaded. A document made to exhaust memory, to run for
minutes or to crash the parser must cost a refusal, never the API or the fax worker. So every call on a
document (``documents.run_pdfium``) runs in a long-lived child process whose address space is capped
(RLIMIT_AS, ``FHIR_FAX_DOCUMENT_MEMORY_BYTES``); a call that outlives its time limit
(``FHIR_FAX_DOCUMENT_CHECK_SECONDS`` at send time, ``FHIR_FAX_DOCUMENT_RENDER_SECONDS`` for renderings)
gets the child killed. A child that died (killed, out of memory, crashed) is started again on the next
call, and the caller gets a DocumentProblem that says what happened.

There are two children: one for the send-time check (on the API's request path) and one for renderings
(the worker, previews), so a long rendering never holds up a send. Each does one call at a time, which
PDFium needs anyway (it is not thread-safe); the waiting happens on a thread, off the event loop. The
children live as long as the server, so a call costs a pipe round trip, not a process start.

Calls and answers cross the pipe as a JSON header and raw bytes, never as pickles: the child handles
hostile input, so nothing it sends back can make the parent run code. The child imports only the
document modules (not the web stack), so it starts in a few tens of milliseconds and is small.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .documents import DocumentInfo, DocumentProblem

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger("fhir_fax.sandbox")

FRAME = struct.Struct(">IQ")  # header length, payload length
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 1 << 30
CHECKS = frozenset({"inspect"})  # send-time calls; every other call is a rendering
CALLS = frozenset({"inspect", "count_pages", "render_fax", "tiff_pages", "preview_png", "tiff_to_pdf", "page_texts"})
PACKAGE = Path(__file__).resolve().parent.parent
# Imports fhir_fax.fax.* without fhir_fax/__init__.py (which loads the web application).
BOOTSTRAP = (
    "import json, sys, types; sys.path[:0] = json.loads(sys.argv[1]); "
    "package = types.ModuleType('fhir_fax'); package.__path__ = [sys.argv[2]]; sys.modules['fhir_fax'] = package; "
    "from fhir_fax.fax.sandbox import serve; serve(json.loads(sys.argv[3]))"
)


@dataclass(frozen=True)
class Limits:
    """What one call on a document may use (from Settings; see ``configure``)."""

    memory_bytes: int = 1 << 30
    check_seconds: float = 30.0
    render_seconds: float = 300.0
    page_pixels: int = 40_000_000

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            memory_bytes=settings.document_memory_bytes,
            check_seconds=settings.document_check_seconds,
            render_seconds=settings.document_render_seconds,
            page_pixels=settings.max_page_pixels,
        )


class Sandbox:
    """One child process and the thread that talks to it; calls are made one at a time."""

    def __init__(self, name: str, limits: Limits, seconds: float) -> None:
        self.name = name
        self.limits = limits
        self.seconds = seconds
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sandbox-{name}")
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    async def call(self, function: str, data: bytes, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._call, function, data, args)

    def pid(self) -> int | None:
        """The child's process id (None when it is not running): for measurements."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def close(self) -> None:
        with self._lock:
            self._stop()
        self._thread.shutdown(wait=False)

    def _call(self, function: str, data: bytes, args: tuple[Any, ...]) -> Any:
        with self._lock:
            process = self._running()  # a failure to start it is the server's problem, not the document's
            calls, answers = process.stdin, process.stdout
            if calls is None or answers is None:
                raise RuntimeError("the document sandbox has no pipes")
            # The whole exchange is under the deadline: a child that stops reading its input (a parser gone
            # astray) would otherwise block the write for ever, with every later document queued behind it.
            overdue = threading.Event()

            def expire() -> None:
                overdue.set()
                process.kill()

            watchdog = threading.Timer(self.seconds, expire)
            watchdog.start()
            try:
                write_message(calls, {"call": function, "args": list(args)}, data)
                deadline = time.monotonic() + self.seconds
                header, payload = read_message(answers.fileno(), deadline)
            except Exception as error:
                status = self._stop()
                if not isinstance(error, TimeoutError) and not overdue.is_set():
                    raise self._stopped(status) from None
                raise DocumentProblem(
                    f"Reading the document took longer than the {self.seconds:g} s allowed for "
                    f"{'checking' if self.name == 'check' else 'rendering'} a document; simplify it (for example, "
                    "print it to a new PDF) and send it again."
                ) from None
            finally:
                watchdog.cancel()
        return answer(header, payload)

    def _stopped(self, status: int | None) -> DocumentProblem:
        """The child died mid-call (killed, out of memory, crashed) or answered something unreadable."""
        return DocumentProblem(
            f"The document could not be read: the process reading it stopped ({describe_exit(status)}), "
            f"usually because it needed more than the {self.limits.memory_bytes // (1 << 20)} MB of memory "
            "a document may use; simplify it (for example, print it to a new PDF) and send it again."
        )

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-c",
                BOOTSTRAP,
                json.dumps(sys.path),
                str(PACKAGE),
                json.dumps(asdict(self.limits)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        log.info("document sandbox %r started (pid %s)", self.name, self._process.pid)
        return self._process

    def _stop(self) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        status = process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return status


def describe_exit(status: int | None) -> str:
    if status is not None and status < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-status).name}"
    return f"exit status {status}"


def answer(header: dict[str, Any], payload: bytes) -> Any:
    """The result a child sent, rebuilt from plain data (or the refusal it reported, raised)."""
    if "problem" in header:
        raise DocumentProblem(str(header["problem"]))
    if "error" in header:
        log.warning("document sandbox failed: %s", header["error"])
        raise DocumentProblem(f"The document could not be read ({header['error']}); export it again and re-upload it.")
    kind = header.get("result")
    if kind == "bytes":
        return payload
    try:
        if kind == "info":
            fields = header["info"]
            return DocumentInfo(
                str(fields["content_type"]), int(fields["pages"]), int(fields["size"]), str(fields["sha1"])
            )
        return int(header["value"])
    except (KeyError, TypeError, ValueError):
        raise DocumentProblem("The document could not be read (a malformed answer from the sandbox).") from None


def write_message(stream: IO[bytes], header: dict[str, Any], payload: bytes) -> None:
    encoded = json.dumps(header).encode()
    stream.write(FRAME.pack(len(encoded), len(payload)) + encoded)
    stream.write(payload)
    stream.flush()


def read_message(fd: int, deadline: float) -> tuple[dict[str, Any], bytes]:
    header_size, payload_size = FRAME.unpack(read_exact(fd, FRAME.size, deadline))
    if header_size > MAX_HEADER or payload_size > MAX_PAYLOAD:
        raise ValueError("answer too large")
    header = json.loads(read_exact(fd, header_size, deadline))
    if not isinstance(header, dict):
        raise ValueError("malformed answer")
    return header, read_exact(fd, payload_size, deadline)


def read_exact(fd: int, size: int, deadline: float) -> bytes:
    received = bytearray()
    while len(received) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise TimeoutError
        piece = os.read(fd, min(size - len(received), 1 << 20))
        if not piece:
            raise EOFError
        received += piece
    return bytes(received)


# --- the parent's side: which child does what ------------------------------------------------------------

_limits = Limits()
_sandboxes: dict[str, Sandbox] = {}
_guard = threading.Lock()


def configure(limits: Limits) -> None:
    """Use ``limits`` from now on (children started with other limits are stopped)."""
    global _limits
    with _guard:
        if limits == _limits:
            return
        _limits = limits
        old = list(_sandboxes.values())
        _sandboxes.clear()
    for sandbox in old:
        sandbox.close()


def sandbox_for(function: str) -> Sandbox:
    name = "check" if function in CHECKS else "render"
    with _guard:
        sandbox = _sandboxes.get(name)
        if sandbox is None:
            seconds = _limits.check_seconds if name == "check" else _limits.render_seconds
            sandbox = _sandboxes[name] = Sandbox(name, _limits, seconds)
        return sandbox


async def run(function: Callable[..., Any], data: bytes, *args: Any) -> Any:
    name = function.__name__
    if name not in CALLS:
        raise ValueError(f"{name} is not a document call")
    return await sandbox_for(name).call(name, data, *args)


# --- the child's side ------------------------------------------------------------------------------------


def serve(limits: dict[str, Any]) -> None:
    """The child: answer calls from stdin on stdout until stdin closes."""
    import resource

    memory = int(limits["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    with contextlib.suppress(OSError, AttributeError):  # die with the parent (Linux)
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else printed goes to the log, not into the answers
    from PIL import Image

    from . import documents, inbound_document, render

    documents.PAGE_PIXELS = int(limits["page_pixels"])
    Image.MAX_IMAGE_PIXELS = documents.PAGE_PIXELS
    functions: dict[str, Callable[..., Any]] = {
        "inspect": documents.inspect,
        "count_pages": documents.count_pages,
        "render_fax": render.render_fax,
        "tiff_pages": render.tiff_pages,
        "preview_png": render.preview_png,
        "tiff_to_pdf": inbound_document.tiff_to_pdf,  # received faxes (inbound_document.py)
        "page_texts": inbound_document.page_texts,
    }
    calls = sys.stdin.buffer
    while True:
        frame = calls.read(FRAME.size)
        if len(frame) < FRAME.size:
            return
        header_size, payload_size = FRAME.unpack(frame)
        header = json.loads(calls.read(header_size))
        data = calls.read(payload_size)
        write_message(answers, *child_call(functions, header, data, memory))


def child_call(
    functions: dict[str, Callable[..., Any]], header: dict[str, Any], data: bytes, memory: int
) -> tuple[dict[str, Any], bytes]:
    try:
        result = functions[header["call"]](data, *header["args"])
    except DocumentProblem as problem:
        return {"problem": str(problem)}, b""
    except MemoryError:
        return {
            "problem": f"The document needs more than the {memory // (1 << 20)} MB of memory a document may use; "
            "simplify it (for example, print it to a new PDF) and send it again."
        }, b""
    except Exception as error:  # reported to the parent, which refuses the document
        import traceback

        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"[:500]}, b""
    if isinstance(result, bytes):
        return {"result": "bytes"}, result
    if isinstance(result, DocumentInfo):
        return {"result": "info", "info": asdict(result)}, b""
    return {"result": "value", "value": int(result)}, b""
