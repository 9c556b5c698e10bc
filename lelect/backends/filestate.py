"""The embedded backend's state: its directory (safety checks), its flocks and its
SQLite database.

Imported by the file backend and by the job's keeper (which takes the flock, settles
the term and records the leader the moment it wins), so it imports nothing but the
standard library and lelect.errors / lelect.backends.records.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import stat
import time

from lelect.errors import ConfigError

# lelect.backends.records (and dataclasses) are imported where a record is written: the
# job's keeper imports this module on its way to the lock, and must start in ms.

DB_NAME = "lelect.db"
SCHEMA_VERSION = 2
#: Filesystems on which flock and SQLite WAL are not reliable.
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "fuse.sshfs"}

_TABLES = {"terms", "leaders", "members", "history", "slots", "schema"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS terms (
    election TEXT PRIMARY KEY,
    term INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leaders (
    election TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    term INTEGER NOT NULL,
    token TEXT NOT NULL,
    since REAL NOT NULL,
    host TEXT,
    pid INTEGER
);
CREATE TABLE IF NOT EXISTS members (
    election TEXT NOT NULL,
    node_id TEXT NOT NULL,
    data TEXT NOT NULL,
    arrivals TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (election, node_id)
);
CREATE TABLE IF NOT EXISTS history (
    election TEXT NOT NULL,
    term INTEGER NOT NULL,
    entry TEXT NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (election, term)
);
CREATE TABLE IF NOT EXISTS slots (
    election TEXT NOT NULL,
    slot TEXT NOT NULL,
    term INTEGER NOT NULL,
    PRIMARY KEY (election, slot)
);
CREATE TABLE IF NOT EXISTS schema (
    version INTEGER NOT NULL
);
"""


# -- the directory ------------------------------------------------------------------------


def default_home() -> str:
    """``$LELECT_HOME``; else /var/lib/lelect for root; else the XDG state directory.

    Never the runtime dir or /tmp: cron and a login shell must find the same
    directory, and it must survive logout and cleaners."""
    home = os.environ.get("LELECT_HOME")
    if home:
        return os.path.abspath(home)
    if os.geteuid() == 0:
        return "/var/lib/lelect"
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(os.path.abspath(state), "lelect")


def _filesystem_type(path: str) -> str | None:
    """The fstype of the mount holding ``path`` (longest mount point prefix)."""
    best, best_type = "", None
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                if (path == point or path.startswith(point.rstrip("/") + "/")) and len(
                    point
                ) >= len(best):
                    best, best_type = point, fields[2]
    except OSError:
        return None
    return best_type


def ensure_safe_dir(path: str, create: bool = True) -> tuple[str, bool] | None:
    """Check (and with ``create``, make, 0700) the state directory; refuse it unless it is
    safe to hold elections. Returns ``(path, shared)``, or None when it does not exist
    and ``create`` is False.

    Safe is: owned by you and writable by nobody else; or **shared**: owned by you or
    root, group-writable with the setgid bit (so everything in it belongs to the
    group, and lelect makes its files 0660), and not world-writable. Root and the
    members of that group then share its elections, as ``flock /var/lock/x`` would."""
    path = os.path.abspath(path)
    if create:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except PermissionError:
            raise ConfigError(
                f"cannot create state directory {path}: permission denied"
                " (set LELECT_HOME or --backend file:///DIR to a directory you own)"
            ) from None
        except OSError as exc:
            raise ConfigError(f"cannot create state directory {path}: {exc.strerror}") from None
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot use state directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"state directory {path} is not a directory")
    mode = stat.S_IMODE(info.st_mode)
    shared = bool(mode & 0o020)
    if info.st_uid != os.geteuid() and not (shared and info.st_uid == 0):
        raise ConfigError(
            f"refusing state directory {path}: owned by uid {info.st_uid}, not by you"
            f" (uid {os.geteuid()}); use a directory you own, or share one: owned by root,"
            " group-writable and setgid (chmod 2770)"
        )
    if mode & 0o002:
        raise ConfigError(
            f"refusing state directory {path}: it is world writable (mode {mode:04o});"
            f" run: chmod 700 {path} (or chmod 2770 to share it with its group)"
        )
    if shared and not mode & stat.S_ISGID:
        raise ConfigError(
            f"refusing state directory {path}: it is group writable (mode {mode:04o}) but"
            f" not setgid; run: chmod 700 {path}, or chmod 2770 {path} to share it with its group"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"refusing state directory {path}: not writable by you")
    fstype = _filesystem_type(os.path.realpath(path))
    if fstype in NETWORK_FILESYSTEMS:
        raise ConfigError(
            f"refusing state directory {path}: it is on {fstype}, where flock and SQLite WAL"
            " are not reliable; use a local directory"
        )
    return path, shared


