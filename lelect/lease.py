"""The lease rule, written once.

A backend supplies guarded verbs (acquire, renew, release, a way to wait); this module
owns everything a lease means for time, as etcd's ``session.go`` does for
``election.go``:

- the deadline arithmetic: a lease is good until ``sent + ttl - drift(ttl)``, counted
  from when the granting or renewing request was *sent* (monotonic clock);
- the renew cadence (every ttl/3) and what an answer means: an error or a timeout is
  not a renew, an answer that comes after its own deadline is not a renew, "not ours"
  is a loss;
- one retry policy for reaching a server (:class:`RetryPolicy`): the first contact
  fails fast, a later streak of transient errors is borne for ``connect_timeout``;
- the late win (:func:`win_is_late`): a grant whose answer comes when the next renew
  is already due must be renewed before a job may start;
- the option checks for ``--ttl`` and ``--grace`` (:func:`lease_timing`).

:class:`LeaseState` is pure (times in, decisions out) and property-tested with a fake
clock; :class:`Lease` runs it: one loop thread, plus a watch that marks the lease lost
at its deadline even while a renew call is stuck. Standard library only, importable by
the keeper; nothing here knows a backend.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from lelect.errors import CampaignCancelled
from lelect.frozen import Record
from lelect.options import DEFAULT_GRACE

Clock = Callable[[], float]

#: ``--timeout`` bounds connecting too, but never below one attempt of this long
#: (``--timeout 0`` means "try once", as ``flock -w 0`` does).
MIN_ATTEMPT = 0.5
#: The job is stopped (stop signal) at ``deadline - grace``; that must come after the next
#: renew had this share of the ttl to be answered.
ANSWER_ROOM = 0.05
#: Pauses between tries of a failing call: doubled from the first to the last.
FIRST_PAUSE = 0.05
LAST_PAUSE = 0.5

LOST_NO_RENEW = "the lease ran out with no answered renew"
LOST_NOT_OURS = "the backend says the lease is no longer ours"
LATE_WIN = "won, but the answer came when the lease was about to run out; the renew failed"


# -- the arithmetic ------------------------------------------------------------------------


def drift(ttl: float) -> float:
    """What a lease loses to clock rate differences (the Redis distlock rule)."""
    return 0.01 * ttl + 0.002


def deadline_after(sent: float, ttl: float) -> float:
    """Until when a lease granted or renewed by a request sent at ``sent`` is good."""
    return sent + ttl - drift(ttl)


def renew_interval(ttl: float) -> float:
    return ttl / 3


def retry_pause(interval: float) -> float:
    """How soon a renew that failed is tried again."""
    return min(interval / 4, 0.25)


def win_is_late(sent: float, ttl: float, now: float, interval: float | None = None) -> bool:
    """A grant answered when its first renew is already due (or its lease over) leaves a
    job too little lease to start on: renew first."""
    return now >= sent + (renew_interval(ttl) if interval is None else interval)


def connect_budget(connect_timeout: float, timeout: float | None) -> float:
    """How long a first contact may take: ``connect_timeout``, or the campaign's timeout
    if shorter, but at least one attempt (:data:`MIN_ATTEMPT`, or connect_timeout if less)."""
    if timeout is None:
        return connect_timeout
    return min(connect_timeout, max(timeout, MIN_ATTEMPT))


# -- the option checks ---------------------------------------------------------------------


class TimingRefused(ValueError):
    """Options that cannot keep the lease promise."""


class LeaseTiming(Record):
    ttl: float | None  # None: no lease (the embedded backend's flock)
    grace: float


def lease_timing(ttl: float | None, grace: float | None, *, lease_based: bool = True,
                 default_ttl: float = 10.0) -> LeaseTiming:
    """Work out ttl and grace, refusing combinations that cannot keep the lease promise:
    the job is stopped (stop signal at deadline - grace) only after the next renew had
    its chance to be answered, and is dead by the deadline."""
    if not lease_based:
        return LeaseTiming(None, DEFAULT_GRACE if grace is None else grace)
    ttl = default_ttl if ttl is None else ttl
    if ttl <= 0:
        raise TimingRefused("--ttl must be longer than 0")
    room = ttl - renew_interval(ttl) - drift(ttl) - ANSWER_ROOM * ttl
    if grace is None:
        return LeaseTiming(ttl, min(DEFAULT_GRACE, room / 2))
    if grace > room:
        from lelect.durations import format_duration as fmt

        raise TimingRefused(
            f"--grace {fmt(grace)} is too long for a {fmt(ttl)} lease renewed every"
            f" {fmt(renew_interval(ttl))}: the job could outlive its lease. Use --grace"
            f" {fmt(room)} or less, or a longer --ttl"
        )
    return LeaseTiming(ttl, grace)


# -- time budgets --------------------------------------------------------------------------


class Deadline(Record):
    """A point in monotonic time, or none (``at`` None: no bound)."""

    at: float | None

    @classmethod
    def after(cls, seconds: float | None, now: float) -> Deadline:
        return cls(None if seconds is None else now + seconds)

    def left(self, now: float) -> float | None:
        return None if self.at is None else self.at - now

    def passed(self, now: float) -> bool:
        return self.at is not None and now >= self.at

    def budget(self, now: float, cap: float, floor: float = 0.001) -> float:
        """Time for one call: ``cap``, or what is left if less, but at least ``floor``."""
        if self.at is None:
            return cap
        return max(min(cap, self.at - now), floor)


# -- reaching a server -----------------------------------------------------------------------


class GaveUp(Exception):
    """A retry's time ran out; ``bound`` is the bound that applied (for the message)."""

    def __init__(self, bound: float) -> None:
        super().__init__(bound)
        self.bound = bound


