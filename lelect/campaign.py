"""The leadership loop for any backend: win, run the job under its keeper, stop it when
leadership is lost, resigned or the job is done, release at once.

:func:`run_campaign` is what ``lelect campaign`` calls; a Python user can call it too.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lelect.backends.base import Backend, Candidate, Leadership, lease_drift
from lelect.durations import format_duration
from lelect.errors import CampaignTimeout, CommandNotFound, ConfigError, ElectionBusy, UsageError
from lelect.names import validate_election
from lelect.supervisor import Keeper, KeeperEvent

#: Signals forwarded to the job's process group while it runs.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGWINCH)
#: Signals that mean "lelect, stop": the job gets the same signal, SIGKILL after the
#: grace, and there is no restart. (SIGHUP is only forwarded: jobs often reload on it.)
STOPPING = (signal.SIGINT, signal.SIGTERM)
#: Signals that end lelect while it still waits for leadership.
WAIT_INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

EXIT_LOST = 73
EXIT_CONFLICT = 75
EXIT_TIMEOUT = 124
EXIT_NOT_FOUND = 127

Log = Callable[..., None]


def _no_log(event: str, message: str, **fields: Any) -> None:
    pass


@dataclass(frozen=True)
class CampaignOptions:
    election: str
    command: Sequence[str]
    node_id: str | None = None
    stop_signal: int = signal.SIGTERM
    grace: float | None = None  # None: 10 s, or what fits the lease
    ttl: float | None = None  # None: the backend's
    max_runtime: float | None = None
    no_wait: bool = False
    conflict_exit_code: int = EXIT_CONFLICT
    timeout: float | None = None
    hold_at_least: float = 0.0
    restart: bool = False
    restart_delay: float = 1.0
    resign_cooldown: float = 10.0
    heartbeat_interval: float = 2.0
    forget_after: float = 3600.0
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LeaseTiming:
    ttl: float | None  # None: no lease (file backend)
    renew_interval: float | None
    grace: float


DEFAULT_GRACE = 10.0


def lease_timing(backend: Backend, ttl: float | None, grace: float | None) -> LeaseTiming:
    """Work out ttl and grace, refusing combinations that cannot keep the lease promise:
    the job must be stopped (stop signal at deadline - grace) only after the next renew
    had its chance, and be dead by the deadline."""
    if not backend.lease_based:
        return LeaseTiming(None, None, DEFAULT_GRACE if grace is None else grace)
    ttl = ttl if ttl is not None else getattr(backend, "ttl", backend.default_ttl)
    if ttl <= 0:
        raise ConfigError("--ttl must be longer than 0")
    renew = backend.renew_interval(ttl)
    # The stop signal goes out at deadline - grace; that must come after the next renew
    # had time to be answered (allow 5% of the ttl for its round trip).
    room = ttl - renew - lease_drift(ttl) - 0.05 * ttl
    if grace is None:
        return LeaseTiming(ttl, renew, min(DEFAULT_GRACE, room / 2))
    if grace > room:
        raise ConfigError(
            f"--grace {format_duration(grace)} is too long for a {format_duration(ttl)} lease"
            f" renewed every {format_duration(renew)}: the job could outlive its lease."
            f" Use --grace {format_duration(room)} or less, or a longer --ttl"
        )
    return LeaseTiming(ttl, renew, grace)


def check_command(command: Sequence[str]) -> str:
    """Refuse a command that cannot run before campaigning, not after winning; return
    the program's path, resolved once here so the keeper need not search PATH."""
    if not command:
        raise UsageError("missing the command to run: lelect campaign NAME [OPTIONS] -- CMD [ARGS]...")
    program = command[0]
    if "/" in program:
        if not os.path.exists(program):
            raise CommandNotFound(f"{program}: no such file")
        if os.path.isdir(program) or not os.access(program, os.X_OK):
            raise CommandNotFound(f"{program}: not executable")
        return program
    found = shutil.which(program)
    if found is None:
        raise CommandNotFound(f"{program}: command not found in PATH")
    return found


