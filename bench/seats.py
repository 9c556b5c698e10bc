"""How fast a freed seat is taken (``campaign --holders N``), on each backend.

N holders run a job that waits for its own gate file; W more candidates wait in the
seats' line. Each round frees one seat, by one of two events, and measures the time
until the next candidate's job has started (it writes its start, wall clock in ns):

- ``exit``: the holder's job exits (lelect releases the seat);
- ``kill9``: the holder's lelect is killed with SIGKILL (its keeper stops the job and
  hands the seat back by its token).

    python bench/seats.py                       # every backend, N=3, W=3, 5 rounds
    python bench/seats.py redis etcd --holders 3 --waiting 20 --rounds 10

Prints one table: p50 and max per backend and event, in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import LELECT, wait_for  # noqa: E402
from scale import SERVERS  # noqa: E402

from tests.helpers import lelect_env  # noqa: E402


def job(record: Path, gates: Path) -> str:
    return (f'echo "$(date +%s%N) $$" >> {record}; '
            f'while [ ! -e {gates}/$$ ]; do sleep 0.01; done')


def started(record: Path) -> list[tuple[int, int]]:
    if not record.exists():
        return []
    return [tuple(map(int, line.split())) for line in record.read_text().splitlines()
            if len(line.split()) == 2]


def measure(name: str, holders: int, waiting: int, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"exit": [], "kill9": []}
    with tempfile.TemporaryDirectory(prefix="lelect-seats-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        server = stack.enter_context(SERVERS[name](work))
        record, gates = work / "record", work / "gates"
        gates.mkdir()
        env = lelect_env(server.url)
        spawned = []

        def spawn() -> None:
            proc = subprocess.Popen(
                [*LELECT, "campaign", "bench", "--holders", str(holders), "--ttl", "10s",
                 "--heartbeat-interval", "0", "--", "sh", "-c", job(record, gates)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            spawned.append(proc)

        try:
            for _ in range(holders):
                spawn()
            wait_for(lambda: len(started(record)) == holders, 60, "the holders' jobs")
            for _ in range(waiting):
                spawn()
            time.sleep(1.0 + 0.05 * waiting)  # the waiters are in line (no event to await)
            for index in range(2 * rounds):
                event = "exit" if index % 2 == 0 else "kill9"
                jobs = started(record)
                ns, pid = jobs[len(jobs) - holders]  # the oldest running job
                before = len(jobs)
                owner = next((p for p in spawned if p.poll() is None
                              and pid in _descendants(p.pid)), None)
                freed = time.time_ns()
                if event == "exit" or owner is None:
                    (gates / str(pid)).touch()
                else:
                    owner.send_signal(signal.SIGKILL)
                wait_for(lambda b=before: len(started(record)) > b, 60, "the next job")
                times[event].append((started(record)[before][0] - freed) / 1e6)
                spawn()  # keep the line as long
                time.sleep(0.3)
        finally:
            for proc in spawned:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in spawned:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return times


def _descendants(pid: int) -> set[int]:
    import psutil

    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backends", nargs="*", default=[n for n in SERVERS])
    parser.add_argument("--holders", type=int, default=3)
    parser.add_argument("--waiting", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"seat taken after it was freed, ms (N={args.holders} holders,"
          f" {args.waiting} waiting, {args.rounds} rounds each)")
    print(f"{'backend':<10} {'job exits p50':>14} {'max':>8} {'kill -9 p50':>12} {'max':>8}")
    for name in args.backends:
        times = measure(name, args.holders, args.waiting, args.rounds)
        cells = []
        for event in ("exit", "kill9"):
            values = times[event]
            cells += [f"{statistics.median(values):.1f}", f"{max(values):.1f}"]
        print(f"{name:<10} {cells[0]:>14} {cells[1]:>8} {cells[2]:>12} {cells[3]:>8}",
              flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