def check_cancel(cancel: threading.Event | None, election: str) -> None:
    """Raise CampaignCancelled once ``cancel`` is set (the backend then leaves the line,
    as it does on a timeout)."""
    if cancel is not None and cancel.is_set():
        raise CampaignCancelled(f"the campaign for {election!r} was cancelled")


class RetryPolicy(Record):
    """One way to bear connection trouble, for every backend (kazoo's ``KazooRetry``
    made into a value): the first contact fails at once, within
    :func:`connect_budget`; after an answer, a streak of transient failures (a restart, a
    failover) is borne for ``connect_timeout`` from its first failure, pausing
    :data:`FIRST_PAUSE` doubling to :data:`LAST_PAUSE` between tries. Never past the
    caller's timeout. (``--restart`` outlasts longer outages a level up: the campaign
    goes back into line.)"""

    connect_timeout: float

    def attempts(self, timeout: float | None, clock: Clock = time.monotonic,
                 cancel: threading.Event | None = None, election: str | None = None) -> Attempts:
        """One retried activity; ``election``: a campaign for it, which a cancel ends."""
        return Attempts(self, timeout, clock, cancel, election)


class Attempts:
    """The state of one retried activity (a campaign, an observer)."""

    def __init__(self, policy: RetryPolicy, timeout: float | None, clock: Clock,
                 cancel: threading.Event | None, election: str | None = None) -> None:
        self.policy = policy
        self.election = election
        self.clock = clock
        self.cancel = cancel or threading.Event()
        now = clock()
        self.give_up = Deadline.after(timeout, now)
        self.first = connect_budget(policy.connect_timeout, timeout)
        self.contacted = False
        self.streak: float | None = now  # the first contact is a streak of its own
        self.pause = FIRST_PAUSE

    @property
    def bound(self) -> float:
        """The bound that applies to the current streak (for messages)."""
        return self.policy.connect_timeout if self.contacted else self.first

    def budget(self) -> float:
        """Time allowed for the next call: what is left of the current streak's bound (or
        ``connect_timeout`` when healthy), never past ``give_up``, at least one attempt
        of :data:`MIN_ATTEMPT` (or connect_timeout if less)."""
        now = self.clock()
        floor = min(MIN_ATTEMPT, self.policy.connect_timeout)
        if not self.contacted:
            assert self.streak is not None
            return max(self.streak + self.first - now, 0.001)
        limit = self.policy.connect_timeout
        if self.streak is not None:
            limit = self.streak + self.policy.connect_timeout - now
        left = self.give_up.left(now)
        if left is not None:
            limit = min(limit, left)
        return max(limit, floor)

    def out_of_time(self) -> bool:
        """The caller's timeout ran out (``timeout=0``: after the first attempt)."""
        return self.give_up.passed(self.clock())

    def succeeded(self) -> None:
        self.contacted = True
        self.streak = None
        self.pause = FIRST_PAUSE

    def failed(self, transient: bool) -> float:
        """A call failed: the pause before the next try. Raises :class:`GaveUp` when the
        failure is final (not transient, no contact yet, or the streak's time is out)."""
        now = self.clock()
        if not self.contacted or not transient:
            raise GaveUp(self.bound)
        if self.streak is None:
            self.streak = now
        end = self.streak + self.policy.connect_timeout
        if self.give_up.at is not None:
            end = min(end, self.give_up.at)
        if now >= end:
            raise GaveUp(self.bound)
        pause = min(self.pause, end - now)
        self.pause = min(self.pause * 2, LAST_PAUSE)
        return max(pause, 0.0)

    def retry_after(self, transient: bool) -> None:
        """:meth:`failed`, then wait out the pause (cut short by ``cancel``). A campaign
        (``election`` given) that is cancelled tries no more: CampaignCancelled, before
        the pause and after it, rather than another try or a GaveUp."""
        self._check_cancel()
        self.cancel.wait(self.failed(transient))
        self._check_cancel()

    def _check_cancel(self) -> None:
        if self.election is not None:
            check_cancel(self.cancel, self.election)

    @property
    def streaking(self) -> bool:
        """True while a streak of failures after a first contact goes on."""
        return self.contacted and self.streak is not None


