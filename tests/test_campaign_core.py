"""The pure campaign core: its promises, property-tested over random event sequences and
timings (hypothesis), and the exit status table as examples. No clock, no processes."""

from __future__ import annotations

import signal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lelect import campaign_core as core

SIGTERM, SIGINT, SIGHUP, SIGUSR1 = (int(s) for s in (signal.SIGTERM, signal.SIGINT,
                                                     signal.SIGHUP, signal.SIGUSR1))


class World:
    """Carries out the core's commands the way the driver and keeper would, and offers
    the events that can happen next. Records (time, command) for the checks."""

    def __init__(self, policy: core.Policy, ttl: float | None) -> None:
        self.policy = policy
        self.ttl = ttl
        self.core = core.CampaignCore(policy)
        self.now = 0.0
        self.trace: list[tuple[float, object]] = []
        self.events: list[core.Event] = []
        self.campaigning = False
        self.job = "none"  # none | starting | running | exited
        self.leading = False
        self.deadline: float | None = None
        self.exited = False
        self.kill_by: float | None = None  # the keeper's SIGKILL time for a stop

    def run(self, commands) -> None:
        for command in commands:
            self.trace.append((self.now, command))
            if isinstance(command, core.Campaign):
                assert not self.leading and self.job in ("none", "exited")
                self.campaigning = True
            elif isinstance(command, core.StartJob):
                self.job = "starting"
            elif isinstance(command, core.StopJob):
                kill = self.now + command.grace
                self.kill_by = kill if self.kill_by is None else min(self.kill_by, kill)
            elif isinstance(command, core.Release):
                self.leading = False
                self.deadline = None
            elif isinstance(command, core.Pause):
                pass
            elif isinstance(command, core.Exit):
                self.exited = True

    def step(self, event: core.Event) -> None:
        self.trace.append((self.now, event))
        self.run(self.core.step(event))

    def options(self) -> list[str]:
        """The kinds of event that can happen now."""
        # Weighted by repetition: long runs with several leaderships are the interesting ones.
        kinds = ["tick"] * 4 + ["signal"]
        if self.campaigning:
            kinds += ["won"] * 12 + ["busy", "timeout"]
        if self.leading:
            kinds += ["lost", "resign"]
            if self.ttl is not None:
                kinds += ["renew"] * 4
        if self.job == "starting":
            kinds += ["started"] * 6 + ["execfail"]
        if self.job in ("starting", "running"):
            kinds += ["exit"] * 6 + ["keeper-gone", "suspend"]
        return kinds

    def happen(self, kind: str, data) -> None:
        now = self.now
        if kind == "tick":
            self.step(core.Tick(now))
        elif kind == "signal":
            self.step(core.SignalReceived(now, data.draw(st.sampled_from([SIGTERM, SIGINT, SIGHUP, SIGUSR1]))))
        elif kind == "won":
            self.campaigning = False
            self.leading = True
            self.deadline = None if self.ttl is None else now + self.ttl * 0.98
            self.kill_by = None
            done = data.draw(st.booleans()) and data.draw(st.booleans())
            self.step(core.Won(now, data.draw(st.integers(1, 10**6)), self.deadline,
                               slot="s" if done else None, slot_done=done))
        elif kind == "busy":
            self.campaigning = False
            self.step(core.Busy(now))
        elif kind == "timeout":
            self.campaigning = False
            self.step(core.TimedOut(now))
        elif kind == "renew":
            self.deadline = now + self.ttl * 0.98
            self.step(core.Renewed(now, self.deadline))
        elif kind == "lost":
            self.step(core.Lost(now, "test"))
        elif kind == "resign":
            self.step(core.ResignRequested(now))
        elif kind == "started":
            self.job = "running"
            self.step(core.JobStarted(now, 4242))
        elif kind == "execfail":
            self.job = "exited"
            self.step(core.ExecFailed(now, "nope"))
        elif kind == "exit":
            self.job = "exited"
            cause = "lease" if self.deadline is not None and now >= self.deadline else "exit"
            self.step(core.JobExited(now, data.draw(st.sampled_from([0, 0, 0, 1, 3, 137, 143])), cause))
        elif kind == "keeper-gone":
            self.job = "exited"
            self.step(core.KeeperGone(now))
        elif kind == "suspend":
            self.step(core.Suspended(now))


