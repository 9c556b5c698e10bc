"""Publishing heartbeats: every candidate writes a :class:`~lelect.backends.base.Heartbeat`
each interval from a daemon thread, with this host's load (:mod:`lelect.hostload`).

Judging them is :mod:`lelect.health`'s (which re-exports this module's names); a
campaign publishes and never judges, so it imports only this module.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

from lelect import hostload
from lelect.backends.base import Backend, Candidate, Heartbeat
from lelect.backends.records import DEFAULT_FORGET_AFTER
from lelect.errors import LelectError

DEFAULT_HEARTBEAT_INTERVAL = 2.0


#: CPU use since the previous load_figures() without a ``cpu`` of its own.
_cpu_percent: hostload.CpuPercent | None = None


def load_figures(cpu: hostload.CpuPercent | None = None) -> dict[str, float | int]:
    """cpu % (since ``cpu``'s previous look; default: since the previous call),
    memory %, 1-minute load, disk % of /, network bytes (:mod:`lelect.hostload`)."""
    global _cpu_percent
    if cpu is None:
        if _cpu_percent is None:
            _cpu_percent = hostload.CpuPercent()
        cpu = _cpu_percent
    return hostload.figures(cpu)


def gone_from_this_host(beat: Heartbeat, host: str) -> bool:
    """Whether ``beat`` came from a process of this host that is gone: no process has its
    pid now, the process is a zombie, or it started after the beat (the pid was reused).
    Such a member is a dead candidate whose record has not aged out, not a live one."""
    if beat.host != host or beat.pid is None:
        return False
    try:
        found = hostload.process_state(beat.pid)
    except OSError:  # not ours to look at: assume it lives
        return False
    if found is None:
        return True
    state, started = found
    return state == "Z" or started > beat.time + 1.0


class HeartbeatPublisher:
    """Publishes a heartbeat for ``candidate`` every ``interval`` in a daemon thread."""

    def __init__(
        self,
        backend: Backend,
        election: str,
        candidate: Candidate,
        *,
        interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        forget_after: float = DEFAULT_FORGET_AFTER,
        role: str = "follower",
        on_duplicate: Callable[[Heartbeat], None] | None = None,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self.backend = backend
        #: Called once if another live member already publishes under our node id.
        self.on_duplicate = on_duplicate
        #: Called after every beat, in the publishing thread (its errors are ignored).
        self.on_beat = on_beat
        self.seat: int | None = None
        self.election = election
        self.candidate = candidate
        self.interval = interval
        self.forget_after = forget_after
        self.role = role
        self.term: int | None = None
        self.seq = 0
        self.published = False
        self.last_error: str | None = None
        self.last_exception: Exception | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._begun = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu: hostload.CpuPercent | None = None

    def set_role(self, role: str, term: int | None, seat: int | None = None) -> None:
        """Change the role (and term, and seat) and publish it at once."""
        self.role, self.term, self.seat = role, term, seat
        self._wake.set()

    def start(self, hold: bool = False) -> None:
        """Start publishing; ``hold``: not before :meth:`begin` (or :meth:`stop`)."""
        if not hold:
            self._begun.set()
        try:  # cpu % compares with the previous look: take one now for the first beat
            self._cpu = hostload.CpuPercent()
        except Exception:  # noqa: BLE001 - figures are best effort
            pass
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
        self._thread.start()

    def stop(self, remove: bool = True, budget: float = 2.0) -> None:
        """Stop publishing; a clean exit removes the member at once (if it ever got
        published, and the last beat went through: a backend in trouble is not waited
        for again). Everything within ``budget`` seconds: an exit never waits on a
        server that cannot answer."""
        end = time.monotonic() + budget
        self._stop.set()
        self._wake.set()
        self._begun.set()
        if not (remove and self.published):
            return  # nothing to take back: the thread is not waited for
        if self._thread is not None:
            self._thread.join(timeout=max(end - time.monotonic(), 0.0))
        if self.last_error is not None:
            return

        def forget() -> None:
            try:
                self.backend.remove_member(self.election, self.candidate.node_id)
            except (LelectError, OSError):
                pass

        remover = threading.Thread(target=forget, name="heartbeat-removal", daemon=True)
        remover.start()
        remover.join(timeout=max(end - time.monotonic(), 0.0))

    def heartbeat(self) -> Heartbeat:
        self.seq += 1
        try:
            figures = load_figures(self._cpu)
        except Exception:  # noqa: BLE001 - figures are best effort; the beat is not
            figures = {}
        return Heartbeat(
            election=self.election,
            node_id=self.candidate.node_id,
            host=self.candidate.host or socket.gethostname(),
            pid=self.candidate.pid or os.getpid(),
            role=self.role,
            term=self.term,
            seat=self.seat,
            seq=self.seq,
            time=time.time(),
            interval=self.interval,
            **figures,
        )

    def publish_once(self) -> None:
        self.backend.publish(self.heartbeat(), self.forget_after)
        self.published = True

    def _check_duplicate(self) -> None:
        """Two candidates with one node id would show as one member: say so."""
        try:
            members = self.backend.members(self.election)
        except Exception:  # noqa: BLE001 - a warning only
            return
        for record in members.records:
            beat = record.heartbeat
            if record.node_id != self.candidate.node_id or beat is None or not record.arrivals:
                continue
            if (beat.host, beat.pid) == (self.candidate.host, self.candidate.pid):
                continue
            if gone_from_this_host(beat, self.candidate.host or socket.gethostname()):
                continue
            interval = beat.interval or self.interval
            if members.now - record.arrivals[-1] < 3 * interval and self.on_duplicate:
                self.on_duplicate(beat)

    def begin(self) -> None:
        """The first beat may go (after ``start(hold=True)``); idempotent."""
        self._begun.set()

    def _run(self) -> None:
        self._begun.wait()
        if self._stop.is_set():
            return
        if self.on_duplicate is not None:
            self._check_duplicate()
        while not self._stop.is_set():
            try:
                self.publish_once()
                self.last_error = self.last_exception = None
            except Exception as exc:  # noqa: BLE001 - a missed beat must not kill the campaign
                self.last_error, self.last_exception = str(exc), exc
            if self.on_beat is not None:
                try:
                    self.on_beat()
                except Exception:  # noqa: BLE001 - a refresh is advisory; the next one retries
                    pass
            self._wake.wait(self.interval)
            self._wake.clear()
