"""A randomized fault run against ``lelect campaign --restart`` candidates and a fenced
resource, on any backend. Anyone can repeat it:

    python bench/chaos.py BACKEND --minutes M --seed S [--candidates K] [--ttl 2s]

BACKEND is file, redis, zookeeper, etcd, postgres or mysql; the server (if any) is started on
loopback as the tests start it (tests/plugins/*_server.py), with a partition proxy
(tests/plugins/proxy.py) in front of it for each candidate.

K candidates run ``lelect --log-format json campaign chaos --restart --ttl TTL --id cN``;
each one's job writes its ``LELECT_TERM`` every 20 ms to the fenced resource, a unix
socket served by this process, which accepts a write only if its term is >= the highest
it accepted, and stamps everything on its own monotonic clock. Faults, one at a time,
drawn from a stream seeded with S: kill -9 of a lelect or of its keeper, SIGSTOP of a
lelect, of a candidate's whole process tree (a paused VM) or of the server, a partition
of one candidate, a restart of the server, and ``lelect resign``. After each heal the run
waits for a job to write again (up to 3 x ttl), then for a quiet spell.

The report (``bench/chaos_analysis.py``) counts faults, leaderships, jobs, refused
writes, overlaps, term regressions, orphans, leaderships without a job, jobs started
after a loss, candidates that gave up, and the time to recover after each heal. The
exit status is 1 on any violation. ``run()`` is importable (tests/test_chaos.py).

Recovery, and its bound. After each heal, a job must write again within 2 x ttl. The
write must come from a job that survived the fault: one started since the fault began,
or one that runs on for a ttl after the heal (or until the next fault) -- the old
leader's job that writes on for a moment after a server restart, until its renew finds
the lease gone, is no recovery. Why 2 x ttl: the longest wait a heal can legitimately
cost is one lease that must run out first (a leader frozen or cut off holds its lease up
to a ttl; a Redis that restarted without its data grants nothing for a ttl, the
delayed-restart rule), and a second ttl covers the rest (the server's own start-up,
reconnects, a candidate's one-second ``--restart-delay`` floor after a short
leadership). A heal that the next fault struck before any job could take over (sooner
than the bound, with no surviving write yet) is reported as cut short, not judged; the
next heal is. The run ends by waiting for the last heal's recovery.

``--keep DIR`` runs in DIR and leaves there ``faults.log`` (each fault, its heal and how
soon a job wrote again) and each candidate's stderr (``cN.log``), both stamped in
seconds since the run began, to read why a recovery was slow.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chaos_analysis import (  # noqa: E402
    End,
    Exit,
    Fault,
    Gone,
    JobEnd,
    JobStart,
    Log,
    Record,
    Report,
    Text,
    Write,
    analyse,
    render,
)
from common import LELECT, descendants  # noqa: E402

from lelect.durations import parse_duration  # noqa: E402
from tests.helpers import lelect_env  # noqa: E402

BACKENDS = ("file", "redis", "zookeeper", "etcd", "postgres", "mysql")
ELECTION = "chaos"
#: Faults on one candidate, faults on the server, and the resign request.
CANDIDATE_FAULTS = ("kill-lelect", "kill-keeper", "stop-lelect", "freeze-tree", "partition")
SERVER_FAULTS = ("freeze-server", "restart-server")

JOB = """\
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
e = os.environ
s.sendall(f"start {e['LELECT_NODE_ID']} {e['LELECT_TERM']} {os.getpid()} {os.getppid()}\\n"
          .encode())
