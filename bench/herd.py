"""Handoff cost with N waiting candidates on Redis and PostgreSQL (library candidates in
threads, one backend and its connections each; no heartbeats): handoff p50 (release to
the next campaign's return) and server requests per handoff (Redis: INFO commandstats
calls of what clients send; PostgreSQL: xact_commit of pg_stat_database, read after the stats flush).

    PYTHONPATH=. python bench/herd.py -n 1 -n 10 -n 50 --handoffs 10

A stop-gap until bench/scale.py (which runs real ``lelect campaign`` processes) is on
main. Prints one table; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lelect.backends import connect  # noqa: E402
from lelect.backends.base import Candidate  # noqa: E402
from tests.plugins.postgres_server import PostgresCluster  # noqa: E402
from tests.plugins.redis_server import RedisServer  # noqa: E402

#: What a client sends (commandstats also counts the commands scripts run).
CLIENT_REQUESTS = {"evalsha", "eval", "pttl", "subscribe", "unsubscribe", "hello", "ping",
                   "client|setname", "select", "auth", "get", "exists"}


def run(url: str, n: int, handoffs: int, counter, settle: float) -> tuple[float, float]:
    cancel = threading.Event()
    backends = []
    with ThreadPoolExecutor(max_workers=n + 2) as pool:

        def start(name: str):
            backend = connect(url)
            backends.append(backend)
            return pool.submit(backend.campaign, "bench", Candidate(name, "h", 1), ttl=30.0,
                               cancel=cancel)

        leader = start("first").result()
        line = {start(f"w{i}") for i in range(n)}
        time.sleep(1.0 + n * 0.05)  # everybody in line
        times, costs = [], []
        for k in range(handoffs):
            time.sleep(settle)
            before = counter()
            t0 = time.monotonic()
            leader.release()
            done, line = wait(line, timeout=60, return_when=FIRST_COMPLETED)
            times.append(time.monotonic() - t0)
            (winner,) = done
            leader = winner.result()
            time.sleep(settle)
            costs.append(counter() - before)
            line.add(start(f"x{k}"))  # n wait again
        cancel.set()
        leader.release()
    for backend in backends:
        backend.close()
    return statistics.median(times) * 1000, statistics.mean(costs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, action="append")
    parser.add_argument("--handoffs", type=int, default=10)
    parser.add_argument("-b", action="append", choices=["redis", "postgres"])
    args = parser.parse_args()
    rows = []
    for kind in args.b or ["redis", "postgres"]:
        for n in args.n or [1, 10, 50]:
            if kind == "redis":
                server = RedisServer(Path(tempfile.mkdtemp(prefix="lelect-herd-")))
                server.start()
                client = server.client()

                def counter(client=client) -> int:
                    stats = client.info("commandstats")
                    return sum(v["calls"] for k, v in stats.items()
                               if k.removeprefix("cmdstat_") in CLIENT_REQUESTS)

                try:
                    p50, cost = run(server.url, n, args.handoffs, counter, 0.2)
                finally:
                    server.remove()
            else:
                cluster = PostgresCluster(settings={"max_connections": "300"})
                db = cluster.create_database("bench")

                def counter(cluster=cluster, db=db) -> int:
                    time.sleep(1.1)  # stats reach pg_stat_database within a second
                    rows = cluster.sql("SELECT pg_stat_force_next_flush()", db)
                    del rows
                    return cluster.sql("SELECT xact_commit FROM pg_stat_database"
                                       " WHERE datname = 'bench'", db)[0][0]

                try:
                    p50, cost = run(cluster.url(db), n, args.handoffs, counter, 0.2)
                finally:
                    cluster.remove()
            rows.append((kind, n, p50, cost))
            print(f"{kind:9} N={n:<3} handoff p50 {p50:7.1f} ms   requests/handoff {cost:6.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
