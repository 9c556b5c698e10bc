"""Handoff and failover of ``lelect campaign`` on the etcd backend.

    python bench/etcd_failover.py                 # ttl 2s and 10s, 30 trials each
    python bench/etcd_failover.py --ttl 2 --trials 50 --url etcd://127.0.0.1:2379/bench

graceful handoff: the leader's job exits; from its last line to the first line of the
waiting candidate's job (release txn, the waiter's watch fires, its win txn, fork/exec).
lelect killed (-9), host alive: SIGKILL of the leading lelect at a random point of its
keep-alive cycle; its keeper kills the job and hands the leadership back (revokes the
lease) once the job's group is gone. From the kill to the next job's first line.
host dies (all frozen): the leading lelect, its keeper and its job are SIGSTOPped
together (as a host that hangs); failover then comes from the lease: expect between 2/3
ttl and ttl. From the freeze to the next job's first line. "overlaps" counts old jobs
that ticked after the next job started (it must be 0).

Host-dies trials run in parallel lanes (one election each) to bound the run time; the -9
trials run one at a time (each takes milliseconds). Without --url the script starts its
own etcd (as the tests do). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (  # noqa: E402
    PERIODS,
    add_strike_options,
    print_strike_table,
    strike_table_rows,
    ttl_campaign,
)

from lelect.backends import connect  # noqa: E402
from tests.plugins.etcd_server import EtcdServer  # noqa: E402


def queued(url: str, election: str) -> bool:
    """True once a second candidate's key is in the election's queue."""
    with connect(url) as backend:
        keys = backend.keys(election)
        found = backend.gateway.range(keys.contenders, prefix=True, count_only=True, budget=5.0)
    return found.count >= 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an etcd to use (default: start one)")
    add_strike_options(parser)
    args = parser.parse_args()
    ttls = args.ttl or PERIODS

    with tempfile.TemporaryDirectory(prefix="lelect-bench-") as tmp:
        workdir = Path(tmp)
        server = None if args.url else EtcdServer(workdir / "etcd")
        url = args.url or server.url(f"bench-{os.getpid()}")
        try:
            rows = strike_table_rows(partial(ttl_campaign, url), partial(queued, url), ttls, 5,
                                     args.trials, args.lanes, workdir)  # fmt: skip
        finally:
            if server is not None:
                server.remove()
    print_strike_table("ttl", 5, rows)


if __name__ == "__main__":
    main()
