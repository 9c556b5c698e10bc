"""The embedded backend: ``file:///DIR`` — one host, no server.

Leadership is a ``flock`` on ``DIR/NAME.lock``; terms, leader records, heartbeats, the
history and once-per slots live in SQLite (WAL) ``DIR/lelect.db``. Waiters block on the
flock itself. For ``lelect campaign`` the job's keeper takes the flock (the backend
describes it with :meth:`FileBackend.local_lock`), so the election is freed only once
the job's group is gone; a library caller holds it in-process. The leader listens on a
unix socket in DIR for resign requests; observers poll SQLite's ``PRAGMA data_version``
(cheap, local).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

from lelect.backends.base import (
    MAX_NOTE,
    Backend,
    Candidate,
    Ending,
    Heartbeat,
    HistoryEntry,
    LeaderInfo,
    Leadership,
    LocalLock,
    Members,
    busy,
    check_note,
    check_note_key,
    only_changes,
    timed_out,
    wait_event,
)
from lelect.backends.file import state as filestate
from lelect.backends.file.state import sqlite3  # the C module alone (no datetime)
from lelect.backends.records import (
    DEFAULT_HISTORY,
    decode_member,
    encode_member,
    stored_arrivals,
)
from lelect.backends.urls import BackendURL
from lelect.errors import BackendUnavailable, ConfigError, UsageError
from lelect.names import ELECTION_NAME, validate_stored

OBSERVE_INTERVAL = 0.1


class FileLeadership(Leadership):
    """Held while the flock is held; no lease to renew. ``release_lock`` lets go of
    the flock wherever it is held (the keeper, or this process)."""

    def __init__(self, backend: FileBackend, election: str, candidate: Candidate, term: int,
                 token: str, since: float, release_lock: Callable[[], None]) -> None:
        super().__init__(backend, election, candidate, term, token, since=since)
        self.release_lock = release_lock
        self._listener: socket.socket | None = None
        self._state = backend.state
        self._socket_name = backend.socket_name(election)
        self._socket_identity: tuple[int, int] | None = None
        self._start_resign_listener()

    def _start_resign_listener(self) -> None:
        """Listen for resign requests on DIR/NAME.sock (0660 in a shared directory: the
        group may ask us to resign); without it, only this process can end the term."""
        if self._state is None:
            return
        try:
            listener, self._socket_identity = self._state.bind(self._socket_name)
        except OSError:
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
            if self._state is not None and self._socket_identity is not None:
                self._state.unlink_if(self._socket_name, self._socket_identity)
            listener.close()


#: How long a note (advisory: the holders claim) waits for a database another process
#: holds busy.
NOTE_BUSY = 0.5


class FileBackend(Backend):
    scheme = "file"
    lease_based = False
    has_clock = False  # one host: the local clock is the backend's
    #: Read-only callers (``connect(url, create=False)``) create no directory.
    creates_state = True

    def __init__(self, url: BackendURL, *, create: bool = True) -> None:
        super().__init__(url)
        url.check_options({"history"})
        if url.hosts and url.hosts != (("localhost", None),):
            raise UsageError(
                f"file:// URLs name a local directory, not a host: use file:///PATH (got {url.masked})"
            )
        if not url.path:
            raise UsageError("file:// URL needs a directory: file:///srv/lelect")
        self.history_limit = url.integer("history", DEFAULT_HISTORY)
        #: A reader (leader, history, watch, health) writes nothing and creates nothing.
        self.writer = create
        #: None when a reader found no state directory: it knows no elections.
        self.state = filestate.open_state_dir(url.path, create=create, reader=not create)
        self.exists = self.state is not None
        self.directory = self.state.path if self.state else os.path.abspath(url.path)
        self.shared = self.state.shared if self.state else False
        self._conn: sqlite3.Connection | None = None
        # One connection shared by the caller and the heartbeat thread; transactions
        # must not interleave.
        self._conn_lock = threading.RLock()
        if self.exists:
            _ = self.db  # refuse a corrupt database now, before anybody waits on it

    # -- state ----------------------------------------------------------------

    @property
    def _db_path(self) -> str:
        return os.path.join(self.directory, filestate.DB_NAME)

    @property
    def db(self) -> sqlite3.Connection | None:
        """The state database (None for a reader that found none: nothing is created).
        Checked (SQLite's quick_check) when opened, so a corrupt one is refused before
        a campaign starts anything."""
        with self._conn_lock:
            if self._conn is None:
                if self.state is None:  # a reader: the directory may have appeared since
                    self.state = filestate.open_state_dir(self.directory, create=False,
                                                          reader=True)
                    if self.state is None:
                        return None
                    self.exists, self.shared = True, self.state.shared
                self._conn = filestate.open_db(self.state, create=self.writer, check=True)
            return self._conn

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            with self._conn_lock:
                conn = self.db
                return [] if conn is None else conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise filestate.corrupt(self._db_path, str(exc)) from None

    def lock_path(self, election: str) -> str:
        return os.path.join(self.directory, lock_name(election))

    def _lock_held(self, election: str) -> bool:
        return self.state is not None and filestate.lock_held(self.state, lock_name(election))

    def socket_name(self, election: str) -> str:
        name = f"{election}.sock"
        if len(name.encode()) <= 64:
            return name
        import hashlib  # OpenSSL's libcrypto, 3-4 MB: only for a name this long

        return f"_{hashlib.sha256(election.encode()).hexdigest()[:16]}.sock"

    def _writable(self) -> sqlite3.Connection:
        conn = self.db
        if conn is None:  # only a reader gets here, and only by a bug
            raise ConfigError(f"no state directory {self.directory}")
        return conn

    # -- leadership ------------------------------------------------------------

    def local_lock(self, election: str, candidate: Candidate, *, no_wait: bool = False,
                   holders: int = 1) -> LocalLock:
        validate_stored(election)
        return LocalLock(
            lock_path=self.lock_path(election),
            db_dir=self.directory,
            election=election,
            node_id=candidate.node_id,
            token=os.urandom(16).hex(),  # as uuid4().hex, without uuid (and platform)
            host=candidate.host,
            pid=candidate.pid or os.getpid(),
            nowait=no_wait,
            shared=self.shared,
            seats=holders,
        )

    def adopt_local_lock(self, lock: LocalLock, term: int, since: float,
                         release_lock: Callable[[], None]) -> Leadership:
        candidate = Candidate(lock.node_id, lock.host, lock.pid)
        return FileLeadership(self, lock.election, candidate, term, lock.token, since,
                              release_lock)

    def _campaign(self, election, candidate, *, timeout, no_wait, ttl,
                  on_wait, cancel=None) -> Leadership:
        """In this process (a library caller): the flock is held on a close-on-exec fd
        until released (or until this process dies)."""
        lock = self.local_lock(election, candidate, no_wait=no_wait)
        path = lock.lock_path
        fd = self._take(election, nowait=True)
        if fd is None:
            if no_wait:
                raise busy(election, self.leader(election))
            if timeout is not None and timeout <= 0:
                raise timed_out(election, timeout)
            if on_wait is not None:
                on_wait(self.leader(election))
            fd = self._wait_for_lock(timeout, election, cancel)
        try:
            conn = self._writable()
            with self._conn_lock:
                term = filestate.next_term(fd, conn, election, path)
                since = time.time()
                filestate.record_leader(conn, election, term=term, node_id=lock.node_id,
                                        token=lock.token, host=lock.host, pid=lock.pid,
                                        since=since, history_limit=self.history_limit)
        except BaseException:
            os.close(fd)
            raise
        closed = threading.Lock()

        def release_lock() -> None:
            if closed.acquire(blocking=False):
                os.close(fd)

        return FileLeadership(self, election, candidate, term, lock.token, since, release_lock)

    def _take(self, election: str, nowait: bool) -> int | None:
        assert self.state is not None  # a writer has its directory
        try:
            return filestate.take_lock(self.state, lock_name(election), nowait)
        except OSError as exc:
            raise ConfigError(f"cannot open lock file {self.lock_path(election)}:"
                              f" {exc.strerror}") from None

    def _wait_for_lock(self, timeout: float | None, election: str,
                       cancel: threading.Event | None = None) -> int:
        """Block on the flock in a helper thread, so a timeout can give up waiting; a
        lock won after we gave up is let go of at once."""
        won: list[int] = []
        failed: list[BaseException] = []
        done = threading.Event()
        guard = threading.Lock()
        abandoned = False

        def wait() -> None:
            try:
                fd = self._take(election, nowait=False)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                failed.append(exc)
                done.set()
                return
            with guard:
                if abandoned and fd is not None:
                    os.close(fd)
                elif fd is not None:
                    won.append(fd)
            done.set()

        threading.Thread(target=wait, name=f"flock:{election}", daemon=True).start()
        try:
            wait_event(done, timeout, cancel, election)
        finally:
            with guard:
                if not won and not failed:
                    abandoned = True
        if failed:
            raise failed[0]
        if not won:
            raise timed_out(election, timeout)
        return won[0]

    def resign(self, leadership: Leadership, ending: Ending) -> None:
        assert isinstance(leadership, FileLeadership)
        leadership.close_listener()
        if ending.done_slot is not None:
            # The slot must be done before the next leader can look at it.
            self._close(leadership, ending)
            leadership.release_lock()
        else:
            leadership.release_lock()  # release at once; the record is for people
            self._close(leadership, ending)

    def _close(self, leadership: Leadership, ending: Ending) -> None:
        conn = self.db
        if conn is None:
            return
        try:
            with self._conn_lock:
                filestate.close_leadership(
                    conn, leadership.election, term=leadership.term, token=leadership.token,
                    outcome=ending.outcome, exit_status=ending.exit_status,
                    reason=ending.reason, slot=ending.slot,
                    ended=time.time() if ending.ended is None else ending.ended,
                )
        except ConfigError:
            if ending.slot is not None:
                raise

    def leader(self, election: str) -> LeaderInfo | None:
        validate_stored(election)
        rows = self._query(
            "SELECT node_id, term, since, host, pid FROM leaders WHERE election=?", (election,)
        )
        if not rows or not self._lock_held(election):
            return None
        found = LeaderInfo.from_stored(election, *rows[0])
        # The lock is held: somebody leads, even when its record is garbage.
        return found or LeaderInfo(node_id="(unknown)", term=0)

    def observe(self, election: str, stop: threading.Event | None = None) -> Iterator[LeaderInfo | None]:
        validate_stored(election)
        stop = stop or threading.Event()

        def looks() -> Iterator[LeaderInfo | None]:
            # A connection of its own: data_version moves only for other connections'
            # commits, and this backend's own connection may be the writer.
            watcher: sqlite3.Connection | None = None
            version = None
            try:
                while not stop.is_set():
                    if watcher is None and self.db is not None and self.state is not None:
                        watcher = filestate.open_db(self.state, create=False)
                    current = None
                    if watcher is not None:
                        try:
                            current = watcher.execute("PRAGMA data_version").fetchone()[0]
                        except sqlite3.DatabaseError as exc:
                            raise filestate.corrupt(self._db_path, str(exc)) from None
                    if current != version or current is None:
                        version = current
                        yield self.leader(election)
                    stop.wait(OBSERVE_INTERVAL)
            finally:
                if watcher is not None:
                    watcher.close()

        yield from only_changes(looks())

    def request_resign(self, election: str, term: int | None = None) -> bool:
        info = self.leader(election)
        if info is None or (term is not None and info.term != term):
            return False
        deadline = time.monotonic() + 2.0
        while True:
            try:
                assert self.state is not None  # it has a leader
                with self.state.connect(self.socket_name(election), timeout=2) as sock:
                    sock.sendall(f"resign {info.term}\n".encode())
                    return sock.recv(16).startswith(b"ok")
            except OSError:
                # The leader binds its socket a moment after winning.
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.02)

    # -- heartbeats -------------------------------------------------------------------

    def publish(self, heartbeat: Heartbeat, ttl: float) -> None:
        validate_stored(heartbeat.election)
        stamp = filestate.now()
        with self._conn_lock, filestate.transaction(self._writable()) as conn:
            row = conn.execute(
                "SELECT data FROM members WHERE election=? AND node_id=?",
                (heartbeat.election, heartbeat.node_id),
            ).fetchone()
            arrivals = [*stored_arrivals(row[0] if row else None), stamp]
            conn.execute(
                "INSERT OR REPLACE INTO members(election, node_id, data, arrivals, expires)"
                " VALUES (?, ?, ?, '', ?)",
                (heartbeat.election, heartbeat.node_id,
                 encode_member(heartbeat, arrivals, ttl).decode(), stamp + ttl),
            )

    def remove_member(self, election: str, node_id: str) -> None:
        self._query("DELETE FROM members WHERE election=? AND node_id=?", (election, node_id))

    def members(self, election: str) -> Members:
        validate_stored(election)
        now = filestate.now()
        if self.writer and self.db is not None:
            self._query("DELETE FROM members WHERE expires < ?", (now,))
        records = tuple(
            decode_member(node_id, data)
            for node_id, data in self._query(
                "SELECT node_id, data FROM members WHERE election=? AND expires >= ?"
                " ORDER BY node_id", (election, now)
            )
        )
        return Members(election=election, now=now, records=records)

    def elections(self) -> list[str]:
        now = filestate.now()
        membered = {r[0] for r in self._query(
            "SELECT election FROM members WHERE expires >= ?", (now,))}
        led = {r[0] for r in self._query("SELECT election FROM leaders")}
        led = {name for name in led if isinstance(name, str) and ELECTION_NAME.fullmatch(name)
               and self._lock_held(name)}
        past = {r[0] for r in self._query("SELECT DISTINCT election FROM history")}
        return sorted(n for n in membered | led | past if isinstance(n, str) and ELECTION_NAME.fullmatch(n))

    # -- notes ------------------------------------------------------------------------

    def put_note(self, election: str, key: str, data: bytes, ttl: float | None = None, *,
                 create: bool = False) -> bool:
        validate_stored(election)
        check_note_key(key)
        data = check_note(data)
        stamp = filestate.now()
        expires = None if ttl is None else stamp + ttl
        with self._conn_lock, self._briefly(self._writable()) as conn:
            with filestate.transaction(conn):
                if create and conn.execute(
                    "SELECT 1 FROM notes WHERE election=? AND key=?"
                    " AND (expires IS NULL OR expires >= ?)", (election, key, stamp)
                ).fetchone():
                    return False
                conn.execute("INSERT OR REPLACE INTO notes(election, key, data, expires)"
                             " VALUES (?, ?, ?, ?)", (election, key, data, expires))
        return True

    @contextlib.contextmanager
    def _briefly(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """A note is advisory: while another process holds the database busy, wait at
        most :data:`NOTE_BUSY` for it (not the busy timeout a leadership waits), so the
        connection, which the campaign and its heartbeats share, is soon free again."""
        conn.execute(f"PRAGMA busy_timeout={int(NOTE_BUSY * 1000)}")
        try:
            yield conn
        except ConfigError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            raise BackendUnavailable(f"the state database in {self.directory} is busy"
                                     " (another process holds it)") from None
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(filestate.BUSY_TIMEOUT * 1000)}")

    def get_note(self, election: str, key: str) -> bytes | None:
        validate_stored(election)
        check_note_key(key)
        try:
            rows = self._query(
                "SELECT substr(data, 1, ?), length(data) FROM notes WHERE election=? AND key=?"
                " AND (expires IS NULL OR expires >= ?)",
                (MAX_NOTE, election, key, filestate.now()))
        except ConfigError:
            if self.writer:
                raise
            return None  # a reader of a database an older lelect made: no notes table
        if not rows or not isinstance(rows[0][0], bytes) or rows[0][1] > MAX_NOTE:
            return None
        return rows[0][0]

    def delete_note(self, election: str, key: str) -> None:
        validate_stored(election)
        check_note_key(key)
        with self._conn_lock, self._briefly(self._writable()):
            self._query("DELETE FROM notes WHERE election=? AND key=?", (election, key))

    # -- operations -------------------------------------------------------------------

    def history(self, election: str, limit: int | None = None) -> list[HistoryEntry]:
        validate_stored(election)
        rows = self._query(
            "SELECT entry FROM history WHERE election=? ORDER BY term DESC LIMIT ?",
            (election, limit if limit is not None else -1),
        )
        entries = []
        for (data,) in reversed(rows):
            try:
                entries.append(HistoryEntry.decode(data, election))
            except ValueError:
                continue
        return entries

    def slot_done(self, election: str, slot: str) -> HistoryEntry | None:
        rows = self._query("SELECT term FROM slots WHERE election=? AND slot=?", (election, slot))
        if not rows:
            return None
        entry = self._query("SELECT entry FROM history WHERE election=? AND term=?",
                            (election, rows[0][0]))
        if entry:
            try:
                return HistoryEntry.decode(entry[0][0])
            except ValueError:
                pass
        return HistoryEntry(election, rows[0][0], "?", None, None, None, outcome="exited",
                            exit_status=0, slot=slot)

    def now(self) -> float:
        return filestate.now()

    def close(self) -> None:
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self.state is not None:
                self.state.close()


def lock_name(election: str) -> str:
    return f"{election}.lock"
