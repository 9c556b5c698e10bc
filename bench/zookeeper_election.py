"""Election time with many contenders on the ZooKeeper backend, through the library.

    python bench/zookeeper_election.py                 # 100 contenders, 5 rounds
    python bench/zookeeper_election.py --contenders 200 --rounds 3 --hosts 127.0.0.1:2181

Each round starts N contenders at once (threads, one ZooKeeper session each, as N
lelect processes would have) and measures:

- first leader: from the start until the first contender holds the election;
- handoff: every leader releases as soon as it wins; the time from one release to the
  next win, over the whole queue (each release wakes one waiter, not N);
- full rotation: until all N have led once.

Without --hosts the script starts its own ZooKeeper (as the tests do). Prints a table;
asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import latency_row  # noqa: E402

from lelect.backends import connect  # noqa: E402
from lelect.backends.base import Candidate  # noqa: E402
from tests.plugins.zookeeper_server import ZooKeeperServer  # noqa: E402


def one_round(url: str, election: str, contenders: int) -> dict[str, list[float] | float]:
    backend = connect(url)
    wins: list[float] = []
    releases: list[float] = []
    lock = threading.Lock()
    gate = threading.Event()

    def contend(index: int) -> None:
        gate.wait()
        leadership = backend.campaign(election, Candidate(f"c{index}", "bench", index), ttl=10)
        with lock:
            wins.append(time.monotonic())
            releases.append(time.monotonic())
            leadership.release()

    with ThreadPoolExecutor(max_workers=contenders) as pool:
        futures = [pool.submit(contend, i) for i in range(contenders)]
        time.sleep(0.2)
        started = time.monotonic()
        gate.set()
        for future in futures:
            future.result(120)
    backend.close()
    handoffs = [win - release for release, win in zip(releases, wins[1:])]
    return {
        "first leader": wins[0] - started,
        "full rotation": wins[-1] - started,
        "handoff": handoffs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", help="a ZooKeeper to use, HOST:PORT[,…] (default: start one)")
    parser.add_argument("--contenders", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lelect-bench-") as tmp:
        server = None
        if not args.hosts:
            (Path(tmp) / "zk").mkdir()
            server = ZooKeeperServer(Path(tmp) / "zk")
            server.start()
        hosts = args.hosts or server.hosts
        url = f"zookeeper://{hosts}/lelect-bench-{int(time.time())}"
        try:
            firsts, rotations, handoffs = [], [], []
            for round_number in range(args.rounds):
                result = one_round(url, f"crowd-{round_number}", args.contenders)
                firsts.append(result["first leader"])
                rotations.append(result["full rotation"])
                handoffs.extend(result["handoff"])
                print(f"done: round {round_number + 1}", file=sys.stderr, flush=True)
        finally:
            if server is not None:
                server.stop()

    n = args.contenders
    print(f"{n} contenders, {args.rounds} rounds (one ZooKeeper session each)")
    print(f"{'measure':<28} {'samples':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for name, values in (
        ("first leader (all start)", firsts),
        ("handoff (release -> win)", handoffs),
        (f"full rotation ({n} leaders)", rotations),
    ):
        print(latency_row(f"{name:<28}", values, stats=("p50", "p99", "max"), count_width=7))


if __name__ == "__main__":
    main()
