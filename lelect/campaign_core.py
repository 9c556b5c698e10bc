"""The decisions of a campaign, as a pure state machine (sans-IO, as etcd's raft is).

:class:`CampaignCore` takes typed events (won, renewed, lost, resign requested, job
started/exited, keeper gone, signal, time passed) and returns typed commands (start
the job, stop it with a signal and a grace, forward a signal, tell the keeper a
deadline, release, pause before rejoining, exit with a status). It reads no clock —
every event carries ``now``, the driver's monotonic time — and touches no process:
``lelect/campaign.py`` feeds it and carries out what it says.

The promises it keeps (property-tested in tests/test_campaign_core.py):

- the job is started at most once per leadership, and only after the keeper knows the
  lease deadline (the dead-man switch is armed before anything runs);
- for a lost lease the job gets the stop signal at once and SIGKILL by the deadline;
- the leadership is released only after the job (and all it started) exited, or before
  the job was ever started;
- ``hold_at_least`` keeps an ended job's leadership until then (unless told to stop);
- ``max_runtime`` stops the job when it is reached;
- with ``restart``, a cleanly ended job rejoins at once (but not sooner than
  ``restart_delay`` after it started), and so does a lost leadership; a failing job
  backs off (doubling to 30 s), a resigned one waits ``resign_cooldown``;
- the exit status follows the table in DESIGN.md / the README.
"""

from __future__ import annotations

import signal as _signal

from lelect.backends.words import EXITED, LOST, RESIGNED, STOPPED
from lelect.frozen import Record
from lelect.options import DEFAULT_GRACE, default
from lelect.status import ExitStatus

#: Signals that mean "lelect, stop": the job gets the same signal, SIGKILL after the
#: grace, no restart, and lelect then ends by that signal itself.
STOPPING = (int(_signal.SIGINT), int(_signal.SIGTERM))
#: Signals that end lelect while it has no job (waiting, holding, pausing).
WAIT_INTERRUPTS = (int(_signal.SIGINT), int(_signal.SIGTERM), int(_signal.SIGHUP))

#: With --restart, the shortest pause before rejoining (a crashing job cannot spin).
MIN_RESTART_DELAY = 0.1
#: The longest back-off between failing runs.
MAX_RESTART_DELAY = 30.0
#: A job that ran this long resets the back-off.
STEADY_RUN = 10.0


# -- events (in) --------------------------------------------------------------------------


class Event(Record):
    now: float  # the driver's monotonic clock when the event was seen


class Won(Event):
    term: int
    lease_deadline: float | None  # None: no lease (the embedded backend's flock)
    job_started: bool = False  # the keeper started the job by itself on winning
    slot: str | None = None  # the once-per slot this leadership is for
    slot_done: bool = False  # ...and it was already done
    seat: int | None = None  # the seat won, in an election with seats


class Busy(Event):
    """``no_wait`` and somebody else leads; ``holder`` says who, for the log."""

    holder: str = "another candidate"


class TimedOut(Event):
    detail: str = ""


class Renewed(Event):
    deadline: float


class Lost(Event):
    reason: str


class ResignRequested(Event):
    pass


class JobStarted(Event):
    pid: int


class Leftovers(Event):
    count: int
    grace: float


class JobExited(Event):
    status: int  # as shells report it
    cause: str = "exit"  # "exit", "lease" (the keeper's dead-man switch), or a stop reason


class ExecFailed(Event):
    message: str


class KeeperGone(Event):
    """The keeper died (somebody killed it): the job died with it."""


class Unreachable(Event):
    """With ``restart``: the backend could not be reached (or failed) while campaigning;
    the candidate stays in the race."""

    detail: str


class SignalReceived(Event):
    signum: int


class Suspended(Event):
    """The job was stopped from the terminal (Ctrl-Z)."""


class Tick(Event):
    """Time passed (the driver wakes the core at :attr:`CampaignCore.wake_at`)."""


# -- commands (out) -------------------------------------------------------------------------


class Command(Record):
    pass


class Campaign(Command):
    """Start an attempt: a keeper, and the backend's campaign."""


class TellDeadline(Command):
    """The keeper's dead-man switch: stop signal at deadline - grace, SIGKILL at deadline."""

    deadline: float
    grace: float


