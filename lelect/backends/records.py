"""Records that cross the backend boundary, and the one codec every backend stores
member records with. Standard library only: the keeper imports this module too.
"""

from __future__ import annotations

import enum
import json
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

#: Arrival stamps kept per member (the phi detector's history).
MAX_ARRIVALS = 20
#: How long a dead member stays listed unless its record says otherwise.
DEFAULT_FORGET_AFTER = 3600.0
#: Leaderships kept in an election's history unless the URL says ``?history=N``.
DEFAULT_HISTORY = 1000
#: Once-per slots remembered per election (the newest).
MAX_SLOTS = 1000

#: How a leadership ended (``HistoryEntry.outcome``).
RUNNING, EXITED, RESIGNED, LOST, STOPPED, VANISHED = (
    "running", "exited", "resigned", "lost", "stopped", "vanished"
)
OUTCOMES = (RUNNING, EXITED, RESIGNED, LOST, STOPPED, VANISHED)
#: The history's reason for a leadership the job's keeper handed back (issue: crash).
HAND_BACK_REASON = "lelect died; its keeper stopped the job and handed the leadership back"


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

    @property
    def identity(self) -> tuple[str, int]:
        """What makes two looks at the leader the same leadership."""
        return (self.node_id, self.term)


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
    forget_after: float = DEFAULT_FORGET_AFTER


@dataclass(frozen=True)
class Members:
    """Members of one election and the backend's current time, to judge arrival ages by."""

    election: str
    now: float
    records: tuple[MemberRecord, ...] = field(default_factory=tuple)

    def __iter__(self):
        """``for record in election.members()``: the records."""
        return iter(self.records)


class ResignAnswer(enum.Enum):
    """What a resign request came to. Only ASKED is true, so ``if backend.request_resign(...)``
    reads as before."""

    ASKED = "asked"
    #: Nobody leads, or not the term named.
    NOT_LEADING = "not leading"
    #: The leader is not a lelect campaign (an ``etcdctl elect``, a kazoo Election):
    #: nothing of it listens for requests.
    CANNOT_ASK = "cannot ask"

    def __bool__(self) -> bool:
        return self is ResignAnswer.ASKED


# -- the member record codec: one shape on every backend ---------------------------------


def encode_member(heartbeat: Heartbeat, arrivals: list[float] | tuple[float, ...] = (),
                  forget_after: float = DEFAULT_FORGET_AFTER) -> bytes:
    """A member record as stored: the heartbeat, the arrival stamps so far (a backend
    that stamps arrivals elsewhere passes none) and how long it stays listed when dead."""
    record = {
        "heartbeat": heartbeat.to_dict(),
        "arrivals": list(arrivals)[-MAX_ARRIVALS:],
        "forget_after": forget_after,
    }
    return json.dumps(record, separators=(",", ":")).encode("utf-8")


def stored_arrivals(data: bytes | str | None) -> list[float]:
    """The arrival stamps inside a stored record ([] for garbage)."""
    try:
        record = json.loads(data or b"")
        return [float(stamp) for stamp in record["arrivals"]]
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        return []


def decode_member(node_id: str, data: bytes | str | None,
                  arrivals: list[float] | tuple[float, ...] | None = None) -> MemberRecord:
    """A stored member record; garbage becomes a record with ``error`` set, never an
    exception. ``arrivals`` (backend-stamped) are added to those stored in the record."""
    extra = [float(t) for t in (arrivals or ())]
    try:
        record = json.loads(data or b"")
        if isinstance(record, dict) and "heartbeat" not in record and "node_id" in record:
            record = {"heartbeat": record}  # a bare heartbeat, as lelect 0.1 stored it
        heartbeat = Heartbeat.from_dict(record["heartbeat"])
        stamps = [*(float(t) for t in record.get("arrivals", [])), *extra]
        forget_after = float(record.get("forget_after", DEFAULT_FORGET_AFTER))
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
        detail = "no heartbeat stored" if not data else f"{type(exc).__name__}: {exc}"
        return MemberRecord(node_id, None, tuple(extra[-MAX_ARRIVALS:]),
                            error=f"unreadable member record ({detail})")
    return MemberRecord(node_id, heartbeat, tuple(stamps[-MAX_ARRIVALS:]), None, forget_after)


# -- leadership history -------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    """One leadership as the history keeps it. Times are epoch seconds by the backend's
    clock where it has one (the local clock otherwise)."""

    election: str
    term: int
    node_id: str
    host: str | None
    pid: int | None
    started: float | None
    ended: float | None = None
    outcome: str = RUNNING
    exit_status: int | None = None
    slot: str | None = None  # the once-per slot this leadership completed
    reason: str | None = None  # why it ended, in words, where that is known

    def to_json(self) -> dict[str, Any]:
        return {
            "election": self.election,
            "term": self.term,
            "node_id": self.node_id,
            "host": self.host,
            "pid": self.pid,
            "started": iso8601(self.started),
            "ended": iso8601(self.ended),
            "outcome": self.outcome,
            "exit_status": self.exit_status,
            "slot": self.slot,
            "reason": self.reason,
        }

    def encode(self) -> str:
        """The stored form (JSON); :meth:`decode` reads it back."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, data: bytes | str) -> HistoryEntry:
        """Raise ValueError on garbage (callers skip such entries)."""
        try:
            raw = json.loads(data)
            return cls(
                election=str(raw["election"]),
                term=int(raw["term"]),
                node_id=str(raw["node_id"]),
                host=None if raw.get("host") is None else str(raw["host"]),
                pid=None if raw.get("pid") is None else int(raw["pid"]),
                started=None if raw.get("started") is None else float(raw["started"]),
                ended=None if raw.get("ended") is None else float(raw["ended"]),
                outcome=str(raw.get("outcome", RUNNING)),
                exit_status=None if raw.get("exit_status") is None else int(raw["exit_status"]),
                slot=None if raw.get("slot") is None else str(raw["slot"]),
                reason=None if raw.get("reason") is None else str(raw["reason"]),
            )
        except (TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
            raise ValueError(f"unreadable history entry: {exc}") from None


# -- what a keeper needs to act for a backend ----------------------------------------------


@dataclass(frozen=True)
class LocalLock:
    """A leadership the job's keeper can win by itself (the embedded backend's flock):
    the supervisor hands this to the keeper, which takes the lock, settles the term and
    starts the job the moment it wins."""

    lock_path: str
    db_dir: str
    election: str
    node_id: str
    token: str
    host: str
    pid: int
    nowait: bool
    shared: bool = False  # the directory is shared by a group: files are made 0660


@dataclass(frozen=True)
class HandBack:
    """How a job's keeper releases a leadership by its token after lelect died and the
    job's whole group is gone: ``module`` (standard library only, under
    lelect.backends) has ``hand_back(params, budget, exit_status)``. ``params`` may hold
    credentials: it travels only over the keeper's private socket."""

    module: str
    params: dict[str, Any]
