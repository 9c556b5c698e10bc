"""Records that cross the backend boundary, and the one codec every backend stores
member records with. Standard library only: the keeper imports this module too.
"""

from __future__ import annotations

import enum
import math
import os
import re
import socket

from lelect.frozen import Record, asdict, field

TYPE_CHECKING = False  # not typing's (~2 ms of every start): annotations only
if TYPE_CHECKING:
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
from lelect.backends.words import (  # noqa: E402,F401 - the one vocabulary, re-exported
    EXITED,
    HAND_BACK_REASON,
    LOST,
    OUTCOMES,
    RESIGNED,
    RUNNING,
    STOPPED,
    VANISHED,
    VANISHED_REASON,
)


def iso8601(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    try:
        from datetime import datetime, timezone  # for people: not on every start

        return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError, OSError):
        return None  # a time no calendar has (another writer's garbage)


# -- reading what others wrote ------------------------------------------------------------
# Records come from every member of an election (any group member, any client of an
# open ZooKeeper): each is data, checked before it is believed.

#: The largest record lelect reads; lelect's own are well under 2 KiB.
MAX_RECORD = 64 * 1024
#: The deepest nesting of arrays and objects lelect reads (its own records have 2).
MAX_DEPTH = 8
#: Whole numbers in records (terms, pids, counters) stay within a signed 64-bit integer.
MAX_WHOLE = 2**63 - 1


class BadRecord(ValueError):
    """A record that is not one lelect can read (too big, too deep, not finite, garbage)."""


