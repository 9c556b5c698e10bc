"""Failure detection (phi accrual) over heartbeats, and watching a group.

Every candidate publishes a :class:`~lelect.backends.base.Heartbeat` each interval
(:class:`~lelect.heartbeats.HeartbeatPublisher`, re-exported here); the backend keeps
the last ~20 arrival times as *it* stamps them. :class:`PhiAccrualDetector` judges that history against the backend's
current time (``Members.now``), never the reader's clock, so a one-shot ``health``
needs no state of its own. :func:`check` turns one election into a
:class:`GroupHealth`; :class:`GroupWatch` yields them again and again for ``watch``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise

from lelect.backends.base import (
    Backend,
    Cancel,
    Heartbeat,
    LeaderInfo,
    Members,
    with_value,
)
from lelect.errors import LelectError, UsageError
from lelect.heartbeats import (  # noqa: F401 - re-exported: publishing is part of health's API
    DEFAULT_HEARTBEAT_INTERVAL,
    HeartbeatPublisher,
    gone_from_this_host,
    load_figures,
)
from lelect.names import printable, validate_election
from lelect.seats import Seat, holders_count, seat_holders
from lelect.status import HealthStatus

DEFAULT_THRESHOLD = 8.0

ALIVE, SUSPECT, DEAD = "alive", "suspect", "dead"
HEALTHY, DEGRADED, CRITICAL = "healthy", "degraded", "critical"
#: Nagios convention: OK, WARNING, CRITICAL.
EXIT_STATUS = {HEALTHY: HealthStatus.HEALTHY, DEGRADED: HealthStatus.DEGRADED,
               CRITICAL: HealthStatus.CRITICAL}


# -- failure detection ------------------------------------------------------------


def phi_value(elapsed: float, mean: float, std: float) -> float:
    """-log10 of the chance that a heartbeat is still to come after ``elapsed`` seconds,
    with inter-arrival times ~ Normal(mean, std). Uses the logistic approximation of
    the normal CDF that Akka's detector uses, written so it never overflows."""
    y = (elapsed - mean) / std
    z = y * (1.5976 + 0.070566 * y * y)
    # phi = -log10(1 - F(elapsed)) = log10(1 + e^z)
    if z > 30:
        return (z + math.log1p(math.exp(-z))) / math.log(10)
    return math.log1p(math.exp(z)) / math.log(10)


@dataclass(frozen=True)
class PhiAccrualDetector:
    """Phi accrual failure detector (Hayashibara et al.) over backend-stamped arrivals.

    - Inter-arrival times are taken as normal with the history's mean and standard
      deviation; until a member has ``min_samples`` arrivals, ``expected_interval`` (the
      publishing interval) stands in for the mean.
    - One lost heartbeat is tolerated: the mean is lengthened by one interval (Akka's
      "acceptable heartbeat pause"), and the deviation is at least half an interval,
      so a regular publisher is not condemned for one slow beat.
    - **dead** when phi >= ``threshold`` (default 8: the silence would be ordinary jitter
      once in 10^8); **suspect** when phi >= threshold / 4 (default 2: once in 100).
      With a steady interval I that is suspect after ~3.2 I of silence, dead after ~4.7 I.
    """

    threshold: float = DEFAULT_THRESHOLD
    expected_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    min_samples: int = 3
    min_std_ratio: float = 0.5
    min_std: float = 0.01

    def __post_init__(self) -> None:
        if not (self.threshold > 0 and math.isfinite(self.threshold)):
            raise UsageError(f"invalid threshold {self.threshold!r}: must be a number above 0")
        if not (self.expected_interval > 0 and math.isfinite(self.expected_interval)):
            raise UsageError(
                f"invalid heartbeat interval {self.expected_interval!r}: must be above 0"
            )

    @property
    def suspect_threshold(self) -> float:
        return self.threshold / 4

    def phi(self, arrivals: Sequence[float], now: float) -> float:
        """Suspicion that the member is gone; ``inf`` with no usable arrival at all."""
        stamps = sorted(t for t in arrivals if isinstance(t, (int, float)) and math.isfinite(t))
        if not stamps or not math.isfinite(now):
            return math.inf
        elapsed = max(0.0, now - stamps[-1])
        intervals = [b - a for a, b in pairwise(stamps) if b > a]
        if len(stamps) < self.min_samples or not intervals:
            mean, std = self.expected_interval, 0.0
        else:
            import statistics  # 2 MB (decimal, fractions): not for a campaign's heartbeats

            mean, std = statistics.fmean(intervals), statistics.pstdev(intervals)
        std = max(std, mean * self.min_std_ratio, self.min_std)
        return phi_value(elapsed, mean + mean, std)

    def status(self, phi: float) -> str:
        if phi >= self.threshold:
            return DEAD
        if phi >= self.suspect_threshold:
            return SUSPECT
        return ALIVE