policies = st.builds(
    core.Policy,
    election=st.just("e"),
    stop_signal=st.just(SIGTERM),
    grace=st.sampled_from([0.0, 0.2, 1.0, 5.0]),
    lease=st.booleans(),
    max_runtime=st.one_of(st.none(), st.sampled_from([0.5, 2.0, 10.0])),
    hold_at_least=st.sampled_from([0.0, 0.0, 1.0, 5.0]),
    restart=st.booleans(),
    restart_delay=st.sampled_from([0.0, 0.5, 1.0]),
    resign_cooldown=st.sampled_from([0.0, 3.0]),
    conflict_exit_code=st.just(75),
)


def simulate(policy: core.Policy, data, steps: int = 60) -> World:
    ttl = 3.0 if policy.lease else None
    world = World(policy, ttl)
    world.run(world.core.start(0.0))
    for _ in range(steps):
        if world.exited:
            break
        world.now += data.draw(st.sampled_from([0.0, 0.0, 0.0, 0.01, 0.1, 0.5, 1.0, 3.0]))
        wake = world.core.wake_at
        if wake is not None and data.draw(st.booleans()):
            world.now = max(world.now, wake)
            world.step(core.Tick(world.now))
            continue
        world.happen(data.draw(st.sampled_from(world.options())), data)
    return world


def commands_of(world: World, kind) -> list[tuple[float, object]]:
    return [(t, c) for t, c in world.trace if isinstance(c, kind)]


fast = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(policies, st.data())
def test_the_job_is_started_at_most_once_per_leadership(policy, data):
    world = simulate(policy, data)
    started = False
    for _, item in world.trace:
        if isinstance(item, core.StartJob):
            assert not started, "a second StartJob without an exit between"
            started = True
        elif isinstance(item, (core.JobExited, core.ExecFailed, core.KeeperGone)):
            started = False


@fast
@given(policies, st.data())
def test_the_dead_man_switch_is_armed_before_the_job_starts(policy, data):
    world = simulate(policy, data)
    armed = False
    for _, item in world.trace:
        if isinstance(item, core.Won):
            armed = False
        elif isinstance(item, core.TellDeadline):
            armed = True
        elif isinstance(item, core.StartJob) and policy.lease:
            assert armed


@fast
@given(policies, st.data())
def test_a_lost_lease_kills_the_job_by_its_deadline(policy, data):
    world = simulate(policy, data)
    deadline = None
    lost_at = None
    for t, item in world.trace:
        if isinstance(item, core.Won):
            deadline, lost_at = item.lease_deadline, None
        elif isinstance(item, core.Renewed):
            deadline = max(deadline or 0.0, item.deadline)
        elif isinstance(item, core.Lost):
            lost_at = t
        elif isinstance(item, core.StopJob) and item.reason == "lost":
            assert lost_at == t  # at once
            if deadline is not None:
                assert t + item.grace <= max(deadline, t) + 1e-9


@fast
@given(policies, st.data())
def test_release_comes_only_after_the_job_is_gone(policy, data):
    world = simulate(policy, data)
    running = False
    for _, item in world.trace:
        if isinstance(item, core.StartJob):
            running = True
        elif isinstance(item, core.Won) and item.job_started:
            running = True
        elif isinstance(item, (core.JobExited, core.ExecFailed, core.KeeperGone)):
            running = False
        elif isinstance(item, core.Release):
            assert not running, "released while the job may still run"


@fast
@given(policies, st.data())
def test_hold_at_least_keeps_the_leadership_of_a_job_that_ended_early(policy, data):
    world = simulate(policy, data)
    won_at = None
    interrupted = False
    for t, item in world.trace:
        if isinstance(item, core.Won):
            won_at, interrupted = t, item.slot_done
        elif isinstance(item, (core.Lost, core.ResignRequested, core.KeeperGone, core.ExecFailed)):
            interrupted = True
        elif isinstance(item, core.JobExited) and item.cause == "lease":
            interrupted = True  # the dead-man switch: the lease is gone
        elif isinstance(item, core.SignalReceived) and item.signum in core.WAIT_INTERRUPTS:
            interrupted = True
        elif isinstance(item, core.StopJob):
            interrupted = True
        elif isinstance(item, core.Release) and won_at is not None and not interrupted:
            assert t >= won_at + policy.hold_at_least - 1e-9


