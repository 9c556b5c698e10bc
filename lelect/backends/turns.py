"""One connection shared by a waiter's long wait on the server and everything else its
process sends (heartbeats, lookups): who goes when, and how long one piece of the wait
may last. Used by the SQL backends whose waiters block in a server-side lock (MySQL's
``GET_LOCK``, PostgreSQL's ``pg_advisory_lock``). Standard library only."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: The longest single piece of a wait in line (a waiter then looks again).
LONGEST_WAIT = 3600.0
#: A campaign's first piece of its wait before its backend has published a heartbeat
#: (the heartbeat thread's first beat, sent alongside the campaign, is not held up long).
FIRST_SLICE = 1.0
#: How long after a heartbeat is due a piece of the wait ends (at least; a tenth of the
#: interval for longer ones).
SLICE_MARGIN = 0.05
#: How long a waiter leaves the connection alone after serving a caller (its next call,
#: a heartbeat's refresh after the beat, is likely on its way).
SETTLE = 0.02


#: A leader's connection is ended by the server once silent for its ttl and this many
#: seconds more (MySQL's ``wait_timeout``, PostgreSQL's ``idle_session_timeout``).
LEADER_IDLE_SLACK = 10


def leader_idle(ttl: float) -> int:
    """Seconds after which the server may end a silent leader's connection, and with it
    the election's doorbell: a leader that went a lease without a renew has lost its
    lease anyway (a partitioned host's connection stays open on the server for hours,
    and a frozen lelect's kernel still answers TCP keepalives)."""
    return math.ceil(ttl) + LEADER_IDLE_SLACK


class Busy(Exception):
    """The connection stayed busy with another call for the whole budget."""


class Turns:
    """Turn-taking on one connection guarded by ``lock``: a long call (a wait on the
    server) lets every caller that waits for the connection go first, and a caller that
    comes while one runs waits for its end on top of its own budget (both bounded)."""

    def __init__(self, lock: threading.RLock) -> None:
        self.lock = lock
        self._state = threading.Condition(threading.Lock())
        self._wanting = 0
        self._long_until = 0.0

    @contextmanager
    def short(self, budget: float) -> Iterator[float]:
        """Hold the connection for a call of ``budget`` seconds; yields the call's end
        (monotonic). Raises :class:`Busy` when the connection stays taken."""
        start = time.monotonic()
        with self._state:
            self._wanting += 1
            end = start + budget + max(self._long_until - start, 0.0)
            self._state.notify_all()  # a long call about to start lets this one go first
        try:
            got = self.lock.acquire(timeout=max(end - time.monotonic(), 0.0))
        finally:
            with self._state:
                self._wanting -= 1
                self._state.notify_all()
        if not got:
            raise Busy("the connection stayed busy with another call")
        try:  # the call itself gets its own budget at most
            yield min(end, time.monotonic() + budget)
        finally:
            self.lock.release()

    @contextmanager
    def long(self, budget: float, patience: float, settle: float = SETTLE) -> Iterator[None]:
        """Hold the connection for a long call of ``budget`` seconds, once every caller
        waiting for it has gone first (and none came within ``settle`` seconds after the
        last one). Getting the connection is bounded by ``patience``."""
        end = time.monotonic() + patience
        served = False
        while True:
            if not self.lock.acquire(timeout=max(end - time.monotonic(), 0.0)):
                raise Busy("the connection stayed busy with another call")
            with self._state:
                if not self._wanting and not (served and self._state.wait_for(
                        lambda: self._wanting, min(settle, max(end - time.monotonic(), 0.0)))):
                    self._long_until = time.monotonic() + budget
                    break
            self.lock.release()
            served = True
            with self._state:
                self._state.wait_for(lambda: not self._wanting, max(end - time.monotonic(), 0.0))
        try:
            yield
        finally:
            with self._state:
                self._long_until = 0.0
            self.lock.release()


class BeatCadence:
    """What a waiter blocked on its only connection knows of the heartbeats that share
    it: their cadence (the smallest interval published lately) and the last beat, so a
    piece of the wait ends just after the next beat is due."""

    def __init__(self) -> None:
        self.every: float | None = None
        self.at = 0.0

    def heard(self, interval: float) -> None:
        """A heartbeat published now, the next one due ``interval`` seconds later."""
        if not interval:
            return
        every = self.every
        recent = every is not None and time.monotonic() - self.at < 3 * every
        self.every = min(every, interval) if recent else interval
        self.at = time.monotonic()

    def slice(self, first: bool) -> float:
        """The longest piece of a wait: until just after the next heartbeat is due (while
        heartbeats are published), else the whole wait (a campaign's first piece at most
        FIRST_SLICE until a heartbeat shows the cadence)."""
        every = self.every
        if every is not None and time.monotonic() - self.at < 3 * every + FIRST_SLICE:
            return every + max(SLICE_MARGIN, every / 10)
        return FIRST_SLICE if first else LONGEST_WAIT


def wait_for_turn(left_s: float | None, give_up: float | None,
                  look: Callable[[], float | None], piece: Callable[[float], bool]) -> bool:
    """A waiter's wait in the server's lock queue, until the lease's expiry by the server's
    clock (``left_s`` from now) or ``give_up``: ``piece(seconds)`` waits one piece of at
    most that long and says whether the lock came (True: returned at once). At the expiry
    ``look()`` reads how long the lease has now: a leader that renewed is waited on
    again; a lease that is gone returns False (the caller tries to take it), as does
    ``give_up``."""
    while left_s is not None and left_s > 0:
        end = time.monotonic() + min(left_s + 0.001, LONGEST_WAIT)
        if give_up is not None:
            end = min(end, give_up)
        while (wait := end - time.monotonic()) > 0:
            if piece(wait):
                return True
        if give_up is not None and time.monotonic() >= give_up:
            return False
        left_s = look()
    return False
