"""Leadership changes, logged to stderr as text or JSON lines."""

from __future__ import annotations

import sys
import time

from lelect.names import printable

TYPE_CHECKING = False  # not typing's (~2 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import Any

#: What ``--quiet`` still logs: losses and failures.
LOUD = {"lost", "execfail", "keeper-gone", "keeper-error", "duplicate-id"}
#: Shown in JSON only (the text log's "elected" line says as much).
JSON_ONLY = {"job-started"}


#: The log of the command running (the CLI writes its last error in the log's format).
ACTIVE: StderrLog | None = None


class StderrLog:
    def __init__(self, fmt: str, election: str, quiet: bool = False) -> None:
        global ACTIVE
        self.fmt = fmt
        self.election = election
        self.quiet = quiet
        self.node_id: str | None = None
        ACTIVE = self

    def __call__(self, event: str, message: str, **fields: Any) -> None:
        if self.quiet and event not in LOUD:
            return
        if self.fmt != "json" and event in JSON_ONLY:
            return
        self._write(self.format(event, message, **fields))

    def format(self, event: str, message: str, **fields: Any) -> str:
        if self.fmt == "json":
            import json  # the JSON log only: not on every start
            from datetime import datetime, timezone

            record = {
                "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "event": event,
                "election": self.election,
                "node_id": self.node_id,
                "message": message,
                **fields,
            }
            return json.dumps(record, separators=(",", ":"))
        return f"lelect[{time.strftime('%H:%M:%S')}]: {printable(message)}"

    def template(self, event: str, message: str, **fields: Any) -> str | None:
        """The line for ``event`` with ``{term}``, ``{hms}`` and ``{ts}`` left for the job's
        keeper to fill in as it starts the job (None: this event is not shown)."""
        if self.quiet and event not in LOUD:
            return None
        if self.fmt == "json":
            import json

            line = self.format(event, message, **fields)
            record = json.loads(line)
            record["ts"] = "{ts}"
            return (json.dumps(record, separators=(",", ":")).replace('"{term}"', "{term}")
                    .replace('"{seat}"', "{seat}"))
        return f"lelect[{{hms}}]: {printable(message)}"

    @staticmethod
    def _write(line: str) -> None:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
