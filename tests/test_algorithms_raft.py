"""Raft election: votes, PreVote, CheckQuorum and the leader lease."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from lelect import sim
from lelect.algorithms import BecameLeader, SteppedDown
from lelect.algorithms.raft import (
    AppendEntries,
    PreVote,
    PreVoteResponse,
    RaftConfig,
    RaftNode,
    RaftState,
    RequestVote,
    RequestVoteResponse,
)

TICK_MS = 10.0
ELECTION_TIMEOUT_MS = RaftConfig().election_timeout * TICK_MS


def run_until_agreed(simulator: sim.Simulator, limit_ms: float = 5000) -> int:
    while simulator.agreed_leader is None:
        assert simulator.now_ms < limit_ms, "no leader agreed"
        simulator.run_until(simulator.now_ms + 10)
    return simulator.agreed_leader


def events_after(simulator: sim.Simulator, t_ms: float, kinds) -> list:
    return [
        record.event
        for record in simulator.trace
        if isinstance(record, sim.Happened)
        and record.t_ms >= t_ms
        and isinstance(record.event, kinds)
    ]


# -- the state machine on its own --------------------------------------------------


def test_a_lone_node_elects_itself_after_an_election_timeout():
    node = RaftNode(1, [1], random.Random(0))
    for _ in range(2 * RaftConfig().election_timeout):
        node.tick()
    assert node.state is RaftState.LEADER and node.term == 1


def test_a_node_votes_for_one_candidate_per_term():
    node = RaftNode(1, [1, 2, 3], random.Random(0))

    first = node.step(RequestVote(2, 1, term=1)).messages
    second = node.step(RequestVote(3, 1, term=1)).messages

    assert first == (RequestVoteResponse(1, 2, term=1, granted=True),)
    assert second == (RequestVoteResponse(1, 3, term=1, granted=False),)


def test_restart_keeps_the_term_and_the_vote():
    node = RaftNode(1, [1, 2, 3], random.Random(0))
    node.step(RequestVote(2, 1, term=4))

    node.restart()

    assert node.term == 4 and node.voted_for == 2
    assert node.step(RequestVote(3, 1, term=4)).messages[0].granted is False


def test_a_pre_vote_changes_no_term():
    node = RaftNode(1, [1, 2, 3], random.Random(0))

    reply = node.step(PreVote(2, 1, term=5)).messages

    assert reply == (PreVoteResponse(1, 2, term=5, granted=True),)
    assert node.term == 0 and node.voted_for is None


def test_a_follower_in_lease_ignores_requests_for_a_higher_term():
    node = RaftNode(1, [1, 2, 3], random.Random(0))
    node.step(AppendEntries(2, 1, term=1))  # node 2 leads term 1

    assert node.step(PreVote(3, 1, term=2)).messages == ()
    assert node.step(RequestVote(3, 1, term=2)).messages == ()
    assert node.term == 1 and node.leader == 2


# -- in the simulator --------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    nodes=st.sampled_from([3, 4, 5, 7]),
    seed=st.integers(0, 2**32 - 1),
    cut_ms=st.integers(300, 3000),
    pick=st.integers(0, 100),
)
def test_a_follower_cut_off_and_healed_does_not_unseat_a_stable_leader(nodes, seed, cut_ms, pick):
    simulator = sim.Simulator(sim.Scenario("raft", nodes, seed=seed, duration_ms=60_000))
    leader = run_until_agreed(simulator)
    term = simulator.nodes[leader].term
    followers = [node for node in simulator.nodes if node != leader]
    cut_off = followers[pick % len(followers)]
    start = simulator.now_ms
    simulator.schedule(sim.Partition((frozenset({cut_off}),), start, start + cut_ms))

    while simulator.now_ms < start + cut_ms:
        simulator.run_until(simulator.now_ms + 25)
        assert simulator.nodes[cut_off].term == term  # PreVote: no term grows while cut off
    simulator.run_until(start + cut_ms + 1000)

    assert events_after(simulator, start, (BecameLeader, SteppedDown)) == []
    assert simulator.agreed_leader == leader
    assert {node.term for node in simulator.nodes.values()} == {term}


def test_without_pre_vote_and_check_quorum_a_healed_node_does_unseat_the_leader():
    config = RaftConfig(pre_vote=False, check_quorum=False)
    simulator = sim.Simulator(sim.Scenario("raft", 5, seed=7, duration_ms=60_000, config=config))
    leader = run_until_agreed(simulator)
    term = simulator.nodes[leader].term
    cut_off = next(node for node in simulator.nodes if node != leader)
    start = simulator.now_ms
    simulator.schedule(sim.Partition((frozenset({cut_off}),), start, start + 2000))

    simulator.run_until(start + 2000)
    assert simulator.nodes[cut_off].term > term  # campaigning alone, it kept raising its term
    simulator.run_until(start + 3000)

    assert any(event.node == leader for event in events_after(simulator, start, SteppedDown))
    assert min(node.term for node in simulator.nodes.values()) > term


@settings(max_examples=80, deadline=None)
@given(nodes=st.sampled_from([3, 4, 5, 7, 9]), seed=st.integers(0, 2**32 - 1))
def test_a_leader_cut_off_from_the_majority_steps_down_within_one_election_timeout(nodes, seed):
    simulator = sim.Simulator(sim.Scenario("raft", nodes, seed=seed, duration_ms=60_000))
    leader = run_until_agreed(simulator)
    term = simulator.nodes[leader].term
    start = simulator.now_ms
    simulator.schedule(sim.Partition((frozenset({leader}),), start))

    simulator.run_until(start + ELECTION_TIMEOUT_MS)

    stepped_down = [e for e in events_after(simulator, start, SteppedDown) if e.node == leader]
    assert stepped_down, "the cut-off leader still thinks it leads"
    assert simulator.nodes[leader].state is RaftState.FOLLOWER

    simulator.run_until(start + 3000)  # and the majority elects a new leader, in a later term
    majority = [node for node in simulator.nodes.values() if node.id != leader]
    new_leader = majority[0].leader
    assert new_leader not in (None, leader)
    assert all(node.leader == new_leader for node in majority)
    assert simulator.nodes[new_leader].term > term


def test_without_check_quorum_a_cut_off_leader_keeps_believing_it_leads():
    config = RaftConfig(check_quorum=False)
    simulator = sim.Simulator(sim.Scenario("raft", 5, seed=3, duration_ms=60_000, config=config))
    leader = run_until_agreed(simulator)
    start = simulator.now_ms
    simulator.schedule(sim.Partition((frozenset({leader}),), start))

    simulator.run_until(start + 2000)

    assert simulator.nodes[leader].state is RaftState.LEADER