while True:
    s.sendall(b"w\\n")
    if not s.recv(8):
        break
    time.sleep(0.02)
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not died (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _keeper_and_lelect(pid: int) -> tuple[int, int]:
    """The keeper lelect started (a keeper may run the job from a child of its own) and
    that lelect, from the job's parent ``pid``."""
    keeper = pid
    while True:
        parent = parent_of(keeper)
        try:
            is_keeper = b"_keeper" in Path(f"/proc/{parent}/cmdline").read_bytes()
        except OSError:
            is_keeper = False
        if parent is None or not is_keeper:
            return keeper, parent or 0
        keeper = parent


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


class Recorder:
    """The run's records, stamped on this process's monotonic clock."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self.start = time.monotonic()
        # lelect's JSON logs carry wall-clock time: this converts it.
        self.offset = time.time() - time.monotonic()

    def add(self, record: Record) -> None:
        with self._lock:
            self.records.append(record)

    def snapshot(self) -> list[Record]:
        with self._lock:
            return list(self.records)


# -- the fenced resource -----------------------------------------------------------------


class FencedResource:
    """A unix socket that accepts a job's write only if its term is >= the highest it
    accepted, and watches the keeper and lelect of every live job (for orphans)."""

    def __init__(self, path: Path, recorder: Recorder) -> None:
        self.path = path
        self.recorder = recorder
        self.highest = 0
        self.last_accepted = 0.0
        self.leader_node: str | None = None
        self._next = 0
        self._jobs: dict[socket.socket, dict] = {}
        self._watched: dict[int, set[int]] = {}  # job id -> pids of its keeper and lelect
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(64)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._threads = [threading.Thread(target=self._serve, daemon=True),
                         threading.Thread(target=self._watch, daemon=True)]
        for thread in self._threads:
            thread.start()

    def open_jobs(self) -> list[int]:
        return [job["pid"] for job in list(self._jobs.values()) if "pid" in job]

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for sock in list(self._jobs):
            sock.close()
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                if key.fileobj is self._listener:
                    conn, _ = self._listener.accept()
                    self._next += 1
                    self._jobs[conn] = {"id": self._next, "buffer": b""}
                    self._selector.register(conn, selectors.EVENT_READ)
                else:
                    self._read(key.fileobj)

    def _read(self, conn: socket.socket) -> None:
        job = self._jobs[conn]
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        now = time.monotonic()
        if not data:
            self._selector.unregister(conn)
            conn.close()
            del self._jobs[conn]
            self._watched.pop(job["id"], None)
            self.recorder.add(JobEnd(now, job["id"]))
            return
        job["buffer"] += data
        *lines, job["buffer"] = job["buffer"].split(b"\n")
        for line in lines:
            words = line.decode().split()
            if words[:1] == ["start"]:
                node, term, pid, keeper = words[1], int(words[2]), int(words[3]), int(words[4])
                keeper, lelect = _keeper_and_lelect(keeper)
                job.update(node=node, term=term, pid=pid)
                self._watched[job["id"]] = {keeper, lelect}
                self.recorder.add(JobStart(now, job["id"], node, term, pid, keeper, lelect))
            elif words[:1] == ["w"] and "term" in job:
                accepted = job["term"] >= self.highest
                if accepted:
                    self.highest = job["term"]
                    self.last_accepted = now
                    self.leader_node = job["node"]
                self.recorder.add(Write(now, job["id"], job["term"], accepted))
                try:
                    conn.sendall(b"ok\n" if accepted else b"no\n")
                except OSError:
                    pass

    def _watch(self) -> None:
        seen_gone: set[int] = set()
        while not self._stop.wait(0.05):
            for pids in list(self._watched.values()):
                for pid in pids:
                    if pid and pid not in seen_gone and not alive(pid):
                        seen_gone.add(pid)
                        self.recorder.add(Gone(time.monotonic(), pid))


# -- servers -------------------------------------------------------------------------------


@dataclass
class Stage:
    """Where the candidates campaign, and what can be done to the server."""

    url: str
    via: Callable[[int], str] | None = None  # the URL through a proxy on this port
    address: tuple[str, int] | None = None
    freeze: Callable[[], None] | None = None
    thaw: Callable[[], None] | None = None
    restart: Callable[[], None] | None = None
    close: Callable[[], None] = lambda: None


def _stage(backend: str, workdir: Path, ttl: float) -> Stage:
    if backend == "file":
        return Stage(url=f"file://{workdir / 'state'}")
    if backend == "redis":
        from tests.plugins.redis_server import RedisServer

        redis = RedisServer(workdir / "redis", restart_guard=True)
        return Stage(url=redis.url, via=lambda port: redis.url_at("127.0.0.1", port),
                     address=("127.0.0.1", redis.port), freeze=redis.freeze, thaw=redis.thaw,
                     restart=redis.restart, close=redis.remove)
    if backend == "zookeeper":
        from tests.plugins.zookeeper_server import ZooKeeperServer

        zk = ZooKeeperServer(workdir / "zk")
        zk.start()
        session = f"{ttl:g}s"

        def zk_restart() -> None:
            zk.stop()
            zk.start()

        return Stage(url=zk.url("/chaos", session_timeout=session),
                     via=lambda port: zk.url("/chaos", hosts=f"127.0.0.1:{port}",
                                             session_timeout=session),
                     address=("127.0.0.1", zk.port), freeze=zk.freeze, thaw=zk.thaw,
                     restart=zk_restart, close=zk.stop)
    if backend == "etcd":
        from tests.plugins.etcd_server import EtcdServer

        etcd = EtcdServer(workdir / "etcd")
        return Stage(url=etcd.url("chaos"), via=lambda port: f"etcd://127.0.0.1:{port}/chaos",
                     address=("127.0.0.1", etcd.port), freeze=etcd.freeze, thaw=etcd.thaw,
                     restart=etcd.restart, close=etcd.remove)
    if backend == "postgres":
        from tests.plugins.postgres_server import PostgresCluster

        cluster = PostgresCluster()
        database = cluster.create_database("chaos")
        frozen: list[int] = []

        def pg_freeze() -> None:  # the postmaster and every backend process
            postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
            frozen[:] = [postmaster, *descendants(postmaster)]
            signal_all(frozen, signal.SIGSTOP)

        def pg_thaw() -> None:
            signal_all(frozen, signal.SIGCONT)

        return Stage(url=cluster.url(database),
                     via=lambda port: cluster.url(database, port=port),
                     address=("127.0.0.1", cluster.port), freeze=pg_freeze, thaw=pg_thaw,
                     restart=cluster.restart, close=cluster.remove)
    if backend == "mysql":
        from tests.plugins.mysql_server import MariaDBServer

        maria = MariaDBServer()
        return Stage(url=maria.url(), via=lambda port: maria.url(port=port),
                     address=("127.0.0.1", maria.port), freeze=maria.freeze, thaw=maria.thaw,
                     restart=maria.restart, close=maria.remove)
    raise SystemExit(f"chaos: unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")


# -- candidates ----------------------------------------------------------------------------


class Candidate:
    """One ``lelect campaign --restart`` process, started again whenever it ends."""

    def __init__(self, node: str, url: str, command: list[str], recorder: Recorder,
                 log: Path | None = None) -> None:
        self.node = node
        self.log = log
        self.url = url
        self.command = command
        self.recorder = recorder
        self.process: subprocess.Popen | None = None
        self.expect_exit = False
        self.proxy = None

    def start(self) -> None:
        self.expect_exit = False
        self.process = subprocess.Popen(self.command, env=lelect_env(self.url),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def keeper(self) -> int | None:
        """lelect's child running lelect/_keeper.py, if it has one now."""
        for pid in descendants(self.pid):
            try:
                if b"_keeper" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except OSError:
                continue
        return None

    def _read(self, process: subprocess.Popen) -> None:
        assert process.stderr is not None
        kept = None if self.log is None else self.log.open("a", buffering=1)
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            now = time.monotonic()
            if kept is not None:  # on the run's clock, to read beside the faults
                kept.write(f"{now - self.recorder.start:9.3f} {process.pid} {line}\n")
            try:
                record = json.loads(line)
                event = record["event"]
            except (ValueError, KeyError, TypeError):
                if line.strip():
                    self.recorder.add(Text(now, self.node, line))
                continue
            try:
                t = datetime.fromisoformat(record["ts"]).timestamp() - self.recorder.offset
            except (KeyError, ValueError, TypeError):
                t = now
            term = record.get("term")
            self.recorder.add(Log(t, self.node, process.pid, event,
                                  term if isinstance(term, int) else None))

    def poll(self) -> int | None:
        """The exit status once the process ended (recorded once), else None."""
        assert self.process is not None
        status = self.process.poll()
        if status is not None and not getattr(self.process, "_chaos_seen", False):
            self.process._chaos_seen = True  # type: ignore[attr-defined]
            self.recorder.add(Exit(time.monotonic(), self.node, self.process.pid, status,
                                   self.expect_exit))
        return status

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.expect_exit = True
        signal_all([self.process.pid, *descendants(self.process.pid)], signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- the run -------------------------------------------------------------------------------


class Chaos:
    def __init__(self, backend: str, minutes: float, seed: int, candidates: int, ttl: float,
                 workdir: Path, say: Callable[[str], None]) -> None:
        self.backend = backend
        self.minutes = minutes
        self.rng = random.Random(seed)
        self.ttl = ttl
        self.workdir = workdir
        self.say = say
        self.recorder = Recorder()
        self.stage = _stage(backend, workdir, ttl)
        self.resource = FencedResource(workdir / "fence.sock", self.recorder)
        job = workdir / "job.py"
        job.write_text(JOB)
        self.candidates: list[Candidate] = []
        self.proxies = []
        for n in range(candidates):
            url = self.stage.url
            if self.stage.via is not None and self.stage.address is not None:
                from tests.plugins.proxy import PartitionProxy

                proxy = PartitionProxy(*self.stage.address)
                self.proxies.append(proxy)
                url = self.stage.via(proxy.port)
            command = [*LELECT, "campaign", ELECTION, "--log-format", "json", "--id", f"c{n}",
                       "--restart", "--ttl", f"{ttl:g}s",
                       # Back-to-back resigns must not leave the election leaderless by
                       # policy (docs/lease.md: how the cooldown adds up): one ttl out.
                       "--resign-cooldown", f"{ttl:g}s",
                       "--", sys.executable, "-S", "-I",
                       str(job), str(workdir / "fence.sock")]
            candidate = Candidate(f"c{n}", url, command, self.recorder,
                                  workdir / f"c{n}.log")
            candidate.proxy = self.proxies[-1] if self.proxies else None
            self.candidates.append(candidate)
        self.kinds = ["kill-lelect", "kill-keeper", "stop-lelect", "freeze-tree", "resign"]
        if self.proxies:
            self.kinds.append("partition")
        if self.stage.freeze is not None:
            self.kinds += list(SERVER_FAULTS)
        self._stop = threading.Event()
        self._restarts: list[tuple[float, Candidate]] = []
        self._lock = threading.Lock()

    # The candidates' keeper: restart whoever ended (a give-up is recorded by poll()).
    def _tend(self) -> None:
        while not self._stop.wait(0.05):
            now = time.monotonic()
            with self._lock:
                for candidate in self.candidates:
                    if candidate.poll() is not None and not any(
                            c is candidate for _, c in self._restarts):
                        delay = 0.0 if candidate.expect_exit else 1.0
                        self._restarts.append((now + delay, candidate))
                due = [c for at, c in self._restarts if at <= now]
                self._restarts = [(at, c) for at, c in self._restarts if at > now]
            for candidate in due:
                if not self._stop.is_set():
                    candidate.start()

    def _target(self) -> Candidate:
        """The leader's candidate more often than not (faults there matter most)."""
        leader = self.resource.leader_node
        if leader is not None and self.rng.random() < 0.6:
            return next(c for c in self.candidates if c.node == leader)
        return self.rng.choice(self.candidates)

    def _hold(self) -> float:
        return self.rng.uniform(0.3, 2.5) * self.ttl

    def strike(self, kind: str) -> Fault | None:
        """Do one fault and heal it; None when it could not be done now."""
        t = time.monotonic()
        if kind in SERVER_FAULTS:
            if kind == "freeze-server":
                self.stage.freeze()
                time.sleep(self._hold())
                self.stage.thaw()
            else:
                self.stage.restart()
            return Fault(t, kind, None, time.monotonic())
        if kind == "resign":
            subprocess.run([*LELECT, "resign", ELECTION], env=lelect_env(self.stage.url),
                           capture_output=True, timeout=30)
            return Fault(t, kind, None, time.monotonic())
        candidate = self._target()
        if candidate.process is None or candidate.process.poll() is not None:
            return None
        if kind == "kill-lelect":
            with self._lock:
                candidate.expect_exit = True
                os.kill(candidate.pid, signal.SIGKILL)
                self._restarts.append((t + self.rng.uniform(0.1, 1.0), candidate))
            candidate.process.wait()
            candidate.poll()
            return Fault(t, kind, candidate.node, t)
        if kind == "kill-keeper":
            keeper = candidate.keeper()
            if keeper is None:
                return None
            os.kill(keeper, signal.SIGKILL)
            return Fault(t, kind, candidate.node, t)
        if kind == "stop-lelect":
            os.kill(candidate.pid, signal.SIGSTOP)
            time.sleep(self._hold())
            os.kill(candidate.pid, signal.SIGCONT)
            return Fault(t, kind, candidate.node, time.monotonic())
        if kind == "freeze-tree":
            tree = [candidate.pid, *descendants(candidate.pid)]
            signal_all(tree, signal.SIGSTOP)
            time.sleep(self._hold())
            signal_all(tree, signal.SIGCONT)
            return Fault(t, kind, candidate.node, time.monotonic())
        if kind == "partition":
            candidate.proxy.block()
            time.sleep(self._hold())
            candidate.proxy.unblock()
            return Fault(t, kind, candidate.node, time.monotonic())
        raise ValueError(kind)

    def run(self) -> Report:
        tender = threading.Thread(target=self._tend, daemon=True)
        try:
            for candidate in self.candidates:
                candidate.start()
            tender.start()
            self._await_writes(since=time.monotonic(), within=30 + 3 * self.ttl)
            ends = time.monotonic() + self.minutes * 60
            count = 0
            while time.monotonic() < ends:
                time.sleep(self.rng.uniform(0.5, 2.0))
                kind = self.rng.choice(self.kinds)
                term_before = self.resource.highest
                fault = self.strike(kind)
                if fault is None:
                    continue
                count += 1
                self.recorder.add(fault)
                # After a resign, the old leader's job writes on until the request
                # reaches it: wait for the next leader's. After a server fault it may
                # write on until its renew finds the lease gone: wait for a write a ttl
                # on, so the heal's recovery can be judged before the next fault.
                settle = self.ttl if kind in SERVER_FAULTS else 0.0
                self._await_writes(since=fault.healed + settle, within=3 * self.ttl + settle,
                                   above=term_before if kind == "resign" else None)
                begun = self.recorder.start
                line = (f"[{fault.t - begun:7.3f}s] {kind} {fault.node or 'server'}, healed at"
                        f" {fault.healed - begun:.3f}s; next write after"
                        f" {self._recovered_after(fault.healed)}")
                self.say(line)
                with (self.workdir / "faults.log").open("a") as log:
                    log.write(line + "\n")
            # The last heal's recovery too: a job that outlives the fault by a ttl (the
            # old leader's job may write on for a moment after a server restart).
            time.sleep(self.ttl)
            self._await_writes(since=time.monotonic(), within=3 * self.ttl)
        finally:
            self._shut_down(tender)
        return analyse(self.recorder.snapshot(), recovery_limit=2 * self.ttl, ttl=self.ttl)

    def _recovered_after(self, since: float) -> str:
        if self.resource.last_accepted < since:
            return "none yet"
        return f"{(self.resource.last_accepted - since) * 1000:.0f} ms (or less)"

    def _await_writes(self, since: float, within: float, above: int | None = None) -> None:
        """Until a write is accepted after ``since`` (with a term above ``above``)."""
        deadline = time.monotonic() + within
        while ((self.resource.last_accepted < since
                or (above is not None and self.resource.highest <= above))
               and time.monotonic() < deadline):
            time.sleep(0.02)

    def _shut_down(self, tender: threading.Thread) -> None:
        self._stop.set()
        tender.join(5)
        if self.stage.thaw is not None:
            self.stage.thaw()
        for proxy in self.proxies:
            proxy.unblock()
        for candidate in self.candidates:
            candidate.stop()
            if candidate.process is not None:
                candidate.poll()
        # Jobs still connected now outlived their lelect and keeper: wait a little, then
        # record the end (they count as orphans) and kill them.
        deadline = time.monotonic() + 2.0
        while self.resource.open_jobs() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.recorder.add(End(time.monotonic()))
        signal_all(self.resource.open_jobs(), signal.SIGKILL)
        self.resource.close()
        for proxy in self.proxies:
            proxy.close()
        self.stage.close()


def run(backend: str, minutes: float, seed: int, candidates: int = 3, ttl: float = 2.0,
        workdir: Path | None = None, say: Callable[[str], None] = print) -> Report:
    """One chaos run; returns its report (``render(report)`` prints it)."""
    with tempfile.TemporaryDirectory(prefix=f"lelect-chaos-{backend}-") as tmp:
        return Chaos(backend, minutes, seed, candidates, ttl, workdir or Path(tmp), say).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backend", choices=BACKENDS)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--ttl", default="2s", help="lease length (default 2s)")
    parser.add_argument("--quiet", action="store_true", help="do not list faults as they go")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="run in DIR and keep it: faults.log and each candidate's stderr"
                             " (cN.log), stamped in seconds since the run began")
    args = parser.parse_args()
    ttl = parse_duration(args.ttl, what="--ttl")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    report = run(args.backend, args.minutes, args.seed, args.candidates, ttl, workdir=args.keep,
                 say=(lambda _: None) if args.quiet else (lambda s: print(s, file=sys.stderr)))
    print(render(report, f"chaos: {args.backend}, {args.minutes:g} min, seed {args.seed},"
                         f" {args.candidates} candidates, ttl {args.ttl}"))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