# -- one election's health ------------------------------------------------------------


@dataclass(frozen=True)
class MemberHealth:
    """One member as judged now. ``role`` is the effective role: "leader" only for the
    member the backend names as leader, whatever its heartbeat claims."""

    node_id: str
    role: str  # "leader" | "follower" | "observer"
    status: str  # "alive" | "suspect" | "dead"
    phi: float
    last_seen_s: float | None  # backend time since its last heartbeat arrived
    heartbeat: Heartbeat | None  # None when the stored record is garbage
    error: str | None = None
    stale_leader: bool = False  # its heartbeat still says leader, but it no longer leads


@dataclass(frozen=True)
class GroupHealth:
    """An election's leader and members, judged at the backend's time ``now``.

    healthy: a leader and every member alive; degraded: a leader, some member suspect
    or dead; critical: no leader, or the leader's own heartbeats say it is dead.
    A leader that publishes no heartbeats (heartbeats off, a plain kazoo contender) is
    trusted as the backend reports it."""

    election: str
    status: str
    leader: LeaderInfo | None
    members: tuple[MemberHealth, ...]
    now: float
    #: An election with seats: every seat and its holder (``leader`` is the first holder).
    seats: tuple[Seat, ...] = ()

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.status]

    @property
    def leader_member(self) -> MemberHealth | None:
        return next((m for m in self.members if m.role == "leader"), None)

    def change_key(self) -> tuple:
        """What a viewer reports as a change: the leader and each member's role and
        status, not the figures that move on every beat."""
        leader = _identity(self.leader)
        return (
            self.status,
            leader,
            seats_identity(self.seats),
            tuple((m.node_id, m.role, m.status, m.error, m.stale_leader) for m in self.members),
        )


def judge_member(
    node_id: str,
    heartbeat: Heartbeat | None,
    arrivals: Sequence[float],
    now: float,
    leader: LeaderInfo | None,
    detector: PhiAccrualDetector,
    error: str | None = None,
    holders: Collection[str] = (),
) -> MemberHealth:
    if heartbeat is not None and heartbeat.interval and math.isfinite(heartbeat.interval) \
            and heartbeat.interval > 0 and heartbeat.interval != detector.expected_interval:
        # Judge a member with few beats by its own publishing interval.
        detector = replace(detector, expected_interval=heartbeat.interval)
    phi = detector.phi(arrivals, now)
    finite = [t for t in arrivals if isinstance(t, (int, float)) and math.isfinite(t)]
    last_seen = max(0.0, now - max(finite)) if finite and math.isfinite(now) else None
    claimed = heartbeat.role if heartbeat is not None else None
    if (leader is not None and node_id == leader.node_id) or node_id in holders:
        role = "leader"
    elif claimed == "observer":
        role = "observer"
    else:
        role = "follower"
    return MemberHealth(
        node_id=node_id,
        role=role,
        status=detector.status(phi),
        phi=phi,
        last_seen_s=last_seen,
        heartbeat=heartbeat,
        error=error,
        stale_leader=claimed == "leader" and role != "leader",
    )


def assess(
    members: Members, leader: LeaderInfo | None, detector: PhiAccrualDetector,
    seats: Sequence[Seat] = (),
) -> GroupHealth:
    """Judge every member of ``members`` and the group as a whole (pure: no I/O). With
    ``seats`` (an election with seats), every holder leads; a free seat degrades the
    group, no holder at all makes it critical."""
    held = [seat.holder for seat in seats if seat.holder is not None]
    if seats:
        leader = held[0] if held else None
    holders = frozenset(info.node_id for info in held)
    judged = tuple(
        judge_member(
            str(record.node_id),
            record.heartbeat,
            record.arrivals,
            members.now,
            leader,
            detector,
            record.error,
            holders,
        )
        for record in sorted(members.records, key=lambda r: str(r.node_id))
    )
    leading = next((m for m in judged if m.role == "leader"), None)
    if leader is None or (leading is not None and leading.status == DEAD):
        status = CRITICAL
    elif all(m.status == ALIVE for m in judged) and len(held) == len(seats):
        status = HEALTHY
    else:
        status = DEGRADED
    return GroupHealth(members.election, status, leader, judged, members.now, tuple(seats))


