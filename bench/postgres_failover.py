"""Failover of ``lelect campaign`` on the PostgreSQL backend, and the load idle waiters
put on the server.

    python bench/postgres_failover.py                # ttl 2s and 10s, 30 trials each
    python bench/postgres_failover.py --ttl 2 --trials 50 --idle-waiters 50

Rows (each from the event to the first line the next candidate's job writes):
- graceful handoff: the leader's job exits (release + NOTIFY, wake-up, acquire, the
  keeper's fork/exec);
- lelect killed (-9), host alive: SIGKILL of the leading lelect only; its keeper kills
  the job and (where the keeper hands the leadership back) releases it at once, else
  the lease runs out;
- host dies: lelect, its keeper and the job frozen together (SIGSTOP): failover comes
  from the lease (expect 2/3 ttl to ttl); no job runs past its lease;
- hand-back (keeper's release): a leader whose lelect is gone is released by the
  keeper's own client (``_handback_postgres.hand_back``, standard library only), as the
  keeper calls it once the job's group is dead.

Idle load: N candidates wait behind one leader (heartbeats off); pg_stat_statements
counts the statements each kind of lelect statement ran in a quiet window.

Without --url the script starts its own throwaway cluster (as the tests do). Prints
tables; asserts nothing.
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

from common import (  # noqa: E402
    campaign,
    failover_rows,
    first_line_ns,
    latency_row,
    print_failover_table,
    start_job,
    wait_for,
)

from lelect.backends import _handback_postgres, connect  # noqa: E402
from lelect.backends.base import Candidate  # noqa: E402
from tests.plugins.postgres_server import PostgresCluster, waiting_sql  # noqa: E402

SCHEMA = "lelect"


def waiting(url: str, election: str) -> bool:
    """True once a candidate of ``election`` waits behind its leader."""
    with connect(url) as backend:
        return waiting_count(backend, election) >= 1


def waiting_count(backend, election: str) -> int:
    return backend._command.run(waiting_sql(SCHEMA, election), 5.0)[0][0]


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += parents.get(pid, [])
    return tree


def host_dies(start, queued, period: float, trials: int, lanes: int,
              workdir: Path) -> tuple[list[float], int]:  # fmt: skip
    """Seconds from freezing a leader's whole tree (lelect, keeper, job) to the first line
    of the waiter's job, and how many frozen jobs ran on past their lease (must be 0)."""
    results: list[float] = []
    overran = 0
    round_number = 0
    while len(results) < trials:
        round_number += 1
        batch = min(lanes, trials - len(results))
        names = [f"host-{period:g}-{round_number}-{lane}" for lane in range(batch)]
        leaders, followers, records = [], [], []
        for name in names:
            records.append((workdir / f"{name}.a", workdir / f"{name}.b"))
            leaders.append(start(name, start_job(records[-1][0])))
        for name, (a, b) in zip(names, records, strict=True):
            wait_for(lambda a=a: first_line_ns(a), 30, f"leader of {name}")
            followers.append(start(name, start_job(b)))
        for name in names:
            wait_for(lambda name=name: queued(name), 30, f"waiter of {name}")
        kills = sorted((random.uniform(0, period / 3), lane) for lane in range(batch))
        started = time.monotonic()
        frozen_ns: dict[int, int] = {}
        trees: dict[int, list[int]] = {}
        for offset, lane in kills:
            time.sleep(max(0.0, started + offset - time.monotonic()))
            trees[lane] = process_tree(leaders[lane].pid)
            for pid in trees[lane]:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass
            frozen_ns[lane] = time.time_ns()
        for lane, (a, b) in enumerate(records):
            took = wait_for(lambda b=b: first_line_ns(b), period + 10, "the next job")
            results.append((took - frozen_ns[lane]) / 1e9)
            overran += len(a.read_text().splitlines()) > 1  # a frozen job cannot write
        for tree in trees.values():
            for pid in tree:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for process in leaders + followers:
            process.kill()
            process.wait()
    return results, overran


def hand_back_release(url: str, start, queued, period: float, trials: int,
                      workdir: Path) -> list[float]:  # fmt: skip
    """Seconds from the keeper's hand-back call to the waiter's job's first line."""
    results = []
    with connect(url) as backend:
        for trial in range(trials):
            name = f"handback-{period:g}-{trial}"
            leadership = backend.campaign(name, Candidate.local("dead-leader"), timeout=30)
            params = backend.hand_back(leadership).params
            leadership.stop()  # lelect "died": no more renews, no release
            record = workdir / f"{name}.b"
            follower = start(name, start_job(record))
            wait_for(lambda name=name: queued(name), 30, f"waiter of {name}")
            began = time.time_ns()
            if _handback_postgres.hand_back(params, 5.0, 137) != "released":
                raise SystemExit(f"bench: the hand-back of {name} released nothing")
            took = wait_for(lambda record=record: first_line_ns(record), 30, "the next job")
            results.append((took - began) / 1e9)
            follower.kill()
            follower.wait()
    return results


