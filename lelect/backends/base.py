"""The backend interface, shaped after etcd's concurrency.Election, plus heartbeats,
leadership history and once-per slots.

A backend is a handful of small guarded operations: every write that concerns a
leadership names the token that identifies it (etcd: the key's create revision;
Redis/PostgreSQL: a random token; ZooKeeper: the contender node's name), so no call
can ever touch somebody else's leadership. Records that cross the boundary are frozen
dataclasses (:mod:`lelect.backends.records`). Nothing here imports from above
``lelect/backends``.
"""

from __future__ import annotations

import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from lelect.backends.records import (  # noqa: F401 - re-exported: the interface's records
    DEFAULT_FORGET_AFTER,
    DEFAULT_HISTORY,
    EXITED,
    LOST,
    MAX_ARRIVALS,
    OUTCOMES,
    RUNNING,
    Candidate,
    HandBack,
    Heartbeat,
    HistoryEntry,
    LeaderInfo,
    LocalLock,
    MemberRecord,
    Members,
    ResignAnswer,
    iso8601,
)
from lelect.durations import format_duration
from lelect.errors import BackendUnavailable, CampaignTimeout, ElectionBusy

if TYPE_CHECKING:
    from lelect.backends.urls import BackendURL

DEFAULT_TTL = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0
#: ``--timeout`` bounds connecting too, but never below one attempt of this long
#: (``--timeout 0`` means "try once", as ``flock -w 0`` does).
MIN_ATTEMPT = 0.5


def lease_drift(ttl: float) -> float:
    """A leader counts its lease from the send time of the request that granted or
    renewed it, minus this drift (the Redis distlock rule)."""
    return 0.01 * ttl + 0.002


def connect_budget(connect_timeout: float, timeout: float | None) -> float:
    """How long connecting may take: ``connect_timeout``, or the campaign's timeout if
    shorter, but at least one attempt (:data:`MIN_ATTEMPT`, or connect_timeout if less)."""
    if timeout is None:
        return connect_timeout
    return min(connect_timeout, max(timeout, MIN_ATTEMPT))


# -- one wording for the errors every backend raises ------------------------------------


def busy(election: str, holder: LeaderInfo | None) -> ElectionBusy:
    who = f"{holder.node_id} (term {holder.term})" if holder else "another candidate"
    return ElectionBusy(f"election {election!r} is led by {who}")


def timed_out(election: str, timeout: float | None) -> CampaignTimeout:
    return CampaignTimeout(
        f"not elected leader of {election!r} within {format_duration(timeout or 0.0)}"
    )


def unreachable(what: str, where: str, within: float, detail: str = "") -> BackendUnavailable:
    """``cannot reach WHAT at WHERE within 1s: DETAIL`` (the bound really applied)."""
    tail = f": {detail}" if detail else ": is it running, and is the URL right?"
    return BackendUnavailable(f"cannot reach {what} at {where} within {format_duration(within)}{tail}")


def only_changes(looks: Iterable[LeaderInfo | None]) -> Iterator[LeaderInfo | None]:
    """``observe``'s filter: the first look, then only looks at a different leadership
    (node id and term), however often the backend woke up."""
    unset = object()
    last: object = unset
    for info in looks:
        key = None if info is None else info.identity
        if key != last:
            last = key
            yield info


