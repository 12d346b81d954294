"""Real server processes for tests: start, wait until they answer, stop."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fhir_fax.embedded import free_port

from helpers import ADMIN_ID, ADMIN_SECRET

CLI = [sys.executable, "-m", "fhir_fax.cli"]


class ServerProcess:
    """A child process serving HTTP on a free loopback port, with its output in a log file."""

    def __init__(
        self,
        command: list[str],
        *,
        log_dir: Path,
        ready_path: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"server-{self.port}.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_FAX_")}
        environment.update({k: v.replace("{port}", str(self.port)) for k, v in (env or {}).items()})
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [part.replace("{port}", str(self.port)) for part in command],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=cwd,
            )
        self.wait_ready(ready_path)

    def wait_ready(self, path: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}{path}", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready:\n{self.log.read_text()}")

    def stop(self, sig: int = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


class FaxServer(ServerProcess):
    """``fhir-fax serve`` with its own data directory and the tests' bootstrap admin client."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self._headers: dict[str, str] | None = None
        data_dir.mkdir(parents=True, exist_ok=True)
        command = [*CLI, "serve", "--port", "{port}", "--data-dir", str(data_dir), *extra]
        admin = {"FHIR_FAX_BOOTSTRAP_CLIENT_ID": ADMIN_ID, "FHIR_FAX_BOOTSTRAP_CLIENT_SECRET": ADMIN_SECRET}
        super().__init__(command, log_dir=data_dir.parent, ready_path="/healthz", env={**admin, **(env or {})})

    def token(self) -> str:
        form = {"grant_type": "client_credentials", "client_id": ADMIN_ID, "client_secret": ADMIN_SECRET}
        response = httpx.post(f"{self.url}/oauth/token", data=form, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    @property
    def headers(self) -> dict[str, str]:
        """An admin bearer token for this server (fetched once; tokens last 15 minutes)."""
        if self._headers is None:
            self._headers = {"authorization": f"Bearer {self.token()}"}
        return self._headers

    def database_pid(self) -> int:
        import json

        return json.loads((self.data_dir / "db.json").read_text())["pid"]