def _refuse_constant(name: str) -> float:
    raise BadRecord(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRecord(f"non-finite number {text[:20]}")
    return value


def _whole_int(text: str) -> int:
    if len(text.lstrip("-")) > 19:
        raise BadRecord(f"number out of range ({len(text)} digits)")
    return int(text)


def load_record(data: bytes | str | None) -> Any:
    """JSON ``data`` as Python values, or BadRecord: at most :data:`MAX_RECORD` bytes and
    :data:`MAX_DEPTH` levels deep, numbers finite and within 64 bits. Never raises
    anything else, whatever the bytes."""
    if not data:
        raise BadRecord("empty record")
    if len(data) > MAX_RECORD:
        raise BadRecord(f"record of {len(data)} bytes (at most {MAX_RECORD})")
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else str(data)
        _check_depth(text)
        import json  # only where a record is read or written: not on every start
        return json.loads(text, parse_float=_finite_float, parse_int=_whole_int,
                          parse_constant=_refuse_constant)
    except BadRecord:
        raise
    except (ValueError, TypeError, RecursionError, UnicodeDecodeError) as exc:
        raise BadRecord(f"{type(exc).__name__}: {str(exc)[:80]}") from None


# Compiled on first use (re's own cache), not on every start.
_STRINGS = r'"(?:[^"\\]|\\.)*"'
_BRACKETS = r"[\[\]{}]"


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before the parser recurses into it."""
    depth = 0
    for bracket in re.findall(_BRACKETS, re.sub(_STRINGS, "", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_DEPTH:
            raise BadRecord(f"nested deeper than {MAX_DEPTH} levels")


def whole(value: Any, what: str, minimum: int = -MAX_WHOLE, maximum: int = MAX_WHOLE) -> int:
    """A whole number from a record (an int, or its decimal text), within range."""
    if isinstance(value, bool):
        raise BadRecord(f"{what} is not a number")
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in "+-" else text
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 19):
            raise BadRecord(f"{what} is not a whole number")
        value = int(text)
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or not minimum <= value <= maximum:
        raise BadRecord(f"{what} is not a whole number from {minimum} to {maximum}")
    return value


def finite(value: Any, what: str) -> float:
    """A finite number from a record (an int, a float, or its decimal text)."""
    if isinstance(value, bool):
        raise BadRecord(f"{what} is not a number")
    if isinstance(value, str):
        if len(value) > 40 or not value.isascii():
            raise BadRecord(f"{what} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise BadRecord(f"{what} is not a number") from None
    if not math.isfinite(number):
        raise BadRecord(f"{what} is not a finite number")
    return number


def text_field(value: Any, what: str, limit: int = 1024) -> str:
    """A string from a record, at most ``limit`` characters."""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise BadRecord(f"{what} is not text")
    text = str(value)
    if len(text) > limit:
        raise BadRecord(f"{what} is longer than {limit} characters")
    return text


class Candidate(Record):
    """Who campaigns: the node id is for people; backends use a per-campaign token."""

    node_id: str
    host: str
    pid: int | None

    @classmethod
    def local(cls, node_id: str | None = None) -> Candidate:
        host = socket.gethostname()
        pid = os.getpid()
        return cls(node_id=node_id or f"{host}:{pid}", host=host, pid=pid)


class LeaderInfo(Record):
    """Who leads an election now. ``since`` is wall-clock epoch seconds, for humans only.
    ``value`` is what this leadership proclaimed (``campaign --value``, ``proclaim``):
    backends leave it None, the library fills it in (:func:`lelect.backends.base.with_value`)."""

    node_id: str
    term: int
    since: float | None = None
    host: str | None = None
    pid: int | None = None
    value: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "term": self.term,
            "since": iso8601(self.since),
            "host": self.host,
            "pid": self.pid,
            "value": self.value,
        }

    @classmethod
    def from_stored(cls, election: str, node_id: Any, term: Any, since: Any = None,
                    host: Any = None, pid: Any = None) -> LeaderInfo | None:
        """A leader record as a backend stored it (``since`` in seconds), checked like
        any record another member wrote: None (and one warning) if it is garbage."""
        try:
            return cls(
                node_id=text_field(node_id, "node_id"),
                term=whole(term, "term", 0),
                since=None if since in (None, "") else finite(since, "since"),
                host=None if host in (None, "") else text_field(host, "host"),
                pid=None if pid in (None, "") else whole(pid, "pid", 0),
            )
        except BadRecord as exc:
            warn_once(f"unreadable leader record of election {_name(election)} by node"
                      f" {_name(node_id)} ({exc})")
            return None

    @property
    def identity(self) -> tuple[str, int]:
        """What makes two looks at the leader the same leadership."""
        return (self.node_id, self.term)


class Heartbeat(Record):
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
    seat: int | None = None  # the seat a leader holds, in an election with seats

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Heartbeat:
        """Raise BadRecord (a ValueError) on garbage; callers show it as such."""
        if not isinstance(data, dict):
            raise BadRecord("the heartbeat is not an object")
        try:
            return cls(
                election=text_field(data["election"], "election"),
                node_id=text_field(data["node_id"], "node_id"),
                host=text_field(data["host"], "host"),
                pid=whole(data["pid"], "pid", 0),
                role=text_field(data["role"], "role", 16),
                term=None if data.get("term") is None else whole(data["term"], "term"),
                seq=whole(data["seq"], "seq"),
                time=finite(data["time"], "time"),
                cpu_percent=finite(data.get("cpu_percent", 0.0), "cpu_percent"),
                memory_percent=finite(data.get("memory_percent", 0.0), "memory_percent"),
                load1=finite(data.get("load1", 0.0), "load1"),
                disk_percent=finite(data.get("disk_percent", 0.0), "disk_percent"),
                net_bytes_sent=whole(data.get("net_bytes_sent", 0), "net_bytes_sent"),
                net_bytes_recv=whole(data.get("net_bytes_recv", 0), "net_bytes_recv"),
                interval=None if data.get("interval") is None
                else finite(data["interval"], "interval"),
                seat=None if data.get("seat") is None else whole(data["seat"], "seat", 0, 999),
            )
        except KeyError as exc:
            raise BadRecord(f"no {exc.args[0]} in the heartbeat") from None


class MemberRecord(Record):
    """One member as stored: its last heartbeat (None if the record is garbage) and the
    last ~20 arrival times as the backend stamped them (backend clock, seconds)."""

    node_id: str
    heartbeat: Heartbeat | None
    arrivals: tuple[float, ...]
    error: str | None = None  # why the record could not be read, when heartbeat is None
    forget_after: float = DEFAULT_FORGET_AFTER


class Members(Record):
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
    import json  # only where a record is read or written: not on every start
    return json.dumps(record, separators=(",", ":")).encode("utf-8")


def stored_arrivals(data: bytes | str | None) -> list[float]:
    """The arrival stamps inside a stored record ([] for garbage)."""
    try:
        return _arrivals(load_record(data).get("arrivals", []))
    except (BadRecord, AttributeError):
        return []


def _arrivals(stamps: Any) -> list[float]:
    if not isinstance(stamps, list):
        raise BadRecord("arrivals is not a list")
    return [finite(stamp, "an arrival") for stamp in stamps[-MAX_ARRIVALS:]]


def decode_member(node_id: str, data: bytes | str | None,
                  arrivals: list[float] | tuple[float, ...] | None = None) -> MemberRecord:
    """A stored member record; garbage becomes a record with ``error`` set, never an
    exception. ``arrivals`` (backend-stamped) are added to those stored in the record."""
    extra = [t for t in (arrivals or ()) if isinstance(t, (int, float)) and math.isfinite(t)]
    try:
        record = load_record(data)
        if not isinstance(record, dict):
            raise BadRecord("not an object")
        if "heartbeat" not in record and "node_id" in record:
            record = {"heartbeat": record}  # a bare heartbeat, as lelect 0.1 stored it
        if "heartbeat" not in record:
            raise BadRecord("no heartbeat in the record")
        heartbeat = Heartbeat.from_dict(record["heartbeat"])
        stamps = [*_arrivals(record.get("arrivals", [])), *extra]
        forget_after = finite(record.get("forget_after", DEFAULT_FORGET_AFTER), "forget_after")
    except BadRecord as exc:
        detail = "no heartbeat stored" if not data else str(exc)
        return MemberRecord(node_id, None, tuple(extra[-MAX_ARRIVALS:]),
                            error=f"unreadable member record ({detail})")
    return MemberRecord(node_id, heartbeat, tuple(stamps[-MAX_ARRIVALS:]), None, forget_after)


# -- leadership history -------------------------------------------------------------------


class HistoryEntry(Record):
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

    @property
    def seat(self) -> int | None:
        """The seat this leadership was, in an election with seats (its election is then
        ``NAME:seatS``)."""
        from lelect.names import split_part

        return split_part(self.election)[1]

    def to_json(self) -> dict[str, Any]:
        from lelect.names import split_part

        election, seat = split_part(self.election)
        return {
            "election": election,
            **({} if seat is None else {"seat": seat}),
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
        import json  # only where a record is read or written: not on every start
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, data: bytes | str, election: str | None = None) -> HistoryEntry:
        """Raise BadRecord (a ValueError) on garbage: callers skip such entries, and each
        is warned about once, naming its election (``election``, where the caller knows
        it) and node."""
        raw: Any = None
        try:
            raw = load_record(data)
            if not isinstance(raw, dict):
                raise BadRecord("not an object")

            def optional(key: str, read: Any, *args: Any) -> Any:
                return None if raw.get(key) is None else read(raw[key], key, *args)

            return cls(
                election=text_field(raw["election"], "election"),
                term=whole(raw["term"], "term", 0),
                node_id=text_field(raw["node_id"], "node_id"),
                host=optional("host", text_field),
                pid=optional("pid", whole, 0),
                started=optional("started", finite),
                ended=optional("ended", finite),
                outcome=text_field(raw.get("outcome", RUNNING), "outcome", 16),
                exit_status=optional("exit_status", whole),
                slot=optional("slot", text_field),
                reason=optional("reason", text_field),
            )
        except (BadRecord, KeyError) as exc:
            detail = f"no {exc.args[0]}" if isinstance(exc, KeyError) else str(exc)
            who = raw if isinstance(raw, dict) else _names_of(data)
            warn_once(f"skipped an unreadable history entry of election"
                      f" {_name(election or who.get('election'))} by node"
                      f" {_name(who.get('node_id'))} ({detail})")
            raise BadRecord(f"unreadable history entry: {detail}") from None


def _names_of(data: bytes | str) -> dict[str, Any]:
    """What a refused record says it is (for the warning only; nothing else trusts it)."""
    try:
        if len(data) > MAX_RECORD:
            return {}
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else str(data)
        _check_depth(text)
        import json  # only where a record is read or written: not on every start
        raw = json.loads(text)  # lenient: 1e999 and NaN parse here
        return raw if isinstance(raw, dict) else {}
    except (ValueError, TypeError, RecursionError):
        return {}


def _name(value: Any) -> str:
    from lelect.names import printable

    return f"'{printable(value, 64)}'" if isinstance(value, str) else "(unknown)"


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """One warning line (on lelect's logger; stderr unless the program says otherwise),
    once per text: a watch looking again and again repeats nothing."""
    if message in _warned or len(_warned) > 1000:
        return
    _warned.add(message)
    import logging

    logging.getLogger("lelect").warning("lelect: warning: %s", message)


# -- what a keeper needs to act for a backend ----------------------------------------------


class LocalLock(Record):
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
    seats: int = 1  # an election with seats: the keeper takes the first free one


class Ending(Record):
    """How a leadership ended, told to :meth:`Backend.resign` with the release itself:
    ``outcome`` (one of :data:`OUTCOMES`), the job's ``exit_status``, a ``reason`` for
    people, the once-per ``slot`` it ran for (marked done only for "exited" with
    status 0: :attr:`done_slot`), and when it ``ended`` if that was before the release
    (the embedded backend's keeper let go of the election as the job ended; None: now)."""

    outcome: str = EXITED
    exit_status: int | None = None
    reason: str | None = None
    slot: str | None = None
    ended: float | None = None

    @property
    def done_slot(self) -> str | None:
        return self.slot if self.outcome == EXITED and self.exit_status == 0 else None


class HandBack(Record):
    """How a job's keeper releases a leadership by its token after lelect died and the
    job's whole group is gone: ``module`` (standard library only, under
    lelect.backends) has ``hand_back(params, budget, exit_status)``. ``params`` may hold
    credentials: it travels only over the keeper's private socket. ``budget``: how long
    the keeper may try (after the lease there is nothing left to hand back); the keeper
    logs how it went (released, not ours, unreachable) naming ``election``."""

    module: str
    params: dict[str, Any]
    budget: float
    election: str
