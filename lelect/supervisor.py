"""lelect's side of the job's keeper (lelect/_keeper.py is the keeper itself; the
messages between the two are in lelect/keeper_protocol.py).

The keeper is spawned while lelect still waits for leadership, so winning costs only
the job's own fork/exec: at once, or (:meth:`KeeperHandle.spawn` with ``on_demand``,
where the backend says who is next in line) once lelect is next in line, so that the
candidates further back wait without one. What it says arrives on
:attr:`Keeper.events` as protocol messages, and :class:`Gone` when it is gone.
"""

from __future__ import annotations

import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from lelect import keeper_protocol as proto
from lelect._keeper import (  # noqa: F401 - trim_heap for campaign
    child_pids,
    gate_word,
    set_subreaper,
    trim_heap,
)
from lelect.backends.records import DEFAULT_HISTORY, HandBack, LocalLock
from lelect.frozen import Record, asdict
from lelect.json_text import compact_json

PYTHONPATH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The keeper runs from its module (byte-compiled once), not as a script (compiled at
#: every start): ``python -S -I`` adds nothing to sys.path, so the command line does.
KEEPER_MAIN = (f"import sys; sys.path.insert(0, {PYTHONPATH!r});"
               " from lelect._keeper import main; main()")

#: Pids of the keepers this process runs; everything else among its children is a stray.
_keepers: set[int] = set()
_keepers_lock = threading.Lock()
_adopting = False


def adopt_orphans() -> bool:
    """Make this process the subreaper of whatever its keepers leave behind.

    A keeper kills its job's whole tree when it stops, and the kernel kills the job if
    the keeper is SIGKILLed (PR_SET_PDEATHSIG). The job's own children would still be
    re-parented to init; after this call they come to us instead, and the campaign
    kills them the moment a keeper dies (:func:`sweep_orphans`). The CLI does this; a
    library process that forks children of its own is left as it is."""
    global _adopting
    _adopting = set_subreaper()
    return _adopting


def sweep_orphans(timeout: float = 10.0) -> int:
    """SIGKILL every child of ours that is not a keeper (with its process group) and
    wait until they are gone; repeat, as each death hands us its own children.
    Returns how many were killed. Does nothing unless :func:`adopt_orphans` worked."""
    if not _adopting:
        return 0
    killed = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _keepers_lock:
            strays = [pid for pid in child_pids() if pid not in _keepers]
        if not strays:
            break
        for pid in strays:
            try:
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        for pid in strays:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pidfd = None
            if pidfd is not None:
                try:
                    select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
                finally:
                    os.close(pidfd)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
    return killed


class Gone:
    """The keeper closed its end: it exited (or was killed)."""

    def __repr__(self) -> str:
        return "Gone()"


class KeeperConfig(Record):
    """What a keeper is started with (all of it visible in ps: no secrets here)."""

    command: tuple[str, ...] = ()
    program: str | None = None  # the command's resolved path
    stop_signal: int = int(signal.SIGTERM)
    grace: float = 10.0
    #: Win this local lock by itself (the embedded backend), else wait for Start.
    lock: LocalLock | None = None
    #: With a lock: give up waiting at this monotonic time (None: wait for ever).
    deadline: float | None = None
    #: With a lock: start the job the moment it wins.
    autostart: bool = True
    #: With a lock: release it the moment the job's group is gone.
    autorelease: bool = True
    #: With a lock: keep this many history entries.
    history_limit: int = DEFAULT_HISTORY
    #: A line the keeper writes to stderr just before it starts the job ({term}, {hms},
    #: {ts} filled in), so lelect's "elected" comes before the job's own output.
    announce: str | None = None

    @property
    def gated(self) -> bool:
        """A job started on lelect's Start (not the embedded backend's, which its keeper
        starts itself): when lelect is next in line, its keeper starts the job's process
        early, to wait at a gate lelect itself opens at the win (or, without the spawn
        library, for the keeper's own word)."""
        return bool(self.command) and self.lock is None

    def argv(self, gate: int | None = None) -> list[str]:
        options: dict[str, object] = {
            "stop_signal": int(self.stop_signal),
            "grace": repr(float(self.grace)),
            "pythonpath": PYTHONPATH,
        }
        if gate is not None:
            options["gate"] = gate
        if self.program:
            options["program"] = self.program
        lock = self.lock
        if lock is not None:
            options.update(
                lock=lock.lock_path, db=lock.db_dir, election=lock.election,
                node_id=lock.node_id, token=lock.token, host=lock.host, pid=lock.pid,
                nowait=int(lock.nowait), shared=int(lock.shared), seats=lock.seats,
                autostart=int(self.autostart and bool(self.command)),
                autorelease=int(self.autorelease), history=self.history_limit,
            )
            if self.deadline is not None:
                options["deadline"] = repr(self.deadline)
            if self.announce:
                options["announce"] = self.announce
        return proto.encode_config(options)


#: What a keeper not spawned yet (``on_demand``) need not be spawned to hear.
NEEDS_NO_KEEPER = (proto.Unprepare, proto.Exit)


def recipe_message(recipe: HandBack) -> proto.Recipe:
    """The hand-back recipe, as JSON (no import on the way from a win to its job)."""
    return proto.Recipe(compact_json(asdict(recipe)))


class KeeperHandle:
    """lelect's handle on one keeper process (one per campaign attempt)."""

    def __init__(self, config: KeeperConfig, env: dict[str, str] | None = None,
                 events: queue.SimpleQueue | None = None,
                 on_respawn: Callable[[], None] | None = None) -> None:
        self.config = config
        #: Told (from the reader's thread) when a new keeper replaced a killed one.
        self.on_respawn = on_respawn
        self.env = env
        self.events: queue.SimpleQueue = events if events is not None else queue.SimpleQueue()
        self.process: subprocess.Popen | None = None
        self.job_pid: int | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        #: True once lelect told it something or it told of more than waiting: from then
        #: on its death is news (Gone), before that a new keeper simply takes its place.
        self._engaged = False
        self._closing = False
        #: Messages held back (``hold=True``) to go with the next one, in the same write.
        self._held: list[bytes] = []
        #: The write end of the job's gate (KeeperConfig.gated), until the Start.
        self._gate: int | None = None
        #: The last lease told: (when the job must no longer start, its deadline).
        self._lease: tuple[float | None, float | None] = (None, None)
        #: Not spawned yet: spawned by the first message that needs a keeper.
        self._on_demand = False

    @property
    def autostart(self) -> bool:
        return self.config.lock is not None and self.config.autostart and bool(self.config.command)

    def spawn(self, on_demand: bool = False) -> None:
        """Start the keeper now, or (``on_demand``) when one is needed: once lelect is
        next in line (:meth:`prepare`), or at a win that came first (the lease). A
        candidate further back then waits as one process (a keeper's interpreter is ~10
        ms of CPU and ~9 MB of RSS), and the next in line has its keeper, and its job's
        process at the gate, before its win."""
        with self._lock:
            if on_demand:
                self._on_demand = True
            else:
                self._spawn()

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        passed = [theirs.fileno()]
        gate = None
        if self.config.gated:  # a keeper that replaces a killed one gets a gate of its own
            if self._gate is not None:
                os.close(self._gate)
            gate, self._gate = os.pipe()
            passed.append(gate)
        argv = [sys.executable, "-S", "-I", "-c", KEEPER_MAIN, str(theirs.fileno()),
                *self.config.argv(gate), "--", *self.config.command]
        try:
            with _keepers_lock:  # a sweep must never take a keeper being born for a stray
                self.process = subprocess.Popen(
                    argv, pass_fds=passed, env=self.env, close_fds=True
                )
                _keepers.add(self.process.pid)
        finally:
            theirs.close()
            if gate is not None:
                os.close(gate)
        self._sock = ours
        threading.Thread(target=self._read_events, args=(ours, self.process),
                         name="keeper-events", daemon=True).start()

    def _read_events(self, sock: socket.socket, process: subprocess.Popen) -> None:
        reader = proto.LineReader()
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._reap(process)
                # A keeper that was killed left its job's children to us (adopt_orphans).
                sweep_orphans()
                with self._lock:
                    if (not (self._engaged or self._closing) and self._sock is sock
                            and self.config.lock is None):
                        # Killed while its candidate waits: nothing depended on it yet. (A
                        # keeper that takes a local lock may have won and started the job
                        # before it could say so: its death is news.)
                        sock.close()
                        self._spawn()
                    else:
                        self.events.put(Gone())
                        return
                if self.on_respawn is not None:
                    self.on_respawn()
                return
            try:
                messages = reader.feed(data)
            except proto.ProtocolError as exc:
                messages = [proto.Error(f"keeper protocol: {exc}")]
            for message in messages:
                if isinstance(message, proto.Started):
                    self.job_pid = message.pid
                if not isinstance(message, proto.Waiting):
                    self._engaged = True
                self.events.put(message)

    def send(self, *messages: proto.Message, hold: bool = False, engage: bool = True) -> None:
        """Send ``messages`` (and any held back before them) in one write, so the
        keeper reads them at once; ``hold``: keep them for the next send instead;
        ``engage=False``: nothing depends on them yet (a keeper that dies now is
        replaced, as one that was told nothing)."""
        with self._lock:
            if self._on_demand:
                if self._closing or all(isinstance(m, NEEDS_NO_KEEPER) for m in messages):
                    return  # nothing for a keeper that was never needed
                self._on_demand = False
                self._spawn()
            self._engaged = self._engaged or engage
            self._held.extend(message.encode() for message in messages)
            if hold or self._sock is None:
                return
            data = b"".join(self._held)
            self._held.clear()
            try:
                self._sock.sendall(data)
            except OSError:
                pass

    def _open_gate(self, term: int, slot: str | None, seat: int | None) -> None:
        """Let the job's process that waits at the gate run (if the keeper forked one:
        else nobody reads this, and the keeper spawns the job on the Start). Before the
        Start: the process tells the keeper the lease it was given before it execs, so
        the dead-man switch has it whatever lelect does next, and the job's exec does
        not wait for the keeper's wake-up."""
        with self._lock:
            gate, self._gate = self._gate, None
        if gate is None:
            return
        try:
            os.write(gate, gate_word(*self._lease, term, slot, seat))
        except OSError:
            pass  # no process at the gate (the keeper dropped it): the keeper starts the job
        finally:
            os.close(gate)

    def prepare(self, ready: bool = True) -> None:
        """Next in line (``ready``): the keeper forks the job's process now, to run only
        on :meth:`start`; no longer (not ``ready``): that process exits unrun. (A keeper
        not spawned yet, ``on_demand``, is spawned by the first, not by the second.)"""
        self.send(proto.Prepare() if ready else proto.Unprepare(), engage=False)

    def start(self, term: int, slot: str | None = None, seat: int | None = None) -> None:
        """Start the job: open its gate (where the keeper forked it early), then tell
        the keeper (with whatever was held back, the lease above all: one write, which
        it reads at once). The hand-back recipe follows (:meth:`hand_back_with`)."""
        self._open_gate(term, slot, seat)
        self.send(proto.Start(term, slot or "-", -1 if seat is None else seat))

    def lease(self, deadline: float, grace: float, hold: bool = False) -> None:
        """Tell the dead-man switch the new lease deadline (monotonic clock); ``hold``:
        with the next message (the Start that follows at once: no job runs before)."""
        self._lease = (deadline - grace, deadline)
        self.send(proto.Lease(deadline, grace), hold=hold)

    def signal(self, signum: int) -> None:
        self.send(proto.Signal(signum))

    def stop(self, signum: int, grace: float, reason: str) -> None:
        self.send(proto.Stop(signum, grace, reason))

    def hand_back_with(self, recipe: HandBack) -> None:
        """What to do if lelect dies while the job runs (over the private socket only:
        the recipe may hold credentials)."""
        self.send(recipe_message(recipe))

    def release(self) -> None:
        self.send(proto.Release())

    def kill_job_group(self) -> None:
        """The keeper died: make sure its job's group goes too."""
        if self.job_pid is not None:
            try:
                os.killpg(self.job_pid, signal.SIGKILL)
            except OSError:
                pass

    def close(self) -> None:
        """Kill whatever runs and release; wait for the keeper to be gone."""
        self._closing = True
        self.send(proto.Exit())
        with self._lock:
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        self._wait_gone()

    def kill(self) -> None:
        """Stop this keeper whatever it is doing: SIGTERM makes a waiting keeper just
        exit, and one that started a job stop it (stop signal, SIGKILL after the
        grace) first. (Only a keeper that hangs gets SIGKILL; the kernel then kills
        its job, and :func:`sweep_orphans` what the job started.)"""
        self._closing = True
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
        self._wait_gone()

    def _reap(self, process: subprocess.Popen | None = None) -> None:
        """Wait for the keeper process (it has closed its end, so it is exiting)."""
        process = process or self.process
        if process is not None:
            try:
                process.wait(timeout=self.config.grace + 15)
            except subprocess.TimeoutExpired:  # a keeper that hangs is a bug: do not hang too
                process.kill()
                process.wait()
            with _keepers_lock:
                _keepers.discard(process.pid)

    def _wait_gone(self) -> None:
        self._reap()
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            if self._gate is not None:
                os.close(self._gate)
                self._gate = None
