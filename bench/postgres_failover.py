"""Failover of ``lelect campaign`` on the PostgreSQL backend, and the load idle waiters
put on the server.

    python bench/postgres_failover.py                # ttl 2s and 10s, 30 trials each
    python bench/postgres_failover.py --ttl 2 --trials 50 --idle-waiters 50

Rows (each from the event to the first line the next candidate's job writes):
- graceful handoff: the leader's job exits (release + NOTIFY, wake-up, acquire, the
  keeper's fork/exec);
- lelect killed (-9), host alive: SIGKILL of the leading lelect at a random point of its
  renew cycle; its keeper kills the job's group and, once the group is gone, hands the
  leadership back with its own client (``handback``): end to end, from the
  SIGKILL to the next job;
- host dies (all frozen): lelect, its keeper and the job SIGSTOPped together: failover
  comes from the lease (expect 2/3 ttl to ttl). "overlaps" counts old jobs that ticked
  after the next job started (it must be 0).

Host-dies trials run in parallel lanes (one election each) to bound the run time; the -9
trials run one at a time (each takes milliseconds).

Idle load: N candidates wait behind one leader (heartbeats off); pg_stat_statements
counts the statements each kind of lelect statement ran in a quiet window.

Without --url the script starts its own throwaway cluster (as the tests do). Prints
tables; asserts nothing.
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
    add_strike_options,
    first_line_ns,
    print_strike_table,
    start_job,
    strike_table_rows,
    ttl_campaign,
    wait_for,
)

from lelect.backends import connect  # noqa: E402
from tests.plugins.postgres_server import PostgresCluster, waiting_sql  # noqa: E402

SCHEMA = "lelect"


def waiting(url: str, election: str) -> bool:
    """True once a candidate of ``election`` waits behind its leader."""
    with connect(url) as backend:
        return waiting_count(backend, election) >= 1


def waiting_count(backend, election: str) -> int:
    return backend._command.run(waiting_sql(SCHEMA, election), 5.0)[0][0]


def idle_load(url: str, stats_url: str, waiters: int, ttl: float, window: float,
              workdir: Path) -> str:  # fmt: skip
    """Statements per second per waiting candidate, from pg_stat_statements (read
    through ``stats_url``: a role that may create the extension and see all queries)."""
    election = "idle-bench"
    start = ttl_campaign(url, ttl)
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
        f"{'by waiters':<28} {by_waiters:>8} {by_waiters / waiters / window:>18.3f}",
        f"{'leader renews':<28} {renews:>8}",
        "by kind: " + ", ".join(f"{k}={n}" for k, n in sorted(delta.items()) if n),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a PostgreSQL database to use (default: start a cluster)")
    add_strike_options(parser)
    parser.add_argument("--idle-waiters", type=int, default=20)
    parser.add_argument("--idle-window", type=float, default=30.0)
    args = parser.parse_args()
    ttls = args.ttl or PERIODS

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
            rows = strike_table_rows(partial(ttl_campaign, url), partial(waiting, url), ttls, 5,
                                     args.trials, args.lanes, workdir)  # fmt: skip
            idle = idle_load(url, stats_url, args.idle_waiters, max(ttls), args.idle_window, workdir)
        finally:
            if cluster is not None:
                cluster.remove()
    print_strike_table("ttl", 5, rows)
    print()
    print(idle)


if __name__ == "__main__":
    main()
