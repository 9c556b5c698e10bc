"""Pieces shared by the benchmark scripts: statistics, table rows, recording jobs and the
graceful-handoff / struck-leader measurements of ``lelect campaign`` on a server backend
(:func:`strike_rows`, :func:`print_strike_table`).

The scripts run as ``python bench/NAME.py``, so this folder is ``sys.path[0]``; the repo
root is added here (if missing) for ``tests.helpers``.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import lelect_env, read_intervals, recording_job  # noqa: E402

#: lelect as its users run it: the console script installed beside this interpreter
#: (``python -m lelect`` adds runpy and its imports: ~1.5 ms of CPU per start, measured
#: with 40 Redis candidates), else ``python -m lelect``. Either imports lelect from
#: PYTHONPATH first (bench/ab.py's checkouts).
_SCRIPT = Path(sys.executable).with_name("lelect")
LELECT = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "lelect"]

StartCampaign = Callable[[str, list[str]], subprocess.Popen]
"""Starts ``lelect campaign ELECTION -- JOB`` for (election, job)."""
Queued = Callable[[str], bool]
"""True once a second candidate of the election waits behind the leader."""


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile, ``q`` a fraction in 0..1 (0.99 for p99)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


STATISTICS: dict[str, Callable[[Sequence[float]], float]] = {
    "p50": statistics.median,
    "p99": lambda values: percentile(values, 0.99),
    "min": min,
    "max": max,
}


def latency_row(
    label: str,
    values: Sequence[float],
    *,
    stats: Sequence[str] = ("p50", "p99", "min", "max"),
    scale: float = 1000.0,
    spec: str = ">9.1f",
    count_width: int = 6,
    sep: str = " ",
) -> str:
    """``label``, the sample count, then each of ``stats`` of ``values`` times ``scale``
    (seconds to ms by default), joined by ``sep``."""
    cells = [f"{len(values):>{count_width}}"]
    cells += [f"{STATISTICS[name](values) * scale:{spec}}" for name in stats]
    return sep.join([label, *cells])


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             interval: float = 0.005):  # fmt: skip
    """Polls ``predicate`` until it returns something true, and returns that."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(interval)
    return value


def first_line_ns(record: Path) -> int | None:
    """The timestamp of a job record's first line, or None before it is written."""
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


