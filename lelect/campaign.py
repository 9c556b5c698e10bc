"""``lelect campaign``'s driver: it feeds the pure campaign core
(:mod:`lelect.campaign_core`) with what happens — the backend, the job's keeper,
signals, time — and carries out the commands it returns.

:func:`run_campaign` (or ``lelect.connect().election(NAME).run_job(CMD)``) is what
``lelect campaign`` calls; a Python user can call it too.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

from lelect import campaign_core as core
from lelect import keeper_protocol as proto
from lelect import lease
from lelect.backends.base import (
    PARTING_BUDGET,
    Backend,
    Cancel,
    Candidate,
    LeaderInfo,
    Leadership,
)
from lelect.backends.file.keeper_lock import tidy_up_slowly
from lelect.backends.notes import encode_value
from lelect.backends.words import LOST
from lelect.credentials import job_backend_env
from lelect.durations import RANGES, format_duration
from lelect.errors import (
    BackendUnavailable,
    CampaignCancelled,
    CampaignTimeout,
    CommandNotFound,
    ConfigError,
    ElectionBusy,
    LelectError,
    UsageError,
)
from lelect.frozen import Record, field, fields, replace
from lelect.lease import LeaseTiming
from lelect.names import seat_election, validate_election
from lelect.options import DEFAULT_GRACE, default  # noqa: F401 - DEFAULT_GRACE for library users
from lelect.seats import (
    PIN_TTL,
    HoldersMismatch,
    HoldersPin,
    campaign_seat,
    check_holders,
    seat_holders,
)
from lelect.status import ExitStatus
from lelect.supervisor import Gone, KeeperConfig, KeeperHandle, trim_heap
from lelect.systemd import Notifier

TYPE_CHECKING = False  # not typing's (~2 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import Any, NoReturn

#: What the signal wake-up thread puts on the events queue: nothing to handle.
WAKE = object()

#: Signals forwarded to the job's process group while it runs.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGWINCH)

Log = Callable[..., None]


#: How long the embedded backend waits for its database to settle --holders before the
#: keeper takes the lock (a database another process holds busy is not waited out).
LOCAL_VERDICT = 0.5
#: Seconds a campaign that is about to return waits, once its election is free, before
#: it tidies up (its history record on the embedded backend, its keeper, its
#: connections) and returns. Candidates on one host mostly run in sessions of their own
#: (cron, systemd, a shell each), and the kernel shares the CPU between sessions before
#: it looks at nice values: that tidying up (a few ms of CPU) took a core the next
#: leader's job needed for its start (bench/scale.py: 3.1 -> 2.5 ms on the embedded
#: backend, 6.9 -> 5.6 on etcd, 6.5 -> 5.4 on Redis, 10 waiting).
YIELD_TO_NEXT_LEADER = 0.03


def _no_log(event: str, message: str, **fields: Any) -> None:
    pass


#: Signals that pause or continue a process instead of asking it to stop.
UNSTOPPING_SIGNALS = frozenset(
    {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCONT}
)


class CampaignOptions(Record):
    """``lelect campaign``'s options (their defaults, flags and help are declared once,
    in :mod:`lelect.options`)."""

    election: str
    command: Sequence[str]
    node_id: str | None = default("node_id")
    stop_signal: int = default("stop_signal")
    grace: float | None = default("grace")  # None: 10 s, or what fits the lease
    ttl: float | None = default("ttl")  # None: the backend's
    max_runtime: float | None = default("max_runtime")
    no_wait: bool = default("no_wait")
    conflict_exit_code: int = ExitStatus.CONFLICT
    timeout: float | None = default("timeout")
    timeout_exit_code: int = ExitStatus.TIMEOUT  # the CLI's -E sets both, like flock -E
    hold_at_least: float = default("hold_at_least")
    restart: bool = default("restart")
    restart_delay: float = default("restart_delay")
    resign_cooldown: float = default("resign_cooldown")
    heartbeat_interval: float = default("heartbeat_interval")
    forget_after: float = default("forget_after")
    once_per: float | None = default("once_per")  # run the job successfully at most once per slot
    once_key: str | None = default("once_key")  # ...or once per this named slot
    value: str | None = default("value")  # published with the leadership (LELECT_VALUE)
    holders: int = default("holders")  # up to this many leaders at once, each in a seat
    extra_env: dict[str, str] = field(default_factory=dict)

    def policy(self, grace: float, lease: bool) -> core.Policy:
        """The core's view of these options (``grace`` as the lease timing settled it)."""
        return core.Policy(
            election=self.election, stop_signal=int(self.stop_signal), grace=grace, lease=lease,
            max_runtime=self.max_runtime, hold_at_least=self.hold_at_least,
            restart=self.restart, restart_delay=self.restart_delay,
            resign_cooldown=self.resign_cooldown, conflict_exit_code=self.conflict_exit_code,
            timeout_exit_code=self.timeout_exit_code,
        )

    def check(self) -> None:
        """Refuse options out of their documented range (:data:`RANGES`), before
        anything campaigns: never found out after winning."""
        validate_election(self.election)
        for name in fields(self):
            limits = RANGES.get(name.replace("_", "-"))
            value = getattr(self, name)
            if limits is not None and isinstance(value, (int, float)) and value is not None:
                limits.check(float(value), f"--{name.replace('_', '-')}",
                             format_duration(float(value)))
        if self.stop_signal in UNSTOPPING_SIGNALS:
            raise UsageError(
                f"--stop-signal {signal.Signals(self.stop_signal).name[3:]} does not ask a job to"
                " stop (it pauses or continues it): use TERM, INT, HUP, QUIT, USR1 or USR2"
            )
        check_holders(self.election, self.holders)
        if self.once_per is not None and self.once_key is not None:
            raise UsageError("--once-per and --once-key name the slot two ways: use one")
        if self.restart and (self.once_per is not None or self.once_key is not None):
            raise UsageError(
                "--restart and --once-per/--once-key do not mix: run the campaign from a"
                " timer (systemd, cron) for once-per-slot jobs"
            )
        if self.value is not None:
            encode_value(self.value)  # text, at most MAX_VALUE bytes
        if self.once_key is not None and (not self.once_key or any(c.isspace() for c in self.once_key)
                                          or len(self.once_key) > 200):
            raise UsageError("--once-key must be 1-200 characters without spaces")