# -- the lease -----------------------------------------------------------------------------


class Renewal(Record):
    """A backend's answer to a renew. ``held`` False: the lease is not ours any more."""

    held: bool
    #: The lease length the backend granted, when it says (etcd, ZooKeeper's session).
    granted: float | None = None
    #: The backend also told us that somebody asked this leadership to step down.
    resign_requested: bool = False
    #: Why it is not held, in the backend's words.
    reason: str = ""


HELD = Renewal(True)


class Wait(Record):
    until: float


class Renew(Record):
    budget: float


class Lost(Record):
    reason: str


Step = Wait | Renew | Lost


class LeaseState:
    """The lease's arithmetic as a value: the runner asks :meth:`step` what to do now and
    reports what came of it. Pure: no clock, no thread."""

    def __init__(self, sent: float, ttl: float, interval: float | None = None) -> None:
        self.ttl = ttl
        self.interval = renew_interval(ttl) if interval is None else interval
        self.deadline = deadline_after(sent, ttl)
        self.next_renew = sent + self.interval
        self.last_error = ""
        self.lost_reason: str | None = None

    def step(self, now: float) -> Step:
        if self.lost_reason is not None:
            return Lost(self.lost_reason)
        if now >= self.deadline:
            tail = f" (last error: {self.last_error})" if self.last_error else ""
            self.lost_reason = LOST_NO_RENEW + tail
            return Lost(self.lost_reason)
        if now >= self.next_renew:
            return Renew(min(self.deadline - now, self.interval))
        return Wait(min(self.next_renew, self.deadline))

    def is_late(self, now: float) -> bool:
        """Too little lease is left to start a job on: less than a renew answered just
        now would leave at its next renew, or a renew is due already."""
        fresh_at_due = self.deadline - self.ttl + drift(self.ttl) + self.interval
        return now >= min(self.next_renew, fresh_at_due, self.deadline)

    def renew_due(self, now: float) -> None:
        """Renew at once (a reconnect, a late win)."""
        self.next_renew = min(self.next_renew, now)

    def answered(self, sent: float, now: float, renewal: Renewal) -> bool:
        """A renew sent at ``sent`` was answered at ``now``; True if it renewed."""
        if self.lost_reason is not None:
            return False
        if not renewal.held:
            self.lost_reason = renewal.reason or LOST_NOT_OURS
            return False
        granted = self.ttl if renewal.granted is None else renewal.granted
        deadline = deadline_after(sent, granted)
        if deadline <= now:
            # Answered after the lease it renewed ran out: not a renew.
            self.failed(now, "the answer came after the lease ran out")
            return False
        self.deadline = deadline
        self.next_renew = sent + self.interval
        self.last_error = ""
        return True

    def failed(self, now: float, error: str) -> None:
        """A renew errored or timed out: it is not a renew; try again soon."""
        self.last_error = error
        self.next_renew = min(now + retry_pause(self.interval), self.deadline)

    def lose(self, reason: str) -> None:
        if self.lost_reason is None:
            self.lost_reason = reason


RenewVerb = Callable[[float], Renewal]