def check(backend: Backend, election: str, detector: PhiAccrualDetector) -> GroupHealth:
    """Read ``election``'s leader (or, with seats, its holders), each with its value, and
    members from ``backend`` and judge them."""
    count = holders_count(backend, election)
    if count > 1:
        return assess(backend.members(election), None, detector,
                      seat_holders(backend, election, count))
    leader = with_value(backend, election, backend.leader(election))
    return assess(backend.members(election), leader, detector)


def seats_identity(seats: Sequence[Seat]) -> tuple:
    """What makes two looks at an election's seats the same."""
    return tuple((s.seat, _identity(s.holder)) for s in seats)


def worst(groups: Sequence[GroupHealth]) -> str:
    """The worst group status (critical when there is no group at all: nothing leads)."""
    if not groups:
        return CRITICAL
    return max((g.status for g in groups), key=EXIT_STATUS.__getitem__)


def is_waiting(members: Members, node_id: str, detector: PhiAccrualDetector) -> bool:
    """``node_id`` is a live candidate waiting in line: its heartbeat says "follower"
    and is fresh (alive by ``detector``, at the backend's time)."""
    for record in members.records:
        beat = record.heartbeat
        if record.node_id != node_id or beat is None or beat.role != "follower":
            continue
        judged = judge_member(node_id, beat, record.arrivals, members.now, None, detector)
        if judged.status == ALIVE:
            return True
    return False


def list_elections(backend: Backend) -> list[str]:
    """The backend's elections, skipping names no election could have (stray records)."""
    names = []
    for name in backend.elections():
        try:
            names.append(validate_election(name))
        except UsageError:
            continue
    return names


# -- leadership changes -----------------------------------------------------------------


@dataclass(frozen=True)
class LeaderChange:
    """The leader of ``election`` changed from ``previous`` to ``current`` (or only its
    value: event "proclaimed")."""

    election: str
    previous: LeaderInfo | None
    current: LeaderInfo | None

    def environ(self, backend_url: str = "") -> dict[str, str]:
        """``LELECT_*`` variables for an on-change command (like keepalived's notify)."""

        def text(value: object) -> str:
            # Another writer's node id may hold NUL (no environment can) or escapes.
            return "" if value is None else printable(value)

        new, old = self.current, self.previous
        event = "elected" if new is not None else "vacant"
        if new is not None and old is not None and new.identity == old.identity:
            event = "proclaimed"
        return {
            "LELECT_ELECTION": self.election,
            "LELECT_EVENT": event,
            "LELECT_LEADER": text(new and new.node_id),
            "LELECT_NODE_ID": text(new and new.node_id),
            "LELECT_TERM": text(new and new.term),
            "LELECT_LEADER_HOST": text(new and new.host),
            "LELECT_LEADER_PID": text(new and new.pid),
            "LELECT_VALUE": text(new and new.value),
            "LELECT_PREVIOUS_LEADER": text(old and old.node_id),
            "LELECT_PREVIOUS_TERM": text(old and old.term),
            "LELECT_BACKEND": backend_url,
        }


def _identity(info: LeaderInfo | None) -> tuple[str, int, str | None] | None:
    """What a watcher reports as a change: another leadership, or a new value."""
    return None if info is None else (info.node_id, info.term, info.value)


def next_leader(
    backend: Backend, election: str, after_term: int, timeout: float | None
) -> LeaderInfo | None:
    """Wait up to ``timeout`` (None: for ever) for a leader of ``election`` with a term
    above ``after_term``; None if there is none by then."""
    stop = Cancel()  # wakes the observer's wait itself: no periodic look at it
    timer = threading.Timer(timeout if timeout is not None else 0, stop.set)
    timer.daemon = True
    if timeout is not None:
        timer.start()
    changes = backend.observe(election, stop)
    try:
        for info in changes:
            if info is not None and info.term > after_term:
                return _recorded(backend, election, info)
    finally:
        stop.set()
        timer.cancel()
        changes.close()
    info = backend.leader(election)
    return info if info is not None and info.term > after_term else None


