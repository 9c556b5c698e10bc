"""Benchmarks of the embedded backend: crash failover, graceful handoff (beside flock(1))
and start-up time (beside `import click`). Prints tables; asserts nothing.

    python bench/embedded.py [--trials 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import LELECT, latency_row, wait_for

from lelect.backends.file.state import flock_waiters


def written(path: Path, timeout: float = 10.0) -> str:
    """The stripped text of ``path`` once something is written to it."""
    return wait_for(lambda: path.exists() and path.read_text().strip(), timeout, str(path),
                    interval=0.0005)  # fmt: skip


def quiet_campaign(election: str) -> list[str]:
    return ["campaign", "-q", "--heartbeat-interval", "0", election, "--"]


def waiting_on(lock: Path) -> bool:
    """True once some process is blocked on the flock of ``lock``."""
    return flock_waiters(lock) > 0


def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LELECT_BACKEND"] = f"file://{home}"
    return env


def crash_failover(trials: int, work: Path) -> list[float]:
    """kill -9 of the leading lelect -> the next job's first instruction (ms)."""
    home = work / "crash"
    env = env_for(home)
    samples = []
    for i in range(trials):
        started, after = work / f"c{i}.a", work / f"c{i}.b"
        leader = subprocess.Popen(
            [
                *LELECT,
                "-b",
                f"file://{home}",
                *quiet_campaign("crash"),
                "sh",
                "-c",
                f"echo up > {started}; exec sleep 60",
            ],
            env=env,
        )
        written(started)
        with open(after, "w") as out:
            follower = subprocess.Popen(
                [*LELECT, *quiet_campaign("crash"), "date", "+%s%N"],
                env=env,
                stdout=out,
            )
            wait_for(lambda: waiting_on(home / "crash.lock"), 10, "the follower to block")
            killed_ns = time.time_ns()
            leader.kill()
            first_ns = int(written(after))
            follower.wait(timeout=10)
        leader.wait()
        samples.append((first_ns - killed_ns) / 1e6)
    return samples


def graceful_handoff(trials: int, work: Path, use_flock: bool) -> list[float]:
    """The leader's job exits -> the next job's first instruction (ms)."""
    home = work / "handoff"
    home.mkdir(exist_ok=True, mode=0o700)
    env = env_for(home)
    lock = home / "flock.lock"
    samples = []
    for i in range(trials):
        tag = f"h{i}{'f' if use_flock else 'l'}"
        ended, after = work / f"{tag}.a", work / f"{tag}.b"
        if use_flock:
            first = ["flock", str(lock)]
            second = ["flock", str(lock)]
        else:
            first = [*LELECT, *quiet_campaign("handoff")]
            second = first
        running, gate = work / f"{tag}.run", work / f"{tag}.gate"
        leader_job = ["sh", "-c", f"touch {running}; while [ ! -e {gate} ]; do sleep 0.005; done;"
                      " exec date +%s%N"]  # fmt: skip
        with open(ended, "w") as out_a, open(after, "w") as out_b:
            leader = subprocess.Popen([*first, *leader_job], env=env, stdout=out_a)
            wait_for(running.exists, 10, "the leader's job")
            follower = subprocess.Popen([*second, "date", "+%s%N"], env=env, stdout=out_b)
            held = lock if use_flock else home / "handoff.lock"
            wait_for(lambda held=held: waiting_on(held), 10, "the follower to block")
            gate.touch()
            leader.wait(timeout=10)
            follower.wait(timeout=10)
        samples.append((int(written(after)) - int(written(ended))) / 1e6)
    return samples


def startup(trials: int, work: Path) -> tuple[list[float], list[float], list[float]]:
    """``lelect --help``, ``import click``, and a whole first run on a free election
    (``lelect campaign x -q -- true``: lelect, its keeper, the flock, the job, the
    release), in ms."""
    def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
        began = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, env=env)
        return (time.perf_counter() - began) * 1000

    env = env_for(work / "startup")
    help_ms, click_ms, run_ms = [], [], []
    for _ in range(trials):
        help_ms.append(timed([*LELECT, "--help"]))
        click_ms.append(timed([sys.executable, "-c", "import click"]))
        run_ms.append(timed([*LELECT, "campaign", "startup", "-q", "--heartbeat-interval", "0",
                             "--", "true"], env))
    return help_ms, click_ms, run_ms


def row(name: str, samples: list[float]) -> str:
    cells = latency_row(f"| {name:<34}", samples, stats=("p50", "p99", "max"), scale=1.0,
                        spec=">8.2f", sep=" | ")  # fmt: skip
    return f"{cells} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        crash = crash_failover(args.trials, work)
        lelect_handoff = graceful_handoff(args.trials, work, use_flock=False)
        flock_handoff = graceful_handoff(args.trials, work, use_flock=True)
        help_ms, click_ms, run_ms = startup(max(10, args.trials // 2), work)
    print("| measurement (ms)                   | trials |      p50 |      p99 |      max |")
    print("|------------------------------------|--------|----------|----------|----------|")
    print(row("crash failover (kill -9 -> job)", crash))
    print(row("graceful handoff, lelect", lelect_handoff))
    print(row("graceful handoff, flock(1)", flock_handoff))
    print(row("start-up: lelect --help", help_ms))
    print(row("start-up: python -c 'import click'", click_ms))
    print(row("first run: campaign x -- true", run_ms))
    print()
    print(
        f"handoff ratio lelect/flock (median): "
        f"{statistics.median(lelect_handoff) / statistics.median(flock_handoff):.2f}"
    )
    print(
        f"start-up ratio lelect --help / import click (median): "
        f"{statistics.median(help_ms) / statistics.median(click_ms):.2f}"
    )


if __name__ == "__main__":
    main()
