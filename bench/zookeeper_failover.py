"""Crash failover and graceful handoff of ``lelect campaign`` on the ZooKeeper backend.

    python bench/zookeeper_failover.py                # session 2s and 10s, 30 trials each
    python bench/zookeeper_failover.py --session 2 --trials 50 --hosts 127.0.0.1:2181

crash failover: the leading lelect gets SIGKILL at a random point of its probe cycle;
measured from the kill to the first line the waiting candidate's job writes. Expect
between 2/3 of the session timeout and the session timeout (plus up to one server tick):
the server expires the session a session timeout after it last heard from the client,
and the client spoke at most a third of it before the kill.
graceful handoff: the leader's job exits; measured from its last line to the first line
of the waiting candidate's job (delete of the leader's node, the waiter's watch, its
getChildren, the keeper's fork/exec).

Crash trials run in parallel lanes (one election each) to bound the run time. Without
--hosts the script starts its own ZooKeeper (as the tests do, tickTime 200 ms). Prints a
table; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import campaign, failover_rows, print_failover_table  # noqa: E402
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


def queued(kazoo: KazooClient, path: str) -> bool:
    """True once a second contender is in the election and watches the first (which also
    watches its own node)."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", help="a ZooKeeper to use, HOST:PORT[,…] (default: start one)")
    parser.add_argument("--session", type=float, action="append",
                        help="session timeout in seconds (repeatable)")  # fmt: skip
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--lanes", type=int, default=10, help="crash trials run at once")
    args = parser.parse_args()
    sessions = args.session or [2.0, 10.0]
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
            rows = []
            for session in sessions:
                url = f"zookeeper://{hosts}{base}?session_timeout={session:g}s"
                rows += failover_rows(partial(campaign, url),
                                      lambda name: queued(kazoo, f"{base}/{name}"), session, 7,
                                      args.trials, args.lanes, workdir)  # fmt: skip
        finally:
            kazoo.stop()
            kazoo.close()
            if server is not None:
                server.stop()
    print_failover_table("session", 7, rows)


if __name__ == "__main__":
    main()
