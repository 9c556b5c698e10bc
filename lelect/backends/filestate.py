"""The embedded backend's state: its directory (safety checks) and SQLite database.

Imported by the file backend and by the job's keeper (which bumps the term the moment
it wins the flock), so it imports nothing but the standard library and lelect.errors.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time

from lelect.errors import ConfigError

DB_NAME = "lelect.db"
MAX_ARRIVALS = 20
#: Filesystems on which flock and SQLite WAL are not reliable.
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "fuse.sshfs"}

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
"""


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


def ensure_safe_dir(path: str) -> str:
    """Create ``path`` (0700) if missing; refuse it if it is not safe to hold elections."""
    path = os.path.abspath(path)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except PermissionError:
        raise ConfigError(
            f"cannot create state directory {path}: permission denied"
            " (set LELECT_HOME or --backend file:///DIR to a directory you own)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot create state directory {path}: {exc.strerror}") from None
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"state directory {path} is not a directory")
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"refusing state directory {path}: owned by uid {info.st_uid}, not by you"
            f" (uid {os.geteuid()}); use a directory you own"
        )
    if info.st_mode & 0o022:
        raise ConfigError(
            f"refusing state directory {path}: it is group/world writable"
            f" (mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 700 {path}"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"refusing state directory {path}: not writable by you")
    fstype = _filesystem_type(os.path.realpath(path))
    if fstype in NETWORK_FILESYSTEMS:
        raise ConfigError(
            f"refusing state directory {path}: it is on {fstype}, where flock and SQLite WAL"
            " are not reliable; use a local directory"
        )
    return path


def corrupt(path: str, detail: str) -> ConfigError:
    return ConfigError(
        f"state database {path} is corrupt ({detail}); move it aside (terms must never"
        " restart, so lelect will not recreate it silently) and start again"
    )


def open_db(directory: str) -> sqlite3.Connection:
    """Open (creating if needed) the state database; refuse a corrupt one.

    Several processes may create it at once: WAL mode and the schema are set with a
    busy timeout inside an immediate transaction, so the race is harmless. Switching
    a new database to WAL can still fail at once with "database is locked" (SQLite
    does not wait when waiting could deadlock two connections that both read it
    first): then we back off briefly and try again, for up to the busy timeout."""
    path = os.path.join(directory, DB_NAME)
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


BUSY_TIMEOUT = 10.0


class _Contended(Exception):
    """Another process holds the new database's lock right now."""


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
        if not {"terms", "leaders", "members"} <= tables:
            conn.execute("BEGIN IMMEDIATE")
            conn.executescript(_SCHEMA.replace("BEGIN", ""))
            if conn.in_transaction:
                conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        conn.close()
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            raise _Contended(str(exc)) from None
        raise corrupt(path, str(exc)) from None
    return conn


def read_term(conn: sqlite3.Connection, election: str) -> int:
    """The last term ``election`` handed out (0 if none)."""
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    try:
        row = conn.execute("SELECT term FROM terms WHERE election=?", (election,)).fetchone()
    except sqlite3.DatabaseError as exc:
        raise corrupt(path, str(exc)) from None
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
) -> None:
    """Record ``term`` (terms only grow) and the new leader. Called while holding the
    election's flock."""
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    try:
        conn.execute("BEGIN IMMEDIATE")
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
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise corrupt(path, str(exc)) from None


def encode_heartbeat(data: dict, arrivals_json: str | None, stamp: float) -> tuple[str, str]:
    try:
        arrivals = json.loads(arrivals_json) if arrivals_json else []
        if not isinstance(arrivals, list):
            arrivals = []
    except ValueError:
        arrivals = []
    arrivals = [*arrivals, stamp][-MAX_ARRIVALS:]
    return json.dumps(data, separators=(",", ":")), json.dumps(arrivals)


def now() -> float:
    """The file backend's clock: the local wall clock (one host)."""
    return time.time()


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
