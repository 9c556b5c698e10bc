"""Two lelect trees, one server: which hands off faster? An A/B of the handoff's latency.

    python bench/ab.py -b redis OLD_TREE NEW_TREE          # e.g. two git worktrees
    python bench/ab.py -b etcd /work/base /work/main -n 10 --blocks 8 --per-block 10

Each tree (a checkout with ``lelect/`` in it; its candidates run with ``PYTHONPATH`` set
to it, keepers included) gets a line of its own on one server: a leader and ``-n``
waiting candidates, running ``bench/scale.py``'s job. After ``--warmup`` unmeasured
handoffs each, the trees hand off in blocks of ``--per-block``, the first tree first in
even blocks and second in odd ones, so that a host that drifts over the run weighs on
both alike. A handoff is measured as ``bench/scale.py`` measures it: from the leader's
job's last line to the next job's first.

Same-code runs (a tree against itself) differ by up to ~0.45 ms at p50 with 60 handoffs
a side on the 2-core host of 2026-12: read a smaller difference as none, and run both
orders (swap the trees) before believing one.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import wait_for
from scale import SERVERS, Line, lelect_side, open_gate, records


def handoff(line: Line, waiters: int, timeout: float, settle: float) -> float:
    """One handoff of ``line`` (ms); afterwards ``waiters`` wait again."""
    led = line.starts()
    leader = led[-1][2]
    open_gate(line.gates, leader, timeout)
    count = len(led)
    wait_for(lambda: len(line.starts()) > count, timeout, "the next leader", interval=0.001)
    time.sleep(settle)
    ends = {pid: ns for kind, ns, pid in records(line.record) if kind == "end"}
    took = (line.starts()[count][1] - ends[leader]) / 1e6
    line.start()
    line.wait_waiting(waiters)
    time.sleep(settle)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs=2, metavar="TREE", help="a checkout of lelect")
    parser.add_argument("-b", "--backend", choices=sorted(SERVERS), default="redis")
    parser.add_argument("-n", "--waiters", type=int, default=10, help="waiting candidates")
    parser.add_argument("--blocks", type=int, default=6, help="blocks of handoffs per tree")
    parser.add_argument("--per-block", type=int, default=10, help="handoffs per block")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured handoffs per tree")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds of quiet after each handoff and each new candidate")
    parser.add_argument("--timeout", type=float, default=60.0, help="bound of each wait")
    args = parser.parse_args()
    trees = [str(Path(tree).resolve()) for tree in args.trees]
    for tree in trees:
        if not (Path(tree) / "lelect" / "__init__.py").is_file():
            parser.error(f"{tree}: no lelect/ in it")
        compileall.compile_dir(str(Path(tree) / "lelect"), quiet=1)
    os.chdir(tempfile.gettempdir())  # never a tree's own lelect by the working directory
    times: dict[str, list[float]] = {tree: [] for tree in trees}
    with tempfile.TemporaryDirectory(prefix="lelect-ab-") as tmp, \
            SERVERS[args.backend](Path(tmp)) as server:
        side = lelect_side(server)
        lines = {}
        try:
            for index, tree in enumerate(trees):
                os.environ["PYTHONPATH"] = tree  # (a Line takes its environment as made)
                line = lines[tree] = Line(side, f"ab{index}", Path(tmp), args.timeout)
                line.start()
                wait_for(lambda line=line: line.starts(), args.timeout, "the first leader")
                for _ in range(args.waiters):
                    line.start()
                line.wait_waiting(args.waiters)
                for _ in range(args.warmup):
                    handoff(line, args.waiters, args.timeout, args.settle)
            for block in range(args.blocks):
                for tree in trees if block % 2 == 0 else trees[::-1]:
                    times[tree] += [handoff(lines[tree], args.waiters, args.timeout, args.settle)
                                    for _ in range(args.per_block)]
        finally:
            for line in lines.values():
                line.close()
    print(f"| tree ({args.backend}, {args.waiters} waiting) | handoffs | p25 ms | p50 ms | p75 ms |")
    print("|---|---|---|---|---|")
    for tree in trees:
        quartiles = statistics.quantiles(times[tree], n=4)
        print(f"| {tree} | {len(times[tree])} | {quartiles[0]:.2f} | {quartiles[1]:.2f} |"
              f" {quartiles[2]:.2f} |")


if __name__ == "__main__":
    main()