class Interrupted(Exception):
    """lelect was told to stop (SIGINT/SIGTERM/SIGHUP) while it waited."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Campaign:
    def __init__(self, backend: Backend, options: CampaignOptions, log: Log) -> None:
        validate_election(options.election)
        self.program = check_command(options.command)
        self.backend = backend
        self.options = options
        self.log = log
        self.timing = lease_timing(backend, options.ttl, options.grace)
        self.candidate = Candidate.local(options.node_id)
        self.events: queue.Queue = queue.Queue()
        self.leading = False
        self.finishing = False
        self.keeper: Keeper | None = None
        self.stop_requested: int | None = None
        self.heartbeats = None

    # -- signals ----------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.finishing:
            return  # already on the way out; cleanup must not be cut short
        if self.leading:
            self.events.put(("signal", signum))
        elif signum in WAIT_INTERRUPTS:
            raise Interrupted(signum)

    def _install_signals(self) -> dict[int, Any]:
        previous = {}
        for sig in FORWARDED:
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: the caller handles signals
                return previous
        return previous

    # -- the loop -------------------------------------------------------------

    def job_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.options.extra_env)
        env["LELECT_ELECTION"] = self.options.election
        env["LELECT_NODE_ID"] = self.candidate.node_id
        env["LELECT_BACKEND"] = self.backend.display_url
        return env

    def run(self) -> int:
        previous = self._install_signals()
        try:
            self._start_heartbeats()
            return self._run()
        except Interrupted as stop:
            self.finishing = True
            self.log("interrupted", f"stopped by {signal.Signals(stop.signum).name} while waiting")
            self._let_go()
            return 128 + stop.signum
        except BaseException:
            self.finishing = True
            self._let_go()
            raise
        finally:
            self.finishing = True
            if self.heartbeats is not None:
                self.heartbeats.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _let_go(self) -> None:
        """Interrupted at any point: stop the keeper (and so any job) and release any
        leadership that was won but not yet handed to the loop."""
        if self.keeper is not None:
            self.keeper.kill()
        for leadership in list(self.backend.leaderships):
            if not leadership.released:
                try:
                    leadership.release()
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass

    def _start_heartbeats(self) -> None:
        if self.options.heartbeat_interval <= 0:
            return
        from lelect.health import HeartbeatPublisher

        self.heartbeats = HeartbeatPublisher(
            self.backend,
            self.options.election,
            self.candidate,
            interval=self.options.heartbeat_interval,
            forget_after=self.options.forget_after,
        )
        self.heartbeats.start()

    def _run(self) -> int:
        opts = self.options
        delay = opts.restart_delay
        while True:
            # A queue per attempt: a late event of the last keeper or leadership (its
            # "gone", a renew thread's "lost") must never reach this one.
            self.events = queue.Queue()
            keeper = self.keeper = Keeper(
                opts.command,
                self.job_env(),
                program=self.program,
                stop_signal=opts.stop_signal,
                grace=self.timing.grace,
                events=self.events,
                autorelease=opts.hold_at_least <= 0,
            )
            if self.backend.lease_based:
                keeper.spawn()  # while we wait, so winning costs only the job's fork/exec
            self.log("campaigning", f"campaigning for {opts.election!r} as {self.candidate.node_id}"
                     f" ({self._holder()})")
            try:
                leadership = self.backend.campaign(
                    opts.election,
                    self.candidate,
                    timeout=opts.timeout,
                    no_wait=opts.no_wait,
                    ttl=self.timing.ttl,
                    **({} if self.backend.lease_based else {"keeper": keeper}),
                )
            except ElectionBusy as busy:
                keeper.kill()
                self.log("busy", str(busy))
                return opts.conflict_exit_code
            except CampaignTimeout as late:
                keeper.kill()
                self.log("timeout", str(late))
                return EXIT_TIMEOUT
            except BaseException:
                keeper.kill()
                raise
            status, outcome, ran_for = self._lead(leadership, keeper)
            if outcome == "execfail" or not opts.restart or self.stop_requested is not None:
                return status
            if outcome == "resign":
                pause = opts.resign_cooldown
            else:
                delay = opts.restart_delay if ran_for >= 10 else delay
                pause, delay = delay, min(delay * 2, 30.0)
            self.log("restart", f"rejoining the race in {format_duration(pause)}")
            self._pause(pause)

    def _holder(self) -> str:
        """Who leads now, for the log (this also reaches the backend before we wait, so an
        unreachable one fails with its own one line)."""
        current = self.backend.leader(self.options.election)
        if current is None:
            return "nobody leads"
        return f"{current.node_id} leads, term {current.term}"

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                kind = self.events.get(timeout=left)
            except queue.Empty:
                return
            if isinstance(kind, tuple) and kind[0] == "signal" and kind[1] in WAIT_INTERRUPTS:
                raise Interrupted(kind[1])

    def _lead(self, leadership: Leadership, keeper: Keeper) -> tuple[int, str, float]:
        """Run the job while we lead; return (exit status, outcome, seconds it ran)."""
        opts, timing = self.options, self.timing
        won_at = time.monotonic()
        self.log(
            "elected",
            f"elected leader of {opts.election!r} (term {leadership.term})",
            term=leadership.term,
        )
        if self.heartbeats is not None:
            self.heartbeats.set_role("leader", leadership.term)
        events = self.events
        leadership.subscribe(lambda kind: events.put(("leadership", kind)))
        if leadership.lease_deadline is not None:
            leadership.on_deadline(lambda deadline: keeper.lease(deadline, timing.grace))
            keeper.lease(leadership.lease_deadline, timing.grace)
        if not keeper.autostart:
            keeper.start(leadership.term)
        # Anything that happened while the leadership was being set up.
        if leadership.lost.is_set():
            events.put(("leadership", "lost"))
        if leadership.resign_requested.is_set():
            events.put(("leadership", "resign"))
        self.leading = True
        outcome = "exit"
        stop_deadline = None if opts.max_runtime is None else won_at + opts.max_runtime
        job_status = 0
        try:
            while True:
                timeout = None if stop_deadline is None else max(0.0, stop_deadline - time.monotonic())
                try:
                    event = self.events.get(timeout=timeout)
                except queue.Empty:
                    stop_deadline = None
                    outcome = "max-runtime"
                    self.log("max-runtime", f"the job ran for {format_duration(opts.max_runtime)}: stopping it")
                    keeper.stop(opts.stop_signal, timing.grace, "max-runtime")
                    continue
                if isinstance(event, KeeperEvent):
                    if event.kind == "started":
                        self.log("job-started", f"job started (pid {event.args[0]})", pid=int(event.args[0]))
                    elif event.kind == "execfail":
                        self.log("execfail", f"cannot run {event.args[0]}")
                        self._release(leadership, keeper)
                        return EXIT_NOT_FOUND, "execfail", 0.0
                    elif event.kind == "exited":
                        job_status = int(event.args[0])
                        reason = event.args[1] if len(event.args) > 1 else "exit"
                        if reason == "lease" or leadership.lost.is_set():
                            if outcome != "lost":
                                self.log("lost", f"lost leadership of {opts.election!r}:"
                                         " the lease ran out without a renew; the keeper stopped the job")
                            outcome = "lost"
                        break
                    elif event.kind == "gone":
                        # Somebody killed the keeper itself: make sure the job goes too.
                        if keeper.job_pid is not None:
                            try:
                                os.killpg(keeper.job_pid, signal.SIGKILL)
                            except OSError:
                                pass
                        self.log("keeper-gone", "the job's keeper died; the job was killed")
                        outcome = "lost"
                        job_status = EXIT_LOST
                        break
                    continue
                kind, value = event
                if kind == "signal":
                    if value in STOPPING:
                        self.stop_requested = value
                        keeper.stop(value, timing.grace, "stop")
                    else:
                        keeper.signal(value)
                elif kind == "leadership" and value == "lost" and outcome != "lost":
                    outcome = "lost"
                    self.log("lost", f"lost leadership of {opts.election!r}: {leadership.lost_reason}")
                    grace = timing.grace
                    if leadership.lease_deadline is not None:
                        grace = min(grace, max(0.0, leadership.lease_deadline - time.monotonic()))
                    keeper.stop(opts.stop_signal, grace, "lost")
                elif kind == "leadership" and value == "resign" and outcome == "exit":
                    outcome = "resign"
                    self.log("resign", "resign requested: stopping the job")
                    keeper.stop(opts.stop_signal, timing.grace, "resign")
        finally:
            self.leading = False
        ran_for = time.monotonic() - won_at
        if outcome == "exit" and opts.hold_at_least > ran_for:
            self._hold(leadership, won_at + opts.hold_at_least)
        self._release(leadership, keeper)
        if self.heartbeats is not None:
            self.heartbeats.set_role("follower", None)
        if outcome == "lost":
            self.log("stopped", f"job stopped after losing leadership (status {job_status})")
            return EXIT_LOST, outcome, ran_for
        self.log("released", f"released {opts.election!r} (job status {job_status})", status=job_status)
        if outcome == "resign":
            return 0, outcome, ran_for
        return job_status, outcome, ran_for

    def _hold(self, leadership: Leadership, until: float) -> None:
        """--hold-at-least: keep the election after the job ended (renews go on)."""
        self.log("hold", f"holding the election for {format_duration(until - time.monotonic())} more")
        while (left := until - time.monotonic()) > 0 and not leadership.lost.is_set():
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                return
            if isinstance(event, tuple) and event[0] == "signal" and event[1] in STOPPING:
                self.stop_requested = event[1]
                return
            if isinstance(event, tuple) and event == ("leadership", "resign"):
                return

    def _release(self, leadership: Leadership, keeper: Keeper) -> None:
        """Release the election first, then tidy up."""
        try:
            leadership.release()
        finally:
            keeper.close()


def run_campaign(backend: Backend, options: CampaignOptions, log: Log = _no_log) -> int:
    """Campaign, run ``options.command`` while leading; return lelect's exit status.

    Raises LelectError subclasses for configuration and backend failures."""
    return _Campaign(backend, options, log).run()
