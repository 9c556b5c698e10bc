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
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kazoo.client import KazooClient  # noqa: E402

from tests.helpers import lelect_env, read_intervals, recording_job  # noqa: E402
from tests.plugins.zookeeper_server import ZooKeeperServer  # noqa: E402

LELECT = [sys.executable, "-m", "lelect"]


def first_line_ns(record: Path) -> int | None:
    try:
        lines = record.read_text().splitlines()
    except FileNotFoundError:
        return None
    return int(lines[0].split()[1]) if lines else None


def start_job(record: Path) -> list[str]:
    """Writes 'start NS TERM PID' once, then sleeps until killed."""
    f = shlex.quote(str(record))
    return ["sh", "-c", f'echo "start $(date +%s%N) $LELECT_TERM $$" >> {f}; exec sleep 3600']


def gated_job(record: Path, gate: Path) -> list[str]:
    """Writes 'start …', waits until ``gate`` exists, writes 'end …' and exits."""
    f, g = shlex.quote(str(record)), shlex.quote(str(gate))
    line = '"$1 $(date +%s%N) $LELECT_TERM $$"'
    return ["sh", "-c", f"w() {{ echo {line} >> {f}; }}; w start; "
            f"while [ ! -e {g} ]; do sleep 0.01; done; w end"]  # fmt: skip


def campaign(url: str, election: str, job: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [*LELECT, "campaign", election, "--heartbeat-interval", "0", "--", *job],
        env=lelect_env(url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.005)
    return value


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


def crash_failover(url: str, base: str, kazoo: KazooClient, session: float, trials: int,
                   lanes: int, workdir: Path) -> list[float]:  # fmt: skip
    results: list[float] = []
    round_number = 0
    while len(results) < trials:
        round_number += 1
        batch = min(lanes, trials - len(results))
        names = [f"crash-{session:g}-{round_number}-{lane}" for lane in range(batch)]
        leaders, followers, records = [], [], []
        for name in names:
            records.append((workdir / f"{name}.a", workdir / f"{name}.b"))
            leaders.append(campaign(url, name, start_job(records[-1][0])))
        for name, (a, b) in zip(names, records, strict=True):
            wait_for(lambda a=a: first_line_ns(a), 30, f"leader of {name}")
            followers.append(campaign(url, name, start_job(b)))
        for name in names:
            wait_for(lambda name=name: queued(kazoo, f"{base}/{name}"), 30, f"waiter of {name}")
        # Kill each leader at a random point of its probe cycle.
        kills = sorted((random.uniform(0, session / 3), lane) for lane in range(batch))
        started = time.monotonic()
        killed_ns: dict[int, int] = {}
        for offset, lane in kills:
            time.sleep(max(0.0, started + offset - time.monotonic()))
            leaders[lane].kill()
            killed_ns[lane] = time.time_ns()
        for lane, (_, b) in enumerate(records):
            took = wait_for(lambda b=b: first_line_ns(b), session + 10, "the next job")
            results.append((took - killed_ns[lane]) / 1e9)
        for process in leaders + followers:
            process.kill()
            process.wait()
    return results


def graceful_handoff(url: str, base: str, kazoo: KazooClient, session: float, trials: int,
                     workdir: Path) -> list[float]:  # fmt: skip
    results: list[float] = []
    for trial in range(trials):
        name = f"handoff-{session:g}-{trial}"
        record, gate = workdir / f"{name}.record", workdir / f"{name}.gate"
        first = campaign(url, name, gated_job(record, gate))
        wait_for(record.exists, 30, "the first job")
        second = campaign(url, name, recording_job(record, hold=0.0))
        wait_for(lambda name=name: queued(kazoo, f"{base}/{name}"), 30, "the waiter")
        gate.touch()
        first.wait(30)
        second.wait(30)
        intervals = read_intervals(record)
        if len(intervals) != 2 or intervals[0].end_ns is None:
            raise SystemExit(f"bench: unexpected record for {name}: {intervals}")
        results.append((intervals[1].start_ns - intervals[0].end_ns) / 1e9)
    return results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def row(case: str, session: float, values: list[float]) -> str:
    return (
        f"{case:<18} {session:>7g}s {len(values):>6} {statistics.median(values) * 1000:>9.1f}"
        f" {percentile(values, 0.99) * 1000:>9.1f} {min(values) * 1000:>9.1f}"
        f" {max(values) * 1000:>9.1f}"
    )


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
                rows.append(row("graceful handoff", session,
                                graceful_handoff(url, base, kazoo, session, args.trials, workdir)))  # fmt: skip
                print("done:", rows[-1], file=sys.stderr, flush=True)
                rows.append(row("crash failover", session,
                                crash_failover(url, base, kazoo, session, args.trials, args.lanes,
                                               workdir)))  # fmt: skip
                print("done:", rows[-1], file=sys.stderr, flush=True)
        finally:
            kazoo.stop()
            kazoo.close()
            if server is not None:
                server.stop()
    print(f"{'case':<18} {'session':>8} {'trials':>6} {'p50 ms':>9} {'p99 ms':>9}"
          f" {'min ms':>9} {'max ms':>9}")  # fmt: skip
    print("\n".join(rows))


if __name__ == "__main__":
    main()
