"""A rest-hook endpoint for tests: records every POST it gets (one JSON line each) and can answer 503.

    python hook_listener.py PORT LOG [FAIL_FILE]

Each request is written to ``LOG`` as ``{"path", "headers", "body", "status"}``. While ``FAIL_FILE`` exists
the listener answers 503 (the attempt is still recorded, with its status), so a test can take the endpoint
"down" and bring it back. ``GET /healthz`` answers 200 when it is ready.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LOCK = threading.Lock()


def main() -> None:
    port, log = int(sys.argv[1]), Path(sys.argv[2])
    fail_file = Path(sys.argv[3]) if len(sys.argv) > 3 else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: senders reuse their connections

        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", errors="replace")
            status = 503 if fail_file is not None and fail_file.exists() else 200
            record = {"path": self.path, "headers": dict(self.headers.items()), "body": body, "status": status}
            with LOCK, log.open("a") as out:
                out.write(json.dumps(record) + "\n")
            answer = b"down for maintenance" if status == 503 else b""
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
