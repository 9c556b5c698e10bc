"""Leadership changes, logged to stderr as text or JSON lines."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import Any


class StderrLog:
    def __init__(self, fmt: str, election: str, quiet: bool = False) -> None:
        self.fmt = fmt
        self.election = election
        self.quiet = quiet
        self.node_id: str | None = None

    def __call__(self, event: str, message: str, **fields: Any) -> None:
        if self.quiet and event not in ("lost", "execfail", "keeper-gone"):
            return
        if self.fmt == "json":
            record = {
                "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "event": event,
                "election": self.election,
                "message": message,
                **fields,
            }
            line = json.dumps(record, separators=(",", ":"))
        else:
            stamp = time.strftime("%H:%M:%S")
            line = f"lelect[{stamp}]: {message}"
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
