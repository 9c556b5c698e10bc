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
from pathlib import Path

from common import wait_for
from scale import SERVERS, Line, lelect_side


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
    times: list[list[float]] = [[], []]  # by position: a tree may be measured against itself
    with tempfile.TemporaryDirectory(prefix="lelect-ab-") as tmp, \
            SERVERS[args.backend](Path(tmp)) as server:
        side = lelect_side(server)
        lines: list[Line] = []
        try:
            for index, tree in enumerate(trees):
                os.environ["PYTHONPATH"] = tree  # (a Line takes its environment as made)
                line = Line(side, f"ab{index}", Path(tmp), args.timeout)
                lines.append(line)
                line.start()
                wait_for(lambda line=line: line.starts(), args.timeout, "the first leader")
                for _ in range(args.waiters):
                    line.start()
                line.wait_waiting(args.waiters)
                for _ in range(args.warmup):
                    line.hand_off(args.settle)
                    line.refill(args.waiters, args.settle)
            for block in range(args.blocks):
                for index in (0, 1) if block % 2 == 0 else (1, 0):
                    for _ in range(args.per_block):
                        times[index].append(lines[index].hand_off(args.settle) * 1000)
                        lines[index].refill(args.waiters, args.settle)
        finally:
            for line in lines:
                line.close()
    print(f"| tree ({args.backend}, {args.waiters} waiting) | handoffs | p25 ms | p50 ms | p75 ms |")
    print("|---|---|---|---|---|")
    for tree, taken in zip(trees, times):
        quartiles = statistics.quantiles(taken, n=4)
        print(f"| {tree} | {len(taken)} | {quartiles[0]:.2f} | {quartiles[1]:.2f} |"
              f" {quartiles[2]:.2f} |")


if __name__ == "__main__":
    main()
