"""Failure detection and group health on synthetic arrival times (no processes)."""

from __future__ import annotations

import json
import math

import pytest

from lelect.backends import connect
from lelect.backends.base import Candidate, Heartbeat, LeaderInfo, MemberRecord, Members
from lelect.cli.render import group_json
from lelect.errors import UsageError
from lelect.health import (
    ALIVE,
    CRITICAL,
    DEAD,
    DEGRADED,
    HEALTHY,
    SUSPECT,
    GroupWatch,
    LeaderChange,
    PhiAccrualDetector,
    assess,
    worst,
)

T0 = 1_700_000_000.0


def beats(n: int, interval: float, start: float = T0, jitter: tuple[float, ...] = (0.0,)) -> list[float]:
    """``n`` arrival stamps ``interval`` apart, each shifted by a cycling jitter."""
    return [start + i * interval + jitter[i % len(jitter)] for i in range(n)]


def heartbeat(node_id: str, role: str = "follower", term: int | None = None) -> Heartbeat:
    return Heartbeat(election="e", node_id=node_id, host="h", pid=1, role=role, term=term, seq=1,
                     time=T0, cpu_percent=12.5, memory_percent=40.0)


def record(node_id: str, arrivals: list[float], role: str = "follower") -> MemberRecord:
    return MemberRecord(node_id, heartbeat(node_id, role), tuple(arrivals))


# -- the detector ---------------------------------------------------------------------


def test_member_beating_on_time_is_alive():
    detector = PhiAccrualDetector(expected_interval=1.0)
    arrivals = beats(20, 1.0)
    for silence in (0.0, 0.5, 1.0, 1.5):
        phi = detector.phi(arrivals, arrivals[-1] + silence)
        assert phi < 1, (silence, phi)
        assert detector.status(phi) == ALIVE


def test_silence_turns_a_member_suspect_then_dead():
    detector = PhiAccrualDetector(expected_interval=1.0)
    arrivals = beats(20, 1.0)
    statuses = []
    for tenth in range(0, 80):
        statuses.append(detector.status(detector.phi(arrivals, arrivals[-1] + tenth / 10)))
    # Monotone: alive..., suspect..., dead... and each appears.
    order = [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]]
    assert order == [ALIVE, SUSPECT, DEAD]
    first_suspect = statuses.index(SUSPECT) / 10
    first_dead = statuses.index(DEAD) / 10
    assert 2.5 <= first_suspect <= 4.0  # a lost beat or two is tolerated
    assert 4.0 <= first_dead <= 6.0


def test_phi_grows_with_silence_and_threshold_moves_the_verdict():
    arrivals = beats(10, 0.2)
    strict, lenient = PhiAccrualDetector(threshold=4), PhiAccrualDetector(threshold=16)
    phis = [strict.phi(arrivals, arrivals[-1] + s / 10) for s in range(30)]
    assert phis == sorted(phis)
    now = arrivals[-1] + 0.9
    assert strict.status(strict.phi(arrivals, now)) == DEAD
    assert lenient.status(lenient.phi(arrivals, now)) != DEAD


def test_jittery_history_is_judged_more_leniently_than_a_steady_one():
    detector = PhiAccrualDetector()
    steady = beats(20, 1.0)
    jittery = beats(20, 1.0, jitter=(0.0, 0.9, -0.4, 0.6))
    silence = 4.5
    assert detector.phi(jittery, jittery[-1] + silence) < detector.phi(steady, steady[-1] + silence)


def test_few_samples_assume_the_heartbeat_interval():
    slow = PhiAccrualDetector(expected_interval=2.0)
    fast = PhiAccrualDetector(expected_interval=0.2)
    for arrivals in ([T0], [T0, T0 + 0.2]):
        now = arrivals[-1] + 1.5
        assert slow.status(slow.phi(arrivals, now)) == ALIVE
        assert fast.status(fast.phi(arrivals, now)) == DEAD
    # From three arrivals on, the history speaks: 0.2 s beats are overdue after 1.5 s.
    three = beats(3, 0.2)
    assert slow.status(slow.phi(three, three[-1] + 1.5)) == DEAD


def test_identical_stamps_do_not_divide_by_zero():
    detector = PhiAccrualDetector(expected_interval=1.0)
    same = [T0] * 20
    assert detector.status(detector.phi(same, T0 + 0.5)) == ALIVE
    assert math.isfinite(detector.phi(same, T0 + 1e6))


def test_garbage_arrivals_never_raise():
    detector = PhiAccrualDetector()
    assert detector.phi([], T0) == math.inf
    assert detector.status(detector.phi([], T0)) == DEAD
    assert detector.phi([math.nan, math.inf, -math.inf], T0) == math.inf
    mixed = [math.nan, *beats(5, 1.0), math.inf]
    assert detector.status(detector.phi(mixed, T0 + 4.5)) == ALIVE
    # Clock stepped back: arrivals "after" now count as just arrived.
    assert detector.status(detector.phi(beats(5, 1.0), T0 - 100)) == ALIVE
    # Decades of silence: a big finite phi, not an overflow.
    assert math.isfinite(detector.phi(beats(5, 0.01), T0 + 1e9))
    assert detector.phi(beats(5, 1.0), math.nan) == math.inf


