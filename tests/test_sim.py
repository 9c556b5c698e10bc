"""The simulator: determinism, faults, run length, and the fault specs of ``lelect simulate``."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lelect import sim
from lelect.algorithms import BecameLeader
from lelect.errors import UsageError


def busy_scenario(algorithm: str, seed: int) -> sim.Scenario:
    return sim.Scenario(
        algorithm,
        6,
        seed=seed,
        link=sim.Link(delay_ms=1, jitter_ms=8, loss=0.1),
        partitions=(sim.parse_partition("1,2/3-6@500ms-1500ms", 6),),
        crashes=(sim.parse_crash("6@200ms-900ms", 6),),
        crash_leader_at_ms=2000,
    )


@pytest.mark.parametrize("algorithm", sim.ALGORITHMS)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_the_same_seed_gives_the_same_trace(algorithm, seed):
    first = sim.run(busy_scenario(algorithm, seed))
    second = sim.run(busy_scenario(algorithm, seed))

    assert first.trace == second.trace
    assert first.to_json() == second.to_json()


@pytest.mark.parametrize("algorithm", sim.ALGORITHMS)
def test_another_seed_gives_another_trace(algorithm):
    assert sim.run(busy_scenario(algorithm, 1)).trace != sim.run(busy_scenario(algorithm, 2)).trace


def test_the_trace_records_every_message_sent_and_what_became_of_it():
    result = sim.run(busy_scenario("raft", 3))
    sent = [r for r in result.trace if isinstance(r, sim.Sent)]
    outcomes = [r for r in result.trace if isinstance(r, (sim.Delivered, sim.Dropped))]

    assert len(sent) == result.messages
    assert {r.reason for r in outcomes if isinstance(r, sim.Dropped)} == {
        "lost",
        "partition",
        "crashed",
    }
    assert len(outcomes) <= len(sent)  # the rest were still in flight when the run ended


def test_without_a_duration_the_run_outlasts_the_last_fault_and_a_leader_settles():
    scenario = sim.Scenario("bully", 5, seed=1, crashes=(sim.Crash(5, at_ms=100, restart_ms=3000),))
    result = sim.run(scenario)

    assert result.duration_ms >= 3000 + scenario.settle_ms
    assert result.leader == 5
    assert result.time_to_leader_ms > 3000


def test_a_duration_is_kept_exactly():
    assert sim.run(sim.Scenario("ring", 4, duration_ms=1234)).duration_ms == 1234


def test_crash_leader_at_zero_crashes_the_first_node_to_win():
    result = sim.run(sim.Scenario("raft", 5, seed=9, crash_leader_at_ms=0))
    winners = [
        r.event.node
        for r in result.trace
        if isinstance(r, sim.Happened) and isinstance(r.event, BecameLeader)
    ]
    assert result.crashed_leader == winners[0]
    assert result.leader not in (None, winners[0])


def test_events_are_json_with_node_ids_as_strings():
    result = sim.run(busy_scenario("raft", 5))
    events = json.loads(json.dumps(result.to_json()["events"]))

    types = {event["type"] for event in events}
    assert {"became_leader", "crashed", "restarted", "partition_started", "agreement"} <= types
    started = next(event for event in events if event["type"] == "partition_started")
    assert started["groups"] == [["1", "2"], ["3", "4", "5", "6"]]
    assert all(isinstance(event["node"], str) for event in events if "node" in event)


@pytest.mark.parametrize(
    ("spec", "groups", "start_ms", "end_ms"),
    [
        ("1,2/3,4,5@2s-6s", ({1, 2}, {3, 4, 5}), 2000, 6000),
        ("3@1s", ({3},), 1000, None),
        ("1-3/4@500ms-0.75s", ({1, 2, 3}, {4}), 500, 750),
    ],
)
def test_partition_specs(spec, groups, start_ms, end_ms):
    partition = sim.parse_partition(spec, 5)
    assert partition.groups == tuple(frozenset(g) for g in groups)
    assert (partition.start_ms, partition.end_ms) == (start_ms, end_ms)


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("1,2", "use GROUP"),
        ("1,2@", "use GROUP"),
        ("1,x@1s", "not a node id"),
        ("1,9@1s", "nodes are 1..5"),
        ("1,2/2,3@1s", "two groups"),
        ("1-5@1s", "at least two groups"),
        ("3-1@1s", "empty range"),
        ("1@2s-1s", "after the start"),
        ("1@soon", "invalid partition time"),
    ],
)
def test_bad_partition_specs_say_what_is_wrong(spec, complaint):
    with pytest.raises(UsageError, match=complaint):
        sim.parse_partition(spec, 5)


def test_crash_specs():
    assert sim.parse_crash("3@1s", 5) == sim.Crash(3, 1000, None)
    assert sim.parse_crash("3@1s-4s", 5) == sim.Crash(3, 1000, 4000)
    for spec in ("x@1s", "9@1s", "3", "3@2s-1s"):
        with pytest.raises(UsageError):
            sim.parse_crash(spec, 5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"algorithm": "paxos", "nodes": 3},
        {"algorithm": "raft", "nodes": 0},
        {"algorithm": "raft", "nodes": 3, "tick_ms": 0},
        {"algorithm": "raft", "nodes": 3, "link": sim.Link(loss=1.0)},
        {"algorithm": "ring", "nodes": 3, "ring_order": (1, 2, 2)},
        {"algorithm": "raft", "nodes": 3, "crashes": (sim.Crash(4, 0),)},
    ],
)
def test_bad_scenarios_are_refused(kwargs):
    with pytest.raises(UsageError):
        sim.Scenario(**kwargs)
