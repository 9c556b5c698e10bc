"""The lease engine (lelect/lease.py) with a fake clock: the arithmetic, the renew
cadence, what an answer means, the retry policy, the late-win rule and the option checks.
The model world offers only what can happen to a lease: time passes, a renew is sent, its
answer (held, not ours, an error) arrives some time later."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lelect import lease
from lelect.lease import (
    Attempts,
    GaveUp,
    Lease,
    LeaseState,
    LeaseTiming,
    Lost,
    Renew,
    Renewal,
    RetryPolicy,
    TimingRefused,
    Wait,
    deadline_after,
    drift,
    lease_timing,
    win_is_late,
)

ttls = st.floats(min_value=0.1, max_value=3600.0)
answers = st.sampled_from(["held", "gone", "error"])


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@st.composite
def histories(draw):
    """A ttl and a list of (wait before sending, answer delay, answer kind)."""
    ttl = draw(ttls)
    steps = draw(st.lists(st.tuples(st.floats(0, 2 * ttl), st.floats(0, 2 * ttl), answers),
                          max_size=30))
    return ttl, steps


@settings(max_examples=300, deadline=None)
@given(histories())
def test_no_deadline_is_later_than_the_last_answered_send_plus_ttl_minus_drift(history):
    ttl, steps = history
    now = 1000.0
    state = LeaseState(now, ttl)
    newest_renewing_send = now
    for wait, delay, kind in steps:
        now += wait
        step = state.step(now)
        if isinstance(step, Lost):
            assert now >= state.deadline or state.lost_reason
            break
        sent = now
        now += delay
        before = state.deadline
        if kind == "error":
            state.failed(now, "timeout")
            assert state.deadline == before  # an errored renew never extends
            continue
        renewed = state.answered(sent, now, Renewal(kind == "held"))
        if renewed:
            newest_renewing_send = sent
            assert state.deadline > now  # a renew is only one if it is still good
        else:
            assert state.deadline == before  # not held, or too late: never extends
        assert state.deadline <= deadline_after(newest_renewing_send, ttl) + 1e-9
        if kind == "gone":
            assert isinstance(state.step(now), Lost)
            break


@settings(max_examples=300, deadline=None)
@given(histories())
def test_the_state_says_lost_whenever_the_deadline_has_passed(history):
    ttl, steps = history
    now = 1000.0
    state = LeaseState(now, ttl)
    for wait, delay, kind in steps:
        now += wait
        step = state.step(now)
        if now >= state.deadline or state.lost_reason is not None:
            assert isinstance(step, Lost)
            return
        assert isinstance(step, (Wait, Renew))
        if isinstance(step, Wait):
            assert step.until <= state.deadline  # never sleeps past the deadline
        else:
            assert 0 < step.budget <= state.deadline - now  # a call never outlives it
        if kind == "error":
            state.failed(now + delay, "error")
        else:
            state.answered(now, now + delay, Renewal(kind == "held"))


@given(ttls)
def test_a_healthy_lease_renews_every_third_of_its_ttl(ttl):
    state = LeaseState(0.0, ttl)
    assert state.step(0.0) == Wait(ttl / 3)
    assert isinstance(state.step(ttl / 3), Renew)
    assert state.answered(ttl / 3, ttl / 3, Renewal(True))
    assert state.deadline == pytest.approx(ttl / 3 + ttl - drift(ttl))
    assert state.step(ttl / 3) == Wait(2 * ttl / 3)


def test_a_failed_renew_is_tried_again_soon_but_never_past_the_deadline():
    state = LeaseState(0.0, 3.0)
    state.failed(1.0, "connection refused")
    assert state.step(1.0) == Wait(1.25)
    state.failed(2.9, "timeout")
    assert state.step(2.9) == Wait(state.deadline)
    assert state.step(state.deadline) == Lost(
        "the lease ran out with no answered renew (last error: timeout)")


def test_a_renew_answered_after_its_own_deadline_is_not_a_renew():
    state = LeaseState(0.0, 3.0)
    assert not state.answered(1.0, 1.0 + 3.0, Renewal(True))
    assert state.deadline == deadline_after(0.0, 3.0)
    assert "after the lease ran out" in state.last_error


def test_a_backend_that_grants_another_length_is_believed():
    state = LeaseState(0.0, 3.0)
    state.answered(1.0, 1.1, Renewal(True, granted=5.0))
    assert state.deadline == deadline_after(1.0, 5.0)


@given(st.floats(0.1, 100), st.floats(0, 200))
def test_a_win_is_late_once_its_first_renew_is_due(ttl, delay):
    assert win_is_late(0.0, ttl, delay) == (delay >= ttl / 3)


def test_a_lease_whose_renews_failed_is_late_even_before_its_retry_is_due():
    state = LeaseState(0.0, 3.0)
    state.failed(1.5, "timeout")  # retry at 1.75, deadline 2.968
    assert not state.is_late(0.5)
    assert state.is_late(1.6)  # less left than a job is owed, though no renew is due yet


@given(ttls, st.floats(0, 1))
def test_lateness_of_a_fresh_grant_is_the_win_is_late_rule(ttl, share):
    now = share * ttl
    assert LeaseState(0.0, ttl).is_late(now) == win_is_late(0.0, ttl, now) or abs(
        now - ttl / 3) < 1e-9 * ttl


# -- the retry policy ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.floats(0.1, 30), st.one_of(st.none(), st.floats(0, 60)),
       st.lists(st.floats(0, 2), min_size=1, max_size=200))
def test_a_streak_of_failures_gives_up_within_its_budget(connect_timeout, timeout, costs):
    clock = FakeClock()
    attempts = Attempts(RetryPolicy(connect_timeout), timeout, clock, None)
    attempts.succeeded()  # after a first contact, a streak is borne for connect_timeout
    streak_start = clock.now
    for cost in costs:
        clock.advance(min(cost, attempts.budget()))  # a call never takes more than its budget
        try:
            pause = attempts.failed(transient=True)
        except GaveUp as gave_up:
            assert gave_up.bound == connect_timeout
            assert clock.now >= min(streak_start + connect_timeout,
                                    streak_start + (timeout if timeout is not None else 1e9))
            break
        assert 0 <= pause <= lease.LAST_PAUSE
        clock.advance(pause)
        limit = streak_start + connect_timeout
        if timeout is not None:
            limit = min(limit, streak_start + timeout)
        assert clock.now <= limit + lease.MIN_ATTEMPT + 2  # never much past the bound


def test_the_first_contact_fails_at_once():
    attempts = Attempts(RetryPolicy(5.0), None, FakeClock(), None)
    with pytest.raises(GaveUp):
        attempts.failed(transient=True)


def test_a_final_error_is_not_retried():
    attempts = Attempts(RetryPolicy(5.0), None, FakeClock(), None)
    attempts.succeeded()
    with pytest.raises(GaveUp):
        attempts.failed(transient=False)


@given(st.floats(0, 10))
def test_the_first_contact_is_bounded_by_the_timeout_but_gets_one_attempt(timeout):
    attempts = Attempts(RetryPolicy(5.0), timeout, FakeClock(), None)
    assert attempts.budget() == pytest.approx(min(5.0, max(timeout, lease.MIN_ATTEMPT)))


def test_a_success_ends_the_streak():
    clock = FakeClock()
    attempts = Attempts(RetryPolicy(1.0), None, clock, None)
    attempts.succeeded()
    attempts.failed(True)
    clock.advance(0.9)
    attempts.succeeded()
    clock.advance(0.5)
    attempts.failed(True)  # a new streak: not out of time
    assert attempts.budget() == pytest.approx(1.0)


@given(contacted=st.booleans(), transient=st.booleans(), cancelled_during_the_pause=st.booleans())
def test_a_cancelled_campaign_tries_no_more_and_an_observer_is_left_to_its_loop(
        contacted, transient, cancelled_during_the_pause):
    """A campaign's attempts (an election named) end with CampaignCancelled once the
    cancel is set, whatever the failure: not another try (up to connect_timeout more of
    them on a server that is gone), and not a GaveUp (69) for what was a stop signal.
    An observer's attempts (no election) only have their pause cut short."""
    from lelect.errors import CampaignCancelled

    class SetDuringThePause(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            self.set()
            return True

    for election in ("e", None):
        cancel = SetDuringThePause() if cancelled_during_the_pause else threading.Event()
        attempts = Attempts(RetryPolicy(5.0), None, FakeClock(), cancel, election)
        if contacted:
            attempts.succeeded()
        if not cancelled_during_the_pause:
            cancel.set()
        final = not contacted or not transient
        if election is not None and (not cancelled_during_the_pause or not final):
            with pytest.raises(CampaignCancelled, match="'e' was cancelled"):
                attempts.retry_after(transient)
        elif final:
            with pytest.raises(GaveUp):
                attempts.retry_after(transient)
        else:
            attempts.retry_after(transient)  # the pause, cut short


# -- the option checks --------------------------------------------------------------------


def test_lease_timing_fits_the_default_grace_into_the_lease():
    timing = lease_timing(2.0, None)
    assert timing.ttl == 2.0
    assert 0 < timing.grace < 2.0 - 2 / 3


def test_lease_timing_refuses_a_grace_the_lease_cannot_keep():
    with pytest.raises(TimingRefused, match="too long for a 2s lease"):
        lease_timing(2.0, 1.5)
    assert lease_timing(10.0, 5.0).grace == 5.0


def test_lease_timing_without_a_lease_takes_any_grace():
    assert lease_timing(None, 60.0, lease_based=False) == LeaseTiming(None, 60.0)
    assert lease_timing(None, None, lease_based=False).grace == 10.0


def test_lease_timing_refuses_a_zero_ttl():
    with pytest.raises(TimingRefused):
        lease_timing(0.0, None)


@given(ttls, st.one_of(st.none(), st.floats(0, 100)))
def test_an_accepted_grace_stops_the_job_after_the_next_renew_had_its_chance(ttl, grace):
    try:
        timing = lease_timing(ttl, grace)
    except TimingRefused:
        return
    # stop signal at deadline - grace, after the next renew (at ttl/3) had 5% of the ttl
    assert deadline_after(0.0, ttl) - timing.grace >= ttl / 3 + 0.05 * ttl - 1e-9


# -- the runner: real threads, a scripted renew verb ------------------------------------------


def test_the_lost_callback_fires_by_the_deadline_while_a_renew_is_stuck():
    stuck = threading.Event()
    lost: list[tuple[float, str]] = []

    def renew(budget: float) -> Renewal:
        stuck.wait(5)  # a server that never answers, and a client that ignores its budget
        return Renewal(True)

    sent = time.monotonic()
    keeper = Lease(sent, 0.3, renew, on_lost=lambda why: lost.append((time.monotonic(), why)))
    keeper.start()
    try:
        deadline = keeper.deadline
        for _ in range(200):
            if lost:
                break
            time.sleep(0.01)
        assert lost, "never told of the loss"
        assert lost[0][0] - deadline < 0.1
        assert "no answered renew" in lost[0][1]
        assert not keeper.alive()
    finally:
        stuck.set()


def test_a_lease_that_renews_stays_alive_and_reports_each_deadline():
    renewed: list[float] = []
    keeper = Lease(time.monotonic(), 0.3, lambda budget: Renewal(True),
                   on_renewed=renewed.append)
    keeper.start()
    time.sleep(0.5)
    assert keeper.alive() and len(renewed) >= 2
    keeper.stop()


def test_not_ours_is_a_loss_with_the_backends_reason():
    lost: list[str] = []
    keeper = Lease(time.monotonic(), 0.3, lambda budget: Renewal(False, reason="taken"),
                   on_lost=lost.append)
    keeper.start()
    for _ in range(100):
        if lost:
            break
        time.sleep(0.01)
    assert lost == ["taken"]


def test_a_late_win_stands_only_after_a_renew_succeeds():
    sent = time.monotonic() - 0.2  # the answer took 0.2 s of a 0.3 s lease
    failing = Lease(sent, 0.3, lambda budget: (_ for _ in ()).throw(OSError("refused")))
    assert failing.is_late() and not failing.confirm()
    holding = Lease(sent, 0.3, lambda budget: Renewal(True))
    assert holding.confirm() and holding.deadline > time.monotonic() + 0.2
    gone = Lease(sent, 0.3, lambda budget: Renewal(False))
    assert not gone.confirm()


def test_a_win_on_time_needs_no_renew():
    calls: list[float] = []
    keeper = Lease(time.monotonic(), 10.0, lambda budget: calls.append(budget) or Renewal(True))
    assert keeper.confirm() and calls == []


def test_a_late_win_of_an_expired_lease_is_not_confirmed():
    keeper = Lease(time.monotonic() - 1.0, 0.3, lambda budget: Renewal(True))
    assert not keeper.confirm()


def test_an_idle_hook_that_fails_never_ends_the_renew_loop():
    """A backend's idle hook (PostgreSQL's wait for a resign request) that raises, say on
    a descriptor closed meanwhile, must not end the loop: it idles on and renews."""
    renewed = threading.Event()
    calls = []

    def renew(budget):
        calls.append(budget)
        if len(calls) >= 3:
            renewed.set()
        return Renewal(True)

    def idle(seconds, wake):
        raise ValueError("file descriptor cannot be a negative integer (-1)")

    keeper = Lease(time.monotonic(), 0.3, renew, interval=0.05, idle=idle)
    keeper.start()
    try:
        assert renewed.wait(5), calls
        assert keeper.alive()
    finally:
        keeper.stop()
