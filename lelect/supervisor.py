"""lelect's side of the job's keeper (see lelect/_keeper.py for the keeper itself).

The keeper is spawned while lelect still waits for leadership, so winning costs only
the job's own fork/exec. Its events arrive on :attr:`Keeper.events`, a queue the
campaign loop also uses for its own events.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from lelect._keeper import child_pids, set_subreaper

KEEPER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_keeper.py")
PYTHONPATH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    import select
    import time

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


@dataclass(frozen=True)
class KeeperEvent:
    """One line from the keeper: ``kind`` and its words."""

    kind: str  # locked | busy | error | started | execfail | exited | released | gone
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileLock:
    """What the keeper needs to win an election of the file backend by itself."""

    lock_path: str
    db_dir: str
    election: str
    node_id: str
    token: str
    host: str
    pid: int
    nowait: bool
    autorelease: bool


class Keeper:
    """Handle on one keeper process (one per campaign attempt)."""

    def __init__(
        self,
        command: Sequence[str],
        env: dict[str, str] | None = None,
        *,
        program: str | None = None,
        stop_signal: int = signal.SIGTERM,
        grace: float = 10.0,
        events: queue.Queue | None = None,
        autorelease: bool = True,
    ) -> None:
        self.command = list(command)
        #: The program's resolved path (else the keeper searches PATH for command[0]).
        self.program = program
        #: Release the file backend's flock the moment the job's group is gone.
        self.autorelease = autorelease
        self.env = env
        self.stop_signal = stop_signal
        self.grace = grace
        self.events: queue.Queue = events if events is not None else queue.Queue()
        self.process: subprocess.Popen | None = None
        self.job_pid: int | None = None
        self.started = False
        self.exited = False
        #: The keeper starts the job by itself the moment it wins (file backend).
        self.autostart = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def spawn(self, file_lock: FileLock | None = None) -> None:
        """Start the keeper; with ``file_lock`` it starts taking the flock at once."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        options = [
            f"stop_signal={int(self.stop_signal)}",
            f"grace={self.grace!r}",
            f"pythonpath={PYTHONPATH}",
        ]
        if self.program:
            options.append(f"program={self.program}")
        if file_lock is not None:
            self.autostart = bool(self.command)
            options += [
                f"lock={file_lock.lock_path}",
                f"db={file_lock.db_dir}",
                f"election={file_lock.election}",
                f"node_id={file_lock.node_id}",
                f"token={file_lock.token}",
                f"host={file_lock.host}",
                f"pid={file_lock.pid}",
                f"nowait={int(file_lock.nowait)}",
                f"autorelease={int(file_lock.autorelease)}",
            ]
        argv = [sys.executable, "-S", "-I", KEEPER_PATH, str(theirs.fileno()), *options, "--"]
        argv += self.command
        try:
            with _keepers_lock:  # a sweep must never take a keeper being born for a stray
                self.process = subprocess.Popen(
                    argv, pass_fds=(theirs.fileno(),), env=self.env, close_fds=True
                )
                _keepers.add(self.process.pid)
        finally:
            theirs.close()
        self._sock = ours
        threading.Thread(target=self._read_events, name="keeper-events", daemon=True).start()

    def _read_events(self) -> None:
        sock = self._sock  # close() may drop the attribute while we read
        assert sock is not None
        buffer = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._reap()
                # A keeper that was killed left its job's children to us (adopt_orphans).
                sweep_orphans()
                self.events.put(KeeperEvent("gone"))
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                words = line.decode(errors="replace").split(" ", 1)
                kind = words[0]
                if kind in ("error", "execfail"):
                    args: tuple[str, ...] = (words[1],) if len(words) > 1 else ("",)
                else:
                    args = tuple(words[1].split()) if len(words) > 1 else ()
                if kind == "started":
                    self.started = True
                    self.job_pid = int(args[0])
                elif kind == "exited":
                    self.exited = True
                self.events.put(KeeperEvent(kind, args))

    def _send(self, line: str) -> None:
        with self._lock:
            if self._sock is None:
                return
            try:
                self._sock.sendall((line + "\n").encode())
            except OSError:
                pass

    def start(self, term: int) -> None:
        self._send(f"start {term}")

    def lease(self, deadline: float, grace: float) -> None:
        """Tell the dead-man switch the new lease deadline (monotonic clock)."""
        self._send(f"lease {deadline!r} {grace!r}")

    def signal(self, signum: int) -> None:
        self._send(f"signal {int(signum)}")

    def stop(self, signum: int, grace: float, reason: str) -> None:
        self._send(f"stop {int(signum)} {grace!r} {reason}")

    def release(self) -> None:
        self._send("release")

    def close(self) -> None:
        """Kill whatever runs and release; wait for the keeper to be gone."""
        self._send("exit")
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
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
        self._wait_gone()

    def _reap(self) -> None:
        """Wait for the keeper process (it has closed its end, so it is exiting)."""
        if self.process is not None:
            try:
                self.process.wait(timeout=self.grace + 15)
            except subprocess.TimeoutExpired:  # a keeper that hangs is a bug: do not hang too
                self.process.kill()
                self.process.wait()
            with _keepers_lock:
                _keepers.discard(self.process.pid)

    def _wait_gone(self) -> None:
        self._reap()
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