def file_mode(shared: bool) -> int:
    return 0o660 if shared else 0o600


def create_file(path: str, shared: bool, flags: int = os.O_RDWR) -> int:
    """Open ``path``, creating it with lelect's mode (the umask may not take the group's
    write bit away in a shared directory)."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, file_mode(shared))
    if shared:
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) != 0o660 and os.fstat(fd).st_uid == os.geteuid():
                os.fchmod(fd, 0o660)
        except OSError:
            pass
    return fd


# -- the flock -----------------------------------------------------------------------------


def take_lock(path: str, nowait: bool, shared: bool = False) -> int | None:
    """Take the election's flock; return its fd (close-on-exec), or None if ``nowait``
    and somebody else holds it. Raises OSError if the lock file cannot be opened.

    A cleaner or a user may unlink the file while we wait: then we would hold a lock on
    an inode nobody else will ever look at, so after locking we compare the fd with the
    path and try again if they differ."""
    while True:
        fd = create_file(path, shared)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if nowait else 0))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            on_disk = os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            continue
        held = os.fstat(fd)
        if (on_disk.st_dev, on_disk.st_ino) != (held.st_dev, held.st_ino):
            os.close(fd)
            continue
        return fd


def lock_held(path: str) -> bool:
    """True if somebody holds the election's flock (a record alone may be stale)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def next_term(lock_fd: int, conn: sqlite3.Connection, election: str) -> int:
    """The election's next term, written to the lock file before anything runs.

    Every leader writes its term into the lock file while holding the flock, so the
    file alone settles the next term. A new (or replaced) lock file is empty: then the
    database, which keeps every term too, says where to go on from."""
    try:
        content = os.pread(lock_fd, 64, 0)
        text = content.split(b"\n", 1)[0].strip()
        last = int(text) if text else 0
    except (OSError, ValueError):
        content, last = b"", 0
    if last <= 0:
        last = read_term(conn, election)
    term = last + 1
    data = f"{term}\n".encode()
    os.pwrite(lock_fd, data, 0)
    if len(content) > len(data):
        os.ftruncate(lock_fd, len(data))
    return term


def flock_waiters(path: str | os.PathLike) -> int:
    """How many processes wait for the flock of ``path`` ("->" lines of /proc/locks):
    the candidates queued behind an embedded-backend leader."""
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return 0
    waiting = 0
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            if "->" in fields and int(fields[-3].rsplit(":", 1)[1]) == inode:
                waiting += 1
    return waiting


# -- the database ----------------------------------------------------------------------------


def corrupt(path: str, detail: str) -> ConfigError:
    return ConfigError(
        f"state database {path} is corrupt ({detail}); move it aside (terms must never"
        " restart, so lelect will not recreate it silently) and start again"
    )


BUSY_TIMEOUT = 10.0


class _Contended(Exception):
    """Another process holds the new database's lock right now."""


def open_db(directory: str, shared: bool = False) -> sqlite3.Connection:
    """Open (creating if needed) the state database; refuse a corrupt one.

    Several processes may create it at once: WAL mode and the schema are set with a
    busy timeout inside an immediate transaction, so the race is harmless. Switching
    a new database to WAL can still fail at once with "database is locked" (SQLite
    does not wait when waiting could deadlock two connections that both read it
    first): then we back off briefly and try again, for up to the busy timeout."""
    path = os.path.join(directory, DB_NAME)
    if shared and not os.path.exists(path):
        # SQLite makes its -wal and -shm files with the database file's mode.
        try:
            os.close(create_file(path, shared))
        except OSError as exc:
            raise ConfigError(f"cannot create state database {path}: {exc.strerror}") from None
    deadline = time.monotonic() + BUSY_TIMEOUT
    pause = 0.002
    while True:
        try:
            return _open_db(path)
        except _Contended as exc:
            if time.monotonic() + pause > deadline:
                raise ConfigError(f"state database {path} stays locked: {exc}") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


def _open_db(path: str) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open state database {path}: {exc}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not _TABLES <= tables:
            conn.execute("BEGIN IMMEDIATE")
            conn.executescript(_SCHEMA)
            if not conn.execute("SELECT 1 FROM schema").fetchone():
                conn.execute("INSERT INTO schema(version) VALUES (?)", (SCHEMA_VERSION,))
            if conn.in_transaction:
                conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        conn.close()
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            raise _Contended(str(exc)) from None
        raise corrupt(path, str(exc)) from None
    return conn


def _path(conn: sqlite3.Connection) -> str:
    return conn.execute("PRAGMA database_list").fetchone()[2]


class transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error); database errors become
    the one "corrupt, move it aside" line."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise corrupt(_path(self.conn), str(exc)) from None
        return self.conn

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.DatabaseError as error:
                exc = error
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        if isinstance(exc, sqlite3.DatabaseError):
            raise corrupt(_path(self.conn), str(exc)) from None