class CampaignResult(Record):
    """How a campaign ended: lelect's exit status and, when lelect was told to stop by
    a signal, that signal (``exit()`` then ends this process by it, as a supervisor
    expects of a clean stop)."""

    status: int
    signal: int | None = None

    def exit(self) -> NoReturn:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        if self.signal is not None:
            signal.signal(self.signal, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {self.signal})
            os.kill(os.getpid(), self.signal)
        os._exit(self.status)


def lease_timing(backend: Backend, ttl: float | None, grace: float | None) -> LeaseTiming:
    """:func:`lelect.lease.lease_timing` for ``backend``; a refusal is a ConfigError."""
    try:
        return lease.lease_timing(ttl, grace, lease_based=backend.lease_based,
                                  default_ttl=backend.default_ttl)
    except lease.TimingRefused as refused:
        raise ConfigError(str(refused)) from None


def check_command(command: Sequence[str]) -> str:
    """Refuse a command that cannot run before campaigning, not after winning; return
    the program's path, resolved once here so the keeper need not search PATH."""
    if not command:
        raise UsageError("missing the command to run: lelect campaign NAME [OPTIONS] -- CMD [ARGS]...")
    program = command[0]
    if "/" in program:
        if not os.path.exists(program):
            raise CommandNotFound(f"{program}: no such file")
        if os.path.isdir(program):
            raise CommandNotFound(f"{program}: is a directory")
        if not os.access(program, os.X_OK):
            raise CommandNotFound(f"{program}: not executable")
        _check_interpreter(program)
        return program
    found = _which(program)
    if found is None:
        raise CommandNotFound(f"{program}: command not found in PATH")
    _check_interpreter(found)
    return found


def _which(program: str) -> str | None:
    """What ``shutil.which(program)`` answers, without importing shutil (and its three
    compressors) into every waiting candidate."""
    for directory in os.get_exec_path():
        path = os.path.join(directory, program)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def _check_interpreter(path: str) -> None:
    """A script whose #! line names a missing interpreter fails with "No such file or
    directory" for a file that exists: name the interpreter instead (as bash does)."""
    try:
        with open(path, "rb") as script:
            first = script.read(256).split(b"\n", 1)[0]
    except OSError:
        return  # unreadable but executable: the exec will say
    if not first.startswith(b"#!"):
        return
    words = first[2:].split()
    if not words:
        return
    interpreter = os.fsdecode(words[0])
    if not os.path.exists(interpreter):
        raise CommandNotFound(f"{path}: bad interpreter {interpreter} (its #! line): no such file")
    if os.path.isdir(interpreter) or not os.access(interpreter, os.X_OK):
        raise CommandNotFound(f"{path}: bad interpreter {interpreter} (its #! line): not executable")


