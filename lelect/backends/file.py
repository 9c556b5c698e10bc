"""The embedded backend: ``file:///DIR`` — one host, no server.

Leadership is a ``flock`` on ``DIR/NAME.lock`` held by the job's keeper process;
terms, leader records and heartbeats live in SQLite (WAL) ``DIR/lelect.db``. Waiters
block on the flock itself. The leader listens on a unix socket in DIR for resign
requests; observers poll SQLite's ``PRAGMA data_version`` (cheap, local).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator

from lelect.backends import filestate
from lelect.backends.base import (
    Backend,
    Candidate,
    Heartbeat,
    LeaderInfo,
    Leadership,
    MemberRecord,
    Members,
)
from lelect.backends.urls import BackendURL
from lelect.errors import (
    CampaignTimeout,
    ConfigError,
    ElectionBusy,
    InternalError,
    LeadershipLost,
    UsageError,
)
from lelect.names import ELECTION_NAME, validate_election
from lelect.supervisor import FileLock, Keeper, KeeperEvent

OBSERVE_INTERVAL = 0.1


class FileLeadership(Leadership):
    """Held while the keeper holds the flock; no lease to renew."""

    def __init__(self, backend: FileBackend, election: str, candidate: Candidate, term: int,
                 token: str, keeper: Keeper, own_keeper: bool) -> None:
        super().__init__(backend, election, candidate, term, token, lease_deadline=None)
        self.keeper = keeper
        self.own_keeper = own_keeper
        self._listener: socket.socket | None = None
        self._socket_dir = backend.directory
        self._socket_name = backend.socket_name(election)
        self._start_resign_listener()

    def _start_resign_listener(self) -> None:
        try:
            os.unlink(os.path.join(self._socket_dir, self._socket_name))
        except FileNotFoundError:
            pass
        except OSError:
            return
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self.backend.socket_path(self.election) as path:
                listener.bind(path)
            listener.listen(8)
        except OSError:
            listener.close()
            return
        self._listener = listener
        threading.Thread(target=self._serve, name="resign-listener", daemon=True).start()

    def _serve(self) -> None:
        listener = self._listener
        while listener is not None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    words = conn.recv(256).decode(errors="replace").split()
                    if words[:1] == ["resign"] and (len(words) < 2 or int(words[1]) == self.term):
                        conn.sendall(b"ok\n")
                        self.mark_resign_requested()
                    else:
                        conn.sendall(b"stale\n")
                except (OSError, ValueError, IndexError):
                    pass

    def close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                os.unlink(os.path.join(self._socket_dir, self._socket_name))
            except OSError:
                pass
            listener.close()


class FileBackend(Backend):
    scheme = "file"
    lease_based = False

    def __init__(self, url: BackendURL) -> None:
        super().__init__(url)
        url.check_options(set())
        if url.hosts and url.hosts != (("localhost", None),):
            raise UsageError(
                f"file:// URLs name a local directory, not a host: use file:///PATH (got {url.masked})"
            )
        if not url.path:
            raise UsageError("file:// URL needs a directory: file:///srv/lelect")
        self.directory = filestate.ensure_safe_dir(url.path)
        self._conn: sqlite3.Connection | None = None
        # One connection shared by the caller and the heartbeat thread; transactions
        # must not interleave.
        self._conn_lock = threading.RLock()
        _ = self.db  # refuse a corrupt database now, before anybody waits on it

    # -- state ----------------------------------------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        with self._conn_lock:
            if self._conn is None:
                self._conn = filestate.open_db(self.directory)
            return self._conn

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            with self._conn_lock:
                return self.db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise filestate.corrupt(os.path.join(self.directory, filestate.DB_NAME), str(exc)) from None

    def lock_path(self, election: str) -> str:
        return os.path.join(self.directory, f"{election}.lock")

    def socket_name(self, election: str) -> str:
        name = f"{election}.sock"
        if len(name.encode()) <= 64:
            return name
        return f"_{hashlib.sha256(election.encode()).hexdigest()[:16]}.sock"

    @contextlib.contextmanager
    def socket_path(self, election: str) -> Iterator[str]:
        """A path to bind or connect the election's resign socket by. A unix socket's
        path must fit in 108 bytes; past that, we go through /proc/self/fd of the
        directory, so any LELECT_HOME works."""
        name = self.socket_name(election)
        path = os.path.join(self.directory, name)
        if len(path.encode()) < 100:
            yield path
            return
        fd = os.open(self.directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield f"/proc/self/fd/{fd}/{name}"
        finally:
            os.close(fd)

    def _lock_held(self, election: str) -> bool:
        """True if somebody holds the election's flock (a record alone may be stale)."""
        try:
            fd = os.open(self.lock_path(election), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    # -- the interface --------------------------------------------------------------

    def campaign(self, election, candidate, *, timeout=None, no_wait=False, ttl=None, keeper=None):
        validate_election(election)
        own_keeper = keeper is None
        if keeper is None:
            keeper = Keeper([])
        token = uuid.uuid4().hex
        keeper.spawn(
            FileLock(
                lock_path=self.lock_path(election),
                db_dir=self.directory,
                election=election,
                node_id=candidate.node_id,
                token=token,
                host=candidate.host,
                pid=candidate.pid or os.getpid(),
                nowait=no_wait,
                autorelease=getattr(keeper, "autorelease", True),
            )
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                event: KeeperEvent = keeper.events.get(timeout=remaining)
            except queue.Empty:
                keeper.kill()
                raise CampaignTimeout(
                    f"gave up waiting for election {election!r} after {timeout:g}s"
                ) from None
            except BaseException:
                keeper.kill()
                raise
            if event.kind == "locked":
                return FileLeadership(self, election, candidate, int(event.args[0]), token,
                                      keeper, own_keeper)
            if event.kind == "busy":
                keeper.kill()
                holder = self.leader(election)
                who = f"{holder.node_id} (term {holder.term})" if holder else "another candidate"
                raise ElectionBusy(f"election {election!r} is held by {who}")
            if event.kind == "error":
                keeper.kill()
                raise ConfigError(event.args[0])
            if event.kind == "gone":
                # Killed from outside; it may have won and started the job already, which
                # the kernel then killed with it (and lelect's subreaper, its children).
                raise LeadershipLost(
                    f"the job's keeper for {election!r} died before it reported;"
                    " anything it had started was killed"
                )
            raise InternalError(f"unexpected keeper event before the lock: {event.kind}")

    def resign(self, leadership: Leadership) -> None:
        assert isinstance(leadership, FileLeadership)
        leadership.released = True
        leadership.close_listener()
        if leadership.own_keeper:
            leadership.keeper.close()
        else:
            leadership.keeper.release()
        try:
            self._query(
                "DELETE FROM leaders WHERE election=? AND token=?",
                (leadership.election, leadership.token),
            )
        except ConfigError:
            pass

    def leader(self, election: str) -> LeaderInfo | None:
        validate_election(election)
        rows = self._query(
            "SELECT node_id, term, since, host, pid FROM leaders WHERE election=?", (election,)
        )
        if not rows or not self._lock_held(election):
            return None
        node_id, term, since, host, pid = rows[0]
        return LeaderInfo(node_id=node_id, term=term, since=since, host=host, pid=pid)

    def observe(self, election: str, stop: threading.Event | None = None) -> Iterator[LeaderInfo | None]:
        validate_election(election)
        stop = stop or threading.Event()
        last: object = object()
        version = None
        while not stop.is_set():
            current = self._query("PRAGMA data_version")[0][0]
            if current != version:
                version = current
                info = self.leader(election)
                if info != last:
                    last = info
                    yield info
            stop.wait(OBSERVE_INTERVAL)

    def request_resign(self, election: str, term: int | None = None) -> bool:
        info = self.leader(election)
        if info is None or (term is not None and info.term != term):
            return False
        deadline = time.monotonic() + 2.0
        while True:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, \
                        self.socket_path(election) as path:
                    sock.settimeout(2)
                    sock.connect(path)
                    sock.sendall(f"resign {info.term}\n".encode())
                    return sock.recv(16).startswith(b"ok")
            except OSError:
                # The leader binds its socket a moment after winning.
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.02)

    def publish(self, heartbeat: Heartbeat, ttl: float) -> None:
        validate_election(heartbeat.election)
        with self._conn_lock:
            self._publish(heartbeat, ttl)

    def _publish(self, heartbeat: Heartbeat, ttl: float) -> None:
        conn = self.db
        stamp = filestate.now()
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                "SELECT arrivals FROM members WHERE election=? AND node_id=?",
                (heartbeat.election, heartbeat.node_id),
            ).fetchone()
            data, arrivals = filestate.encode_heartbeat(
                heartbeat.to_dict(), row[0] if row else None, stamp
            )
            conn.execute(
                "INSERT OR REPLACE INTO members(election, node_id, data, arrivals, expires)"
                " VALUES (?, ?, ?, ?, ?)",
                (heartbeat.election, heartbeat.node_id, data, arrivals, stamp + ttl),
            )
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise filestate.corrupt(os.path.join(self.directory, filestate.DB_NAME), str(exc)) from None

    def remove_member(self, election: str, node_id: str) -> None:
        self._query("DELETE FROM members WHERE election=? AND node_id=?", (election, node_id))

    def members(self, election: str) -> Members:
        validate_election(election)
        now = filestate.now()
        self._query("DELETE FROM members WHERE expires < ?", (now,))
        records = []
        for node_id, data, arrivals_json in self._query(
            "SELECT node_id, data, arrivals FROM members WHERE election=? ORDER BY node_id",
            (election,),
        ):
            try:
                arrivals = tuple(float(t) for t in json.loads(arrivals_json))
            except (ValueError, TypeError):
                arrivals = ()
            try:
                heartbeat = Heartbeat.from_dict(json.loads(data))
                records.append(MemberRecord(node_id, heartbeat, arrivals))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                records.append(MemberRecord(node_id, None, arrivals, error=f"unreadable record: {exc}"))
        return Members(election=election, now=now, records=tuple(records))

    def elections(self) -> list[str]:
        now = filestate.now()
        names = {r[0] for r in self._query("SELECT election FROM members WHERE expires >= ?", (now,))}
        names |= {r[0] for r in self._query("SELECT election FROM leaders")}
        valid = {n for n in names if isinstance(n, str) and ELECTION_NAME.fullmatch(n)}
        return sorted(n for n in valid if n in names and (self._has_members(n) or self._lock_held(n)))

    def _has_members(self, election: str) -> bool:
        return bool(self._query(
            "SELECT 1 FROM members WHERE election=? AND expires >= ? LIMIT 1",
            (election, filestate.now()),
        ))

    # -- operations (stubs until the history lands) --------------------------------

    def history(self, election, limit=None):
        return []

    def slot_done(self, election, slot):
        return None

    def now(self) -> float:
        import time as _time

        return _time.time()

    def close(self) -> None:
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
