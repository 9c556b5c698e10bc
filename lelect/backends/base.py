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

import re
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
    Ending,
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
from lelect.errors import BackendUnavailable, CampaignCancelled, CampaignTimeout, ElectionBusy
from lelect.lease import LATE_WIN, Lease

if TYPE_CHECKING:
    from lelect.backends.urls import BackendURL

DEFAULT_TTL = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0
#: How long a last word to a server may take once the lease it concerns has run out (a
#: release that only closes a history entry): the exit must not wait on a dead server.
PARTING_BUDGET = 0.5
#: A release that could not reach the server is tried again for this long (it is
#: token-guarded, so harmless at any time); later its lease has surely run out.
RELEASE_RETRY_FOR = 60.0


# -- one wording for the errors every backend raises ------------------------------------


def server_text(text: object, limit: int = 200) -> str:
    """What a server said, fit for one line of a message: printable characters only
    (control characters and escape sequences shown escaped), whitespace runs collapsed,
    at most ``limit`` characters. A broken or hostile server chooses these bytes."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text[: limit * 4]).decode("utf-8", "replace")
    shown = " ".join(str(text)[: limit * 4].split())
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"



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


# -- notes ------------------------------------------------------------------------------

#: The largest note a backend stores or reads back (a value is at most 4 KiB of text).
MAX_NOTE = 16 * 1024
NOTE_KEY = re.compile(r"[a-z0-9][a-z0-9:._-]{0,63}")


def check_note_key(key: str) -> str:
    """``key`` if it is a note key (1-64 characters from a-z 0-9 : . _ -), else ValueError:
    keys are lelect's own words, never a user's text."""
    if not isinstance(key, str) or not NOTE_KEY.fullmatch(key):
        raise ValueError(f"not a note key: {key!r}")
    return key


def check_note(data: bytes) -> bytes:
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_NOTE:
        raise ValueError(f"a note is at most {MAX_NOTE} bytes")
    return bytes(data)


# -- cancelling a campaign that waits ---------------------------------------------------

#: A campaign given a ``cancel`` event looks at it at least this often while it waits
#: (a local check, no request to the server).
CANCEL_CHECK = 0.25


def check_cancel(cancel: threading.Event | None, election: str) -> None:
    """Raise CampaignCancelled once ``cancel`` is set (the backend then leaves the line,
    as it does on a timeout)."""
    if cancel is not None and cancel.is_set():
        raise CampaignCancelled(f"the campaign for {election!r} was cancelled")


def wait_slice(left: float | None, cancel: threading.Event | None) -> float | None:
    """How long one wait may block: ``left`` (None: no bound), but no longer than
    :data:`CANCEL_CHECK` when a cancel can come."""
    if cancel is None:
        return left
    return CANCEL_CHECK if left is None else max(0.0, min(left, CANCEL_CHECK))


def wait_event(event: threading.Event, timeout: float | None, cancel: threading.Event | None,
               election: str) -> bool:
    """``event.wait(timeout)`` that raises CampaignCancelled soon after ``cancel`` is set."""
    if cancel is None:
        return event.wait(timeout)
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if end is None else end - time.monotonic()
        if event.wait(wait_slice(left, cancel)):
            return True
        check_cancel(cancel, election)
        if left is not None and left <= CANCEL_CHECK:
            return event.is_set()


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
    """A won election. A lease-based leadership carries its :class:`~lelect.lease.Lease`
    (the one renew loop, from :mod:`lelect.lease`), which keeps ``lease_deadline``
    current and marks the leadership lost when the lease is gone; backends mark it
    resign-requested when asked to step down.

    A file-backend leadership has no lease (``lease_deadline`` is None): it is held for
    as long as the flock is.

    How it ends is told to :meth:`release`, which passes it to the backend so the
    history records it with the release itself.
    """

    def __init__(
        self,
        backend: Backend,
        election: str,
        candidate: Candidate,
        term: int,
        token: str,
        lease: Lease | None = None,
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
        #: How it ended, once released.
        self.ending: Ending | None = None
        self.lease = lease
        backend.leaderships.add(self)
        self._subscribers: list[Callable[[str], None]] = []
        if lease is not None:
            lease.on_renewed = self._renewed
            lease.on_lost = self.mark_lost
            lease.on_resign = self.mark_resign_requested

    @property
    def node_id(self) -> str:
        return self.candidate.node_id

    @property
    def lease_deadline(self) -> float | None:
        return None if self.lease is None else self.lease.deadline

    def begin(self) -> bool:
        """Start keeping the lease, after the late-win rule: False if the win came too
        late and the renew that was to save it failed (release it and queue again)."""
        if self.lease is not None:
            if not self.lease.confirm():
                return False
            self.lease.start()
        self._begin()
        return True

    def _begin(self) -> None:  # noqa: B027 - optional hook
        """A backend's own start: listeners for resign requests, watches."""

    def on_deadline(self, callback: Callable[[float], None]) -> None:
        """Call ``callback(deadline)`` after every successful renew."""

        def on_change(kind: str) -> None:
            deadline = self.lease_deadline
            if kind == "deadline" and deadline is not None:
                callback(deadline)

        self.subscribe(on_change)

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(kind)`` with "deadline", "lost" or "resign" on every change."""
        self._subscribers.append(callback)

    def _notify(self, kind: str) -> None:
        for callback in list(self._subscribers):
            callback(kind)

    def _renewed(self, deadline: float) -> None:
        self._notify("deadline")

    def mark_lost(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()
            if self.lease is not None:
                self.lease.lose(reason)
            self._notify("lost")

    def mark_resign_requested(self) -> None:
        if not self.resign_requested.is_set():
            self.resign_requested.set()
            self._notify("resign")

    def is_leader(self) -> bool:
        if self.lost.is_set() or self.released:
            return False
        return self.lease is None or self.lease.alive()

    def parting_budget(self, connect_timeout: float) -> float:
        """How long the release may wait on the server: at most what is left of the lease
        (after it a release only tidies the history), and :data:`PARTING_BUDGET` once the
        lease is over; ``connect_timeout`` for a leadership without a lease."""
        if self.lease_over():
            return min(connect_timeout, PARTING_BUDGET)
        deadline = self.lease_deadline
        if deadline is None:
            return connect_timeout
        return min(connect_timeout, max(deadline - time.monotonic(), PARTING_BUDGET))

    def lease_over(self) -> bool:
        """The lease is lost or past its deadline: a release can only tidy the history."""
        return self.lost.is_set() or (self.lease is not None and not self.lease.alive())

    def release(self, outcome: str | None = None, exit_status: int | None = None,
                reason: str | None = None, slot: str | None = None) -> None:
        """Step down at once (idempotent), telling the history how the leadership ended
        (default: "lost" if it was lost, else "exited") and, for a once-per run, its
        ``slot``."""
        if self.released:
            return
        self.released = True
        outcome = outcome or (LOST if self.lost.is_set() else EXITED)
        self.ending = Ending(outcome, exit_status,
                             reason or (self.lost_reason if outcome == LOST else None), slot)
        if self.lease is not None:
            self.lease.stop()
        self.backend.resign(self, self.ending)

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
        #: Releases the server did not answer: (give up at, the release given a budget).
        self._unreleased: list[tuple[float, Callable[[float], object]]] = []
        self._unreleased_lock = threading.Lock()

    @property
    def display_url(self) -> str:
        """The URL with any password masked: safe for logs and the job's environment."""
        return self.url.masked

    # -- leadership -------------------------------------------------------------------

    def campaign(
        self,
        election: str,
        candidate: Candidate,
        *,
        timeout: float | None = None,
        no_wait: bool = False,
        ttl: float | None = None,
        on_wait: Callable[[LeaderInfo | None], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Leadership:
        """Block until ``candidate`` leads ``election``; return the leadership.

        Raises ElectionBusy (``no_wait`` and somebody leads), CampaignTimeout (the
        ``timeout`` ran out; ``timeout=0`` tries once), BackendUnavailable (within
        :func:`connect_budget`). ``on_wait(holder)`` is called once when the candidate
        starts waiting behind somebody else. Once ``cancel`` is set (from another
        thread), the campaign leaves the line as on a timeout, within about
        :data:`CANCEL_CHECK`, and raises CampaignCancelled. On winning, the history gains an entry
        (outcome "running"), and an earlier entry still "running" is closed as
        "vanished", in the same transaction as the win where the backend allows.

        A win whose answer came late (:func:`lelect.lease.win_is_late`) stands only
        once a renew succeeds; otherwise it is released as lost and the candidate
        queues again: never "elected" followed at once by "lost".
        """
        started = time.monotonic()
        left = timeout
        self.retry_releases()

        def waiting(holder: LeaderInfo | None) -> None:
            # The server answers now: a lease of ours that it could not be told to free
            # (a restart, a freeze) may be the very one we wait behind (issue 18).
            self.retry_releases()
            if on_wait is not None:
                on_wait(holder)

        while True:
            leadership = self._campaign(election, candidate, timeout=left, no_wait=no_wait,
                                        ttl=ttl, on_wait=waiting, cancel=cancel)
            if cancel is not None and cancel.is_set():
                leadership.release(EXITED, None, "the campaign was cancelled as it won")
                check_cancel(cancel, election)
            if leadership.begin():
                return leadership
            leadership.release(LOST, None, LATE_WIN)
            if timeout is not None:
                left = timeout - (time.monotonic() - started)
                if left <= 0:
                    raise timed_out(election, timeout)

    def release_later(self, release: Callable[[float], object]) -> None:
        """A token-guarded release the server did not answer (``release(budget)`` raises
        on trouble): :meth:`campaign` tries it again before it queues and once it waits,
        for :data:`RELEASE_RETRY_FOR`. Until then the lease runs out by itself, but a
        server that restarts may give it a whole ttl again, and a candidate that rejoins
        would wait behind its own old lease."""
        with self._unreleased_lock:
            self._unreleased.append((time.monotonic() + RELEASE_RETRY_FOR, release))

    def retry_releases(self) -> int:
        """Try the releases the server did not answer (:meth:`release_later`) once more,
        each with :data:`PARTING_BUDGET`; return how many went through."""
        with self._unreleased_lock:
            pending, self._unreleased = self._unreleased, []
        done = 0
        for n, (give_up_at, release) in enumerate(pending):
            if time.monotonic() >= give_up_at:
                continue
            try:
                release(PARTING_BUDGET)
                done += 1
            except Exception:  # noqa: BLE001 - still unreachable: keep them for next time
                with self._unreleased_lock:
                    self._unreleased[:0] = pending[n:]
                break
        return done

    @abstractmethod
    def _campaign(
        self,
        election: str,
        candidate: Candidate,
        *,
        timeout: float | None,
        no_wait: bool,
        ttl: float | None,
        on_wait: Callable[[LeaderInfo | None], None] | None,
        cancel: threading.Event | None = None,
    ) -> Leadership:
        """One backend's campaign (see :meth:`campaign`): the leadership it returns has
        its lease (not yet started: :meth:`Leadership.begin` starts it)."""

    @abstractmethod
    def resign(self, leadership: Leadership, ending: Ending) -> None:
        """Release the election at once if ``leadership`` still holds it (by its token),
        recording ``ending`` in the history and ``ending.done_slot`` as done. A leadership that
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

    # -- notes: small records beside an election --------------------------------------
    # What seats, a leader's value and a handover keep: the holders count the candidates
    # agreed on, the value each term proclaimed, the node a leadership is handed to.
    # Written by lelect, read back as data that may be garbage (callers check it).

    def put_note(self, election: str, key: str, data: bytes, ttl: float | None = None, *,
                 create: bool = False) -> bool:
        """Store ``data`` (at most :data:`MAX_NOTE` bytes) under ``key`` (:func:`check_note_key`)
        beside ``election``, for ``ttl`` seconds by the backend's clock (None: until deleted).
        With ``create``, only if no live note has that key: False (nothing written) if
        one has. True when written."""
        raise NotImplementedError(f"{self.scheme}:// keeps no notes")

    def get_note(self, election: str, key: str) -> bytes | None:
        """The live note under ``key``, or None (none, expired, or over :data:`MAX_NOTE`
        bytes: a read is bounded)."""
        raise NotImplementedError(f"{self.scheme}:// keeps no notes")

    def delete_note(self, election: str, key: str) -> None:
        """Forget the note under ``key`` (nothing if there is none)."""
        raise NotImplementedError(f"{self.scheme}:// keeps no notes")

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