class Leadership:
    """A won election. Backends keep ``lease_deadline`` (monotonic) current and mark it
    lost when the leadership is gone, or resign-requested when asked to step down.

    A file-backend leadership has no lease (``lease_deadline`` is None): it is held for
    as long as the flock is.

    How it ends is told to the backend on release, so the history records it with the
    release itself: ``outcome`` (one of :data:`~lelect.backends.records.OUTCOMES`),
    ``exit_status`` (the job's) and ``slot`` (a once-per slot, marked done only when the
    outcome is "exited" with status 0).
    """

    #: The lease watch steps in this long after the deadline, so a backend that is not
    #: stuck reports the loss first, with its own reason.
    LEASE_WATCH_SLACK = 0.02

    def __init__(
        self,
        backend: Backend,
        election: str,
        candidate: Candidate,
        term: int,
        token: str,
        lease_deadline: float | None = None,
        since: float | None = None,
    ) -> None:
        self.backend = backend
        self.election = election
        self.candidate = candidate
        self.term = term
        self.token = token
        self.since = since
        self.lost = threading.Event()
        self.lost_reason: str | None = None
        self.resign_requested = threading.Event()
        self.released = False
        self.outcome = EXITED
        self.exit_status: int | None = None
        self.slot: str | None = None
        self.reason: str | None = None
        self._lease_deadline = lease_deadline
        backend.leaderships.add(self)
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
        """Call ``callback(deadline)`` after every successful renew."""

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
        while the backend's renew call is still stuck."""
        with self._changed:
            if self._watching:
                return
            self._watching = True
        threading.Thread(target=self._lease_watch, name=f"lelect-lease:{self.election}",
                         daemon=True).start()

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

    def is_leader(self) -> bool:
        if self.lost.is_set() or self.released:
            return False
        deadline = self._lease_deadline
        return deadline is None or time.monotonic() < deadline

    def release(self, outcome: str | None = None, exit_status: int | None = None,
                reason: str | None = None) -> None:
        """Step down at once (idempotent), telling the history how the leadership ended
        (default: "lost" if it was lost, else "exited")."""
        if self.released:
            return
        self.released = True
        self.outcome = outcome or (LOST if self.lost.is_set() else EXITED)
        self.exit_status = exit_status
        self.reason = reason or (self.lost_reason if self.outcome == LOST else None)
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
    #: True when leadership is a lease that must be renewed (all but the embedded one).
    lease_based: bool = True
    #: Lease length used when ``campaign`` is given no ttl.
    default_ttl: float = DEFAULT_TTL
    #: Bound on reaching the server (``?connect_timeout=``).
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    #: False where :meth:`now` is the local clock, not the backend's.
    has_clock: bool = True
    #: Leaderships kept per election (``?history=N``).
    history_limit: int = DEFAULT_HISTORY

    def __init__(self, url: BackendURL) -> None:
        self.url = url
        #: Leaderships won and not yet released, so an interrupted caller can let go.
        self.leaderships: weakref.WeakSet[Leadership] = weakref.WeakSet()

    @property
    def display_url(self) -> str:
        """The URL with any password masked: safe for logs and the job's environment."""
        return self.url.masked

    def renew_interval(self, ttl: float) -> float:
        return ttl / 3

    # -- leadership -------------------------------------------------------------------

    @abstractmethod
    def campaign(
        self,
        election: str,
        candidate: Candidate,
        *,
        timeout: float | None = None,
        no_wait: bool = False,
        ttl: float | None = None,
        on_wait: Callable[[LeaderInfo | None], None] | None = None,
    ) -> Leadership:
        """Block until ``candidate`` leads ``election``; return the leadership.

        Raises ElectionBusy (``no_wait`` and somebody leads), CampaignTimeout (the
        ``timeout`` ran out; ``timeout=0`` tries once), BackendUnavailable (within
        :func:`connect_budget`). ``on_wait(holder)`` is called once when the candidate
        starts waiting behind somebody else. On winning, the history gains an entry
        (outcome "running"), and an earlier entry still "running" is closed as
        "vanished", in the same transaction as the win where the backend allows.
        """

    @abstractmethod
    def resign(self, leadership: Leadership) -> None:
        """Release the election at once if ``leadership`` still holds it (by its token),
        recording ``leadership.outcome``/``exit_status`` in the history and, for an
        "exited" outcome with status 0, ``leadership.slot`` as done. A leadership that
        is no longer ours still closes its own history entry if that is "running"."""

    @abstractmethod
    def leader(self, election: str) -> LeaderInfo | None:
        """Who leads now, or None."""

    @abstractmethod
    def observe(self, election: str, stop: threading.Event | None = None
                ) -> Iterator[LeaderInfo | None]:
        """Yield the leader now and again on every change (:func:`only_changes`), until
        ``stop`` is set. Blocks on the backend's own notifications, never a fixed poll
        (the embedded backend may look at SQLite's data_version every 100 ms)."""

    @abstractmethod
    def request_resign(self, election: str, term: int | None = None) -> bool | ResignAnswer:
        """Ask the leader (only of ``term`` when given) to step down. False (or
        ResignAnswer.NOT_LEADING) if nobody (or not that term) leads;
        ResignAnswer.CANNOT_ASK where the leader is not lelect's and cannot be asked."""

    # -- heartbeats -------------------------------------------------------------------

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
        """Names of the elections this backend knows (with a leader, members or a history)."""

    # -- operations -------------------------------------------------------------------

    @abstractmethod
    def history(self, election: str, limit: int | None = None) -> list[HistoryEntry]:
        """The newest ``limit`` (default all kept) leaderships, oldest first."""

    @abstractmethod
    def slot_done(self, election: str, slot: str) -> HistoryEntry | None:
        """The leadership that completed once-per ``slot``, or None if it is open."""

    @abstractmethod
    def now(self) -> float:
        """The backend's clock (epoch seconds); the local clock where it has none
        (:attr:`has_clock` False)."""

    def hand_back(self, leadership: Leadership) -> HandBack | None:
        """How the job's keeper releases ``leadership`` if lelect dies (None: it cannot,
        and the lease runs out instead)."""
        return None

    def local_lock(self, election: str, candidate: Candidate, *, no_wait: bool = False
                   ) -> LocalLock | None:
        """A lock the job's keeper can take by itself (the embedded backend), else None."""
        return None

    def adopt_local_lock(self, lock: LocalLock, term: int, since: float,
                         release_lock: Callable[[], None]) -> Leadership:
        """The leadership of a :meth:`local_lock` the keeper won; ``release_lock`` lets
        go of the lock itself."""
        raise NotImplementedError(f"{self.scheme}:// has no local lock")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
