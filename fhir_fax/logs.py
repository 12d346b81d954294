"""Logging set-up: readable lines by default, one JSON object per line with FHIR_FAX_LOG_FORMAT=json.

Fax events carry ``fax`` and ``attempt`` as fields (``extra=``), so a log search for one fax finds
every step of every attempt.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

FIELDS = ("fax", "attempt", "status", "source", "worker", "code")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({name: getattr(record, name) for name in FIELDS if hasattr(record, name)})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(log_format: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