def campaign(
    url: str, election: str, job: list[str], options: Sequence[str] = ()
) -> subprocess.Popen:
    """``lelect campaign ELECTION [OPTIONS] --heartbeat-interval 0 -- JOB``, output dropped."""
    return subprocess.Popen(
        [*LELECT, "campaign", election, *options, "--heartbeat-interval", "0", "--", *job],
        env=lelect_env(url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def ttl_campaign(url: str, ttl: float) -> StartCampaign:
    """Starts candidates with ``--ttl TTL``."""
    return partial(campaign, url, options=("--ttl", f"{ttl}s"))


def ticking_job(record: Path, every: float = 0.1) -> list[str]:
    """Writes 'start …' once, then 'tick …' every ``every`` seconds until killed: its last
    line bounds when it last ran."""
    f = shlex.quote(str(record))
    line = '"$1 $(date +%s%N) $LELECT_TERM $$"'
    return ["sh", "-c", f"w() {{ echo {line} >> {f}; }}; w start; "
            f"while :; do sleep {every}; w tick; done"]  # fmt: skip


def last_line_ns(record: Path) -> int | None:
    try:
        lines = [line for line in record.read_text().splitlines() if len(line.split()) == 4]
    except FileNotFoundError:
        return None
    return int(lines[-1].split()[1]) if lines else None


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/PID/task/*/children), children first."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop(0)
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(p) for p in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found += children
            pending += children
    return found


@dataclass(frozen=True)
class Strike:
    """How the leader goes down in a crash trial."""

    label: str
    #: Strikes the leader's lelect process; returns pids that must be SIGKILLed afterwards.
    hit: Callable[[subprocess.Popen], list[int]]
    #: The jobs' command for a record file.
    job: Callable[[Path], list[str]]
    #: Whether the old job's records tell when it last ran (to check for overlaps).
    ticks: bool
    #: Elections struck at once (None: the caller's ``lanes``).
    lanes: int | None = None


def _kill_lelect(process: subprocess.Popen) -> list[int]:
    process.kill()  # its keeper lives on: it kills the job and hands the leadership back
    return []


def _freeze_host(process: subprocess.Popen) -> list[int]:
    # lelect, its keeper and the job's group stop at once: nothing can release.
    pids = [process.pid, *descendants(process.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
    return pids


# One trial at a time: a hand-back takes milliseconds, and ten at once on a small machine
# would measure their contention rather than the hand-back.
LELECT_KILLED = Strike("lelect killed (-9), host alive", _kill_lelect, start_job, ticks=False,
                       lanes=1)
HOST_DIES = Strike("host dies (all frozen)", _freeze_host, ticking_job, ticks=True)


def struck_failover(start: StartCampaign, queued: Queued, period: float, trials: int,
                    lanes: int, workdir: Path, strike: Strike) -> tuple[list[float], int]:
    """Seconds from the strike on the leader (at a random point of the first third of
    ``period``, its renew / probe cycle) to the first line of the waiter's job, and how
    many old jobs ran on after the next one started (from their ticks; 0 unless
    ``strike.ticks``). Runs up to ``lanes`` (or ``strike.lanes``) elections at once."""
    results: list[float] = []
    overlaps = 0
    round_number = 0
    lanes = strike.lanes or lanes
    while len(results) < trials:
        round_number += 1
        batch = min(lanes, trials - len(results))
        names = [f"crash-{period:g}-{strike.ticks}-{round_number}-{lane}" for lane in range(batch)]
        leaders, followers, records = [], [], []
        for name in names:
            records.append((workdir / f"{name}.a", workdir / f"{name}.b"))
            leaders.append(start(name, strike.job(records[-1][0])))
        for name, (a, b) in zip(names, records, strict=True):
            wait_for(lambda a=a: first_line_ns(a), 30, f"leader of {name}")
            followers.append(start(name, strike.job(b)))
        for name in names:
            wait_for(lambda name=name: queued(name), 30, f"waiter of {name}")
        # Strike each leader at a random point of its renew / probe cycle.
        kills = sorted((random.uniform(0, period / 3), lane) for lane in range(batch))
        started = time.monotonic()
        struck_ns: dict[int, int] = {}
        leftovers: list[int] = []
        for offset, lane in kills:
            time.sleep(max(0.0, started + offset - time.monotonic()))
            struck_ns[lane] = time.time_ns()
            leftovers += strike.hit(leaders[lane])
        for lane, (a, b) in enumerate(records):
            took = wait_for(lambda b=b: first_line_ns(b), period + 10, "the next job")
            results.append((took - struck_ns[lane]) / 1e9)
            if strike.ticks and (last_line_ns(a) or 0) >= took:
                overlaps += 1
        for pid in leftovers:  # the frozen host never comes back
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in leaders + followers:
            process.kill()
            process.wait()
    return results, overlaps


def graceful_handoff(start: StartCampaign, queued: Queued, period: float, trials: int,
                     workdir: Path) -> list[float]:  # fmt: skip
    """Seconds from the last line of the leader's job (it exits) to the first line of the
    waiter's job."""
    results: list[float] = []
    for trial in range(trials):
        name = f"handoff-{period:g}-{trial}"
        record, gate = workdir / f"{name}.record", workdir / f"{name}.gate"
        first = start(name, gated_job(record, gate))
        wait_for(record.exists, 30, "the first job")
        second = start(name, recording_job(record, hold=0.0))
        wait_for(lambda name=name: queued(name), 30, "the waiter")
        gate.touch()
        first.wait(30)
        second.wait(30)
        intervals = read_intervals(record)
        if len(intervals) != 2 or intervals[0].end_ns is None:
            raise SystemExit(f"bench: unexpected record for {name}: {intervals}")
        results.append((intervals[1].start_ns - intervals[0].end_ns) / 1e9)
    return results


STRIKE_WIDTH = 30
PERIODS = (2.0, 10.0)
"""The ttls / session timeouts measured unless the command line names others."""


def add_strike_options(parser: argparse.ArgumentParser, period: str = "ttl",
                       what: str = "ttl in seconds") -> None:  # fmt: skip
    """``--PERIOD`` (repeatable; :data:`PERIODS` if absent), ``--trials`` and ``--lanes``."""
    parser.add_argument(f"--{period}", type=float, action="append", help=f"{what} (repeatable)")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--lanes", type=int, default=10, help="host-dies trials run at once")


def strike_rows(start: StartCampaign, queued: Queued, period: float, period_width: int,
                trials: int, lanes: int, workdir: Path) -> list[str]:  # fmt: skip
    """The graceful handoff, then a crash of each kind (:data:`LELECT_KILLED`,
    :data:`HOST_DIES`) for one ``period`` (ttl / session timeout): table rows with an
    overlaps column, each reported on stderr as it is done."""
    handoff = graceful_handoff(start, queued, period, trials, workdir)
    rows = [latency_row(f"{'graceful handoff':<{STRIKE_WIDTH}} {period:>{period_width}g}s",
                        handoff) + f" {'-':>8}"]
    print("done:", rows[-1], file=sys.stderr, flush=True)
    for strike in (LELECT_KILLED, HOST_DIES):
        took, overlaps = struck_failover(start, queued, period, trials, lanes, workdir, strike)
        shown = str(overlaps) if strike.ticks else "-"
        rows.append(latency_row(f"{strike.label:<{STRIKE_WIDTH}} {period:>{period_width}g}s",
                                took) + f" {shown:>8}")
        print("done:", rows[-1], file=sys.stderr, flush=True)
    return rows


def strike_table_rows(start_for: Callable[[float], StartCampaign], queued: Queued,
                      periods: Sequence[float], period_width: int, trials: int, lanes: int,
                      workdir: Path) -> list[str]:  # fmt: skip
    """:func:`strike_rows` for each of ``periods``; ``start_for(period)`` starts candidates
    with that ttl / session timeout."""
    rows: list[str] = []
    for period in periods:
        rows += strike_rows(start_for(period), queued, period, period_width, trials, lanes,
                            workdir)  # fmt: skip
    return rows


def print_strike_table(period_name: str, period_width: int, rows: list[str]) -> None:
    print(f"{'case':<{STRIKE_WIDTH}} {period_name:>{period_width + 1}} {'trials':>6}"
          f" {'p50 ms':>9} {'p99 ms':>9} {'min ms':>9} {'max ms':>9} {'overlaps':>8}")
    print("\n".join(rows))
    print("overlaps: old jobs that ran on after the next job started (from their ticks)")
