"""Chang–Roberts ring election: message counts, skipping crashed nodes, the leader it picks."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from lelect import sim
from lelect.algorithms import BecameLeader
from lelect.algorithms.ring import Ack, Elected, Election, RingConfig, RingNode, RingState


def make_ring(order: list[int], config: RingConfig | None = None) -> dict[int, RingNode]:
    return {node: RingNode(node, order, random.Random(node), config) for node in order}


def count(messages, kind) -> int:
    return sum(isinstance(message, kind) for message in messages)


@settings(max_examples=150, deadline=None)
@given(order=st.integers(2, 40).flatmap(lambda n: st.permutations(range(1, n + 1))), data=st.data())
def test_one_initiator_costs_n_plus_distance_to_the_highest_elections_and_n_elected(order, data):
    n = len(order)
    initiator = data.draw(st.sampled_from(order))
    nodes = make_ring(list(order))

    sent = sim.exchange(nodes, [nodes[initiator].campaign()])

    distance = (
        order.index(n) - order.index(initiator)
    ) % n  # hops from initiator to the highest id
    assert count(sent, Election) == n + distance
    assert n <= count(sent, Election) <= 2 * n - 1
    assert count(sent, Elected) == n
    assert count(sent, Ack) == count(sent, Election) + count(sent, Elected)
    assert all(node.leader == n for node in nodes.values())
    assert nodes[n].state is RingState.LEADER


@settings(max_examples=100, deadline=None)
@given(order=st.integers(2, 40).flatmap(lambda n: st.permutations(range(1, n + 1))))
def test_all_initiating_at_once_costs_between_2n_minus_1_and_n_n_plus_1_over_2_elections(order):
    n = len(order)
    nodes = make_ring(list(order))

    sent = sim.exchange(nodes, [node.campaign() for node in nodes.values()])

    assert 2 * n - 1 <= count(sent, Election) <= n * (n + 1) // 2
    assert count(sent, Elected) == n
    assert all(node.leader == n for node in nodes.values())


def test_ids_decreasing_along_the_ring_is_the_n_n_plus_1_over_2_worst_case():
    n = 12
    order = list(range(n, 0, -1))
    nodes = make_ring(order)

    sent = sim.exchange(nodes, [node.campaign() for node in nodes.values()])

    assert count(sent, Election) == n * (n + 1) // 2


def test_a_crashed_successor_is_skipped_after_its_ack_timeouts():
    config = RingConfig(ack_timeout=3, attempts=2, leader_timeout=1000)  # no other initiator
    order = [1, 2, 3, 4, 5]
    nodes = make_ring(order, config)
    down = {3}
    live = [node for node in order if node not in down]

    sent = sim.exchange(nodes, [nodes[2].campaign()], down=down)
    for _ in range(config.ack_timeout * config.attempts * 4):  # let the timeouts fire
        sent += sim.exchange(nodes, [nodes[node].tick() for node in live], down=down)

    to_crashed = [m for m in sent if m.dst == 3 and isinstance(m, (Election, Elected))]
    # Election(2) from node 2, later Election(5) and Elected(5) from node 2 again: each tried twice.
    assert len(to_crashed) == 3 * config.attempts
    assert all(m.src == 2 for m in to_crashed)
    assert all(nodes[node].leader == 5 for node in live)


def test_with_the_highest_id_crashed_the_next_highest_leads():
    order = [1, 2, 3, 4, 5]
    nodes = make_ring(order)
    live = [1, 2, 3, 4]

    sent = sim.exchange(nodes, [nodes[1].campaign()], down={5})
    for _ in range(30):
        sent += sim.exchange(nodes, [nodes[node].tick() for node in live], down={5})

    assert all(nodes[node].leader == 4 for node in live)


def test_a_lone_node_elects_itself():
    nodes = make_ring([1])
    sim.exchange(nodes, [nodes[1].campaign()])
    assert nodes[1].leader == 1 and nodes[1].state is RingState.LEADER


def test_a_restarted_higher_node_takes_over_through_heartbeats():
    result = sim.run(
        sim.Scenario("ring", 6, seed=4, crashes=(sim.Crash(6, at_ms=0, restart_ms=1500),))
    )
    led_before = [
        r.event.node
        for r in result.trace
        if isinstance(r, sim.Happened) and r.t_ms < 1500 and isinstance(r.event, BecameLeader)
    ]
    assert 5 in led_before
    assert result.leader == 6
