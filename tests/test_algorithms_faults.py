"""Properties of Bully, Ring and Raft under random fault schedules, in the simulator.

Each example draws a group size, a seed, and a schedule of partitions and
crashes (some restarted) that all happen in the first two seconds.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lelect import sim
from lelect.algorithms import BecameLeader
from lelect.algorithms.raft import RaftConfig

FAULTS_UNTIL_MS = 2000
TICK_MS = 10.0
# The longest randomized election timeout: Raft's [ET, 2ET) ticks; Bully and Ring use the same.
MAX_ELECTION_TIMEOUT_MS = 2 * RaftConfig().election_timeout * TICK_MS


@st.composite
def fault_schedules(draw, *, min_nodes=1, max_nodes=7, keep_majority=False):
    """(nodes, seed, partitions, crashes), every fault over by FAULTS_UNTIL_MS."""
    nodes = draw(st.integers(min_nodes, max_nodes))
    seed = draw(st.integers(0, 2**32 - 1))
    windows = st.lists(st.integers(0, FAULTS_UNTIL_MS), min_size=2, max_size=2, unique=True).map(
        sorted
    )
    partitions = []
    if nodes > 1:
        for _ in range(draw(st.integers(0, 3))):
            order = draw(st.permutations(range(1, nodes + 1)))
            split = draw(st.integers(1, nodes - 1))
            start, end = draw(windows)
            partitions.append(sim.Partition((frozenset(order[:split]),), start, end))
    crashes = []
    for node in draw(st.lists(st.integers(1, nodes), unique=True, max_size=nodes)):
        start, end = draw(windows)
        crashes.append(sim.Crash(node, start, end if draw(st.booleans()) else None))
    down_for_good = {crash.node for crash in crashes if crash.restart_ms is None}
    assume(len(down_for_good) < nodes)
    if keep_majority:
        assume(len(down_for_good) <= (nodes - 1) // 2)
    return nodes, seed, tuple(partitions), tuple(crashes)


def live_at_end(nodes: int, crashes: tuple[sim.Crash, ...]) -> set[int]:
    return set(range(1, nodes + 1)) - {c.node for c in crashes if c.restart_ms is None}


@pytest.mark.parametrize("algorithm", ["bully", "ring"])
@settings(max_examples=200, deadline=None)
@given(schedule=fault_schedules(max_nodes=8))
def test_after_failures_stop_all_live_nodes_follow_the_highest_live_id(algorithm, schedule):
    nodes, seed, partitions, crashes = schedule
    result = sim.run(
        sim.Scenario(algorithm, nodes, seed=seed, partitions=partitions, crashes=crashes)
    )
    assert result.leader == max(live_at_end(nodes, crashes))


@settings(max_examples=500, deadline=None)
@given(
    schedule=fault_schedules(max_nodes=7),
    loss=st.sampled_from([0.0, 0.1, 0.3]),
    pre_vote=st.booleans(),
    check_quorum=st.booleans(),
)
def test_raft_never_elects_two_leaders_in_one_term(schedule, loss, pre_vote, check_quorum):
    nodes, seed, partitions, crashes = schedule
    result = sim.run(
        sim.Scenario(
            "raft",
            nodes,
            seed=seed,
            duration_ms=4000,
            partitions=partitions,
            crashes=crashes,
            link=sim.Link(loss=loss),
            config=RaftConfig(pre_vote=pre_vote, check_quorum=check_quorum),
        )
    )
    leaders_by_term: dict[int, set[int]] = defaultdict(set)
    for record in result.trace:
        if isinstance(record, sim.Happened) and isinstance(record.event, BecameLeader):
            leaders_by_term[record.event.term].add(record.event.node)
    assert all(len(leaders) == 1 for leaders in leaders_by_term.values()), leaders_by_term


@settings(max_examples=150, deadline=None)
@given(schedule=fault_schedules(max_nodes=9, keep_majority=True))
def test_raft_elects_a_leader_within_five_election_timeouts_once_faults_stop(schedule):
    nodes, seed, partitions, crashes = schedule
    scenario = sim.Scenario("raft", nodes, seed=seed, partitions=partitions, crashes=crashes)
    bound_ms = 5 * MAX_ELECTION_TIMEOUT_MS
    result = sim.run(
        sim.Scenario(
            "raft",
            nodes,
            seed=seed,
            partitions=partitions,
            crashes=crashes,
            duration_ms=scenario.last_fault_ms() + bound_ms,
        )
    )
    assert result.leader is not None
    assert result.leader in live_at_end(nodes, crashes)


@pytest.mark.parametrize("algorithm", sim.ALGORITHMS)
@settings(max_examples=60, deadline=None)
@given(
    nodes=st.integers(2, 12),
    seed=st.integers(0, 2**32 - 1),
    crash_at_ms=st.integers(0, 2000),
)
def test_after_the_leader_crashes_a_live_node_leads(algorithm, nodes, seed, crash_at_ms):
    assume(algorithm != "raft" or nodes >= 3)  # Raft needs a majority left: 2 of 3
    result = sim.run(sim.Scenario(algorithm, nodes, seed=seed, crash_leader_at_ms=crash_at_ms))
    assert result.crashed_leader is not None
    assert result.leader is not None
    assert result.leader != result.crashed_leader
    assert result.failover_ms is not None
    if algorithm != "raft":
        assert result.leader == max(set(range(1, nodes + 1)) - {result.crashed_leader})