@pytest.mark.parametrize("kwargs", [{"threshold": 0}, {"threshold": -1}, {"threshold": math.nan},
                                    {"expected_interval": 0}])
def test_nonsense_detector_settings_are_refused(kwargs):
    with pytest.raises(UsageError):
        PhiAccrualDetector(**kwargs)


# -- group health ---------------------------------------------------------------------


def members(*records: MemberRecord, now: float) -> Members:
    return Members(election="e", now=now, records=records)


LEADER = LeaderInfo(node_id="a", term=7, since=T0, host="h", pid=1)
DETECTOR = PhiAccrualDetector(expected_interval=1.0)


def test_leader_and_all_members_alive_is_healthy():
    now = T0 + 19.5
    group = assess(members(record("a", beats(20, 1.0), "leader"), record("b", beats(20, 1.0)),
                           now=now), LEADER, DETECTOR)
    assert group.status == HEALTHY and group.exit_status == 0
    assert [(m.node_id, m.role, m.status) for m in group.members] == [
        ("a", "leader", ALIVE), ("b", "follower", ALIVE)]
    assert group.members[0].last_seen_s == pytest.approx(0.5)


def test_a_dead_follower_degrades_the_group():
    now = T0 + 30
    group = assess(members(record("a", beats(30, 1.0), "leader"), record("b", beats(20, 1.0)),
                           now=now), LEADER, DETECTOR)
    assert [m.status for m in group.members] == [ALIVE, DEAD]
    assert group.status == DEGRADED and group.exit_status == 1


def test_no_leader_or_a_dead_leader_is_critical():
    alive = record("b", beats(20, 1.0))
    assert assess(members(alive, now=T0 + 19.5), None, DETECTOR).status == CRITICAL
    dead_leader = record("a", beats(10, 1.0), "leader")
    group = assess(members(dead_leader, alive, now=T0 + 19.5), LEADER, DETECTOR)
    assert group.status == CRITICAL and group.exit_status == 2
    assert assess(members(now=T0), None, DETECTOR).status == CRITICAL


def test_leader_row_is_the_backends_leader_not_the_heartbeats_claim():
    now = T0 + 19.5
    stale = record("old", beats(20, 1.0), "leader")  # still says leader
    group = assess(members(record("a", beats(20, 1.0), "follower"), stale, now=now), LEADER, DETECTOR)
    roles = {m.node_id: (m.role, m.stale_leader) for m in group.members}
    assert roles == {"a": ("leader", False), "old": ("follower", True)}
    assert [m.node_id for m in group.members if m.role == "leader"] == ["a"]


def test_observer_keeps_its_role_and_counts_for_health():
    now = T0 + 30
    group = assess(members(record("a", beats(30, 1.0), "leader"), record("o", beats(20, 1.0), "observer"),
                           now=now), LEADER, DETECTOR)
    assert group.members[1].role == "observer"
    assert group.status == DEGRADED


def test_a_leader_without_heartbeats_is_trusted():
    group = assess(members(record("b", beats(20, 1.0)), now=T0 + 19.5), LEADER, DETECTOR)
    assert group.status == HEALTHY and group.leader_member is None


def test_garbage_record_is_shown_as_such_and_not_alive():
    junk = MemberRecord("junk", None, (), error="unreadable record: Expecting value")
    group = assess(members(record("a", beats(20, 1.0), "leader"), junk, now=T0 + 19.5), LEADER, DETECTOR)
    member = group.members[1]
    assert (member.status, member.error, member.last_seen_s) == (DEAD, "unreadable record: Expecting value", None)
    assert group.status == DEGRADED
    shown = group_json(group, phi=True)["members"][1]
    assert shown["error"].startswith("unreadable record")
    assert shown["cpu_percent"] is None and shown["phi"] is None


def test_worst_status_wins_and_nothing_at_all_is_critical():
    def group(status_members, leader=LEADER):
        return assess(members(*status_members, now=T0 + 19.5), leader, DETECTOR)

    healthy = group([record("a", beats(20, 1.0), "leader")])
    degraded = group([record("a", beats(20, 1.0), "leader"), record("b", beats(5, 1.0))])
    critical = group([], leader=None)
    assert worst([healthy]) == HEALTHY
    assert worst([healthy, degraded]) == DEGRADED
    assert worst([degraded, critical, healthy]) == CRITICAL
    assert worst([]) == CRITICAL


