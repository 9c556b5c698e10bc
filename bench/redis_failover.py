"""Crash failover and graceful handoff of ``lelect campaign`` on the Redis backend.

    python bench/redis_failover.py                 # ttl 2s and 10s, 30 trials each
    python bench/redis_failover.py --ttl 2 --trials 50 --url redis://127.0.0.1:6379/0

crash failover: the leading lelect gets SIGKILL at a random point of its renew cycle;
measured from the kill to the first line the waiting candidate's job writes. Expect
between 2/3 ttl and ttl: the key lives ttl after the last renew.
graceful handoff: the leader's job exits; measured from its last line to the first line
of the waiting candidate's job (release, PUBLISH, wake-up, acquire, keeper's fork/exec).

Trials of the crash case run in parallel lanes (one election each) to bound the run time.
Without --url the script starts its own redis-server (as the tests do). Prints a table;
asserts nothing.
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

from lelect.backends import connect  # noqa: E402
from tests.helpers import lelect_env, read_intervals, recording_job  # noqa: E402
from tests.plugins.redis_server import RedisServer  # noqa: E402

LELECT = [sys.executable, "-m", "lelect"]


def first_line_ns(record: Path) -> int | None:
    try:
        text = record.read_text()
    except FileNotFoundError:
        return None
    lines = text.splitlines()
    return int(lines[0].split()[1]) if lines else None


def start_job(record: Path) -> list[str]:
    """Writes 'start NS TERM PID' once, then sleeps until killed."""
    f = shlex.quote(str(record))
    return ["sh", "-c", f'echo "start $(date +%s%N) $LELECT_TERM $$" >> {f}; exec sleep 3600']


def campaign(url: str, election: str, ttl: float, job: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *LELECT,
            "campaign",
            election,
            "--ttl",
            f"{ttl}s",
            "--heartbeat-interval",
            "0",
            "--",
            *job,
        ],
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


def waiting(url: str, election: str) -> bool:
    """True once the second candidate subscribed to the election's release channel (the
    leader keeps its own subscription)."""
    backend = connect(url)
    try:
        channel = f"{backend.options.prefix}:{{{election}}}:released"
        reply = backend.link.call(5.0, "PUBSUB", "NUMSUB", channel)
    finally:
        backend.close()
    return int(reply[1]) >= 2


def crash_failover(url: str, ttl: float, trials: int, lanes: int, workdir: Path) -> list[float]:
    results: list[float] = []
    round_number = 0
    while len(results) < trials:
        round_number += 1
        batch = min(lanes, trials - len(results))
        names = [f"crash-{ttl:g}-{round_number}-{lane}" for lane in range(batch)]
        leaders, followers, records = [], [], []
        for name in names:
            records.append((workdir / f"{name}.a", workdir / f"{name}.b"))
            leaders.append(campaign(url, name, ttl, start_job(records[-1][0])))
        for name, (a, b) in zip(names, records, strict=True):
            wait_for(lambda a=a: first_line_ns(a), 30, f"leader of {name}")
            followers.append(campaign(url, name, ttl, start_job(b)))
        for name in names:
            wait_for(lambda name=name: waiting(url, name), 30, f"waiter of {name}")
        # Kill each leader at a random point of its renew cycle.
        kills = sorted((random.uniform(0, ttl / 3), lane) for lane in range(batch))
        started = time.monotonic()
        killed_ns: dict[int, int] = {}
        for offset, lane in kills:
            time.sleep(max(0.0, started + offset - time.monotonic()))
            leaders[lane].kill()
            killed_ns[lane] = time.time_ns()
        for lane, (_, b) in enumerate(records):
            took = wait_for(lambda b=b: first_line_ns(b), ttl + 10, "the next job")
            results.append((took - killed_ns[lane]) / 1e9)
        for process in leaders + followers:
            process.kill()
            process.wait()
    return results


def gated_job(record: Path, gate: Path) -> list[str]:
    """Writes 'start …', waits until ``gate`` exists, writes 'end …' and exits."""
    f, g = shlex.quote(str(record)), shlex.quote(str(gate))
    line = '"$1 $(date +%s%N) $LELECT_TERM $$"'
    return ["sh", "-c", f"w() {{ echo {line} >> {f}; }}; w start; "
            f"while [ ! -e {g} ]; do sleep 0.01; done; w end"]  # fmt: skip


def graceful_handoff(url: str, ttl: float, trials: int, workdir: Path) -> list[float]:
    results: list[float] = []
    for trial in range(trials):
        name = f"handoff-{ttl:g}-{trial}"
        record, gate = workdir / f"{name}.record", workdir / f"{name}.gate"
        first = campaign(url, name, ttl, gated_job(record, gate))
        wait_for(record.exists, 30, "the first job")
        second = campaign(url, name, ttl, recording_job(record, hold=0.0))
        wait_for(lambda name=name: waiting(url, name), 30, "the waiter")
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


def row(case: str, ttl: float, values: list[float]) -> str:
    return (
        f"{case:<18} {ttl:>5g}s {len(values):>6} {statistics.median(values) * 1000:>9.1f}"
        f" {percentile(values, 0.99) * 1000:>9.1f} {min(values) * 1000:>9.1f}"
        f" {max(values) * 1000:>9.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a Redis to use (default: start a redis-server)")
    parser.add_argument("--ttl", type=float, action="append", help="ttl in seconds (repeatable)")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--lanes", type=int, default=10, help="crash trials run at once")
    args = parser.parse_args()
    ttls = args.ttl or [2.0, 10.0]

    with tempfile.TemporaryDirectory(prefix="lelect-bench-") as tmp:
        workdir = Path(tmp)
        server = None if args.url else RedisServer(workdir / "redis")
        url = args.url or server.url
        try:
            rows = []
            for ttl in ttls:
                rows.append(
                    row("graceful handoff", ttl, graceful_handoff(url, ttl, args.trials, workdir))
                )
                print("done:", rows[-1], file=sys.stderr, flush=True)
                rows.append(
                    row(
                        "crash failover",
                        ttl,
                        crash_failover(url, ttl, args.trials, args.lanes, workdir),
                    )
                )
                print("done:", rows[-1], file=sys.stderr, flush=True)
        finally:
            if server is not None:
                server.remove()
    print(
        f"{'case':<18} {'ttl':>6} {'trials':>6} {'p50 ms':>9} {'p99 ms':>9} {'min ms':>9} {'max ms':>9}"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
