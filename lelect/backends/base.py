"""The backend interface, shaped after etcd's concurrency.Election, plus heartbeats.

Every backend module implements :class:`Backend` and returns a :class:`Leadership`
from :meth:`Backend.campaign`. Records that cross the boundary are frozen dataclasses.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lelect.backends.urls import BackendURL
    from lelect.election import Election
    from lelect.supervisor import Keeper

# A leader counts its lease from the send time of the request that granted or
# renewed it, minus this drift (the Redis distlock rule).
def lease_drift(ttl: float) -> float:
    return 0.01 * ttl + 0.002


def iso8601(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Candidate:
    """Who campaigns: the node id is for people; backends use a per-campaign token."""

    node_id: str
    host: str
    pid: int | None

    @classmethod
    def local(cls, node_id: str | None = None) -> Candidate:
        host = socket.gethostname()
        pid = os.getpid()
        return cls(node_id=node_id or f"{host}:{pid}", host=host, pid=pid)


@dataclass(frozen=True)
class LeaderInfo:
    """Who leads an election now. ``since`` is wall-clock epoch seconds, for humans only."""

    node_id: str
    term: int
    since: float | None = None
    host: str | None = None
    pid: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "term": self.term,
            "since": iso8601(self.since),
            "host": self.host,
            "pid": self.pid,
        }


@dataclass(frozen=True)
class Heartbeat:
    """What each candidate (and ``health --publish``) writes every interval."""

    election: str
    node_id: str
    host: str
    pid: int
    role: str  # "leader" | "follower" | "observer"
    term: int | None
    seq: int
    time: float  # sender's wall clock, for humans; arrival stamps come from the backend
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    load1: float = 0.0
    disk_percent: float = 0.0
    net_bytes_sent: int = 0
    net_bytes_recv: int = 0
    interval: float | None = None  # the publisher's heartbeat interval, seconds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Heartbeat:
        """Raise ValueError/TypeError/KeyError on garbage; callers show it as such."""
        return cls(
            election=str(data["election"]),
            node_id=str(data["node_id"]),
            host=str(data["host"]),
            pid=int(data["pid"]),
            role=str(data["role"]),
            term=None if data.get("term") is None else int(data["term"]),
            seq=int(data["seq"]),
            time=float(data["time"]),
            cpu_percent=float(data.get("cpu_percent", 0.0)),
            memory_percent=float(data.get("memory_percent", 0.0)),
            load1=float(data.get("load1", 0.0)),
            disk_percent=float(data.get("disk_percent", 0.0)),
            net_bytes_sent=int(data.get("net_bytes_sent", 0)),
            net_bytes_recv=int(data.get("net_bytes_recv", 0)),
            interval=None if data.get("interval") is None else float(data["interval"]),
        )


@dataclass(frozen=True)
class MemberRecord:
    """One member as stored: its last heartbeat (None if the record is garbage) and the
    last ~20 arrival times as the backend stamped them (backend clock, seconds)."""

    node_id: str
    heartbeat: Heartbeat | None
    arrivals: tuple[float, ...]
    error: str | None = None  # why the record could not be read, when heartbeat is None


@dataclass(frozen=True)
class Members:
    """Members of one election and the backend's current time, to judge arrival ages by."""

    election: str
    now: float
    records: tuple[MemberRecord, ...] = field(default_factory=tuple)


MAX_ARRIVALS = 20


