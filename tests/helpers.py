"""Helpers shared by the tests: free ports, running real lelect processes, job records."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LELECT = [sys.executable, "-m", "lelect"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


def lelect_env(backend: str | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LELECT_BACKEND", None)
    env.pop("LELECT_BACKEND_FILE", None)  # it would win over LELECT_BACKEND
    if backend:
        env["LELECT_BACKEND"] = backend
    env.update(extra)
    return env


def run_lelect(*args: str, backend: str | None = None, timeout: float = 60, **kwargs):
    """Run ``lelect ARGS`` to completion; return the CompletedProcess (text mode)."""
    return subprocess.run(
        [*LELECT, *args],
        env=lelect_env(backend),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


#: Every lelect spawned by a test; conftest kills those still running after the test,
#: so a failed test never leaves a campaign (and its job) behind.
SPAWNED: list[subprocess.Popen] = []


def assert_one_line(out: subprocess.CompletedProcess, status: int, *words: str) -> None:
    """``out`` failed with ``status`` and one line on stderr holding every one of ``words``."""
    assert out.returncode == status, (out.returncode, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    for word in words:
        assert word in lines[0], lines[0]


def leader_json(backend: str, election: str) -> dict | None:
    """What `lelect leader ELECTION --json` says leads (None: nobody)."""
    import json

    out = run_lelect("leader", election, "--json", backend=backend)
    return json.loads(out.stdout)["leader"]


def spawn_lelect(*args: str, backend: str | None = None, **kwargs) -> subprocess.Popen:
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("env", lelect_env(backend))
    proc = subprocess.Popen([*LELECT, *args], text=True, **kwargs)
    SPAWNED.append(proc)
    return proc


def kill_spawned() -> None:
    """SIGKILL every spawned lelect still running (its keeper then kills its job)."""
    while SPAWNED:
        proc = SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def recording_job(record: Path, hold: float = 0.2) -> list[str]:
    """A job that appends 'start NS TERM PID' and 'end NS TERM PID' lines to ``record``
    around ``hold`` seconds of work (wall clock in ns, one machine)."""
    f = shlex.quote(str(record))
    script = (
        f'echo "start $(date +%s%N) $LELECT_TERM $$" >> {f}; sleep {hold}; '
        f'echo "end $(date +%s%N) $LELECT_TERM $$" >> {f}'
    )
    return ["sh", "-c", script]


@dataclass(frozen=True)
class Interval:
    start_ns: int
    end_ns: int | None
    term: int
    pid: int


def read_intervals(record: Path) -> list[Interval]:
    starts: dict[int, tuple[int, int]] = {}
    ends: dict[int, int] = {}
    for line in record.read_text().splitlines():
        kind, ns, term, pid = line.split()
        if kind == "start":
            starts[int(pid)] = (int(ns), int(term))
        else:
            ends[int(pid)] = int(ns)
    return sorted(
        (Interval(ns, ends.get(pid), term, pid) for pid, (ns, term) in starts.items()),
        key=lambda i: i.start_ns,
    )


def assert_exclusive(intervals: list[Interval]) -> None:
    """No two job intervals overlap and terms strictly increase in start order."""
    for before, after in zip(intervals, intervals[1:]):
        assert before.end_ns is not None, f"job {before.pid} never ended but another started"
        assert before.end_ns <= after.start_ns, f"jobs overlap: {before} and {after}"
        assert after.term > before.term, f"term did not grow: {before} then {after}"


def campaigns_in_turn(
    backend: str, election: str, record: Path, *, candidates: int = 5, hold: float = 0.2,
    options: tuple[str, ...] = (),
) -> list[Interval]:
    """Start ``candidates`` real ``lelect campaign`` processes at once, each job holding
    the election ~``hold`` s; check they all succeed, none overlapped and terms grew."""
    procs = [
        spawn_lelect("campaign", election, *options, "--", *recording_job(record, hold),
                     backend=backend)
        for _ in range(candidates)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    intervals = read_intervals(record)
    assert len(intervals) == candidates, intervals
    assert_exclusive(intervals)
    return intervals


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            what = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def written_line(path, timeout: float = 30.0, what: str = "a line"):
    """The text of ``path`` once a job has written a whole line to it.

    A shell's ``echo ... > path`` creates the file before it writes: waiting for the
    file to exist and then reading it races with the write.
    """
    def whole():
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        return text if text.endswith("\n") else None

    return wait_until(whole, timeout=timeout, what=what)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wakeups(pid: int) -> int:
    """Times every thread of ``pid`` and of its children went to sleep and woke again
    (voluntary context switches; psutil counts the main thread's only)."""
    import psutil

    total = 0
    for task in [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]:
        for status in Path(f"/proc/{task}/task").glob("*/status"):
            try:
                lines = status.read_text().splitlines()
            except OSError:  # the thread ended
                continue
            total += sum(int(line.split()[1]) for line in lines
                         if line.startswith("voluntary_ctxt_switches:"))
    return total


def blocked_on_flock(lock: Path) -> bool:
    """True once some process waits for the flock of ``lock``: an embedded-backend
    candidate is queued."""
    from lelect.backends.file.state import flock_waiters

    return flock_waiters(lock) > 0


# -- what a server can tell about waiting candidates --------------------------------------


def redis_listeners(client, election: str, prefix: str = "lelect") -> int:
    """Connections subscribed to ``election``'s channels (PUBSUB NUMSUB): a leader's
    listener and every candidate campaigning (each subscribes to ``resign-requests`` and
    its own wake-up channel before its first attempt), and every observer (``released``)."""
    channels = [f"{prefix}:{{{election}}}:{name}" for name in ("resign-requests", "released")]
    return sum(dict(client.pubsub_numsub(*channels)).values())


def redis_tried(client) -> int:
    """lelect's connections whose last command ran a script or a PTTL (CLIENT LIST): a
    leader's renews, an observer's look at the leader, and each waiting candidate that
    has made its first attempt (then sleeps on the PTTL). With RESP3 the connection is
    subscribed too; a RESP2 subscription's own connection last ran SUBSCRIBE."""
    return sum(
        1
        for c in client.client_list()
        if c.get("name") == "lelect" and c.get("cmd") in ("evalsha", "eval", "pttl")
    )


def zk_queue(kazoo, path: str) -> list[str]:
    """The contender nodes under the election znode ``path``, lowest sequence (the
    leader) first, read with a kazoo client."""
    return sorted((c for c in kazoo.get_children(path) if "__lock__" in c), key=lambda c: c[-10:])


def zk_watchers(server, path: str) -> int:
    """How many sessions watch the znode ``path``, by the server's own account (``wchp``).
    A waiting contender watches its predecessor; a lelect leader also watches itself."""
    count, current = 0, None
    for line in server.command("wchp").splitlines():
        if line.startswith("/"):
            current = line.strip()
        elif line.strip() and current == path:
            count += 1
    return count


class OutputTail:
    """Collects a process's stderr (or stdout) lines in a thread, so a test can wait for
    a line ("waiting for 'x': … leads") without blocking on the pipe."""

    def __init__(self, stream) -> None:
        import threading

        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, fragment: str, timeout: float = 30.0) -> str:
        """The first line containing ``fragment`` (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if fragment in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line with {fragment!r} after {timeout}s:"
                                         f" {self.lines[-10:]}")
                self._changed.wait(left)

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)


# -- jobs that tick until killed: when each was last alive ---------------------------------


def ticking_job(record: Path, every: float = 0.05) -> list[str]:
    """A job that appends 'tick NS TERM PID' to ``record`` every ``every`` seconds until
    it is killed: its last tick bounds when it was last alive."""
    f = shlex.quote(str(record))
    return [
        "sh",
        "-c",
        f'while :; do echo "tick $(date +%s%N) $LELECT_TERM $$" >> {f}; sleep {every}; done',
    ]


@dataclass(frozen=True)
class Activity:
    pid: int
    term: int
    first_ns: int
    last_ns: int


def read_ticks(record: Path) -> list[Activity]:
    """Each ticking job's first and last tick, in start order."""
    seen: dict[int, Activity] = {}
    if not record.exists():
        return []
    for line in record.read_text().splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue  # a line cut short by SIGKILL
        ns, term, pid = int(parts[1]), int(parts[2]), int(parts[3])
        earlier = seen.get(pid)
        seen[pid] = Activity(pid, term, earlier.first_ns if earlier else ns, ns)
    return sorted(seen.values(), key=lambda a: a.first_ns)


def assert_one_at_a_time(activities: list[Activity]) -> None:
    """No two ticking jobs were alive at once, and terms grew."""
    for before, after in zip(activities, activities[1:]):
        assert before.last_ns < after.first_ns, f"jobs overlap: {before} and {after}"
        assert after.term > before.term, f"term did not grow: {before} then {after}"


def candidate(node_id: str):
    """A library candidate with a recognisable host and pid (for the backend tests)."""
    from lelect.backends.base import Candidate

    return Candidate(node_id=node_id, host="host-" + node_id, pid=4242)