class StartJob(Command):
    term: int
    slot: str | None = None
    seat: int | None = None


class StopJob(Command):
    signum: int
    grace: float  # SIGKILL follows after this long
    reason: str


class ForwardSignal(Command):
    signum: int


class Release(Command):
    """Step down; the history records ``outcome`` and ``exit_status``."""

    outcome: str
    exit_status: int | None
    reason: str | None = None


class Pause(Command):
    """Stay out of the race until ``until`` (then the core asks to Campaign)."""

    until: float


class SuspendSelf(Command):
    """Stop lelect itself (SIGSTOP), so the shell gets the terminal back."""


class Log(Command):
    event: str
    message: str
    fields: dict = None  # type: ignore[assignment] - None stands for {}

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if self.fields is None:
            object.__setattr__(self, "fields", {})


class Exit(Command):
    status: int
    #: lelect was told to stop by this signal: end by it too, so a supervisor sees a
    #: clean stop (systemd: SIGTERM is success; a shell: 128+N).
    signal: int | None = None


# -- the machine ----------------------------------------------------------------------------


class Policy(Record):
    """What the options say (declared once in :mod:`lelect.options`; see CampaignOptions)."""

    election: str
    stop_signal: int = default("stop_signal")
    grace: float = DEFAULT_GRACE
    lease: bool = True
    max_runtime: float | None = default("max_runtime")
    hold_at_least: float = default("hold_at_least")
    restart: bool = default("restart")
    restart_delay: float = default("restart_delay")
    resign_cooldown: float = default("resign_cooldown")
    conflict_exit_code: int = ExitStatus.CONFLICT
    timeout_exit_code: int = ExitStatus.TIMEOUT


IDLE, CAMPAIGNING, LEADING, HOLDING, PAUSED, DONE = (
    "idle", "campaigning", "leading", "holding", "paused", "done"
)