class Leadership:
    """A won election. Backends keep ``lease_deadline`` (monotonic) current and set
    ``lost`` when the leadership is gone; ``resign_requested`` when asked to step down.

    A file-backend leadership has no lease (``lease_deadline`` is None): it is held
    for as long as the keeper holds the flock.
    """

    def __init__(
        self,
        backend: Backend,
        election: str,
        candidate: Candidate,
        term: int,
        token: str,
        lease_deadline: float | None = None,
    ) -> None:
        self.backend = backend
        self.election = election
        self.candidate = candidate
        self.term = term
        self.token = token
        self.lost = threading.Event()
        self.lost_reason: str | None = None
        self.resign_requested = threading.Event()
        self.released = False
        self._lease_deadline = lease_deadline
        registry = getattr(backend, "leaderships", None)
        if registry is not None:
            registry.add(self)
        self._subscribers: list[Callable[[str], None]] = []
        self._changed = threading.Condition()
        self._watching = False
        if lease_deadline is not None:
            self._watch_lease()

    @property
    def node_id(self) -> str:
        return self.candidate.node_id

    @property
    def lease_deadline(self) -> float | None:
        return self._lease_deadline

    def on_deadline(self, callback: Callable[[float], None]) -> None:
        """Call ``callback(deadline)`` after every successful renew (a :meth:`subscribe`
        to "deadline" only)."""

        def on_change(kind: str) -> None:
            if kind == "deadline" and self._lease_deadline is not None:
                callback(self._lease_deadline)

        self.subscribe(on_change)

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(kind)`` with "deadline", "lost" or "resign" on every change."""
        self._subscribers.append(callback)

    def _notify(self, kind: str) -> None:
        for callback in list(self._subscribers):
            callback(kind)
        with self._changed:
            self._changed.notify_all()

    def set_deadline(self, deadline: float) -> None:
        """Backends call this after each successful renew (deadline from the send time)."""
        self._lease_deadline = deadline
        self._watch_lease()
        self._notify("deadline")

    def _watch_lease(self) -> None:
        """Mark the leadership lost the moment its lease runs out without a renew, even
        while the backend's renew call is still stuck (a server that answers every step
        of a reconnect just in time can keep it past the deadline)."""
        with self._changed:
            if self._watching:
                return
            self._watching = True
        threading.Thread(target=self._lease_watch, name=f"lelect-lease:{self.election}",
                         daemon=True).start()

    #: The lease watch steps in this long after the deadline, so a backend that is not
    #: stuck reports the loss first, with its own reason.
    LEASE_WATCH_SLACK = 0.02

    def _lease_watch(self) -> None:
        with self._changed:
            while not (self.released or self.lost.is_set()):
                deadline = self._lease_deadline
                if deadline is None:
                    self._changed.wait()
                    continue
                left = deadline + self.LEASE_WATCH_SLACK - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            else:
                return
        self.mark_lost("the lease expired before a renew was answered")

    def mark_lost(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()
            self._notify("lost")

    def mark_resign_requested(self) -> None:
        if not self.resign_requested.is_set():
            self.resign_requested.set()
            self._notify("resign")

    def wait_changed(self, timeout: float | None) -> None:
        """Block until a renew, loss or resign request, or ``timeout``."""
        with self._changed:
            self._changed.wait(timeout)

    def is_leader(self) -> bool:
        if self.lost.is_set() or self.released:
            return False
        deadline = self._lease_deadline
        return deadline is None or time.monotonic() < deadline

    def release(self) -> None:
        """Step down at once (idempotent)."""
        if not self.released:
            self.released = True
            with self._changed:
                self._changed.notify_all()  # the lease watch can stop
            self.backend.resign(self)

    def __enter__(self) -> Leadership:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Leadership {self.election!r} term={self.term} node={self.node_id!r}>"


class Backend(ABC):
    """A place elections live. Construct with :func:`lelect.connect`."""

    scheme: str = ""
    #: True when leadership is a lease that must be renewed (redis, zookeeper).
    lease_based: bool = True
    #: Default lease length in seconds for lease backends.
    default_ttl: float = 10.0

    def __init__(self, url: BackendURL) -> None:
        self.url = url
        #: Leaderships won and not yet released, so an interrupted caller can let go.
        self.leaderships: weakref.WeakSet[Leadership] = weakref.WeakSet()

    @property
    def display_url(self) -> str:
        """The URL with any password masked: safe for logs and the job's environment."""
        return self.url.masked

    def election(self, name: str, node_id: str | None = None) -> Election:
        from lelect.election import Election

        return Election(self, name, node_id=node_id)

    def renew_interval(self, ttl: float) -> float:
        return ttl / 3

    @abstractmethod
    def campaign(
        self,
        election: str,
        candidate: Candidate,
        *,
        timeout: float | None = None,
        no_wait: bool = False,
        ttl: float | None = None,
        keeper: Keeper | None = None,
    ) -> Leadership:
        """Block until ``candidate`` leads ``election``; return the leadership.

        Raises ElectionBusy (``no_wait`` and somebody leads), CampaignTimeout,
        BackendUnavailable. ``timeout`` also bounds connecting. ``keeper`` is the
        job's keeper when a job is guarded; a backend may hand it work (the file
        backend lets it hold the flock and start the job the moment it wins).
        """

    @abstractmethod
    def resign(self, leadership: Leadership) -> None:
        """Release the election at once if ``leadership`` still holds it."""

    @abstractmethod
    def leader(self, election: str) -> LeaderInfo | None:
        """Who leads now, or None."""

    def observe(
        self, election: str, stop: threading.Event | None = None
    ) -> Iterator[LeaderInfo | None]:
        """Yield the leader now and again on every change, until ``stop`` is set."""
        raise NotImplementedError

    @abstractmethod
    def request_resign(self, election: str, term: int | None = None) -> bool:
        """Ask the leader (only of ``term`` when given) to step down. False if nobody
        (or not that term) leads."""

    @abstractmethod
    def publish(self, heartbeat: Heartbeat, ttl: float) -> None:
        """Store ``heartbeat`` with a backend-stamped arrival time; ``ttl`` is how long
        a dead member stays listed (``--forget-after``)."""

    @abstractmethod
    def remove_member(self, election: str, node_id: str) -> None:
        """A clean exit: forget the member at once."""

    @abstractmethod
    def members(self, election: str) -> Members:
        """Member records and the backend's current time."""

    @abstractmethod
    def elections(self) -> list[str]:
        """Names of the elections this backend knows (with a leader or members)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
