"""Failover and handoff of ``lelect campaign`` on the ZooKeeper backend.

    python bench/zookeeper_failover.py                # session 2s and 10s, 30 trials each
    python bench/zookeeper_failover.py --session 2 --trials 50 --hosts 127.0.0.1:2181

graceful handoff: the leader's job exits; measured from its last line to the first line
of the waiting candidate's job (the release multi, the waiter's watch, its getChildren
and winning multi, the keeper's fork/exec).
lelect killed (-9), host alive: the leading lelect gets SIGKILL at a random point of its
probe cycle; its keeper kills the job's group, reattaches to lelect's session and ends
it (the hand-back), so the waiter's watch fires. Measured from the SIGKILL to the first
line the waiting candidate's job writes: milliseconds, whatever the session timeout.
host dies (all frozen): lelect, its keeper and the job are SIGSTOPped together, then
killed, so nobody can hand anything back: failover comes from the session, between 2/3
of the session timeout and the session timeout (plus up to one server tick), since the
client spoke at most a third of it before. "overlaps" counts old jobs that ticked after
the next job started (it must be 0).

Host-dies trials run in parallel lanes (one election each) to bound the run time; the -9
trials run one at a time (each takes milliseconds). Without --hosts the script starts its
own ZooKeeper (as the tests do, tickTime 200 ms). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (  # noqa: E402
    PERIODS,
    StartCampaign,
    add_strike_options,
    campaign,
    print_strike_table,
    strike_table_rows,
)
from kazoo.client import KazooClient  # noqa: E402

from tests.plugins.zookeeper_server import ZooKeeperServer  # noqa: E402


def watchers(kazoo: KazooClient) -> dict[str, int]:
    """Watches by path, from the server's ``wchp`` (empty if it is not whitelisted)."""
    counts: dict[str, int] = {}
    path = None
    try:
        text = kazoo.command(b"wchp")
    except Exception:  # noqa: BLE001 - 4lw commands may be disabled
        return counts
    for line in text.splitlines():
        if line.startswith("/"):
            path = line.strip()
        elif line.strip() and path is not None:
            counts[path] = counts.get(path, 0) + 1
    return counts


def queued(kazoo: KazooClient, base: str, election: str) -> bool:
    """True once a second contender is in the election (under ``base``) and watches the
    first (which also watches its own node)."""
    path = f"{base}/{election}"
    try:
        children = sorted(kazoo.get_children(path), key=lambda name: name[-10:])
    except Exception:  # noqa: BLE001 - not created yet
        return False
    if len(children) < 2:
        return False
    counts = watchers(kazoo)
    if not counts:
        time.sleep(0.2)
        return True
    return counts.get(f"{path}/{children[0]}", 0) >= 2


def session_campaign(hosts: str, base: str, session: float) -> StartCampaign:
    """Starts candidates of elections under ``base`` with that session timeout."""
    return partial(campaign, f"zookeeper://{hosts}{base}?session_timeout={session:g}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", help="a ZooKeeper to use, HOST:PORT[,…] (default: start one)")
    add_strike_options(parser, "session", "session timeout in seconds")
    args = parser.parse_args()
    base = f"/lelect-bench-{int(time.time())}"

    with tempfile.TemporaryDirectory(prefix="lelect-bench-") as tmp:
        workdir = Path(tmp)
        server = None
        if not args.hosts:
            (workdir / "zk").mkdir()
            server = ZooKeeperServer(workdir / "zk")
            server.start()
        hosts = args.hosts or server.hosts
        kazoo = KazooClient(hosts)
        kazoo.start(10)
        try:
            rows = strike_table_rows(partial(session_campaign, hosts, base),
                                     partial(queued, kazoo, base), args.session or PERIODS, 7,
                                     args.trials, args.lanes, workdir)  # fmt: skip
        finally:
            kazoo.stop()
            kazoo.close()
            if server is not None:
                server.stop()
    print_strike_table("session", 7, rows)


if __name__ == "__main__":
    main()