class Lease:
    """A lease kept by one loop: ``renew(budget)`` is the backend's guarded renew (it
    returns a :class:`Renewal` or raises on trouble; any exception is "no renew").

    ``on_renewed(deadline)``, ``on_resign()`` and ``on_lost(reason)`` are called from the
    lease's threads; ``on_lost`` exactly once, by the deadline even if a renew is stuck.
    ``idle(seconds, wake)`` is how the loop waits between renews (a backend may listen
    on its connection meanwhile); it must return when ``wake`` is set.
    """

    def __init__(
        self,
        sent: float,
        ttl: float,
        renew: RenewVerb,
        *,
        interval: float | None = None,
        on_renewed: Callable[[float], None] | None = None,
        on_resign: Callable[[], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
        idle: Callable[[float, threading.Event], None] | None = None,
        describe: Callable[[BaseException], str] = str,
        clock: Clock = time.monotonic,
        name: str = "lease",
    ) -> None:
        self.state = LeaseState(sent, ttl, interval)
        self.sent = sent
        self._renew = renew
        self.on_renewed = on_renewed
        self.on_resign = on_resign
        self.on_lost = on_lost
        self._idle = idle
        self._describe = describe
        self._clock = clock
        self._name = name
        self._lock = threading.Condition()
        self._wake = threading.Event()
        self._stopped = False
        self._told_lost = False
        self._started = False

    @property
    def ttl(self) -> float:
        return self.state.ttl

    @property
    def deadline(self) -> float:
        return self.state.deadline

    @property
    def lost(self) -> bool:
        return self._told_lost

    def alive(self) -> bool:
        with self._lock:
            return not self._told_lost and self._clock() < self.state.deadline

    def is_late(self) -> bool:
        """Less lease is left than right after an answered renew is due, or a renew is
        due already (for a fresh grant: :func:`win_is_late`)."""
        with self._lock:
            return self.state.is_late(self._clock())

    def confirm(self) -> bool:
        """The late-win rule, before a job may start: a win answered on time stands; a
        late one stands only once a renew, made now, succeeds."""
        with self._lock:
            if self._told_lost or self.state.lost_reason is not None:
                return False
        if not self.is_late():
            return True
        return self.renew_once() and not self.is_late()

    def renew_once(self) -> bool:
        """One renew in the caller's thread (before the loop runs); True if it renewed."""
        now = self._clock()
        with self._lock:
            step = self.state.step(now)
        if isinstance(step, Lost):
            return False
        budget = max(min(self.state.deadline - now, self.state.interval), 0.001)
        return self._renew_now(budget)

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._loop, name=f"lelect-{self._name}-renew",
                         daemon=True).start()
        threading.Thread(target=self._watch, name=f"lelect-{self._name}-deadline",
                         daemon=True).start()

    def stop(self) -> None:
        """No more renews, and no loss reported after this."""
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        self._wake.set()

    def lose(self, reason: str) -> None:
        """The backend learned the lease is gone (a watch fired, the session expired)."""
        with self._lock:
            self.state.lose(reason)
            self._lock.notify_all()
        self._wake.set()
        self._tell_lost()

    def renew_soon(self) -> None:
        """Renew at once (after a reconnect: the backend wants proof the lease stands)."""
        with self._lock:
            self.state.renew_due(self._clock())
        self._wake.set()

    # -- the threads ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._stopped:
                    return
                now = self._clock()
                step = self.state.step(now)
            if isinstance(step, Lost):
                self._tell_lost()
                return
            if isinstance(step, Wait):
                self._pause(step.until - now)
                continue
            self._renew_now(step.budget)

    def _pause(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self._idle is not None:
            started = self._clock()
            try:
                self._idle(seconds, self._wake)
            except Exception:  # noqa: BLE001 - a backend's idle hook must never end the loop
                self._wake.wait(max(0.0, seconds - (self._clock() - started)))
        else:
            self._wake.wait(seconds)
        self._wake.clear()

    def _renew_now(self, budget: float) -> bool:
        sent = self._clock()
        try:
            renewal = self._renew(budget)
        except Exception as exc:  # noqa: BLE001 - any trouble is "no renew"
            with self._lock:
                if not self._stopped:
                    self.state.failed(self._clock(), self._describe(exc))
            return False
        with self._lock:
            if self._stopped:
                return False
            renewed = self.state.answered(sent, self._clock(), renewal)
            deadline = self.state.deadline
            self._lock.notify_all()
        if renewed:
            if self.on_renewed is not None:
                self.on_renewed(deadline)
            if renewal.resign_requested and self.on_resign is not None:
                self.on_resign()
        elif not renewal.held:
            self._tell_lost()
        return renewed

    def _watch(self) -> None:
        """Mark the lease lost at its deadline, even while a renew call is stuck."""
        with self._lock:
            while not (self._stopped or self._told_lost):
                now = self._clock()
                if isinstance(self.state.step(now), Lost):
                    break
                self._lock.wait(max(self.state.deadline - now, 0.0))
            else:
                return
        self._tell_lost()

    def _tell_lost(self) -> None:
        with self._lock:
            if self._told_lost or self._stopped:
                return
            self._told_lost = True
            reason = self.state.lost_reason or LOST_NO_RENEW
            self._lock.notify_all()
        self._wake.set()
        if self.on_lost is not None:
            self.on_lost(reason)
