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

import os
import re
import socket
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from lelect.backends.notes import (
    HANDOVER_KEY,
    Handover,
    decode_handover,
    decode_value,
    encode_value,
    value_key,
)
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
from lelect.backends.words import HANDED_OVER, RESIGNED
from lelect.durations import format_duration
from lelect.errors import (
    BackendUnavailable,
    CampaignTimeout,
    ElectionBusy,
    LelectError,
    NotLeader,
)
from lelect.frozen import replace
from lelect.lease import LATE_WIN, Lease, check_cancel  # noqa: F401 - check_cancel for backends
from lelect.names import split_part

TYPE_CHECKING = False  # not typing's (~2 ms of every start): annotations only
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


def not_leading(election: str, term: int, now: LeaderInfo | None) -> NotLeader:
    """``NAME: term T does not lead (the leader is X, term U); nothing written``."""
    who = "nobody leads" if now is None else f"the leader is {now.node_id}, term {now.term}"
    return NotLeader(f"{election}: term {term} does not lead ({who}); nothing written")


def publish_value(backend: Backend, election: str, term: int, data: bytes) -> None:
    """Write ``data`` (:func:`~lelect.backends.notes.encode_value`) as the value of the
    leadership of ``term``, then make sure that term still leads: if not, the write is
    taken back and NotLeader raised (it would never show anyway: only the leading term's
    value is read)."""
    backend.put_note(election, value_key(term), data)
    now = backend.leader(election)
    if now is None or now.term != term:
        try:
            backend.delete_note(election, value_key(term))
        except LelectError:
            pass
        raise not_leading(election, term, now)


def with_value(backend: Backend, election: str, info: LeaderInfo | None) -> LeaderInfo | None:
    """``info`` with the value its term proclaimed (one note read). Only the term that
    leads now is looked at, so a stale leadership's write never shows."""
    if info is None:
        return None
    return replace(info, value=decode_value(backend.get_note(election, value_key(info.term))))


# -- cancelling a campaign that waits ---------------------------------------------------

#: How often a candidate that stepped aside for a handover looks whether its note is
#: still there (only while a handover bars it).
HANDOVER_LOOK = 1.0

#: A campaign given a plain :class:`threading.Event` as ``cancel`` looks at it at least
#: this often while it waits (a local check, no request to the server). A :class:`Cancel`
#: wakes the wait itself: no look is needed.
CANCEL_CHECK = 0.25


class Cancel(threading.Event):
    """A cancel event that wakes the wait it cancels, as kazoo's ``Lock.cancel()`` does:
    a backend's wait registers a waker (:func:`cancel_wakeup`, :func:`wait_event`) that
    ends its sleep (sets the event it waits on, makes a pipe readable that its select
    includes), so a waiting campaign sleeps on its backend alone, with no periodic look.

    Wakers run in the thread that sets the event (never a signal handler: one that takes
    a lock there could deadlock), under a lock, so a waker is never called once its wait
    has unregistered it; they must be quick and must not set this event again."""

    def __init__(self) -> None:
        super().__init__()
        self._wakers: list[Callable[[], None]] = []
        self._wakers_lock = threading.Lock()

    def set(self) -> None:
        with self._wakers_lock:
            super().set()
            for waker in self._wakers:
                waker()

    @contextmanager
    def waking(self, waker: Callable[[], None]) -> Iterator[None]:
        """Call ``waker`` when the event is set (at once if it is set already), until the
        block ends."""
        with self._wakers_lock:
            self._wakers.append(waker)
            if self.is_set():
                waker()
        try:
            yield
        finally:
            with self._wakers_lock:
                self._wakers.remove(waker)


