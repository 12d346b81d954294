"""The embedded database: ``secantusd-py`` run as a child process.

SecantusDB is GPL-2.0, so it is never imported: it runs as its own process, installed
by the optional ``embedded`` extra. The launcher picks a free loopback port, keeps the
data under ``DATA_DIR/db``, waits until the server answers ``ping``, restarts it if it
dies, and stops it when the owning process exits, even if that process is killed
(Linux parent-death signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

log = logging.getLogger("fhir_fax.embedded")

# Durability: every acknowledged commit is synced (REFERENCE §5: default write concern
# lost acknowledged writes on kill -9). Retryable writes are off because the server keeps
# each for 30 minutes and slows down tenfold after ~10,000 of them.
URI_OPTIONS = "retryWrites=false&directConnection=true&serverSelectionTimeoutMS=5000"
STATE_FILE = "db.json"


class EmbeddedDatabaseError(RuntimeError):
    """The embedded database could not be started."""


def uri_for_port(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/?{URI_OPTIONS}"


def find_server_executable() -> str:
    """Locate ``secantusd-py``: next to this interpreter first (a virtualenv), then on PATH."""
    beside = Path(sys.executable).parent / "secantusd-py"
    if beside.exists():
        return str(beside)
    found = shutil.which("secantusd-py")
    if found:
        return found
    raise EmbeddedDatabaseError(
        "The embedded database is not installed. Install it with `pip install 'fhir-fax[embedded]'` "
        "(or `make run`), or set FHIR_FAX_MONGODB_URI to use your own MongoDB."
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the database when the process that started it dies, even by kill -9."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def ping(uri: str, timeout_ms: int = 500) -> bool:
    """True when a MongoDB-compatible server answers ``ping`` at ``uri``."""
    client: MongoClient[dict[str, Any]] = MongoClient(
        uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms
    )
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


@dataclass
class EmbeddedDatabase:
    """One ``secantusd-py`` process bound to one data directory.

    ``start()`` either starts the server or, when another fhir-fax process already runs
    one on the same data directory, connects to that one (``owned`` is then False and
    ``stop()`` leaves it alone). This lets ``fhir-fax worker`` or ``fixtures load`` run
    beside ``fhir-fax serve`` on the same embedded data.
    """

    data_dir: Path
    port: int | None = None
    startup_timeout: float = 30.0
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.process: subprocess.Popen[bytes] | None = None
        self.owned = False
        self._stopping = False
        self._log_file: IO[bytes] | None = None

    @property
    def storage_path(self) -> Path:
        return self.data_dir / "db"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / "secantusd.log"

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    @property
    def uri(self) -> str:
        if self.port is None:
            raise EmbeddedDatabaseError("The embedded database has not been started.")
        return uri_for_port(self.port)

    def start(self) -> str:
        """Start (or join) the embedded server and return its URI once it answers ``ping``."""
        running = self._running_elsewhere()
        if running is not None:
            self.port = running
            log.info("using the embedded database already running on port %s", running)
            return self.uri
        self.port = self.port or free_port()
        self._spawn()
        self.owned = True
        self._write_state()
        return self.uri

    def _running_elsewhere(self) -> int | None:
        try:
            state = json.loads(self.state_path.read_text())
            pid, port = int(state["pid"]), int(state["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not _process_alive(pid):
            return None
        return port if ping(uri_for_port(port)) else None

    def _spawn(self) -> None:
        self.storage_path.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            find_server_executable(),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--storage-path", str(self.storage_path),
            "--sync-on-commit",
            "--log-level", "WARNING",
            *self.extra_args,
        ]  # fmt: skip
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - held for the child's lifetime
        self.process = subprocess.Popen(
            command,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.data_dir,
            start_new_session=True,  # Ctrl-C goes to us; we stop the database in order.
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedDatabaseError(
                    f"The embedded database exited with code {self.process.returncode} on start; see {self.log_path}."
                )
            if ping(self.uri, timeout_ms=300):
                log.info("embedded database ready on port %s (data in %s)", self.port, self.storage_path)
                return
            time.sleep(0.1)
        self._terminate()
        raise EmbeddedDatabaseError(f"The embedded database did not answer within {self.startup_timeout} s.")

    def _write_state(self) -> None:
        assert self.process is not None
        self.state_path.write_text(json.dumps({"pid": self.process.pid, "port": self.port}))

    def ensure_running(self) -> bool:
        """Restart the server if it died (e.g. killed); True when a restart happened."""
        if not self.owned or self._stopping or self.process is None or self.process.poll() is None:
            return False
        log.warning("embedded database exited with code %s; restarting it", self.process.returncode)
        self._close_log()
        self._spawn()
        self._write_state()
        return True

    async def supervise(self, interval: float = 0.5) -> None:
        """Keep the owned server alive until cancelled.

        The restart runs on the event loop's own (main) thread on purpose: the child's
        parent-death signal fires when the thread that started it exits, so it must not
        be started from a short-lived worker thread.
        """
        while True:
            await asyncio.sleep(interval)
            try:
                self.ensure_running()
            except EmbeddedDatabaseError:
                log.exception("could not restart the embedded database")

    def stop(self) -> None:
        """Stop the server if this object started it."""
        self._stopping = True
        if not self.owned:
            return
        self._terminate()
        with contextlib.suppress(OSError):
            self.state_path.unlink()
        self.owned = False

    def _terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
