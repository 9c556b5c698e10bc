"""N waiting candidates on one election: what a handoff costs, what waiting costs, on any
backend, beside an anchor (a well-known tool doing the same) in the same run.

    python bench/scale.py                                   # file, redis, zookeeper; N 1 10 50
    python bench/scale.py -b redis -b postgres -n 1 -n 200 --trials 5
    python bench/scale.py -b etcd --no-anchors --idle 5

For each backend and each N (``-n``, repeatable), a leader holds the election and N
candidates wait behind it. Then:

- handoff: ``--trials`` times, the leader's job exits; measured from its last line to the
  first line of the next job (each record line carries ``date +%s%N``). After each
  handoff one more candidate joins, so N wait again before the next;
- server work per handoff: the server's own counters over the handoff (from just before
  the job exits to ``--settle`` s after the next job starts), less what the line does
  idle in that time (next item). Redis: client requests from ``INFO commandstats`` (the
  commands clients send: scripts, PTTL, SUBSCRIBE, connection set-up; ``cmds`` adds the
  commands the scripts ran); ZooKeeper: ``zk_packets_received`` of ``mntr``; etcd:
  ``grpc_server_msg_received_total`` of ``/metrics`` (every unary call and every message on
  a stream; lelect's JSON gateway calls end up there too); PostgreSQL: calls in
  ``pg_stat_statements`` by the candidates' role (``xact_commit`` of ``pg_stat_database``
  lags by up to a second, so it is not shown); MariaDB: ``Questions`` of ``SHOW GLOBAL
  STATUS`` less the monitor's own (every statement of a multi-statement text counts: a
  lelect verb is one round trip of up to 15 statements). "srv ms" is the server's CPU time (psutil;
  PostgreSQL: the postmaster, its backends and those it reaped). Both are means over the handoffs;
- idle load per waiter: the same counters over ``--idle`` s with the leader alone, then
  with the N waiters, once their start-up traffic is over (at most one request per
  candidate per second over half a second): (rate with N - rate alone) / N. A window
  shorter than a candidate's slowest periodic request misses it (lelect's ``--holders``
  note is refreshed every 10 s by every candidate: ``--idle 12`` counts it). "wake/s" is the waiters' own
  context switches per second (psutil, lelect and its keeper): how often a waiting
  candidate wakes up, on any backend (also the embedded one, which has no server);
- memory per candidate: RSS and PSS (psutil) of each waiter's process tree (lelect and
  its keeper; an anchor's process), averaged;
- connections per candidate: TCP connections from each waiter's process tree to the
  server's port, averaged (MariaDB: also the server's count for lelect's user, printed
  below the table);
- all waiting: seconds from starting the N waiters at once until all of them wait.

Anchors: ``flock(1)`` for file, kazoo's ``Election`` recipe (one python process per
candidate) for zookeeper, ``etcdctl lock`` and ``etcdctl elect`` for etcd. Redis,
PostgreSQL and MariaDB (``-b mysql``) have none. Servers are started on loopback with free ports (the test suite's
classes). lelect runs with ``--heartbeat-interval 0`` (``--heartbeats``: other intervals, or
lelect's default, each a side of its own) and the backend's default ttl, byte-compiled first
(as an installed lelect is: with PYTHONDONTWRITEBYTECODE and no cache, every candidate would
compile lelect from source, ~30 ms of CPU and more memory each).
Before the measured rows of a backend each side hands off ``--warmup`` times (at the
smallest N, unmeasured): a fresh server is slow at first (ZooKeeper's JVM compiles its hot
paths as they run), and without this the side measured first paid for it (kazoo measured
after lelect: 3.9 ms; before it: 6.2 ms, in 30 trials each). ``--rounds R`` measures each
side R times at each N, alternating the sides' order, and merges the stages into one row:
a host that drifts over a run (this one does, by up to 20% in an hour) then weighs on
every side alike.
Prints one table; asserts nothing. The run time is about, per backend and side,
sum over N of (2 * --idle + start-up of N candidates + trials * (handoff + start-up of one
candidate)).
"""