#: How long a new leader seen without host and pid may take to record them.
RECORD_GRACE = 1.0


def _recorded(backend: Backend, election: str, info: LeaderInfo) -> LeaderInfo:
    """``info`` as ``leader()`` shows it once the leader recorded its host and pid: an
    observer can see a leader (etcd's first key, ZooKeeper's first node) moments before
    lelect's record of it. A leader that is not lelect's (etcdctl, kazoo) never records
    them: after RECORD_GRACE, ``info`` as it is."""
    if info.host is not None:
        return info
    give_up = time.monotonic() + RECORD_GRACE
    while time.monotonic() < give_up:
        time.sleep(0.05)  # bounded: a foreign leader gives no sign that nothing will come
        again = backend.leader(election)
        if again is None or again.identity != info.identity:
            break
        if again.host is not None:
            return again
    return info


@dataclass(frozen=True)
class Snapshot:
    """One look at the watched elections; ``error`` when the backend failed this time
    (``groups`` are then the last good ones)."""

    groups: tuple[GroupHealth, ...]
    changes: tuple[LeaderChange, ...] = ()
    error: str | None = None


#: Elections a watch follows with Backend.observe; beyond that only the interval
#: refresh sees changes (each observer may poll its backend on its own).
MAX_OBSERVED = 16


@dataclass
class GroupWatch:
    """Looks at elections (``names``, or every election of the backend) every
    ``interval`` and at once when a leader changes, via ``Backend.observe`` where the
    backend has it. Leader changes are reported once each, from fresh reads."""

    backend: Backend
    names: Sequence[str] = ()
    detector: PhiAccrualDetector = field(default_factory=PhiAccrualDetector)
    interval: float = 1.0
    #: A Cancel: setting it wakes the backends' observe waits at once (no periodic look).
    _stop: threading.Event = field(default_factory=Cancel, init=False)
    _wake: threading.Event = field(default_factory=threading.Event, init=False)
    _observed: set[str] = field(default_factory=set, init=False)
    _leaders: dict[str, tuple[LeaderInfo | None, tuple[str, int, str | None] | None]] = field(
        default_factory=dict, init=False
    )

    def elections(self) -> list[str]:
        if self.names:
            return list(dict.fromkeys(self.names))
        listed = list_elections(self.backend)
        # An election that just lost its last member and leader drops out of the list:
        # look once more so the change to "no leader" is reported.
        gone = [name for name, (info, _) in self._leaders.items()
                if info is not None and name not in listed]
        return sorted({*listed, *gone})

    def snapshot(self) -> Snapshot:
        """Look once (raises LelectError when the backend fails)."""
        groups = tuple(check(self.backend, name, self.detector) for name in self.elections())
        changes = []
        for group in groups:
            seen = self._leaders.get(group.election)
            identity = _identity(group.leader) if not group.seats else seats_identity(group.seats)
            if seen is not None and seen[1] != identity:
                changes.append(LeaderChange(group.election, seen[0], group.leader))
            self._leaders[group.election] = (group.leader, identity)
        return Snapshot(groups, tuple(changes))

    def run(self) -> Iterator[Snapshot]:
        """Snapshots until :meth:`close`. The first look raises LelectError if the
        backend fails (a wrong URL should say so at once); later failures are yielded
        as errors and retried."""
        last: tuple[GroupHealth, ...] | None = None
        while not self._stop.is_set():
            self._wake.clear()
            try:
                snap = self.snapshot()
                last = snap.groups
                self._observe([g.election for g in snap.groups])
            except LelectError as exc:
                if last is None:
                    raise
                snap = Snapshot(last, (), str(exc))
            yield snap
            self._wake.wait(self.interval)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

    def _observe(self, names: Sequence[str]) -> None:
        for name in names:
            if name not in self._observed and len(self._observed) < MAX_OBSERVED:
                self._observed.add(name)
                threading.Thread(
                    target=self._observer, args=(name,), name=f"observe-{name}", daemon=True
                ).start()

    def _observer(self, election: str) -> None:
        """Wake the watch on every leader change (the first value is the current one)."""
        try:
            for index, _ in enumerate(self.backend.observe(election, self._stop)):
                if index:
                    self._wake.set()
        except Exception:  # noqa: BLE001 - the periodic look still sees every change
            return
