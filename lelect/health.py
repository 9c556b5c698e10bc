"""Heartbeat publishing and failure detection."""

from __future__ import annotations

import os
import socket
import threading
import time

from lelect.backends.base import Backend, Candidate, Heartbeat
from lelect.errors import LelectError


def load_figures() -> dict[str, float | int]:
    """cpu %, memory %, 1-minute load, disk % of /, network bytes (psutil, imported here)."""
    import psutil

    net = psutil.net_io_counters()
    return {
        "cpu_percent": float(psutil.cpu_percent(interval=None)),
        "memory_percent": float(psutil.virtual_memory().percent),
        "load1": float(os.getloadavg()[0]),
        "disk_percent": float(psutil.disk_usage("/").percent),
        "net_bytes_sent": int(net.bytes_sent) if net else 0,
        "net_bytes_recv": int(net.bytes_recv) if net else 0,
    }


class HeartbeatPublisher:
    """Publishes a heartbeat for ``candidate`` every ``interval`` in a daemon thread."""

    def __init__(
        self,
        backend: Backend,
        election: str,
        candidate: Candidate,
        *,
        interval: float = 2.0,
        forget_after: float = 3600.0,
        role: str = "follower",
    ) -> None:
        self.backend = backend
        self.election = election
        self.candidate = candidate
        self.interval = interval
        self.forget_after = forget_after
        self.role = role
        self.term: int | None = None
        self.seq = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def set_role(self, role: str, term: int | None) -> None:
        self.role, self.term = role, term
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
        self._thread.start()

    def stop(self, remove: bool = True) -> None:
        """Stop publishing; a clean exit removes the member at once."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if remove:
            try:
                self.backend.remove_member(self.election, self.candidate.node_id)
            except (LelectError, OSError):
                pass

    def heartbeat(self) -> Heartbeat:
        self.seq += 1
        try:
            figures = load_figures()
        except Exception:  # noqa: BLE001 - figures are best effort; the beat is not
            figures = {}
        return Heartbeat(
            election=self.election,
            node_id=self.candidate.node_id,
            host=self.candidate.host or socket.gethostname(),
            pid=self.candidate.pid or os.getpid(),
            role=self.role,
            term=self.term,
            seq=self.seq,
            time=time.time(),
            **figures,
        )

    def publish_once(self) -> None:
        self.backend.publish(self.heartbeat(), self.forget_after)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish_once()
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - a missed beat must not kill the campaign
                self.last_error = str(exc)
            self._wake.wait(self.interval)
            self._wake.clear()
