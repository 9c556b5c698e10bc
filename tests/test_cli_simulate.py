"""``lelect simulate``, invoked on the click command itself."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lelect.cli.simulate import simulate


def run(*args: str):
    return CliRunner().invoke(simulate, list(args))


def run_json(*args: str):
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("algorithm", ["bully", "ring", "raft"])
def test_json_has_the_documented_shape(algorithm):
    out = run_json("--algorithm", algorithm, "--nodes", "5", "--seed", "3")

    assert {
        "algorithm",
        "nodes",
        "seed",
        "leader",
        "term",
        "messages",
        "time_to_leader_ms",
        "events",
    } <= out.keys()
    assert (out["algorithm"], out["nodes"], out["seed"]) == (algorithm, 5, 3)
    assert isinstance(out["leader"], str) and 1 <= int(out["leader"]) <= 5
    assert isinstance(out["term"], int) and out["term"] >= 1
    assert isinstance(out["messages"], int) and out["messages"] > 0
    assert isinstance(out["time_to_leader_ms"], float)
    assert all(isinstance(event, dict) and "type" in event for event in out["events"])
    if algorithm != "raft":
        assert out["leader"] == "5"


def test_the_same_seed_prints_the_same_json():
    args = ("--algorithm", "ring", "--nodes", "7", "--seed", "11", "--loss", "0.1")
    assert run_json(*args) == run_json(*args)


@pytest.mark.parametrize("algorithm", ["bully", "ring", "raft"])
def test_crash_leader_at_ends_with_another_live_leader(algorithm):
    out = run_json("--algorithm", algorithm, "--nodes", "5", "--crash-leader-at", "1s")

    assert out["crashed_leader"] is not None
    assert out["leader"] not in (None, out["crashed_leader"])
    crashes = [e for e in out["events"] if e["type"] == "crashed"]
    assert crashes == [
        {"t_ms": 1000.0, "type": "crashed", "node": out["crashed_leader"], "reason": "leader"}
    ]


def test_a_partition_without_a_majority_side_leaves_raft_without_a_leader():
    out = run_json(
        "--algorithm", "raft", "--nodes", "4", "--partition", "1,2@0s", "--duration", "3s"
    )
    assert out["leader"] is None and out["time_to_leader_ms"] is None


def test_partition_and_crash_options_show_up_in_the_events():
    out = run_json(
        "--algorithm", "bully", "--nodes", "5",
        "--partition", "1,2/3-5@1s-2s", "--crash", "5@500ms-3s",
    )  # fmt: skip
    types = [e["type"] for e in out["events"]]
    assert "partition_started" in types and "partition_healed" in types
    assert "crashed" in types and "restarted" in types
    assert out["leader"] == "5"


def test_compare_runs_every_algorithm_for_every_size():
    out = run_json("--compare", "--nodes", "3,6")

    assert [(r["nodes"], r["algorithm"]) for r in out] == [
        (n, a) for n in (3, 6) for a in ("bully", "ring", "raft")
    ]
    assert all(r["leader"] is not None for r in out)


def test_compare_prints_messages_and_time_side_by_side():
    result = run("--compare", "--nodes", "3,6")

    assert result.exit_code == 0, result.output
    for heading in ("bully msgs", "ring msgs", "raft msgs", "raft ms"):
        assert heading in result.output


def test_tables_show_the_timeline_and_the_summary():
    result = run("--algorithm", "raft", "--crash-leader-at", "1s")

    assert result.exit_code == 0, result.output
    assert "Timeline" in result.output and "Summary" in result.output
    assert "becomes leader" in result.output and "crashes" in result.output
    assert "failover" in result.output


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--nodes", "0"], "number of nodes"),
        (["--nodes", "many"], "--nodes"),
        (["--nodes", "5,10"], "needs --compare"),
        (["--compare", "--algorithm", "raft"], "leave out --algorithm"),
        (["--algorithm", "paxos"], "--algorithm"),
        (["--seed", "x"], "--seed"),
        (["--duration", "soon"], "--duration"),
        (["--crash-leader-at", "-1s"], "--crash-leader-at"),
        (["--loss", "1"], "--loss"),
        (["--loss", "nan"], "invalid loss nan: use a probability in [0, 1)"),
        (["--nodes", "1000"], "use 1 to 200"),
        (["--tick", "0"], "tick"),
        (["--partition", "1,2"], "--partition"),
        (["--partition", "1,9@1s"], "--partition"),
        (["--partition", "1-5@1s"], "at least two groups"),
        (["--crash", "7@1s"], "--crash"),
        (["--compare", "--nodes", "3,5", "--partition", "5@1s"], "nodes are 1..3"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(args, complaint):
    result = run(*args)

    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # a usage error, not a traceback
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and complaint in error_lines[0], result.output


@pytest.mark.parametrize("algorithm", ["bully", "ring"])
def test_a_run_is_bounded_by_the_message_budget(algorithm):
    """Was: bully at 1000 nodes ran 93 s; a lossy Ring at 100 nodes never ended."""
    import time

    from lelect import sim

    started = time.monotonic()
    result = run("--algorithm", algorithm, "--nodes", "200", "--loss", "0.3", "--json")
    assert time.monotonic() - started < 30  # the budget: seconds, on a loaded machine
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["budget_spent"] is True and out["messages"] <= sim.MESSAGE_BUDGET + 200
    assert "stopped after 300,000 messages" in result.stderr
