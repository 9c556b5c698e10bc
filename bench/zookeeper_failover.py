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
host dies: lelect, its keeper and the job are frozen at once, then killed, so nobody can
hand anything back: failover comes from the session, between 2/3 of the session timeout
and the session timeout (plus up to one server tick), since the client spoke at most a
third of it before. "overlap" counts old jobs that wrote after the next job started.

Host-dies trials run in parallel lanes (one election each) to bound the run time. Without
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

from common import (  # noqa: E402
    campaign,
    crash_failover,
    graceful_handoff,
    host_dies_failover,
    latency_row,
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


def measure(url: str, base: str, kazoo: KazooClient, session: float, trials: int, lanes: int,
            workdir: Path) -> list[str]:  # fmt: skip
    """The three rows of one session timeout."""
    start = partial(campaign, url)

    def waiting(name: str) -> bool:
        return queued(kazoo, f"{base}/{name}")

    rows = []

    def row(case: str, values: list[float], overlap: str = "") -> None:
        rows.append(latency_row(f"{case:<30} {session:>7g}s", values) + overlap)
        print("done:", rows[-1], file=sys.stderr, flush=True)

    row("graceful handoff", graceful_handoff(start, waiting, session, trials, workdir))
    # One crash at a time: each takes milliseconds, and ten keepers handing back at
    # once on a small host would measure the host, not the hand-back.
    row("lelect killed (-9), host alive",
        crash_failover(start, waiting, session, trials, 1, workdir))
    times, overlaps = host_dies_failover(start, waiting, session, trials, lanes, workdir)
    row("host dies", times, f" {overlaps:>7}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", help="a ZooKeeper to use, HOST:PORT[,…] (default: start one)")
    parser.add_argument("--session", type=float, action="append",
                        help="session timeout in seconds (repeatable)")  # fmt: skip
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--lanes", type=int, default=10, help="host-dies trials run at once")
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
                rows += measure(url, base, kazoo, session, args.trials, args.lanes, workdir)
        finally:
            kazoo.stop()
            kazoo.close()
            if server is not None:
                server.stop()
    print(f"{'case':<30} {'session':>8} {'trials':>6} {'p50 ms':>9} {'p99 ms':>9}"
          f" {'min ms':>9} {'max ms':>9} {'overlap':>7}")  # fmt: skip
    print("\n".join(rows))


if __name__ == "__main__":
    main()