def read_term(conn: sqlite3.Connection, election: str) -> int:
    """The last term ``election`` handed out (0 if none)."""
    try:
        row = conn.execute("SELECT term FROM terms WHERE election=?", (election,)).fetchone()
    except sqlite3.DatabaseError as exc:
        raise corrupt(_path(conn), str(exc)) from None
    return int(row[0]) if row else 0


def record_leader(
    conn: sqlite3.Connection,
    election: str,
    *,
    term: int,
    node_id: str,
    token: str,
    host: str | None,
    pid: int | None,
    since: float,
    history_limit: int,
) -> None:
    """Record ``term`` (terms only grow), the new leader, and its history entry; close
    an earlier entry still "running" as "vanished". Called while holding the flock."""
    entry = new_entry(election, term, node_id, host, pid, since)
    with transaction(conn):
        conn.execute(
            "INSERT INTO terms(election, term) VALUES (?, ?)"
            " ON CONFLICT(election) DO UPDATE SET term = max(term, excluded.term)",
            (election, term),
        )
        # Written after the job started, so possibly after a newer leader's record:
        # only a larger term replaces a record.
        conn.execute(
            "INSERT INTO leaders(election, node_id, term, token, since, host, pid)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(election) DO UPDATE SET node_id=excluded.node_id,"
            " term=excluded.term, token=excluded.token, since=excluded.since,"
            " host=excluded.host, pid=excluded.pid WHERE excluded.term > leaders.term",
            (election, node_id, term, token, since, host, pid),
        )
        # Only the newest earlier entries can still be running (older ones were closed).
        for (older,) in conn.execute(
            "SELECT entry FROM history WHERE election=? AND term<? AND outcome='running'"
            " ORDER BY term DESC LIMIT 3", (election, term),
        ).fetchall():
            _write_entry(conn, {**json.loads(older), "outcome": "vanished", "ended": since})
        conn.execute(
            "INSERT OR IGNORE INTO history(election, term, entry, outcome) VALUES (?, ?, ?, ?)",
            (election, term, json.dumps(entry, separators=(",", ":")), entry["outcome"]),
        )
        cutoff = conn.execute(
            "SELECT term FROM history WHERE election=? ORDER BY term DESC LIMIT 1 OFFSET ?",
            (election, history_limit),
        ).fetchone()
        if cutoff:
            conn.execute("DELETE FROM history WHERE election=? AND term<=?", (election, cutoff[0]))


def close_leadership(
    conn: sqlite3.Connection,
    election: str,
    *,
    term: int,
    token: str,
    outcome: str,
    exit_status: int | None,
    reason: str | None,
    slot: str | None,
    ended: float,
) -> None:
    """A leadership ended: forget its leader record (if still ours), close its history
    entry (its own word wins over a successor's guess of "vanished"), and mark a
    once-per slot done when it exited with status 0."""
    with transaction(conn):
        conn.execute("DELETE FROM leaders WHERE election=? AND token=?", (election, token))
        row = conn.execute(
            "SELECT entry FROM history WHERE election=? AND term=? AND outcome IN"
            " ('running', 'vanished')", (election, term),
        ).fetchone()
        done = slot if outcome == "exited" and exit_status == 0 else None
        if row:
            _write_entry(conn, {**json.loads(row[0]), "ended": ended, "outcome": outcome,
                                "exit_status": exit_status, "reason": reason, "slot": done})
        if done is not None:
            from lelect.backends.records import MAX_SLOTS

            conn.execute(
                "INSERT OR REPLACE INTO slots(election, slot, term) VALUES (?, ?, ?)",
                (election, done, term),
            )
            conn.execute(
                "DELETE FROM slots WHERE election=? AND slot NOT IN (SELECT slot FROM slots"
                " WHERE election=? ORDER BY term DESC, slot DESC LIMIT ?)",
                (election, election, MAX_SLOTS),
            )


def new_entry(election: str, term: int, node_id: str, host: str | None, pid: int | None,
              started: float) -> dict:
    """A "running" history entry, in records.HistoryEntry's stored form (JSON): built
    here as a dict because the keeper writes it and must not import dataclasses."""
    return {"election": election, "term": term, "node_id": node_id, "host": host, "pid": pid,
            "started": started, "ended": None, "outcome": "running", "exit_status": None,
            "slot": None, "reason": None}


def _write_entry(conn: sqlite3.Connection, entry: dict) -> None:
    conn.execute(
        "UPDATE history SET entry=?, outcome=? WHERE election=? AND term=?",
        (json.dumps(entry, separators=(",", ":")), entry["outcome"], entry["election"],
         entry["term"]),
    )


def now() -> float:
    """The file backend's clock: the local wall clock (one host)."""
    return time.time()