def idle_load(url: str, stats_url: str, waiters: int, ttl: float, window: float,
              workdir: Path) -> str:  # fmt: skip
    """Statements per second per waiting candidate, from pg_stat_statements (read
    through ``stats_url``: a role that may create the extension and see all queries)."""
    election = "idle-bench"
    start = partial(campaign, url, options=("--ttl", f"{ttl}s"))
    processes = [start(election, start_job(workdir / "idle.leader"))]
    with connect(stats_url) as stats:
        stats._command.run("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", 10.0)

        def counts() -> dict[str, int]:
            rows = stats._command.run(
                "SELECT substring(query FROM '/\\* lelect ([a-z-]+) \\*/'), sum(calls)::bigint"
                " FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database"
                " WHERE datname = current_database()) AND query LIKE '%/* lelect %'"
                " GROUP BY 1", 10.0)  # fmt: skip
            return {kind or "?": int(n) for kind, n in rows}

        try:
            wait_for(lambda: first_line_ns(workdir / "idle.leader"), 30, "the idle leader")
            for _ in range(waiters):
                processes.append(start(election, start_job(workdir / "idle.waiter")))
            wait_for(lambda: waiting_count(stats, election) >= waiters, 60, "the waiters")
            time.sleep(min(ttl, 5.0))  # start-up traffic passes
            before = counts()
            time.sleep(window)
            after = counts()
        finally:
            for process in processes:
                process.kill()
                process.wait()
    delta = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in after}
    renews = delta.get("renew", 0)
    by_waiters = sum(n for kind, n in delta.items() if kind != "renew")
    lines = [
        f"{waiters} idle waiters, ttl {ttl:g}s, window {window:g}s",
        f"{'statements':<28} {'count':>8} {'per waiter per s':>18}",
        f"{'by waiters (acquires)':<28} {by_waiters:>8} {by_waiters / waiters / window:>18.3f}",
        f"{'leader renews':<28} {renews:>8}",
        "by kind: " + ", ".join(f"{k}={n}" for k, n in sorted(delta.items()) if n),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a PostgreSQL database to use (default: start a cluster)")
    parser.add_argument("--ttl", type=float, action="append", help="ttl in seconds (repeatable)")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--lanes", type=int, default=10, help="crash trials run at once")
    parser.add_argument("--idle-waiters", type=int, default=20)
    parser.add_argument("--idle-window", type=float, default=30.0)
    args = parser.parse_args()
    ttls = args.ttl or [2.0, 10.0]

    with tempfile.TemporaryDirectory(prefix="lelect-bench-") as tmp:
        workdir = Path(tmp)
        cluster = None
        if args.url:
            url = stats_url = args.url
        else:
            cluster = PostgresCluster()
            url = cluster.url(cluster.create_database("bench"))
            stats_url = cluster.url("bench", user="postgres")
        try:
            rows = []
            queued = partial(waiting, url)
            for ttl in ttls:
                start = partial(campaign, url, options=("--ttl", f"{ttl}s"))
                handoff, crash = failover_rows(start, queued, ttl, 5, args.trials, args.lanes,
                                               workdir)  # fmt: skip
                rows.append(handoff)
                rows.append(crash.replace("crash failover    ", "lelect killed (-9)"))
                frozen, overran = host_dies(start, queued, ttl, args.trials, args.lanes, workdir)
                rows.append(latency_row(f"{'host dies':<18} {ttl:>5g}s", frozen)
                            + f"  (jobs past their lease: {overran})")  # fmt: skip
                print("done:", rows[-1], file=sys.stderr, flush=True)
                released = hand_back_release(url + f"{'&' if '?' in url else '?'}ttl={ttl}s",
                                             start, queued, ttl, args.trials, workdir)  # fmt: skip
                rows.append(latency_row(f"{'hand-back':<18} {ttl:>5g}s", released))
                print("done:", rows[-1], file=sys.stderr, flush=True)
            idle = idle_load(url, stats_url, args.idle_waiters, max(ttls), args.idle_window, workdir)
        finally:
            if cluster is not None:
                cluster.remove()
    print_failover_table("ttl", 5, rows)
    print()
    print(idle)


if __name__ == "__main__":
    main()
