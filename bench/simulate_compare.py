"""Bully, Ring and Raft side by side in the simulator: messages and time until the group
agrees on a leader, from a cold start and after the leader crashes. Prints tables;
asserts nothing.

    python bench/simulate_compare.py [--nodes 5,10,20,50,100] [--seed 1] [--seeds 5]

With ``--seeds 1`` the first table is ``lelect simulate --compare`` and the second
``lelect simulate --compare --crash-leader-at 1s``; with more seeds each cell is the
median over seeds seed, seed+1, ... (a seed is one draw of the randomized timeouts,
clock phases and delays). Defaults: links of 2 ms + up to 3 ms jitter, 10 ms ticks.
"""

from __future__ import annotations

import argparse
import statistics
import time

from rich.console import Console

from lelect import sim
from lelect.cli.simulate import Cells, compare_table, election_cost


def median_cells(
    node_counts: list[int], seeds: range, crash_leader_at_ms: float | None
) -> tuple[Cells, dict[str, float]]:
    cells: Cells = {}
    wall = dict.fromkeys(sim.ALGORITHMS, 0.0)
    for n in node_counts:
        for algorithm in sim.ALGORITHMS:
            costs = []
            for seed in seeds:
                began = time.perf_counter()
                result = sim.run(
                    sim.Scenario(algorithm, n, seed=seed, crash_leader_at_ms=crash_leader_at_ms)
                )
                wall[algorithm] += time.perf_counter() - began
                costs.append(election_cost(result))
            if any(messages is None or ms is None for messages, ms in costs):
                cells[(n, algorithm)] = (None, None)  # some seed ended without a leader
            else:
                cells[(n, algorithm)] = (
                    statistics.median(messages for messages, _ in costs),
                    statistics.median(ms for _, ms in costs),
                )
    return cells, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="5,10,20,50,100", help="comma-separated group sizes")
    parser.add_argument("--seed", type=int, default=1, help="first seed")
    parser.add_argument("--seeds", type=int, default=5, help="how many seeds per cell")
    args = parser.parse_args()
    node_counts = [int(n) for n in args.nodes.split(",")]
    seeds = range(args.seed, args.seed + args.seeds)
    which = (
        f" (seed {args.seed})" if args.seeds == 1 else f" (median of seeds {seeds[0]}..{seeds[-1]})"
    )

    console = Console()
    for crash_leader_at_ms in (None, 1000.0):
        cells, wall = median_cells(node_counts, seeds, crash_leader_at_ms)
        console.print(compare_table(cells, failover=crash_leader_at_ms is not None, title=which))
        console.print(
            "wall time: " + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in wall.items()),
            end="\n\n",
        )


if __name__ == "__main__":
    main()