@fast
@given(policies, st.data())
def test_max_runtime_stops_the_job_when_reached(policy, data):
    world = simulate(policy, data)
    won_at = None
    for t, item in world.trace:
        if isinstance(item, core.Won):
            won_at = None if item.slot_done else t
        elif isinstance(item, (core.JobExited, core.ExecFailed, core.KeeperGone)):
            won_at = None
        elif isinstance(item, core.StopJob) and item.reason == "max-runtime":
            assert won_at is not None and t >= won_at + policy.max_runtime - 1e-9
            won_at = None


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies.map(lambda p: core.Policy(**{**p.__dict__, "restart": True})), st.data())
def test_restarts_never_spin(policy, data):
    """Two starts of the job by successive leaderships are at least the restart floor
    apart, and the campaign never rejoins while a job runs."""
    world = simulate(policy, data, steps=120)
    floor = max(policy.restart_delay, core.MIN_RESTART_DELAY)
    starts = [t for t, item in world.trace if isinstance(item, core.StartJob)]
    for earlier, later in zip(starts, starts[1:]):
        assert later - earlier >= floor - 1e-9
    assert policy.restart or not commands_of(world, core.Pause)


@fast
@given(policies, st.data())
def test_it_exits_exactly_once_and_then_does_nothing(policy, data):
    world = simulate(policy, data)
    exits = commands_of(world, core.Exit)
    assert len(exits) <= 1
    if exits:
        assert world.core.step(core.Tick(world.now + 100)) == []
        assert world.core.step(core.JobExited(world.now, 0)) == []


# -- the exit status table, as examples -------------------------------------------------------


def leadership(policy: core.Policy, *events: core.Event, lease: float | None = None):
    machine = core.CampaignCore(policy)
    out = machine.start(0.0)
    out += machine.step(core.Won(0.0, 7, lease))
    for event in events:
        out += machine.step(event)
    return machine, out


def exit_of(out) -> core.Exit:
    (done,) = [c for c in out if isinstance(c, core.Exit)]
    return done


def release_of(out) -> core.Release:
    (release,) = [c for c in out if isinstance(c, core.Release)]
    return release


P = core.Policy(election="e", grace=1.0)


def test_a_job_that_exits_gives_its_own_status():
    _, out = leadership(P, core.JobStarted(0.1, 9), core.JobExited(1.0, 3))
    assert exit_of(out) == core.Exit(3)
    assert release_of(out) == core.Release("exited", 3, None)


def test_a_lost_leadership_is_73_and_the_history_says_lost():
    _, out = leadership(P, core.Lost(1.0, "gone"), core.JobExited(1.5, 143), lease=5.0)
    assert exit_of(out) == core.Exit(73)
    assert release_of(out).outcome == "lost"
    stop = [c for c in out if isinstance(c, core.StopJob)][0]
    assert stop.reason == "lost" and stop.grace <= 4.0


def test_the_dead_man_switch_is_a_loss_too():
    _, out = leadership(P, core.JobExited(5.0, 137, "lease"), lease=5.0)
    assert exit_of(out) == core.Exit(73)


def test_a_resigned_leader_exits_0():
    _, out = leadership(P, core.ResignRequested(1.0), core.JobExited(1.2, 143))
    assert exit_of(out) == core.Exit(0)
    assert release_of(out).outcome == "resigned"


def test_max_runtime_is_79_and_stopped():
    machine, out = leadership(core.Policy(election="e", max_runtime=2.0))
    assert machine.wake_at == 2.0
    out = machine.step(core.Tick(2.0))
    assert [c for c in out if isinstance(c, core.StopJob)][0].reason == "max-runtime"
    out = machine.step(core.JobExited(2.5, 143))
    assert exit_of(out) == core.Exit(79)
    assert release_of(out).outcome == "stopped"