def test_json_has_the_documented_shape_and_never_nan():
    broken = Heartbeat(election="e", node_id="a", host="h", pid=1, role="leader", term=7, seq=3,
                       time=T0, cpu_percent=math.nan, memory_percent=math.inf)
    group = assess(members(MemberRecord("a", broken, tuple(beats(20, 1.0))), now=T0 + 19.5),
                   LEADER, DETECTOR)
    watch_view, health_view = group_json(group), group_json(group, phi=True)
    for view in (watch_view, health_view):
        text = json.dumps(view, allow_nan=False)
        assert json.loads(text) == view
        assert {"election", "leader", "members"} <= set(view)
        assert view["leader"] == LEADER.to_json()
    member = watch_view["members"][0]
    assert {"node_id", "role", "status", "last_seen_s", "cpu_percent", "memory_percent"} <= set(member)
    assert "phi" not in member
    assert member["cpu_percent"] is None and member["memory_percent"] is None
    assert health_view["status"] == HEALTHY
    assert isinstance(health_view["members"][0]["phi"], float)


# -- watching, with a backend that has nothing but the interface ------------------------


def held(backend, name: str, node_id: str):
    return backend.campaign(name, Candidate(node_id, "h", 1), timeout=10)


def test_group_watch_reports_each_leader_change_once(tmp_path):
    with connect(f"file://{tmp_path}/state") as backend:
        watch = GroupWatch(backend, ["e"], DETECTOR, interval=0.01)
        assert watch.snapshot().changes == ()  # what it finds at first is no change
        a = held(backend, "e", "a")
        (change,) = watch.snapshot().changes
        assert (change.previous, change.current.node_id) == (None, "a")
        assert watch.snapshot().changes == ()
        a.release()
        b = held(backend, "e", "b")
        (change,) = watch.snapshot().changes
        assert (change.previous.node_id, change.current.node_id) == ("a", "b")
        b.release()
        (change,) = watch.snapshot().changes
        assert (change.previous.node_id, change.current) == ("b", None)


def test_group_watch_of_every_election_skips_stray_names_and_keeps_a_past_election(tmp_path):
    import sqlite3

    with connect(f"file://{tmp_path}/state") as backend:
        backend.publish(Heartbeat("e", "x", "h", 1, "follower", None, 1, T0), ttl=60)
        stray = sqlite3.connect(tmp_path / "state" / "lelect.db", isolation_level=None)
        stray.execute("UPDATE members SET election='bad/name'")  # a name no election can have
        stray.close()
        leadership = held(backend, "e", "a")
        watch = GroupWatch(backend, (), DETECTOR, interval=0.01)
        assert [g.election for g in watch.snapshot().groups] == ["e"]
        leadership.release()
        (change,) = watch.snapshot().changes
        assert (change.previous.node_id, change.current) == ("a", None)
        # Its history keeps it listed, leaderless (the exporter's has_leader == 0).
        assert [(g.election, g.leader) for g in watch.snapshot().groups] == [("e", None)]


def test_group_watch_run_survives_a_failing_backend(redis_server):
    with connect(redis_server.url) as backend:
        leadership = held(backend, "e", "a")
        watch = GroupWatch(backend, ["e"], DETECTOR, interval=0.01)
        snapshots = []
        for snap in watch.run():
            snapshots.append(snap)
            if len(snapshots) == 1:
                redis_server.stop()
            elif snap.error and len(snapshots) < 50:
                redis_server.start()
            elif len(snapshots) > 1:
                watch.close()
        errors = [s.error for s in snapshots]
        assert errors[0] is None and errors[-1] is None and any(errors), errors
        assert snapshots[1].groups == snapshots[0].groups  # the last good look, while failing
        leadership.release()


def test_group_watch_run_fails_at_once_if_the_backend_never_answered(refused_port):
    from lelect.errors import BackendUnavailable

    with connect(f"redis://127.0.0.1:{refused_port}/0") as backend, \
            pytest.raises(BackendUnavailable):
        next(GroupWatch(backend, ["e"], DETECTOR, interval=0.01).run())


def test_leader_change_environment():
    env = LeaderChange("vip", LeaderInfo("a", 1), LeaderInfo("b", 2, host="hb", pid=9)).environ("file:///x")
    assert env["LELECT_ELECTION"] == "vip"
    assert (env["LELECT_EVENT"], env["LELECT_LEADER"], env["LELECT_NODE_ID"], env["LELECT_TERM"]) == (
        "elected", "b", "b", "2")
    assert (env["LELECT_PREVIOUS_LEADER"], env["LELECT_PREVIOUS_TERM"]) == ("a", "1")
    assert (env["LELECT_LEADER_HOST"], env["LELECT_LEADER_PID"], env["LELECT_BACKEND"]) == ("hb", "9", "file:///x")
    vacant = LeaderChange("vip", LeaderInfo("b", 2), None).environ()
    assert (vacant["LELECT_EVENT"], vacant["LELECT_LEADER"], vacant["LELECT_TERM"]) == ("vacant", "", "")
