"""Bully election: message counts, timeouts, and the highest live id winning."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from lelect import sim
from lelect.algorithms import BecameLeader
from lelect.algorithms.bully import (
    Answer,
    BullyConfig,
    BullyNode,
    BullyState,
    Coordinator,
    Election,
    Heartbeat,
)


def make_group(n: int, config: BullyConfig | None = None) -> dict[int, BullyNode]:
    members = list(range(1, n + 1))
    return {node: BullyNode(node, members, random.Random(node), config) for node in members}


def count(messages, kind) -> int:
    return sum(isinstance(message, kind) for message in messages)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40))
def test_the_highest_id_initiating_costs_n_minus_1_coordinators_and_nothing_else(n):
    nodes = make_group(n)

    sent = sim.exchange(nodes, [nodes[n].campaign()])

    assert count(sent, Coordinator) == len(sent) == n - 1
    assert all(node.leader == n for node in nodes.values())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40))
def test_the_lowest_id_initiating_costs_n_n_minus_1_over_2_elections_and_answers(n):
    nodes = make_group(n)

    sent = sim.exchange(nodes, [nodes[1].campaign()])

    assert count(sent, Election) == n * (n - 1) // 2
    assert count(sent, Answer) == n * (n - 1) // 2
    assert count(sent, Coordinator) == n - 1
    assert all(node.leader == n for node in nodes.values())


def test_without_an_answer_the_initiator_wins_after_the_answer_timeout():
    config = BullyConfig(answer_timeout=3)
    nodes = make_group(4, config)
    down = {3, 4}

    sim.exchange(nodes, [nodes[2].campaign()], down=down)
    assert nodes[2].state is BullyState.ELECTING
    for _ in range(config.answer_timeout - 1):
        sim.exchange(nodes, [nodes[2].tick()], down=down)
    assert nodes[2].state is BullyState.ELECTING
    sim.exchange(nodes, [nodes[2].tick()], down=down)

    assert nodes[2].state is BullyState.LEADER
    assert nodes[1].leader == 2


def test_a_restarted_higher_node_bullies_the_leader_away():
    result = sim.run(
        sim.Scenario("bully", 5, seed=2, crashes=(sim.Crash(5, at_ms=0, restart_ms=1000),))
    )
    winners = [
        (r.t_ms, r.event.node)
        for r in result.trace
        if isinstance(r, sim.Happened) and isinstance(r.event, BecameLeader)
    ]
    assert winners[0][1] == 4 and winners[0][0] < 1000
    assert winners[-1][1] == 5
    assert result.leader == 5


def test_a_leader_steps_down_when_it_hears_a_higher_leader():
    nodes = make_group(3)
    sim.exchange(nodes, [nodes[2].campaign()], down={3})  # 3 looks dead: 2 waits, then wins
    for _ in range(BullyConfig().answer_timeout):
        sim.exchange(nodes, [nodes[2].tick()], down={3})
    assert nodes[2].state is BullyState.LEADER

    nodes[2].step(Heartbeat(3, 2, term=7))

    assert nodes[2].state is BullyState.FOLLOWER
    assert nodes[2].leader == 3