from __future__ import annotations

import argparse
import compileall
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from common import LELECT, percentile, wait_for
from redis_idle import REQUESTS

from lelect.backends.file.state import flock_waiters
from tests.helpers import lelect_env, redis_listeners, zk_queue

BACKENDS = ("file", "redis", "zookeeper", "etcd", "postgres", "mysql")
#: Commands a Redis client sends itself (everything else in commandstats ran in a script).
REDIS_REQUESTS = REQUESTS | {"evalsha_ro", "eval_ro", "fcall", "fcall_ro", "unsubscribe",
                             "ssubscribe", "sunsubscribe", "psubscribe", "punsubscribe",
                             "quit", "reset"}  # fmt: skip
PG_SCHEMA = "lelect"


# -- the job every candidate runs: a record line when it starts, exits when told -------------


def gated_job(record: Path, gates: Path) -> str:
    """Shell text: appends 'start NS 0 PID' to ``record``, makes the FIFO ``gates``/PID and
    blocks reading it (:func:`open_gate`), appends 'end NS 0 PID' and exits (PID: the
    shell's own). It sleeps in one read: a job that polled (a ``sleep 0.005`` loop, until
    2026-12) forked ~150 processes a second on the host for as long as it led, load that
    is no part of the handoff measured beside it."""
    f, g = shlex.quote(str(record)), shlex.quote(str(gates))
    return (f'w() {{ echo "$1 $(date +%s%N) 0 $$" >> {f}; }}; w start; '
            f'mkfifo {g}/$$ && read line < {g}/$$; w end')  # fmt: skip


def open_gate(gates: Path, pid: int, timeout: float) -> None:
    """Let the gated job ``pid`` end: a line to the FIFO it reads, once it reads it."""
    fifo, end = gates / str(pid), time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until it reads
            break
        except OSError:
            if time.monotonic() > end:
                raise RuntimeError(f"bench: job {pid} never read its gate {fifo}") from None
            time.sleep(0.001)
    try:
        os.write(fd, b"go\n")
    finally:
        os.close(fd)


def records(record: Path) -> list[tuple[str, int, int]]:
    """(kind, ns, pid) of each whole line of ``record``."""
    try:
        text = record.read_text()
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4:
            found.append((parts[0], int(parts[1]), int(parts[3])))
    return found


# -- servers and their counters ----------------------------------------------------------


@dataclass
class Server:
    """A backend to measure: lelect's URL, the server's counters and port (None for the
    embedded backend)."""

    name: str
    url: str
    port: int | None = None
    #: {counter: value} now; "requests" is the one shown per handoff.
    counters: Callable[[], dict[str, float]] = dict
    #: Seconds of CPU the server has used (None: not measured).
    cpu: Callable[[], float | None] = lambda: None
    extra: dict = field(default_factory=dict)


def tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        top = psutil.Process(pid)
        return [top, *top.children(recursive=True)]
    except psutil.Error:
        return []


@contextmanager
def file_server(work: Path) -> Iterator[Server]:
    home = work / "state"
    home.mkdir(mode=0o700)
    yield Server("file", f"file://{home}", extra={"home": home})


@contextmanager
def redis_server(work: Path) -> Iterator[Server]:
    from tests.plugins.redis_server import RedisServer

    server = RedisServer(work / "redis")
    client = server.client()

    def counters() -> dict[str, float]:
        calls = server.command_calls()
        calls.pop("info", None)  # our own
        requests = sum(n for name, n in calls.items()
                       if name in REDIS_REQUESTS or name.startswith("client|"))  # fmt: skip
        return {"requests": requests, "cmds": sum(calls.values())}

    try:
        yield Server("redis", server.url, server.port, counters,
                     lambda: tree_cpu([server.pid]), {"client": client})  # fmt: skip
    finally:
        client.close()
        server.remove()