def _signal_name(signum: int) -> str:
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class CampaignCore:
    """One ``lelect campaign``: ``start(now)`` first, then ``step(event)`` for every
    event; each returns the commands to carry out, in order. After an :class:`Exit`
    the machine is done and ignores everything."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.state = IDLE
        #: When the core wants a Tick (None: only events matter).
        self.wake_at: float | None = None
        self._backoff = max(policy.restart_delay, MIN_RESTART_DELAY)
        #: An outage is under way (said once; said again when it ends).
        self.outage = False
        self._reset_leadership()

    def _reset_leadership(self) -> None:
        self.term: int | None = None
        self.won_at: float | None = None
        self.deadline: float | None = None
        self.job_running = False  # started (or starting) and not yet exited
        self.job_ran = False  # this leadership started its job
        self.job_pid: int | None = None
        self.job_status: int | None = None
        self.outcome: str | None = None  # why the job is being stopped: lost, resign, ...
        self.stop_signal: int | None = None  # the signal that stopped the job
        self.stopped_at: float | None = None  # when it came
        self.stop_repeats = 0  # stop signals since: the second says so, the third kills
        self.exit_signal: int | None = None  # lelect was told to stop by this signal
        self.stop_deadline: float | None = None  # max-runtime
        self.hold_until: float | None = None
        self.slot: str | None = None

    # -- entry points ----------------------------------------------------------------------

    def start(self, now: float) -> list[Command]:
        assert self.state == IDLE, self.state
        self.state = CAMPAIGNING
        return [Campaign()]

    def step(self, event: Event) -> list[Command]:
        handler = getattr(self, f"_{self.state}", None)
        if handler is None or self.state == DONE:
            return []
        out: list[Command] = handler(event)
        return out

    # -- waiting for leadership -----------------------------------------------------------

    def _campaigning(self, event: Event) -> list[Command]:
        policy = self.policy
        if isinstance(event, Won):
            return self._won(event)
        if isinstance(event, Busy):
            return self._exit(policy.conflict_exit_code,
                              Log("busy", f"election {policy.election!r} is led by {event.holder}"))
        if isinstance(event, TimedOut):
            detail = event.detail or f"not elected leader of {policy.election!r} in time"
            return self._exit(policy.timeout_exit_code, Log("timeout", detail))
        if isinstance(event, SignalReceived) and event.signum in WAIT_INTERRUPTS:
            return self._interrupted(event.signum, "while waiting")
        if isinstance(event, KeeperGone):
            # Killed from outside while waiting (or just as it won): anything it had
            # started died with it. With --restart, back into line.
            return [Log("keeper-gone", "the job's keeper died before it reported; anything"
                        " it had started died with it"), *self._after(ExitStatus.LOST, "lost", event.now)]
        if isinstance(event, Unreachable) and policy.restart:
            return self._unreachable(event)
        return []

    def _unreachable(self, event: Unreachable) -> list[Command]:
        """Stay in the race through an outage of any length: back off, one line when it
        begins (and one when it ends: :meth:`reachable`)."""
        pause = self._backoff
        self._backoff = min(self._backoff * 2, MAX_RESTART_DELAY)
        out: list[Command] = []
        if not self.outage:
            self.outage = True
            out.append(Log("unreachable", f"{event.detail}; staying in the race, trying"
                           " again with back-off"))
        self.state = PAUSED
        self.wake_at = event.now + pause
        return [*out, Pause(event.now + pause)]

    def reachable(self) -> list[Command]:
        """The backend answered again after an outage."""
        if not self.outage:
            return []
        self.outage = False
        self._backoff = max(self.policy.restart_delay, MIN_RESTART_DELAY)
        return [Log("reachable", f"the backend answers again; back in line for"
                    f" {self.policy.election!r}")]

    def _won(self, event: Won) -> list[Command]:
        policy = self.policy
        out: list[Command] = self.reachable()
        self.state = LEADING
        self.term = event.term
        self.won_at = event.now
        self.deadline = event.lease_deadline
        self.slot = event.slot
        if event.lease_deadline is not None:
            # The dead-man switch is armed before anything runs.
            out.append(TellDeadline(event.lease_deadline, policy.grace))
        fields: dict[str, object] = {"term": event.term}
        what = f"{policy.election!r} (term {event.term})"
        if event.seat is not None:
            fields["seat"] = event.seat
            what = f"{policy.election!r} seat {event.seat} (term {event.term})"
        if event.slot_done:
            out.append(Log("slot-done", f"elected leader of {what}, but the job already"
                           f" succeeded for slot {event.slot}: not running it",
                           {**fields, "slot": event.slot}))
            out += self._release(EXITED, None, f"slot {event.slot} was already done")
            return out + self._after(0, "skipped", event.now)
        out.append(Log("elected", f"elected leader of {what}", fields))
        self.job_running = self.job_ran = True
        if not event.job_started:
            out.append(StartJob(event.term, event.slot, event.seat))
        if policy.max_runtime is not None:
            self.stop_deadline = event.now + policy.max_runtime
        self._schedule()
        return out

    # -- leading ------------------------------------------------------------------------------

    def _stop_again(self, event: SignalReceived) -> list[Command]:
        """Another stop signal while the job is given its grace: the first repeat says how
        long lelect still waits, the next kills the job now (as an impatient operator or
        a supervisor's second try means)."""
        name = _signal_name(event.signum)
        if not self.job_running:
            return []
        self.stop_repeats += 1
        if self.stop_repeats == 1:
            left = max(0.0, self.policy.grace - (event.now - (self.stopped_at or event.now)))
            return [Log("stopping", f"{name}: waiting up to {round(left, 1):g}s for the job"
                        f" ({name} again to kill it now)")]
        return [Log("stopping", f"{name} again: killing the job now"),
                StopJob(int(_signal.SIGKILL), 0.0, "stop")]

    def _leading(self, event: Event) -> list[Command]:
        policy = self.policy
        if isinstance(event, JobStarted):
            self.job_pid = event.pid
            return [Log("job-started", f"job started (pid {event.pid})", {"pid": event.pid})]
        if isinstance(event, Renewed):
            if event.deadline > (self.deadline or 0.0):
                self.deadline = event.deadline
                if self.job_running:
                    return [TellDeadline(event.deadline, policy.grace)]
            return []
        if isinstance(event, Lost):
            return self._lost(event)
        if isinstance(event, ResignRequested):
            if self.outcome is not None or not self.job_running:
                return []
            self.outcome = "resign"
            return [Log("resign", "resign requested: stopping the job"),
                    StopJob(policy.stop_signal, policy.grace, "resign")]
        if isinstance(event, SignalReceived):
            if event.signum in STOPPING:
                if self.stop_signal is not None:
                    return self._stop_again(event)
                self.stop_signal = self.exit_signal = event.signum
                self.stopped_at = event.now
                if self.outcome is None:
                    self.outcome = "stop"
                return [Log("stopping", f"{_signal_name(event.signum)}: stopping the job"),
                        StopJob(event.signum, policy.grace, "stop")]
            return [ForwardSignal(event.signum)]
        if isinstance(event, Tick):
            if self.stop_deadline is not None and event.now >= self.stop_deadline:
                self.stop_deadline = None
                self._schedule()
                if self.outcome is not None:
                    return []
                self.outcome = "max-runtime"
                return [Log("max-runtime", "the job reached --max-runtime: stopping it"),
                        StopJob(policy.stop_signal, policy.grace, "max-runtime")]
            return []
        if isinstance(event, Leftovers):
            return [Log("leftovers", f"the job exited but left {event.count} process"
                        f"{'es' if event.count != 1 else ''} behind: stopping them"
                        f" (SIGKILL after {event.grace:g}s)", {"count": event.count})]
        if isinstance(event, Suspended):
            return [Log("suspended", "job stopped from the terminal: suspending lelect too"
                        " (fg continues both)"), SuspendSelf()]
        if isinstance(event, ExecFailed):
            self.job_running = False
            out: list[Command] = [Log("execfail", f"cannot run {event.message}")]
            out += self._release(EXITED, ExitStatus.NOT_FOUND, event.message)
            return out + self._exit(ExitStatus.NOT_FOUND)
        if isinstance(event, KeeperGone):
            self.job_running = False
            self.outcome = "lost"
            out = [Log("keeper-gone", "the job's keeper died; the job died with it")]
            out += self._release(LOST, None, "the job's keeper died")
            return out + self._after(ExitStatus.LOST, "lost", event.now)
        if isinstance(event, JobExited):
            return self._job_exited(event)
        return []

    def _lost(self, event: Lost) -> list[Command]:
        policy = self.policy
        if self.outcome == "lost":
            return []
        self.outcome = "lost"
        out: list[Command] = [Log("lost", f"lost leadership of {policy.election!r}: {event.reason}",
                                  {"reason": event.reason})]
        if self.job_running:
            # Dead by the deadline: SIGKILL no later than it (at once if it has passed).
            grace = policy.grace
            if self.deadline is not None:
                grace = min(grace, max(0.0, self.deadline - event.now))
            out.append(StopJob(policy.stop_signal, grace, "lost"))
        return out

    def _job_exited(self, event: JobExited) -> list[Command]:
        self.job_running = False
        self.job_status = event.status
        if event.cause in ("lease", "unstarted") and self.outcome != "lost":
            self.outcome = "lost"
            reason = ("the lease ran out without a renew; the keeper stopped the job"
                      if event.cause == "lease" else "the lease was about to run out before"
                      " the job could start; the keeper did not start it")
            out: list[Command] = [Log("lost", f"lost leadership of {self.policy.election!r}:"
                                      f" {reason}", {"reason": reason})]
        else:
            out = []
        if self.outcome is None and self.won_at is not None:
            hold_until = self.won_at + self.policy.hold_at_least
            if event.now < hold_until:
                self.state = HOLDING
                self.hold_until = hold_until
                self._schedule()
                left = hold_until - event.now
                return out + [Log("hold", f"the job exited (status {event.status}); holding"
                                  f" the election for {left:.3g}s more (--hold-at-least)",
                                  {"status": event.status})]
        return out + self._finish(event.now)

    # -- holding (--hold-at-least) --------------------------------------------------------

    def _holding(self, event: Event) -> list[Command]:
        if isinstance(event, Tick) and self.hold_until is not None and event.now >= self.hold_until:
            return self._finish(event.now)
        if isinstance(event, SignalReceived) and event.signum in WAIT_INTERRUPTS:
            self.exit_signal = event.signum  # the job had ended by itself: it "exited"
            return self._finish(event.now)
        if isinstance(event, (ResignRequested, Lost)):
            return self._finish(event.now)
        return []

    # -- the end of a leadership --------------------------------------------------------------

    def _finish(self, now: float) -> list[Command]:
        """The job is gone: release, then exit or rejoin."""
        status = self.job_status if self.job_status is not None else 0
        outcome = self.outcome
        if self.stop_signal is not None:
            history, exit_status, kind = STOPPED, status, "stopped"
        elif outcome == "lost":
            history, exit_status, kind = LOST, ExitStatus.LOST, "lost"
        elif outcome == "resign":
            history, exit_status, kind = RESIGNED, ExitStatus.OK, "resigned"
        elif outcome == "max-runtime":
            history, exit_status, kind = STOPPED, ExitStatus.MAX_RUNTIME, "max-runtime"
        else:
            history, exit_status, kind = EXITED, status, "exited"
        reason = {"max-runtime": "--max-runtime reached", "resign": "resign requested"}.get(
            outcome or "")
        if self.stop_signal is not None:
            reason = f"lelect was stopped by {_signal_name(self.stop_signal)}"
        out = self._release(history, status, reason)
        if kind == "lost":
            out.append(Log("stopped", f"job stopped after losing leadership (status {status})",
                           {"status": status}))
        else:
            out.append(Log("released", f"job exited with status {status}; released"
                           f" {self.policy.election!r}", {"status": status}))
        return out + self._after(exit_status, kind, now)

    def _release(self, outcome: str, status: int | None, reason: str | None) -> list[Command]:
        return [Release(outcome, status, reason)]

    def _after(self, status: int, kind: str, now: float) -> list[Command]:
        """Exit with ``status``, or (``restart``) pause and rejoin."""
        policy = self.policy
        ran_for = 0.0 if self.won_at is None else now - self.won_at
        exit_signal = self.exit_signal
        ran = self.job_ran
        self._reset_leadership()
        self.state = DONE
        if exit_signal is not None:
            return [Exit(128 + exit_signal, signal=exit_signal)]
        if not policy.restart or kind in ("skipped",):
            return [Exit(status)]
        floor = max(policy.restart_delay, MIN_RESTART_DELAY)
        if kind == "resigned":
            pause = max(policy.resign_cooldown, floor)
        elif kind == "exited" and status == 0:
            # A clean end: back into the race at once (another candidate has taken over
            # in milliseconds meanwhile), but a job runs at most once per restart_delay.
            self._backoff = floor
            pause = max(0.0, floor - ran_for) if ran else floor
        elif kind == "lost":
            # A lost lease (or a killed keeper) is the server's or the network's doing,
            # not the job's: back into line as after a clean end, the back-off
            # untouched. Waiting in line costs nothing, and a growing back-off here left
            # the election leaderless when every candidate had lost a few times (issue 18).
            pause = max(0.0, floor - ran_for) if ran else floor
        else:
            if ran_for >= STEADY_RUN:
                self._backoff = floor
            pause = self._backoff
            self._backoff = min(self._backoff * 2, MAX_RESTART_DELAY)
        self.state = PAUSED
        self.wake_at = now + pause
        return [Log("restart", f"rejoining the race in {pause:.3g}s", {"pause": round(pause, 3)}),
                Pause(now + pause)]

    def _paused(self, event: Event) -> list[Command]:
        if isinstance(event, SignalReceived) and event.signum in WAIT_INTERRUPTS:
            return self._interrupted(event.signum, "while pausing")
        if isinstance(event, Tick) and self.wake_at is not None and event.now >= self.wake_at:
            self.wake_at = None
            self.state = CAMPAIGNING
            return [Campaign()]
        return []

    def _interrupted(self, signum: int, when: str) -> list[Command]:
        return self._exit(128 + signum, Log("interrupted", f"stopped by {_signal_name(signum)} {when}"),
                          signal=signum)

    def _exit(self, status: int, *logs: Log, signal: int | None = None) -> list[Command]:
        self.state = DONE
        self.wake_at = None
        return [*logs, Exit(status, signal=signal)]

    def _schedule(self) -> None:
        times = [t for t in (self.stop_deadline, self.hold_until) if t is not None]
        if self.state == HOLDING:
            times = [t for t in (self.hold_until,) if t is not None]
        self.wake_at = min(times) if times else None