class WakePipe:
    """Something for a select() that another thread makes readable (:meth:`wake`), to
    end a wait on a socket at once. Safe to wake after :meth:`close` (it does nothing)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._lock = threading.Lock()
        self._closed = False

    def fileno(self) -> int:
        return self._read

    def wake(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._write, b"x")
            except OSError:  # full: readable already
                pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._read)
            os.close(self._write)


@contextmanager
def cancel_wakeup(cancel: threading.Event | None) -> Iterator[WakePipe | None]:
    """For a wait that selects on sockets: something to add to the select (it becomes
    readable once ``cancel``, a :class:`Cancel`, is set), or None when ``cancel`` cannot
    wake a select (None or a plain Event: bound each wait by :func:`wait_slice` then)."""
    if not isinstance(cancel, Cancel):
        yield None
        return
    pipe = WakePipe()
    try:
        with cancel.waking(pipe.wake):
            yield pipe
    finally:
        pipe.close()


def shut_down_socket(conn: object) -> None:
    """End a call another thread is blocked in on ``conn`` (a client library's
    connection with a ``_sock``): the call then fails as on a closed connection."""
    sock = getattr(conn, "_sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def wait_slice(left: float | None, cancel: threading.Event | None) -> float | None:
    """How long one wait may block: ``left`` (None: no bound), but no longer than
    :data:`CANCEL_CHECK` when a cancel can come that cannot wake the wait (a plain
    Event; a :class:`Cancel` wakes it)."""
    if cancel is None or isinstance(cancel, Cancel):
        return left
    return CANCEL_CHECK if left is None else max(0.0, min(left, CANCEL_CHECK))


def wait_event(event: threading.Event, timeout: float | None, cancel: threading.Event | None,
               election: str) -> bool:
    """``event.wait(timeout)`` that raises CampaignCancelled soon after ``cancel`` is set
    (at once for a :class:`Cancel`, which wakes the wait by setting ``event``)."""
    if cancel is None:
        return event.wait(timeout)
    if isinstance(cancel, Cancel):
        with cancel.waking(event.set):
            woke = event.wait(timeout)
        check_cancel(cancel, election)
        return woke
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
        #: The seat this leadership is, for an election with seats (``NAME:seatS``).
        self.seat = split_part(election)[1]
        self.lost = threading.Event()
        self.lost_reason: str | None = None
        self.resign_requested = threading.Event()
        self.released = False
        #: A value may be published for this term (:meth:`proclaim`; ``lelect campaign``
        #: sets it, as its job may ``lelect proclaim``): the release forgets it.
        self.publishes_value = False
        #: The backend forgot the value with the release itself (no call after it).
        self.value_forgotten = False
        #: How it ended, once released.
        self.ending: Ending | None = None
        #: What the backend's release left for after it, that nobody waits on (etcd: the
        #: lease's revoke, the history's trim); run by :meth:`tidy_up`.
        self.aftermath: Callable[[], None] | None = None
        self.lease = lease
        #: Notes the backend read in the very transaction that won (key -> data, None
        #: for none): what the campaign would otherwise ask the server for at once.
        self.notes_at_win: dict[str, bytes | None] = {}
        backend.leaderships.add(self)
        self._subscribers: list[Callable[[str], None]] = []
        #: The lease is being kept (its renew thread and the backend's watches run).
        self.kept = False
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

    def begin(self, keep: bool = True) -> bool:
        """The late-win rule, then keep the lease: False if the win came too late and the
        renew that was to save it failed (release it and queue again). ``keep=False``
        leaves :meth:`keep` to the caller (the campaign tells its keeper first: starting
        threads is not free, and the keeper holds the lease's deadline already)."""
        if self.lease is not None and not self.lease.confirm():
            return False
        if keep:
            self.keep()
        return True

    def keep(self) -> None:
        """Start keeping the lease (its renew thread, the backend's watches); once."""
        if self.kept:
            return
        self.kept = True
        if self.lease is not None:
            self.lease.start()
        self._begin()

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

    def proclaim(self, value: str) -> None:
        """Publish ``value`` (text, at most 4 KiB of UTF-8) as this leadership's value,
        replacing any earlier one: ``leader``, ``watch`` and ``observe`` show it while
        this term leads. Raises NotLeader (and shows nothing) unless this leadership
        still leads once the value is written."""
        data = encode_value(value)
        if not self.is_leader():
            raise NotLeader(f"{self.election}: term {self.term} no longer leads; nothing written")
        self.publishes_value = True
        publish_value(self.backend, self.election, self.term, data)

    def forget_value(self) -> None:
        """Delete this term's value (best effort: a stale value is never shown anyway)."""
        try:
            self.backend.delete_note(self.election, value_key(self.term))
        except (LelectError, NotImplementedError):
            pass

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
                reason: str | None = None, slot: str | None = None, *,
                ended: float | None = None, tidy_later: bool = False) -> None:
        """Step down at once (idempotent), telling the history how the leadership ended
        (default: "lost" if it was lost, else "exited") and, for a once-per run, its
        ``slot``; ``ended``: when it ended (wall clock), if that was before this call.
        ``tidy_later``: leave what nobody waits on to :meth:`tidy_up` (the campaign first
        yields the CPU to the next leader)."""
        if self.released:
            return
        self.released = True
        outcome = outcome or (LOST if self.lost.is_set() else EXITED)
        self.ending = Ending(outcome, exit_status,
                             reason or (self.lost_reason if outcome == LOST else None), slot,
                             ended)
        # A server that failed us gets no last word but the release.
        forget = self.publishes_value and outcome != LOST and not self.lease_over()
        if self.lease is not None:
            self.lease.stop()
        self.backend.resign(self, self.ending)
        if not tidy_later:
            self.tidy_up()
        if forget and not self.value_forgotten:
            # After the release: the next leader never waits on it, nor the exit long.
            forgetting = threading.Thread(target=self.forget_value, name="forget-value",
                                          daemon=True)
            forgetting.start()
            forgetting.join(PARTING_BUDGET)

    def tidy_up(self) -> None:
        """Finish what the release left for after it (once; nothing if it left nothing)."""
        aftermath, self.aftermath = self.aftermath, None
        if aftermath is not None:
            aftermath()

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
    #: True where :meth:`_campaign` takes ``on_next`` and calls it after each look at the
    #: line (see :meth:`campaign`): a backend whose waiters queue behind a predecessor.
    tells_next_in_line: bool = False
    #: True where a candidate's word on ``--holders`` lives exactly as long as its
    #: session (:meth:`claim_holders`): nothing to refresh. False: the note-based
    #: agreement of :mod:`lelect.seats`, refreshed while the candidate runs.
    holders_by_session: bool = False

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
        keep_later: bool = False,
        on_next: Callable[[bool], None] | None = None,
    ) -> Leadership:
        """Block until ``candidate`` leads ``election``; return the leadership.

        Raises ElectionBusy (``no_wait`` and somebody leads), CampaignTimeout (the
        ``timeout`` ran out; ``timeout=0`` tries once), BackendUnavailable (within
        :func:`connect_budget`). ``on_wait(holder)`` is called once when the candidate
        starts waiting behind somebody else. Once ``cancel`` is set (from another
        thread), the campaign leaves the line as on a timeout and raises CampaignCancelled:
        at once for a :class:`Cancel` (it wakes the backend's wait), within about
        :data:`CANCEL_CHECK` for a plain Event. On winning, the history gains an entry
        (outcome "running"), and an earlier entry still "running" is closed as
        "vanished", in the same transaction as the win where the backend allows.

        A win whose answer came late (:func:`lelect.lease.win_is_late`) stands only
        once a renew succeeds; otherwise it is released as lost and the candidate
        queues again: never "elected" followed at once by "lost". ``keep_later``: the
        caller calls ``leadership.keep()`` itself, right after it told its job to start
        (the lease's deadline counts from the win either way).

        ``on_next(True)`` is called when the candidate becomes next in line (only the
        leader is ahead of it: the next release is most likely its win), ``on_next(False)``
        when it stops being so without winning (its predecessor changed; it left the line,
        gave up or failed): a hint to get ready (``lelect campaign``'s keeper forks the job
        early), never a promise. Only where :attr:`tells_next_in_line`.
        """
        started = time.monotonic()
        left = timeout
        self.retry_releases()
        waited: list[LeaderInfo | None] = []
        told_next = False

        def next_in_line(now_next: bool) -> None:
            nonlocal told_next
            if on_next is not None and now_next != told_next:
                told_next = now_next
                on_next(now_next)

        extra = {"on_next": next_in_line} if self.tells_next_in_line else {}

        def waiting(holder: LeaderInfo | None) -> None:
            waited.append(holder)
            # The server answers now: a lease of ours that it could not be told to free
            # (a restart, a freeze) may be the very one we wait behind (issue 18).
            self.retry_releases()
            if on_wait is not None and len(waited) == 1:
                on_wait(holder)

        try:
            while True:
                leadership = self._campaign(election, candidate, timeout=left, no_wait=no_wait,
                                            ttl=ttl, on_wait=waiting, cancel=cancel, **extra)
                if cancel is not None and cancel.is_set():
                    leadership.release(EXITED, None, "the campaign was cancelled as it won")
                    check_cancel(cancel, election)
                handover = self._handover(leadership)
                if handover is not None and handover.bars(candidate.node_id, leadership.term):
                    # Being handed to another node (resign --to): step down before anything
                    # runs, and let it in.
                    leadership.release(RESIGNED, None, HANDED_OVER.format(handover.to))
                    next_in_line(False)
                    if no_wait:
                        raise busy(election, None)
                    waiting(None)
                    bound = handover.ttl
                    if timeout is not None:
                        bound = min(bound, max(0.0, timeout - (time.monotonic() - started)))
                    self._await_handover(election, leadership.term, bound, cancel)
                elif leadership.begin(keep=not keep_later):
                    if handover is not None and handover.to == candidate.node_id:
                        self._forget_handover(election)
                    return leadership
                else:
                    leadership.release(LOST, None, LATE_WIN)
                if timeout is not None:
                    left = timeout - (time.monotonic() - started)
                    if left <= 0:
                        raise timed_out(election, timeout)
        except BaseException:
            next_in_line(False)
            raise

    def _handover(self, leadership: Leadership) -> Handover | None:
        """The live handover note beside the election just won (None: none). A backend
        that cannot say releases the win: it must not take what may be another's."""
        try:
            if HANDOVER_KEY in leadership.notes_at_win:
                return decode_handover(leadership.notes_at_win[HANDOVER_KEY])
            return decode_handover(self.get_note(leadership.election, HANDOVER_KEY))
        except BaseException:
            leadership.release(EXITED, None, "could not read the election's handover note")
            raise

    def _await_handover(self, election: str, after_term: int, bound: float,
                        cancel: threading.Event | None) -> None:
        """After stepping down for a handover: wait until somebody leads with a term above
        ``after_term`` (the named node took over), at most ``bound`` (the note's life)."""
        stop, seen = Cancel(), threading.Event()

        def look() -> None:
            try:
                for info in self.observe(election, stop):
                    if info is not None and info.term > after_term:
                        seen.set()
                        return
            except Exception:  # noqa: BLE001 - the bound still ends the wait
                return

        threading.Thread(target=look, name=f"handover:{election}", daemon=True).start()
        end = time.monotonic() + bound
        try:
            while True:
                left = end - time.monotonic()
                if left <= 0 or wait_event(seen, min(left, HANDOVER_LOOK), cancel, election):
                    return
                # The reservation ends with its note (expired, spent or taken back): the
                # bound is the note's whole life, and this one may have been written long
                # ago (or name a life it does not have).
                try:
                    if decode_handover(self.get_note(election, HANDOVER_KEY)) is None:
                        return
                except LelectError:
                    pass  # the bound still ends the wait
        finally:
            stop.set()

    def _forget_handover(self, election: str) -> None:
        """The named node won: the reservation is spent (best effort; it expires anyway)."""
        try:
            self.delete_note(election, HANDOVER_KEY)
        except LelectError:
            pass

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

    @abstractmethod
    def put_note(self, election: str, key: str, data: bytes, ttl: float | None = None, *,
                 create: bool = False) -> bool:
        """Store ``data`` (at most :data:`MAX_NOTE` bytes) under ``key`` (:func:`check_note_key`)
        beside ``election``, for ``ttl`` seconds by the backend's clock (None: until deleted).
        With ``create``, only if no live note has that key: False (nothing written) if
        one has. True when written."""

    @abstractmethod
    def get_note(self, election: str, key: str) -> bytes | None:
        """The live note under ``key``, or None (none, expired, or over :data:`MAX_NOTE`
        bytes: a read is bounded)."""

    @abstractmethod
    def delete_note(self, election: str, key: str) -> None:
        """Forget the note under ``key`` (nothing if there is none)."""

    def claim_holders(self, election: str, holders: int) -> int | None:
        """Where :attr:`holders_by_session`: claim that this candidate runs ``election``
        with ``holders`` holders, for as long as its session lives (again: nothing, while
        its claim lives). None: agreed; else the number the election's earlier candidates
        use (this claim is withdrawn)."""
        raise NotImplementedError(f"{self.scheme} keeps --holders in a note")

    def holders_agreed(self, election: str) -> int | None:
        """Where :attr:`holders_by_session`: the number of holders the election's live
        candidates claimed, or None (none claimed)."""
        raise NotImplementedError(f"{self.scheme} keeps --holders in a note")

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

    def local_lock(self, election: str, candidate: Candidate, *, no_wait: bool = False,
                   holders: int = 1) -> LocalLock | None:
        """A lock the job's keeper can take by itself (the embedded backend), else None;
        with ``holders`` > 1, the first free of that many seats."""
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
