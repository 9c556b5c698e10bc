"""Handoff and failover of ``lelect campaign`` on the etcd backend.

    python bench/etcd_failover.py                 # ttl 2s and 10s, 30 trials each
    python bench/etcd_failover.py --ttl 2 --trials 50 --url etcd://127.0.0.1:2379/bench

graceful handoff: the leader's job exits; from its last line to the first line of the
waiting candidate's job (release txn, the waiter's watch fires, its win txn, fork/exec).
lelect killed (-9), host alive: SIGKILL of the leading lelect at a random point of its
keep-alive cycle; its keeper kills the job and hands the leadership back (revokes the
lease) once the job's group is gone. From the kill to the next job's first line.
host dies: the leading lelect, its keeper and its job are frozen together (SIGSTOP, as
a host that hangs); failover then comes from the lease: expect between 2/3 ttl and ttl.
From the freeze to the next job's first line.

Crash trials run in parallel lanes (one election each). Without --url the script starts
its own etcd (as the tests do). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402
from common import (  # noqa: E402
    Queued,
    StartCampaign,
    campaign,
    crash_failover,
    first_line_ns,
    graceful_handoff,
    latency_row,
    print_failover_table,
    start_job,
    wait_for,
)

from lelect.backends import connect  # noqa: E402
from tests.plugins.etcd_server import EtcdServer  # noqa: E402


def queued(url: str, election: str) -> bool:
    """True once a second candidate's key is in the election's queue."""
    with connect(url) as backend:
        keys = backend.keys(election)
        found = backend.gateway.range(keys.contenders, prefix=True, count_only=True, budget=5.0)
    return found.count >= 2


def host_dies(start: StartCampaign, waiting: Queued, ttl: float, trials: int, lanes: int,
              workdir: Path) -> list[float]:
    """Seconds from freezing the leader's whole tree (lelect, keeper, job: a hung host)
    at a random point of its keep-alive cycle to the first line of the waiter's job."""
    results: list[float] = []
    round_number = 0
    while len(results) < trials:
        round_number += 1
        batch = min(lanes, trials - len(results))
        names = [f"host-{ttl:g}-{round_number}-{lane}" for lane in range(batch)]
        leaders, followers, records = [], [], []
        for name in names:
            records.append((workdir / f"{name}.a", workdir / f"{name}.b"))
            leaders.append(start(name, start_job(records[-1][0])))
        for name, (a, b) in zip(names, records, strict=True):
            wait_for(lambda a=a: first_line_ns(a), 30, f"leader of {name}")
            followers.append(start(name, start_job(b)))
        for name in names:
            wait_for(lambda name=name: waiting(name), 30, f"waiter of {name}")
        frozen: dict[int, list[psutil.Process]] = {}
        frozen_ns: dict[int, int] = {}
        offsets = sorted((random.uniform(0, ttl / 3), lane) for lane in range(batch))
        began = time.monotonic()
        for offset, lane in offsets:
            time.sleep(max(0.0, began + offset - time.monotonic()))
            tree = psutil.Process(leaders[lane].pid)
            frozen[lane] = [tree, *tree.children(recursive=True)]
            for process in frozen[lane]:
                process.send_signal(signal.SIGSTOP)
            frozen_ns[lane] = time.time_ns()
        for lane, (_, b) in enumerate(records):
            took = wait_for(lambda b=b: first_line_ns(b), ttl + 10, "the next job")
            results.append((took - frozen_ns[lane]) / 1e9)
        for processes in frozen.values():
            for process in processes:
                try:
                    process.kill()
                    process.send_signal(signal.SIGCONT)
                except psutil.NoSuchProcess:
                    pass
        for process in leaders + followers:
            process.kill()
            process.wait()
    return results


CASES = ("graceful handoff", "lelect killed (-9)", "host dies")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an etcd to use (default: start one)")
    parser.add_argument("--ttl", type=float, action="append", help="ttl in seconds (repeatable)")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--lanes", type=int, default=10, help="crash trials run at once")
    parser.add_argument("--case", action="append", choices=CASES,
                        help="run only this case (repeatable; default: all)")
    args = parser.parse_args()
    ttls = args.ttl or [2.0, 10.0]

    with tempfile.TemporaryDirectory(prefix="lelect-bench-") as tmp:
        workdir = Path(tmp)
        server = None if args.url else EtcdServer(workdir / "etcd")
        url = args.url or server.url(f"bench-{os.getpid()}")
        rows = []
        try:
            for ttl in ttls:
                start = partial(campaign, url, options=("--ttl", f"{ttl}s"))
                waiting = partial(queued, url)
                cases = (
                    ("graceful handoff", partial(graceful_handoff, start, waiting, ttl,
                                                 args.trials, workdir)),
                    ("lelect killed (-9)", partial(crash_failover, start, waiting, ttl,
                                                   args.trials, args.lanes, workdir)),
                    ("host dies", partial(host_dies, start, waiting, ttl, args.trials,
                                          args.lanes, workdir)),
                )
                for case, measure in cases:
                    if args.case and case not in args.case:
                        continue
                    rows.append(latency_row(f"{case:<18} {ttl:>5g}s", measure()))
                    print("done:", rows[-1], file=sys.stderr, flush=True)
        finally:
            if server is not None:
                server.remove()
    print_failover_table("ttl", 5, rows)


if __name__ == "__main__":
    main()
