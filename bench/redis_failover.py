"""Failover and handoff of ``lelect campaign`` on the Redis backend.

    python bench/redis_failover.py                 # ttl 2s and 10s, 30 trials each
    python bench/redis_failover.py --ttl 2 --trials 50 --url redis://127.0.0.1:6379/0

graceful handoff: the leader's job exits; measured from its last line to the first line
of the waiting candidate's job (release, PUBLISH, wake-up, acquire, keeper's fork/exec).
lelect killed (-9), host alive: the leading lelect gets SIGKILL at a random point of its
renew cycle; its keeper kills the job's group and, once the group is gone, hands the
leadership back by its token (one script: DEL + PUBLISH). Measured from the SIGKILL to
the first line of the waiting candidate's job. Without the hand-back this is the lease
(between 2/3 ttl and ttl: the key lives ttl after the last renew).
host dies (all frozen): lelect, its keeper and the job are SIGSTOPped together, so
nothing can release: failover comes from the lease, as above. "overlaps" counts old
jobs that ticked after the next job started (it must be 0).

Trials of the host-dies case run in parallel lanes (one election each) to bound the run
time; the -9 trials run one at a time (each takes milliseconds). Without --url the script starts its own redis-server (as the tests do). Prints a
table; asserts nothing.
"""

from __future__ import annotations

import argparse
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
from tests.plugins.redis_server import RedisServer  # noqa: E402


def waiting(url: str, election: str) -> bool:
    """True once the second candidate subscribed to the election's resign-requests channel (the
    leader keeps its own subscription)."""
    backend = connect(url)
    try:
        channel = f"{backend.options.prefix}:{{{election}}}:resign-requests"
        reply = backend.link.call(5.0, "PUBSUB", "NUMSUB", channel)
    finally:
        backend.close()
    return int(reply[1]) >= 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a Redis to use (default: start a redis-server)")
    add_strike_options(parser)
    args = parser.parse_args()
    ttls = args.ttl or PERIODS

    with tempfile.TemporaryDirectory(prefix="lelect-bench-") as tmp:
        workdir = Path(tmp)
        server = None if args.url else RedisServer(workdir / "redis")
        url = args.url or server.url
        try:
            rows = strike_table_rows(partial(ttl_campaign, url), partial(waiting, url), ttls, 5,
                                     args.trials, args.lanes, workdir)  # fmt: skip
        finally:
            if server is not None:
                server.remove()
    print_strike_table("ttl", 5, rows)


if __name__ == "__main__":
    main()