@contextmanager
def zookeeper_server(work: Path) -> Iterator[Server]:
    from kazoo.client import KazooClient

    from tests.plugins.zookeeper_server import ZooKeeperServer

    (work / "zk").mkdir()
    server = ZooKeeperServer(work / "zk")
    server.start()
    kazoo = KazooClient(hosts=server.hosts, timeout=30)  # pings every 10 s: little noise
    kazoo.start(30)

    def counters() -> dict[str, float]:
        stats = dict(line.split("\t", 1) for line in server.command("mntr").splitlines()
                     if "\t" in line)  # fmt: skip
        return {"requests": float(stats.get("zk_packets_received", 0))}

    try:
        yield Server("zookeeper", server.url("/scale"), server.port, counters,
                     lambda: tree_cpu([server.process.pid]),
                     {"kazoo": kazoo, "hosts": server.hosts})  # fmt: skip
    finally:
        kazoo.stop()
        kazoo.close()
        server.stop()


@contextmanager
def etcd_server(work: Path) -> Iterator[Server]:
    from tests.plugins.etcd_server import EtcdServer

    server = EtcdServer(work / "etcd")

    def counters() -> dict[str, float]:
        total = 0.0
        for line in server.metrics().splitlines():
            if line.startswith("grpc_server_msg_received_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return {"requests": total}

    try:
        yield Server("etcd", server.url("scale"), server.port, counters,
                     lambda: tree_cpu([server.pid]), {"server": server})  # fmt: skip
    finally:
        server.remove()


@contextmanager
def postgres_server(work: Path) -> Iterator[Server]:
    from tests.plugins.postgres_server import ROLE, PostgresCluster

    cluster = PostgresCluster()
    database = cluster.create_database("scale")
    cluster.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", database)
    monitor = cluster.connect(database)

    def counters() -> dict[str, float]:
        calls = monitor.execute(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            f" AND userid = (SELECT oid FROM pg_roles WHERE rolname = '{ROLE}')").fetchone()[0]
        commits = monitor.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()[0]
        return {"requests": float(calls), "xact": float(commits)}

    def cpu() -> float:
        # Backends that exited are in the postmaster's children times once it reaped them.
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
        times = psutil.Process(postmaster).cpu_times()
        children = [p.pid for p in process_tree(postmaster)[1:]]
        return times.children_user + times.children_system + tree_cpu([postmaster, *children])

    try:
        yield Server("postgres", cluster.url(database), cluster.port, counters, cpu,
                     {"cluster": cluster, "database": database, "monitor": monitor})
    finally:
        monitor.close()
        cluster.remove()


@contextmanager
def mysql_server(work: Path) -> Iterator[Server]:
    from lelect.backends.mysql import sql
    from tests.plugins.mysql_server import DATABASE, USER, MariaDBServer

    maria = MariaDBServer()
    monitor = maria.connect()  # root over the unix socket: not a TCP connection to the port
    asked = [0]  # the monitor's own statements, each counted in Questions

    def query(statement: str) -> list[tuple]:
        asked[0] += 1
        with monitor.cursor() as cursor:
            cursor.execute(statement)
            return list(cursor.fetchall())

    def counters() -> dict[str, float]:
        # Questions counts every statement clients send (each one of a multi-statement
        # text, connection set-up included, not COM_PING), the monitor's own too.
        before = asked[0]
        questions = int(query("SHOW GLOBAL STATUS LIKE 'Questions'")[0][1])
        return {"requests": float(questions - before - 1)}

    def waiting(election: str) -> int:
        """Candidates blocked in GET_LOCK on the election's doorbell (MariaDB's "User
        lock" state), and those between two pieces of that wait, reading the lease (the
        leader holds the lock; its renew and release are not counted)."""
        bell = sql.lock_name(DATABASE, "lelect_", election).encode().hex()  # as sql.literal sends it
        name = election.encode().hex()
        return int(query(
            "SELECT count(*) FROM information_schema.processlist"
            f" WHERE user = '{USER}' AND ((state = 'User lock' AND info LIKE '%{bell}%')"
            f" OR (info LIKE '%{name}%' AND info NOT LIKE '%lelect acquire%'"
            " AND info NOT LIKE '%lelect renew%' AND info NOT LIKE '%lelect release%'))")[0][0])

    def connections() -> int:
        return int(query("SELECT count(*) FROM information_schema.processlist"
                         f" WHERE user = '{USER}'")[0][0])  # fmt: skip

    try:
        yield Server("mysql", maria.url(), maria.port, counters,
                     lambda: tree_cpu([maria.process.pid]),
                     {"server": maria, "waiting": waiting, "connections": connections})
    finally:
        monitor.close()
        maria.remove()


SERVERS = {"file": file_server, "redis": redis_server, "zookeeper": zookeeper_server,
           "etcd": etcd_server, "postgres": postgres_server, "mysql": mysql_server}  # fmt: skip


# -- the sides: lelect and the anchors -------------------------------------------------------


@dataclass
class Side:
    """Who campaigns: ``argv(election, job_text)`` starts one candidate; ``waiting(election)``
    counts the candidates that wait behind the leader (the backend's view)."""

    label: str
    argv: Callable[[str, str], list[str]]
    waiting: Callable[[str], int]
    env: dict[str, str] = field(default_factory=dict)


def lelect_side(server: Server, heartbeats: str = "0") -> Side:
    """lelect's candidates; ``heartbeats``: "0" (off), "default" or an interval in seconds."""
    beats = [] if heartbeats == "default" else ["--heartbeat-interval", heartbeats]

    def argv(election: str, job: str) -> list[str]:
        return [*LELECT, "campaign", election, *beats, "--", "sh", "-c", job]

    if server.name == "file":
        home = server.extra["home"]
        waiting = lambda election: flock_waiters(home / f"{election}.lock")  # noqa: E731
    elif server.name == "redis":
        client = server.extra["client"]
        # Every candidate subscribes to the release channel, the leader too.
        waiting = lambda election: redis_listeners(client, election) - 1  # noqa: E731
    elif server.name == "zookeeper":
        kazoo = server.extra["kazoo"]
        waiting = lambda election: len(zk_children(kazoo, f"/scale/{election}")) - 1  # noqa: E731
    elif server.name == "etcd":
        from lelect.backends import connect

        def waiting(election: str) -> int:
            with connect(server.url) as backend:
                keys = backend.keys(election)
                found = backend.gateway.range(keys.contenders, prefix=True, count_only=True,
                                              budget=5.0)  # fmt: skip
            return found.count - 1
    elif server.name == "mysql":
        waiting = server.extra["waiting"]
    else:
        from tests.plugins.postgres_server import waiting_sql

        monitor = server.extra["monitor"]
        # Server processes holding or queued for the election's doorbell (its advisory
        # lock), the leader's aside.
        waiting = lambda election: monitor.execute(  # noqa: E731
            waiting_sql(PG_SCHEMA, election)).fetchone()[0]
    label = f"lelect {server.name}" if heartbeats == "0" else f"lelect beats={heartbeats} {server.name}"
    return Side(label, argv, waiting, lelect_env(server.url))


def zk_children(kazoo, path: str) -> list[str]:
    try:
        return zk_queue(kazoo, path)
    except Exception:  # noqa: BLE001 - the election node does not exist yet
        return []


KAZOO_CANDIDATE = """\
import subprocess, sys
from kazoo.client import KazooClient
hosts, path, job = sys.argv[1:]
zk = KazooClient(hosts=hosts)
zk.start(30)
zk.Election(path, "scale").run(subprocess.run, ["sh", "-c", job])
zk.stop()
zk.close()
"""


def anchor_sides(server: Server, work: Path) -> list[Side]:
    if server.name == "file":
        home = server.extra["home"]
        lock = lambda election: home / f"flock-{election}.lock"  # noqa: E731
        return [Side("flock", lambda election, job: ["flock", str(lock(election)), "sh", "-c", job],
                     lambda election: flock_waiters(lock(election)))]
    if server.name == "zookeeper":
        script = work / "kazoo_candidate.py"
        script.write_text(KAZOO_CANDIDATE)
        kazoo, hosts = server.extra["kazoo"], server.extra["hosts"]
        return [Side("kazoo Election",
                     lambda election, job: [sys.executable, str(script), hosts,
                                            f"/kazoo/{election}", job],
                     lambda election: len(zk_children(kazoo, f"/kazoo/{election}")) - 1)]
    if server.name == "etcd":
        etcd = server.extra["server"]

        def count(name: str) -> int:
            out = etcd.etcdctl("get", f"{name}/", "--prefix", "--keys-only")
            return sum(1 for line in out.stdout.splitlines() if line.strip())

        def elect(election: str, job: str) -> list[str]:
            # etcdctl elect prints the proposal once elected and campaigns until killed:
            # the job runs when it has printed, and ends it when done.
            command = shlex.join(etcd.etcdctl_command("elect", f"elect-{election}", "p"))
            fifo = shlex.quote(str(work / "elect"))
            return ["sh", "-c",
                    f"f={fifo}-$$; mkfifo $f; {command} > $f & e=$!; exec 3< $f; read k <&3;"
                    f" read v <&3; {job}; kill $e; wait $e; rm -f $f"]  # fmt: skip

        return [
            Side("etcdctl lock",
                 lambda election, job: etcd.etcdctl_command("lock", f"lock-{election}", "--",
                                                            "sh", "-c", job),
                 lambda election: count(f"lock-{election}") - 1, {"ETCDCTL_API": "3"}),
            Side("etcdctl elect", elect, lambda election: count(f"elect-{election}") - 1,
                 {"ETCDCTL_API": "3"}),
        ]
    return []


# -- one stage: a side, N waiters --------------------------------------------------------


@dataclass
class Result:
    label: str
    waiters: int
    handoffs: list[float]
    requests: list[float]
    server_cpu: list[float]
    idle_per_waiter: float | None
    wakeups: float
    rss: float
    pss: float
    connections: float | None
    all_waiting: float
    #: {"waiting lelect": (rss, pss, uss), ..., "leader keeper": ...}, MB, means
    roles: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    #: Connections the server counts for the candidates' user, per candidate (leader
    #: included; None: the server cannot say)
    server_connections: float | None = None


class Line:
    """The candidates of one election, each in a process group of its own."""

    def __init__(self, side: Side, election: str, work: Path, timeout: float) -> None:
        self.side, self.election, self.timeout = side, election, timeout
        self.record = work / f"{election}.record"
        self.gates = work / f"{election}.gates"
        self.gates.mkdir()
        self.job = gated_job(self.record, self.gates)
        self.processes: list[subprocess.Popen] = []
        env = dict(os.environ)
        env.update(side.env)
        self.env = env

    def start(self) -> subprocess.Popen:
        process = subprocess.Popen(self.side.argv(self.election, self.job), env=self.env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)  # fmt: skip
        self.processes.append(process)
        return process

    def starts(self) -> list[tuple[str, int, int]]:
        return [line for line in records(self.record) if line[0] == "start"]

    def wait_waiting(self, count: int) -> None:
        wait_for(lambda: self.side.waiting(self.election) >= count, self.timeout,
                 f"{count} waiting candidates of {self.side.label}", interval=0.05)  # fmt: skip

    def hand_off(self, settle: float) -> float:
        """One handoff: the leader's job is let end; seconds from its last line to the next
        job's first, read ``settle`` s after that job started."""
        led = self.starts()
        leader = led[-1][2]
        open_gate(self.gates, leader, self.timeout)
        wait_for(lambda: len(self.starts()) > len(led), self.timeout,
                 f"the next leader of {self.side.label}", interval=0.001)  # fmt: skip
        time.sleep(settle)
        ends = {pid: ns for kind, ns, pid in records(self.record) if kind == "end"}
        return (self.starts()[len(led)][1] - ends[leader]) / 1e9

    def refill(self, waiters: int, settle: float) -> None:
        """One more candidate, so that ``waiters`` wait again; then ``settle`` s of quiet."""
        self.start()
        self.wait_waiting(waiters)
        time.sleep(settle)

    def waiters(self) -> list[subprocess.Popen]:
        """The candidates alive that have not (yet) led."""
        led = {pid for _, _, pid in self.starts()}
        found = []
        for process in self.processes:
            if process.poll() is not None:
                continue
            tree = {p.pid for p in process_tree(process.pid)}
            if not tree & led:
                found.append(process)
        return found

    def close(self) -> None:
        pids = [p.pid for process in self.processes for p in process_tree(process.pid)]
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in self.processes:
            process.wait()


def footprint(processes: list[subprocess.Popen], port: int | None) -> tuple[float, float, float | None]:
    """Mean RSS and PSS (MB) of each process's tree, and its mean TCP connections to
    ``port``."""
    rss, pss, conns = [], [], []
    for process in processes:
        tree_rss = tree_pss = 0
        tree_conns = 0
        for p in process_tree(process.pid):
            try:
                info = p.memory_full_info()
                tree_rss += info.rss
                tree_pss += info.pss
                if port is not None:
                    tree_conns += sum(1 for c in p.net_connections(kind="tcp")
                                      if c.raddr and c.raddr.port == port)  # fmt: skip
            except psutil.Error:
                pass
        rss.append(tree_rss / 2**20)
        pss.append(tree_pss / 2**20)
        conns.append(tree_conns)
    mean = lambda values: statistics.fmean(values) if values else float("nan")  # noqa: E731
    return mean(rss), mean(pss), (mean(conns) if port is not None else None)


def role_of(process: psutil.Process, top: psutil.Process) -> str:
    """lelect (the top), its keeper (a child of lelect), the keeper's pre-forked launcher
    (a fork of the keeper: the same command line) or the job (anything else)."""
    if process.pid == top.pid:
        return "lelect"
    try:
        parent = process.parent()
        if parent is not None and parent.pid == top.pid:
            return "keeper"
        if parent is not None and process.cmdline() == parent.cmdline():
            return "launcher"
    except psutil.Error:
        pass
    return "job"


def role_footprint(processes: list[subprocess.Popen], prefix: str) -> dict[str, tuple[float, float, float]]:
    """Mean RSS, PSS and USS (MB) per role (:func:`role_of`) over each process's tree."""
    found: dict[str, list[tuple[float, float, float]]] = {}
    for process in processes:
        tree = process_tree(process.pid)
        if not tree:
            continue
        for p in tree:
            try:
                info = p.memory_full_info()
                role = role_of(p, tree[0])
            except psutil.Error:
                continue
            found.setdefault(f"{prefix} {role}", []).append(
                (info.rss / 2**20, info.pss / 2**20, info.uss / 2**20))
    return {role: tuple(statistics.fmean(v[i] for v in values) for i in range(3))
            for role, values in found.items()}  # fmt: skip


def switches(processes: list[subprocess.Popen]) -> int:
    """Context switches of every thread of each process's tree (psutil's count is the
    main thread's only)."""
    total = 0
    for process in processes:
        for p in process_tree(process.pid):
            for status in Path(f"/proc/{p.pid}/task").glob("*/status"):
                try:
                    text = status.read_text()
                except OSError:
                    continue
                total += sum(int(line.split()[1]) for line in text.splitlines()
                             if "ctxt_switches:" in line)  # fmt: skip
    return total


def rate(server: Server, window: float) -> float:
    before, began = server.counters().get("requests", 0.0), time.monotonic()
    time.sleep(window)
    return (server.counters().get("requests", 0.0) - before) / (time.monotonic() - began)


def quiet(server: Server, candidates: int, limit: float = 10.0) -> None:
    """Wait (at most ``limit`` s) until the line's start-up traffic is over: the server
    counts at most one request per candidate per second over half a second (a waiting
    candidate sends a few, after the node or key that makes it count as waiting)."""
    end = time.monotonic() + limit
    while time.monotonic() < end and rate(server, 0.5) > candidates:
        pass


def stage(server: Server, side: Side, waiters: int, args, work: Path) -> Result:
    election = f"{side.label.split()[-1].lower()}-{waiters}-{time.monotonic_ns() % 10**9}"
    line = Line(side, election, work, args.timeout)
    try:
        line.start()
        wait_for(lambda: line.starts(), args.timeout, f"the first leader of {side.label}")
        has_server = server.port is not None
        if has_server:
            quiet(server, 1)  # the leader's own start-up (its history entry) is over
        alone = rate(server, args.idle) if has_server else 0.0
        began = time.monotonic()
        for _ in range(waiters):
            line.start()
        line.wait_waiting(waiters)
        all_waiting = time.monotonic() - began
        time.sleep(args.settle)
        if has_server:
            quiet(server, waiters + 1)
        queue = line.waiters()
        rss, pss, connections = footprint(queue, server.port)
        by_server = server.extra.get("connections")
        server_connections = by_server() / (waiters + 1) if by_server else None
        roles = role_footprint(queue, "waiting")
        leader = [p for p in line.processes if p not in queue and p.poll() is None]
        roles.update(role_footprint(leader, "leading"))
        ctx_before, idle_began = switches(queue), time.monotonic()
        full = rate(server, args.idle) if has_server else 0.0
        wakeups = (switches(queue) - ctx_before) / (time.monotonic() - idle_began) / waiters
        if not has_server:
            time.sleep(max(0.0, args.idle - (time.monotonic() - idle_began)))
            wakeups = (switches(queue) - ctx_before) / (time.monotonic() - idle_began) / waiters
        handoffs, requests, cpu = [], [], []
        for _ in range(args.trials):
            before, cpu_before, began = server.counters(), server.cpu(), time.monotonic()
            handoffs.append(line.hand_off(args.settle))
            after, cpu_after, took = server.counters(), server.cpu(), time.monotonic() - began
            if has_server:
                requests.append(after["requests"] - before["requests"] - full * took)
            if cpu_before is not None and cpu_after is not None:
                cpu.append(cpu_after - cpu_before)
            line.refill(waiters, args.settle)
        idle = (full - alone) / waiters if has_server else None
        return Result(side.label, waiters, handoffs, requests, cpu, idle, wakeups, rss, pss,
                      connections, all_waiting, roles, server_connections)  # fmt: skip
    finally:
        line.close()


# -- the table --------------------------------------------------------------------------

HEADER = ("| side | N | trials | handoff p50 ms | p99 ms | req/handoff | srv ms/handoff"
          " | idle req/s per waiter | wake/s per waiter | RSS MB | PSS MB | conns | all waiting s |")


def merged(stages: list[Result]) -> Result:
    """One row from a side's stages at one N (``--rounds``): every handoff and request of
    each; the means of the rest."""
    if len(stages) == 1:
        return stages[0]
    mean = lambda values: (statistics.fmean(values)  # noqa: E731
                           if values and None not in values else None)
    return Result(
        stages[0].label, stages[0].waiters,
        [h for r in stages for h in r.handoffs], [q for r in stages for q in r.requests],
        [c for r in stages for c in r.server_cpu],
        mean([r.idle_per_waiter for r in stages]), mean([r.wakeups for r in stages]),
        mean([r.rss for r in stages]), mean([r.pss for r in stages]),
        mean([r.connections for r in stages]), mean([r.all_waiting for r in stages]),
        stages[0].roles, mean([r.server_connections for r in stages]),
    )  # fmt: skip


def table_row(r: Result) -> str:
    def cell(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    median = lambda values: statistics.median(values) if values else None  # noqa: E731
    mean = lambda values: statistics.fmean(values) if values else None  # noqa: E731
    return "| " + " | ".join([
        r.label, str(r.waiters), str(len(r.handoffs)),
        cell(median(r.handoffs) * 1000, ".1f"),
        cell(percentile(r.handoffs, 0.99) * 1000, ".1f"),
        # The median too: the waiters' own periodic reads (at each lease's expiry, in step
        # when they joined together) fall into some handoffs' windows and not others.
        "-" if not r.requests else f"{median(r.requests):.1f} ({mean(r.requests):.1f})",
        cell(mean(r.server_cpu) * 1000 if r.server_cpu else None, ".1f"),
        cell(r.idle_per_waiter, ".2f"), cell(r.wakeups, ".1f"),
        cell(r.rss, ".1f"), cell(r.pss, ".1f"), cell(r.connections, ".2f"),
        cell(r.all_waiting, ".2f"),
    ]) + " |"  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-b", "--backend", action="append", choices=BACKENDS,
                        help="backend to measure (repeatable; default: file, redis, zookeeper)")
    parser.add_argument("-n", "--waiters", type=int, action="append",
                        help="waiting candidates (repeatable; default: 1, 10, 50)")
    parser.add_argument("--trials", type=int, default=10, help="handoffs per stage")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of each idle window")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds after a handoff still counted as its server work")
    parser.add_argument("--timeout", type=float, default=120.0, help="bound of each wait")
    parser.add_argument("--rounds", type=int, default=1,
                        help="stages per side and N, alternating the sides' order (each of"
                             " --trials handoffs; a row merges them): drift over a run"
                             " falls on every side alike")
    parser.add_argument("--warmup", type=int, default=20,
                        help="unmeasured handoffs per side before a backend's rows (0: none)")
    parser.add_argument("--no-anchors", action="store_true", help="measure lelect only")
    parser.add_argument("--heartbeats", action="append", metavar="SECONDS|default",
                        help="lelect's --heartbeat-interval, one lelect side each (repeatable;"
                             " default: 0, heartbeats off; 'default': lelect's own default)")
    parser.add_argument("--per-process", action="store_true",
                        help="also a table of RSS/PSS/USS per process (lelect, keeper, job)")
    args = parser.parse_args()
    backends = args.backend or ["file", "redis", "zookeeper"]
    counts = args.waiters or [1, 10, 50]
    import lelect

    compileall.compile_dir(os.path.dirname(lelect.__file__), quiet=1)

    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    results = []
    with tempfile.TemporaryDirectory(prefix="lelect-scale-") as tmp:
        for name in backends:
            work = Path(tmp) / name
            work.mkdir()
            with ExitStack() as stack:
                server = stack.enter_context(SERVERS[name](work))
                sides = [lelect_side(server, beats) for beats in args.heartbeats or ["0"]]
                if not args.no_anchors:
                    sides += anchor_sides(server, work)
                if args.warmup > 0:
                    warm = argparse.Namespace(**{**vars(args), "trials": args.warmup,
                                                 "idle": 0.1})
                    for side in sides:
                        stage(server, side, min(counts), warm, work)
                for waiters in counts:
                    rounds = [[stage(server, side, waiters, args, work) for side in
                               (sides if turn % 2 == 0 else sides[::-1])]
                              for turn in range(args.rounds)]  # fmt: skip
                    for side in sides:
                        result = merged([r for each in rounds for r in each
                                         if r.label == side.label])
                        print(table_row(result), flush=True)
                        results.append(result)
    print(f"\nhandoff: the leader's job exits -> the next job's first line; {args.trials}"
          f" handoffs per stage, {args.rounds} stage(s) per row, sides alternating (after"
          f" {args.warmup} unmeasured per side); server counters less the idle rate; idle"
          f" windows {args.idle:g} s")
    for r in results:
        if r.server_connections is not None:
            print(f"{r.label}, {r.waiters} waiting: the server counts {r.server_connections:.2f}"
                  " connections of lelect's user per candidate (leader included)")
    if args.per_process:
        print("\n| side | N | process | RSS MB | PSS MB | USS MB |\n|---|---|---|---|---|---|")
        for r in results:
            for role, (rss, pss, uss) in sorted(r.roles.items()):
                print(f"| {r.label} | {r.waiters} | {role} | {rss:.1f} | {pss:.1f} | {uss:.1f} |")


if __name__ == "__main__":
    main()