def test_told_to_stop_by_a_signal_it_ends_by_that_signal():
    _, out = leadership(P, core.SignalReceived(1.0, SIGTERM), core.JobExited(1.1, 143))
    assert exit_of(out) == core.Exit(128 + SIGTERM, signal=SIGTERM)
    assert release_of(out).outcome == "stopped"


def test_a_signal_while_waiting_ends_by_that_signal():
    machine = core.CampaignCore(P)
    machine.start(0.0)
    assert exit_of(machine.step(core.SignalReceived(1.0, SIGINT))) == core.Exit(130, signal=SIGINT)


def test_busy_timeout_and_exec_failure():
    for event, status in ((core.Busy(0.0), 75), (core.TimedOut(0.0), 124)):
        machine = core.CampaignCore(core.Policy(election="e", conflict_exit_code=75))
        machine.start(0.0)
        assert exit_of(machine.step(event)) == core.Exit(status)
    _, out = leadership(P, core.ExecFailed(0.1, "x: not found"))
    assert exit_of(out) == core.Exit(127)


def test_other_signals_are_forwarded():
    _, out = leadership(P, core.SignalReceived(1.0, SIGHUP))
    assert core.ForwardSignal(SIGHUP) in out


def test_a_done_slot_is_released_without_running_the_job():
    machine = core.CampaignCore(P)
    machine.start(0.0)
    out = machine.step(core.Won(0.0, 7, None, slot="1d@x", slot_done=True))
    assert not [c for c in out if isinstance(c, core.StartJob)]
    assert exit_of(out) == core.Exit(0)


def test_a_clean_exit_rejoins_at_once_and_a_failing_job_backs_off():
    policy = core.Policy(election="e", restart=True, restart_delay=1.0)
    machine, out = leadership(policy, core.JobExited(20.0, 0))
    assert [c for c in out if isinstance(c, core.Pause)] == [core.Pause(20.0)]
    assert machine.step(core.Tick(20.0)) == [core.Campaign()]
    pauses = []
    now = 20.0
    for _ in range(4):
        machine.step(core.Won(now, 8, None))
        out = machine.step(core.JobExited(now + 0.1, 1))
        pause = [c for c in out if isinstance(c, core.Pause)][0]
        pauses.append(round(pause.until - (now + 0.1), 3))
        now = pause.until
        machine.step(core.Tick(now))
    assert pauses == [1.0, 2.0, 4.0, 8.0]


def test_a_lost_leadership_rejoins_soon_however_often_it_happens():
    """Issue 18: after a few lost leaderships (a frozen server, a partition) every
    candidate was backing off 16-30 s, and nobody led for 5-30 s after the heal. A loss
    is not the job's fault: it rejoins after the restart floor, every time, and leaves
    the failing-job back-off where it was."""
    policy = core.Policy(election="e", restart=True, restart_delay=1.0)
    machine = core.CampaignCore(policy)
    machine.start(0.0)
    now, pauses = 0.0, []
    for n in range(6):
        machine.step(core.Won(now, 10 + n, now + 2.0))
        if n % 2:
            out = machine.step(core.Lost(now + 0.3, "the lease ran out"))
            out += machine.step(core.JobExited(now + 0.4, 143, "lost"))
        else:
            out = machine.step(core.KeeperGone(now + 0.4))
        (pause,) = [c for c in out if isinstance(c, core.Pause)]
        pauses.append(round(pause.until - now, 3))
        now = pause.until
        assert machine.step(core.Tick(now)) == [core.Campaign()]
    assert pauses == [1.0] * 6  # one job per restart delay, no more
    machine.step(core.Won(now, 20, now + 2.0))
    out = machine.step(core.JobExited(now + 0.1, 1))
    (pause,) = [c for c in out if isinstance(c, core.Pause)]
    assert round(pause.until - (now + 0.1), 3) == 1.0  # a failing job: from the floor


def test_restart_delay_zero_still_has_a_floor():
    policy = core.Policy(election="e", restart=True, restart_delay=0.0)
    _, out = leadership(policy, core.JobExited(0.01, 1))
    pause = [c for c in out if isinstance(c, core.Pause)][0]
    assert pause.until - 0.01 >= core.MIN_RESTART_DELAY