def slot_name(now: float, once_per: float) -> str:
    """The once-per slot ``now`` falls in: multiples of ``once_per`` since the epoch
    (UTC), named by the period and the slot's start."""
    start = (now // once_per) * once_per
    from datetime import datetime, timezone  # --once-per only

    stamp = datetime.fromtimestamp(start, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{format_duration(once_per)}@{stamp}"


class CampaignStatus:
    """What a status probe (``campaign --status-listen``) reads: the driver keeps
    ``leadership`` set from the win until the release."""

    def __init__(self) -> None:
        self.election: str | None = None
        self.node_id: str | None = None
        self.leadership: Leadership | None = None

    def leading(self) -> Leadership | None:
        """The leadership while this candidate leads (its lease current), else None."""
        leadership = self.leadership
        return leadership if leadership is not None and leadership.is_leader() else None


class _Cancelled:
    """Queued when a stop signal cancels the campaign under way (wakes a wait on the
    keeper's news)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum


class _Driver:
    def __init__(self, backend: Backend, options: CampaignOptions, log: Log,
                 notify: Notifier | None = None, status: CampaignStatus | None = None) -> None:
        options.check()
        self.program = check_command(options.command)
        self.backend = backend
        self.options = options
        self.log = log
        self.timing = lease_timing(backend, options.ttl, options.grace)
        self.candidate = Candidate.local(options.node_id)
        self.core = core.CampaignCore(options.policy(self.timing.grace, backend.lease_based))
        # A SimpleQueue: its put is reentrant, so the signal handler may put while this
        # thread is inside get (a Queue's lock would deadlock the campaign).
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self._stop_wakeups: Callable[[], None] | None = None
        self._cancel_w: int | None = None
        #: Events the core must see before anything queued (signals held back while the
        #: keeper had not yet said whether it won).
        self.first: list[core.Event] = []
        self.blocking = False  # a stop signal cancels the campaign under way
        self.cancel = Cancel()
        self.cancelled_by: int | None = None
        self.keeper: KeeperHandle | None = None
        #: The backend says we are next in line: the keeper has the job forked early.
        self.next_in_line = False
        self.leadership: Leadership | None = None
        self.announced = False
        #: A leadership just won, whose hand-back recipe the keeper is still to be told:
        #: made and sent right after the job's start (the job first; the keeper loads
        #: the recipe once the job is under way).
        self.recipe_of: Leadership | None = None
        #: The commands being carried out start a job (their lease goes with the start).
        self.start_follows = False
        #: ... or end the campaign (a release before it yields to the next leader).
        self.exit_follows = False
        #: The keeper lets go of the election as the job ends (the embedded backend's
        #: flock, without a once-per slot): free before lelect's release.
        self.freed_by_keeper = False
        self.heartbeats = None
        self.notify = notify or Notifier({})
        self.loop_beat = time.monotonic()
        self.finished = False
        #: The once-per slot of the leadership under way (told to the release).
        self.slot: str | None = None
        #: The backend failed us (a lost lease, an outage): teardown is short.
        self.troubled = False
        self.status = status or CampaignStatus()
        self.status.election, self.status.node_id = options.election, self.candidate.node_id
        #: This candidate's word on --holders, claimed before each attempt (seats.py).
        self.pin = HoldersPin(backend, options.election, options.holders)
        self.disagreed = False
        self._pin_stop = threading.Event()

    # -- signals ----------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.blocking and signum in core.WAIT_INTERRUPTS:
            # Cancel by event, as kazoo's Lock.cancel() does: the campaign leaves the line
            # at its next look (never an exception raised into a client call).
            self.blocking = False
            self.cancelled_by = signum
            # No lock is taken in a handler (the main thread may hold it): a relay thread
            # sets the cancel event; the SimpleQueue's put is reentrant.
            try:
                os.write(self._cancel_w, b"c")
            except (OSError, TypeError):
                pass
            self.events.put(_Cancelled(signum))
            return
        self.events.put(core.SignalReceived(time.monotonic(), signum))

    def _install_signals(self) -> dict[int, Any]:
        previous = {}
        for sig in FORWARDED:
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: the caller handles signals
                return previous
        self._stop_wakeups = self._wake_on_signals()
        return previous

    def _wake_on_signals(self) -> Callable[[], None]:
        """The kernel may hand a signal to any thread (one that is not handling another),
        and Python runs the handler in the main thread once that thread runs bytecode: a
        main thread blocked in the events' get would not, and a SIGTERM would wait for
        the next event, perhaps for ever. The C half of the handler also writes to a
        wake-up pipe, whatever the thread; a reader thread then ends the get."""
        read_end, write_end = os.pipe()  # not inherited by the keeper or the job
        os.set_blocking(write_end, False)
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

        def read() -> None:
            try:
                while os.read(read_end, 512):
                    self.events.put(WAKE)
            except OSError:
                pass
            finally:
                os.close(read_end)

        threading.Thread(target=read, name="signal-wakeups", daemon=True).start()
        cancel_r, self._cancel_w = os.pipe()

        def relay_cancel() -> None:
            try:
                while os.read(cancel_r, 64):
                    self.cancel.set()
            except OSError:
                pass
            finally:
                os.close(cancel_r)

        threading.Thread(target=relay_cancel, name="cancel-relay", daemon=True).start()

        def stop() -> None:
            signal.set_wakeup_fd(previous)
            os.close(write_end)  # the reader reads the end of the pipe
            os.close(self._cancel_w)
            self._cancel_w = None

        return stop

    # -- the loop -----------------------------------------------------------------

    def run(self) -> CampaignResult:
        previous = self._install_signals()
        try:
            self._start_heartbeats()
            self._start_watchdog()
            commands = self.core.start(time.monotonic())
            self.notify.ready()  # a waiting standby is ready
            while True:
                outcome = None  # an attempt's outcome goes before anything its keeper said
                # A win's lease goes with its job's start, in one write to the keeper.
                self.start_follows = any(isinstance(c, core.StartJob) for c in commands)
                self.exit_follows = any(isinstance(c, core.Exit) for c in commands)
                for command in commands:
                    result = self._execute(command)
                    if isinstance(result, CampaignResult):
                        return result
                    outcome = result or outcome
                if outcome is None and self.leadership is not None and not self.leadership.kept:
                    # After the commands of the win (the keeper is told first: its job's
                    # start waits on no thread's start), not after the attempt itself.
                    self.leadership.keep()
                self.loop_beat = time.monotonic()
                commands = self.core.step(outcome or self._next_event())
        except BaseException:
            self.troubled = True
            self._let_go()
            raise
        finally:
            self.finished = True
            self.blocking = False
            self._pin_stop.set()
            self.notify.stopping()
            if self.heartbeats is not None:
                # After a lost lease or a failed connect the server may not answer: the
                # exit waits on it no longer than the parting budget.
                self.heartbeats.stop(budget=PARTING_BUDGET if self.troubled else 2.0)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._stop_wakeups is not None:
                self._stop_wakeups()
                self._stop_wakeups = None

    def _next_event(self) -> core.Event:
        self._send_recipe()  # a win whose job did not start (a once-per slot done)
        if self.first:  # what happened while the keeper had not yet said it won
            return self.first.pop(0)
        while True:
            wake_at = self.core.wake_at
            if self.notify.watchdog_interval is not None:  # the watchdog sees this loop turn
                beat = time.monotonic() + self.notify.watchdog_interval
                wake_at = beat if wake_at is None else min(wake_at, beat)
            timeout = None if wake_at is None else max(0.0, wake_at - time.monotonic())
            try:
                item = self.events.get(timeout=timeout)
            except queue.Empty:
                return core.Tick(time.monotonic())
            if item is not WAKE:  # a wake-up only lets the signal's handler run
                return self._translate(item)

    def _translate(self, item: object) -> core.Event:
        """A keeper's message or a leadership's change, as the core's event."""
        now = time.monotonic()
        if isinstance(item, core.Event):
            return item
        if isinstance(item, _Cancelled):  # it came just as the campaign returned: a stop
            return core.SignalReceived(now, item.signum)
        if isinstance(item, proto.Started):
            return core.JobStarted(now, item.pid)
        if isinstance(item, proto.Exited):
            return core.JobExited(now, item.status, item.reason)
        if isinstance(item, proto.ExecFailed):
            return core.ExecFailed(now, item.message)
        if isinstance(item, proto.Leftovers):
            return core.Leftovers(now, item.count, item.grace)
        if isinstance(item, proto.Suspended):
            return core.Suspended(now)
        if isinstance(item, Gone):
            if self.keeper is not None:
                self.keeper.kill_job_group()
            return core.KeeperGone(now)
        if isinstance(item, proto.Error):
            self.log("keeper-error", f"keeper: {item.message}")
        return core.Tick(now)  # nothing the core needs (Released, a late message)

    def _execute(self, command: core.Command) -> CampaignResult | core.Event | None:
        keeper = self.keeper
        if isinstance(command, core.Campaign):
            self.first = []
            self.events = queue.SimpleQueue()  # a late event of the last attempt must not reach this one
            return self._attempt()
        elif isinstance(command, core.TellDeadline) and keeper is not None:
            keeper.lease(command.deadline, command.grace, hold=self.start_follows)
        elif isinstance(command, core.StartJob) and keeper is not None:
            keeper.start(command.term, command.slot, command.seat)
            self._send_recipe()
        elif isinstance(command, core.StopJob) and keeper is not None:
            keeper.stop(command.signum, command.grace, command.reason)
            self.notify.status(f"stopping the job ({command.reason}), term {self.core.term}")
            if command.reason == "stop":
                self.notify.stopping()
        elif isinstance(command, core.ForwardSignal) and keeper is not None:
            keeper.signal(command.signum)
        elif isinstance(command, core.Release):
            self._release(command)
        elif isinstance(command, core.SuspendSelf):
            os.kill(os.getpid(), signal.SIGSTOP)
        elif isinstance(command, core.Log):
            self._status(command)
            if not (command.event == "elected" and self.announced):
                self.log(command.event, command.message, **command.fields)
        elif isinstance(command, core.Exit):
            return CampaignResult(command.status, command.signal)
        return None

    # -- one attempt --------------------------------------------------------------

    def job_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.options.extra_env)
        env["LELECT_ELECTION"] = self.options.election
        env["LELECT_NODE_ID"] = self.candidate.node_id
        job_backend_env(env, self.backend.url)  # no secrets: docs/security.md, "Secrets"
        for name in ("LELECT_TERM", "LELECT_SLOT", "LELECT_SEAT", "LELECT_VALUE", "NOTIFY_SOCKET",
                     "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)
        if self.options.value is not None:
            env["LELECT_VALUE"] = self.options.value
        return env

    def _attempt(self) -> core.Event:
        """Campaign once: Won, Busy, TimedOut or KeeperGone (the backend's errors raise)."""
        opts, backend = self.options, self.backend
        once = opts.once_per is not None or opts.once_key is not None
        lock = backend.local_lock(opts.election, self.candidate, no_wait=opts.no_wait,
                                  holders=opts.holders)
        announce = None
        if lock is not None and not once:
            template = getattr(self.log, "template", None)
            if template is not None:
                seated = {"seat": "{seat}"} if opts.holders > 1 else {}
                what = " seat {seat}" if seated else ""
                announce = template("elected", f"elected leader of {opts.election!r}{what}"
                                    " (term {term})", term="{term}", **seated)
        config = KeeperConfig(
            command=tuple(opts.command),
            program=self.program,
            stop_signal=int(opts.stop_signal),
            grace=self.timing.grace,
            lock=lock,
            deadline=None if opts.timeout is None else time.monotonic() + opts.timeout,
            autostart=not once,
            autorelease=opts.hold_at_least <= 0 and not once,
            history_limit=backend.history_limit,
            announce=announce,
        )
        # Every candidate agrees on --holders (seats.py): claimed while the campaign makes
        # its first contact, and settled before any job runs.
        agreed = self.pin.claim_alongside()
        if lock is not None:
            # The keeper starts the job the moment it wins: settle first (a local
            # database; one held busy by another process is not waited for long).
            agreed(LOCAL_VERDICT)
        keeper = self.keeper = KeeperHandle(config, self.job_env(), self.events,
                                      on_respawn=self._keeper_respawned)
        self.freed_by_keeper = lock is not None and config.autorelease
        # The next in line has its job forked early, to wait at lelect's gate (or, where
        # the keeper forks in Python, for the keeper's word).
        self.prepares = config.autostart and config.gated
        self.announced = False
        self.next_in_line = False
        # While we wait, so winning costs only the job's fork/exec. Where the backend
        # says who is next in line: once we are (the candidates behind wait without one;
        # a first look that wins at once starts it then).
        keeper.spawn(on_demand=(self.prepares and backend.tells_next_in_line
                                and opts.holders <= 1 and not opts.no_wait))
        self.cancel = Cancel()
        self.cancelled_by = None
        self.blocking = True
        try:
            if lock is not None:
                won = self._wait_for_keeper(lock, keeper)
                if not isinstance(won, Leadership):
                    return won
                leadership = won
                self.announced = keeper.autostart and announce is not None
            elif opts.holders > 1:
                leadership = campaign_seat(
                    backend, opts.election, self.candidate, opts.holders, timeout=opts.timeout,
                    no_wait=opts.no_wait, ttl=self.timing.ttl, on_wait=self._on_wait,
                    cancel=self.cancel, pin=self.pin, on_head=self._head_of_line,
                )
            else:
                # The keeper is told before the lease's threads start (run(), below).
                leadership = backend.campaign(
                    opts.election, self.candidate, timeout=opts.timeout, no_wait=opts.no_wait,
                    ttl=self.timing.ttl, on_wait=self._on_wait, cancel=self.cancel,
                    keep_later=True, on_next=self._on_next if self.prepares else None,
                )
        except ElectionBusy as busy:
            keeper.kill()
            return core.Busy(time.monotonic(), str(busy).split(" is led by ", 1)[-1])
        except CampaignTimeout as late:
            keeper.kill()
            return core.TimedOut(time.monotonic(), str(late))
        except BackendUnavailable as trouble:
            if not opts.restart:
                raise
            keeper.kill()  # --restart: an outage of any length is waited out
            return core.Unreachable(time.monotonic(), str(trouble))
        except CampaignCancelled:
            return self._cancelled(keeper)
        finally:
            self.blocking = False
            if self.heartbeats is not None:
                self.heartbeats.begin()  # won, or gave up: the campaign made its contact
        try:
            agreed()
        except HoldersMismatch:
            keeper.kill()
            leadership.release("stopped", None, "its candidates disagree on --holders")
            raise
        self.leadership = leadership
        return self._won(leadership, keeper)

    def _head_of_line(self, line: Leadership) -> None:
        """At the head of the line for a seat: should lelect die there, its keeper
        hands the line back at once (the next in line need not wait for its lease)."""
        recipe = self.backend.hand_back(line)
        if recipe is not None and self.keeper is not None:
            self.keeper.hand_back_with(recipe)

    def _cancelled(self, keeper: KeeperHandle) -> core.Event:
        keeper.kill()  # a job it had just started gets the stop signal and the grace
        self._report_late_job(keeper)
        return core.SignalReceived(time.monotonic(), self.cancelled_by or signal.SIGTERM)

    def _status(self, log: core.Log) -> None:
        """systemd's STATUS= line, from what the core logs."""
        term = log.fields.get("term", self.core.term)
        if log.event == "elected":
            self.notify.status(f"leading (term {term})")
        elif log.event == "job-started":
            self.notify.status(f"leading (term {self.core.term}), job pid {log.fields['pid']}")
        elif log.event in ("released", "stopped", "restart", "hold", "lost"):
            self.notify.status(log.message)

    def _start_watchdog(self) -> None:
        """WATCHDOG=1 while this loop turns (or a campaign call is under way) and, while
        leading a lease, the lease is current: a stuck loop or renew stops the pings."""
        interval = self.notify.watchdog_interval
        if interval is None:
            return

        def ping() -> None:
            while not self.finished:
                now = time.monotonic()
                leadership = self.leadership
                lease_ok = (leadership is None or leadership.lease_deadline is None
                            or leadership.lease_deadline > now)
                if (self.blocking or now - self.loop_beat < 3 * interval) and lease_ok:
                    self.notify.watchdog()
                time.sleep(interval)

        threading.Thread(target=ping, name="systemd-watchdog", daemon=True).start()

    def _report_late_job(self, keeper: KeeperHandle) -> None:
        """lelect was stopped just as its keeper won: say how the job it had started
        ended (the keeper closed that leadership's record itself)."""
        while True:
            try:
                message = keeper.events.get_nowait()
            except queue.Empty:
                return
            if isinstance(message, proto.Exited):
                self.log("released", f"job exited with status {message.status}; released"
                         f" {self.options.election!r}", status=message.status)

    def _on_wait(self, holder: LeaderInfo | None) -> None:
        if self.heartbeats is not None:
            self.heartbeats.begin()
        for command in self.core.reachable():
            self._execute(command)
        who = f"{holder.node_id} leads (term {holder.term})" if holder else "somebody leads"
        self.notify.status(f"waiting: {who}")
        self.log("waiting", f"waiting for {self.options.election!r}: {who}",
                 **({"leader": holder.node_id, "leader_term": holder.term} if holder else {}))
        trim_heap()  # what start-up freed need not stay resident while we wait

    def _on_next(self, ready: bool) -> None:
        """The backend's hint: next in line (``ready``), or no longer. The keeper forks the
        job early (it runs only once a Start comes), or lets that process go."""
        self.next_in_line = ready
        if self.keeper is not None and self.options.command:
            self.keeper.prepare(ready)

    def _wait_for_keeper(self, lock, keeper: KeeperHandle) -> Leadership | core.Event:
        """The embedded backend: the keeper takes the flock (and gives up at the
        deadline by itself: only it knows whether the job started)."""
        deferred: list[core.Event] = []
        try:
            return self._keeper_verdict(lock, keeper, deferred)
        finally:
            # Signals that came before the keeper said it won go first, before its news.
            self.first.extend(deferred)

    def _keeper_verdict(self, lock, keeper: KeeperHandle, deferred: list) -> Leadership | core.Event:
        while True:
            message = keeper.events.get()
            if isinstance(message, (_Cancelled, core.SignalReceived)) and (
                    message.signum in core.WAIT_INTERRUPTS):
                # The keeper may have won and started the job already (it says so once
                # the record is written): SIGTERM makes a waiting keeper just exit and a
                # winning one stop its job. Its verdict still decides what happened.
                self.cancelled_by = message.signum
                if keeper.process is not None and keeper.process.poll() is None:
                    keeper.process.terminate()
                continue
            if isinstance(message, core.SignalReceived):
                deferred.append(message)
                continue
            if isinstance(message, proto.Locked):
                if self.cancelled_by is not None:  # the core stops the job it started
                    deferred.append(core.SignalReceived(time.monotonic(), self.cancelled_by))
                if message.seat >= 0:  # the keeper took that seat
                    seat = seat_election(lock.election, message.seat)
                    lock = replace(lock, election=seat, lock_path=self.backend.lock_path(seat))
                return self.backend.adopt_local_lock(lock, message.term, message.since,
                                                     release_lock=self._let_go_of(keeper))
            if isinstance(message, proto.Waiting):
                self._on_wait(self._holder())
                continue
            if isinstance(message, proto.Busy):
                keeper.kill()
                raise ElectionBusy(f"election {self.options.election!r} is led by"
                                   f" {self._holder_text()}")
            if isinstance(message, proto.TimedOut):
                keeper.kill()
                raise CampaignTimeout(
                    f"not elected leader of {self.options.election!r} within"
                    f" {format_duration(self.options.timeout or 0.0)}"
                )
            if isinstance(message, proto.Error):
                keeper.kill()
                raise ConfigError(message.message)
            if isinstance(message, Gone):
                if self.cancelled_by is not None:  # it exited as told: nothing ran on
                    self._report_late_job(keeper)
                    return core.SignalReceived(time.monotonic(), self.cancelled_by)
                # Killed from outside; it may have won and started the job already, which
                # the kernel then killed with it (and lelect's subreaper, its children).
                return core.KeeperGone(time.monotonic())
            # Anything else waits: news of the job comes after "locked".

    def _let_go_of(self, keeper: KeeperHandle) -> Callable[[], None]:
        """The embedded backend's release of a leadership its keeper holds. When lelect
        exits after it, what is left (the record, the exit) is tidying up: it runs at
        the lowest priority, so that on a small host the next leader's job, starting
        this very moment, goes first."""

        def release() -> None:
            keeper.release()
            if self.core.state == core.DONE:
                tidy_up_slowly()

        return release

    def _keeper_respawned(self) -> None:
        self.log("keeper-respawned", "the keeper of this waiting candidate died; a new one"
                 " took its place (still in line)")
        if self.next_in_line and self.keeper is not None:
            self.keeper.prepare()

    def _holder(self) -> LeaderInfo | None:
        """Who leads (with seats: the holder of the lowest seat held)."""
        if self.options.holders > 1:
            held = seat_holders(self.backend, self.options.election, self.options.holders)
            return next((seat.holder for seat in held if seat.holder), None)
        return self.backend.leader(self.options.election)

    def _holder_text(self) -> str:
        holder = self._holder()
        return f"{holder.node_id} (term {holder.term})" if holder else "another candidate"

    def _won(self, leadership: Leadership, keeper: KeeperHandle) -> core.Won:
        opts = self.options
        slot = done = None
        if opts.once_per is not None or opts.once_key is not None:
            slot = opts.once_key or slot_name(self.backend.now(), opts.once_per or 0.0)
            done = self.backend.slot_done(leadership.election, slot) is not None
            self.slot = slot
        self.recipe_of = leadership
        events = self.events
        now = time.monotonic

        def changed(kind: str) -> None:
            if kind == "deadline" and leadership.lease_deadline is not None:
                events.put(core.Renewed(now(), leadership.lease_deadline))
            elif kind == "lost":
                self.troubled = True
                events.put(core.Lost(now(), leadership.lost_reason or "the leadership was lost"))
            elif kind == "resign":
                events.put(core.ResignRequested(now()))

        leadership.subscribe(changed)
        # Anything that happened while the leadership was being set up.
        if leadership.lost.is_set():
            changed("lost")
        if leadership.resign_requested.is_set():
            changed("resign")
        if self.heartbeats is not None:
            self.heartbeats.set_role("leader", leadership.term, leadership.seat)
        self._proclaim(leadership)
        self.status.leadership = leadership
        return core.Won(now(), leadership.term, leadership.lease_deadline,
                        job_started=keeper.autostart, slot=slot, slot_done=bool(done),
                        seat=leadership.seat)

    def _send_recipe(self) -> None:
        """Tell the keeper how to hand the leadership just won back should lelect die:
        after the job's start, which waits on nothing it needs (dying in between costs
        the next leader the wait for the lease, never the election's safety)."""
        leadership, self.recipe_of = self.recipe_of, None
        if leadership is not None and self.keeper is not None:
            recipe = self.backend.hand_back(leadership)
            if recipe is not None:
                self.keeper.hand_back_with(recipe)

    def _proclaim(self, leadership: Leadership) -> None:
        """Publish --value with the leadership just won; its job may proclaim another
        (``lelect proclaim``), so the release forgets this term's value either way."""
        leadership.publishes_value = True
        if self.options.value is None:
            return
        try:
            leadership.proclaim(self.options.value)
        except LelectError as exc:  # a leadership lost meanwhile is the lease's news
            self.log("warning", f"could not publish the value of term {leadership.term}: {exc}")

    def _release(self, command: core.Release) -> None:
        """Release the election first, then tidy up."""
        if command.outcome == LOST:
            self.troubled = True  # the server may not answer: the exit must not wait on it
        leadership, keeper = self.leadership, self.keeper
        self.leadership = self.status.leadership = None
        try:
            if leadership is not None:
                ended = None
                yields = self.exit_follows
                if yields and self.freed_by_keeper:
                    ended = time.time()
                    time.sleep(YIELD_TO_NEXT_LEADER)  # the record waits, not the next job
                    yields = False
                leadership.release(command.outcome, command.exit_status, command.reason,
                                   self.slot, ended=ended, tidy_later=yields)
                if yields:
                    try:
                        time.sleep(YIELD_TO_NEXT_LEADER)
                    finally:
                        leadership.tidy_up()  # etcd's lease revoke and history trim
        finally:
            if keeper is not None:
                keeper.close()
                self.keeper = None
            if self.heartbeats is not None:
                self.heartbeats.set_role("follower", None)

    def _let_go(self) -> None:
        """Interrupted at any point: stop the keeper (and so any job) and release any
        leadership that was won but not yet released."""
        if self.keeper is not None:
            self.keeper.kill()
        for leadership in list(self.backend.leaderships):
            if not leadership.released:
                try:
                    leadership.release("stopped", None, "lelect failed")
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass

    def _refresh_holders(self) -> None:
        """Keep this candidate's word on --holders alive (from the heartbeat thread); say
        once if the election's candidates have come to disagree (two that started at
        the same instant on an election nobody ran)."""
        try:
            self.pin.refresh_if_due()
        except HoldersMismatch as exc:
            if not self.disagreed:
                self.disagreed = True
                self.log("holders-disagree", str(exc))

    def _start_holders_refresh(self) -> None:
        """The heartbeat thread refreshes this candidate's word on --holders after each
        beat; with no heartbeats, or beats further apart than a refresh is due, a thread
        of its own does (else the note expires under running holders, and a candidate
        with another --holders is let in beside them)."""
        every = self.options.heartbeat_interval
        if 0 < every <= PIN_TTL / 3 or not self.pin.needs_refresh:
            return  # (a claim kept by the session: the heartbeat's look is enough)

        def refresh() -> None:
            while not self._pin_stop.wait(PIN_TTL / 6):
                try:
                    self._refresh_holders()
                except Exception:  # noqa: BLE001 - a refresh is advisory; the next one retries
                    pass

        threading.Thread(target=refresh, name="holders-refresh", daemon=True).start()

    def _start_heartbeats(self) -> None:
        self._start_holders_refresh()
        if self.options.heartbeat_interval <= 0:
            return
        from lelect.heartbeats import HeartbeatPublisher

        def duplicate(other) -> None:
            self.log("duplicate-id", f"another live candidate uses the node id"
                     f" {self.candidate.node_id!r} (host {other.host}, pid {other.pid}):"
                     " give each candidate its own --id")

        self.heartbeats = HeartbeatPublisher(
            self.backend,
            self.options.election,
            self.candidate,
            interval=self.options.heartbeat_interval,
            forget_after=self.options.forget_after,
            on_duplicate=duplicate,
            on_beat=self._refresh_holders,
        )
        # The first beat (and the look for a duplicate id) waits for the campaign's first
        # contact with the server: a backend with one session per candidate (ZooKeeper)
        # then has the campaign's session to send it on, not a second one of its own.
        self.heartbeats.start(hold=True)


def run_campaign(backend: Backend, options: CampaignOptions, log: Log = _no_log,
                 notify: Notifier | None = None, status: CampaignStatus | None = None
                 ) -> CampaignResult:
    """Campaign, run ``options.command`` while leading; return how it ended (``.status``
    is lelect's exit status). ``notify=Notifier()`` talks to systemd (Type=notify);
    ``status`` is kept current for a probe. Raises LelectError subclasses for
    configuration and backend failures."""
    return _Driver(backend, options, log, notify, status).run()
