"""The embedded backend's state: its directory (safety checks), its flocks and its
SQLite database. Every file in the directory is opened relative to the directory's
descriptor, never through a link, and checked (:class:`StateDir`; docs/security.md).

Imported by the file backend and by the job's keeper (which takes the flock, settles
the term and records the leader the moment it wins), so it imports nothing but the
standard library (lelect.errors and lelect.backends.records where it raises an error or
writes a record: they bring enum and dataclasses, which a waiting keeper does without). The keeper forks the job
from its main thread: this module neither imports ``threading`` (whose after-fork hook
runs Python code in the child, between the win and the job's exec) nor ``json`` (and so
``re`` and ``enum``): a record is written right after the job started, beside it on a
2-core host, so its entry is encoded by :func:`_dumps` (``json`` loads only to read an
older entry back).
"""

from __future__ import annotations

import _thread
import errno
import fcntl
import os
import stat

try:  # the C module alone: sqlite3.dbapi2 adds the datetime adapters (and datetime, ~0.7 MB
    # in every waiting keeper), which nothing here uses. lelect's own sqlite3 is the same.
    import _sqlite3 as sqlite3
except ImportError:  # pragma: no cover - not CPython
    import sqlite3
import time

from lelect.backends.words import VANISHED_REASON

TYPE_CHECKING = False  # not typing's: the keeper imports this module
if TYPE_CHECKING:
    from lelect.errors import ConfigError

# lelect.backends.records (and dataclasses) are imported where a record is written: the
# job's keeper imports this module on its way to the lock, and must start in ms.

DB_NAME = "lelect.db"
SCHEMA_VERSION = 2
#: Filesystems on which flock and SQLite WAL are not reliable.
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "fuse.sshfs"}

_TABLES = {"terms", "leaders", "members", "history", "slots", "schema"}
#: Tables a writer adds to a database an older lelect made (a reader does without).
_LATER_TABLES = {"notes"}
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
CREATE TABLE IF NOT EXISTS notes (
    election TEXT NOT NULL,
    key TEXT NOT NULL,
    data BLOB NOT NULL,
    expires REAL,
    PRIMARY KEY (election, key)
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


def ensure_safe_dir(path: str, create: bool = True, reader: bool = False
                    ) -> tuple[str, bool] | None:
    """Check (and with ``create``, make, 0700) the state directory; refuse it unless it is
    safe to hold elections. Returns ``(path, shared)``, or None when it does not exist
    and ``create`` is False.

    Safe is: owned by you and writable by nobody else; or **shared**: owned by you or
    root, group-writable, setgid (everything in it belongs to the group, and lelect
    makes its files 0660) and sticky (a member can neither delete nor replace another's
    files), and not world-writable. Root and the members of that group then share its
    elections, as ``flock /var/lock/x`` would. A ``reader`` (leader, history, watch,
    health) writes nothing, so it may read any user's directory it can enter."""
    path = os.path.abspath(path)
    if create:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except PermissionError:
            raise refused(
                f"cannot create state directory {path}: permission denied"
                " (set LELECT_HOME or --backend file:///DIR to a directory you own)"
            ) from None
        except OSError as exc:
            raise refused(f"cannot create state directory {path}: {exc.strerror}") from None
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise refused(f"cannot use state directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise refused(f"state directory {path} is not a directory")
    mode = stat.S_IMODE(info.st_mode)
    shared = bool(mode & 0o020)
    if not reader and info.st_uid != os.geteuid() and not (shared and info.st_uid == 0):
        raise refused(
            f"refusing state directory {path}: owned by uid {info.st_uid}, not by you"
            f" (uid {os.geteuid()}); use a directory you own, or share one: owned by root,"
            " group-writable, setgid and sticky (chmod 3770)"
        )
    if mode & 0o002:
        raise refused(
            f"refusing state directory {path}: it is world writable (mode {mode:04o});"
            f" run: chmod 700 {path} (or chmod 3770 to share it with its group)"
        )
    if shared and mode & (stat.S_ISGID | stat.S_ISVTX) != stat.S_ISGID | stat.S_ISVTX:
        raise refused(
            f"refusing state directory {path}: it is group writable (mode {mode:04o}) but"
            " not setgid and sticky (a member could replace others' files); run:"
            f" chmod 3770 {path} to share it with its group, or chmod 700 {path}"
        )
    if not reader and not os.access(path, os.W_OK | os.X_OK):
        raise refused(f"refusing state directory {path}: not writable by you")
    fstype = _filesystem_type(os.path.realpath(path))
    if fstype in NETWORK_FILESYSTEMS:
        raise refused(
            f"refusing state directory {path}: it is on {fstype}, where flock and SQLite WAL"
            " are not reliable; use a local directory"
        )
    return path, shared


def file_mode(shared: bool) -> int:
    return 0o660 if shared else 0o600


#: How every file in the state directory is opened: never through a symbolic link,
#: never as a terminal, never into a job, never blocking (a FIFO planted by a member).
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK


class StateDir:
    """The state directory, held open: every file and socket in it is opened relative
    to this descriptor without following links, checked with ``fstat`` (type, owner,
    one link) and given its mode by descriptor, so a member of a shared directory who
    plants a link or swaps a file cannot make lelect write anywhere else."""

    __slots__ = ("path", "shared", "fd", "info")

    def __init__(self, path: str, shared: bool) -> None:
        self.path = path
        self.shared = shared
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise refused(f"cannot use state directory {path}: {exc.strerror}") from None
        self.info = os.fstat(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def where(self, name: str) -> str:
        return os.path.join(self.path, name)

    def mode_for(self, name: str) -> int:
        """0600 (0660 shared), readable by whoever may read the directory: an owner who
        opened it (0755) lets other users run leader, history, watch and health."""
        mode = file_mode(self.shared)
        if not name.endswith(".sock"):
            mode |= stat.S_IMODE(self.info.st_mode) & 0o044
        return mode

    def check(self, fd: int, name: str, is_kind=stat.S_ISREG) -> os.stat_result:
        """Refuse what ``fd`` opened unless it is a ``is_kind`` with one link, owned by
        us, root or the directory's owner (or, shared, by a member of its group)."""
        info = os.fstat(fd)
        where = self.where(name)
        if not is_kind(info.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not what lelect made"
            raise refused(f"refusing {where}: it is {what}; someone who can write to"
                              f" {self.path} put it there: remove it")
        if info.st_nlink != 1:
            raise refused(f"refusing {where}: it has {info.st_nlink} hard links (lelect's"
                              f" files have one); someone who can write to {self.path} made"
                              " them: remove it")
        if info.st_uid not in (os.geteuid(), 0, self.info.st_uid) and not (
                self.shared and info.st_gid == self.info.st_gid):
            raise refused(f"refusing {where}: owned by uid {info.st_uid} and group"
                              f" {info.st_gid}, not by you or {self.path}'s group: remove it")
        return info

    def open(self, name: str, *, create: bool = True, write: bool = True) -> int | None:
        """Open (``create``: creating, with lelect's mode) the regular file ``name``;
        None if it does not exist and ``create`` is False."""
        flags = (os.O_RDWR if write else os.O_RDONLY) | _OPEN_FLAGS
        if create:
            flags |= os.O_CREAT
        mode = self.mode_for(name)
        try:
            fd = os.open(name, flags, mode, dir_fd=self.fd)
        except FileNotFoundError:
            if create:
                raise
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise refused(f"refusing {self.where(name)}: it is a symbolic link; someone"
                                  f" who can write to {self.path} put it there: remove it"
                                  ) from None
            raise
        try:
            info = self.check(fd, name)
            if write and stat.S_IMODE(info.st_mode) != mode and info.st_uid in (os.geteuid(), 0):
                try:
                    os.fchmod(fd, mode)
                except OSError:
                    pass
        except BaseException:
            os.close(fd)
            raise
        return fd

    def names(self, name: str, fd: int) -> bool:
        """True while ``name`` (not followed) is the file ``fd`` has open."""
        try:
            on_disk = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    def bind(self, name: str) -> tuple:
        """A unix socket listening at ``name`` with lelect's mode, and its (dev, inode).

        Bound in a private directory of our own, given its mode there (nobody else can
        reach it to swap it), then renamed into place: the socket only ever appears in
        the state directory with its final mode."""
        import socket as sockets

        private = f".{name}.{os.urandom(6).hex()}"
        os.mkdir(private, 0o700, dir_fd=self.fd)
        try:
            inner = os.open(private, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=self.fd)
            listener = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
            try:
                listener.bind(f"/proc/self/fd/{inner}/s")
                os.chmod("s", file_mode(self.shared), dir_fd=inner)
                os.rename("s", name, src_dir_fd=inner, dst_dir_fd=self.fd)
                bound = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            except BaseException:
                listener.close()
                try:
                    os.unlink("s", dir_fd=inner)
                except OSError:
                    pass
                raise
            finally:
                os.close(inner)
        finally:
            os.rmdir(private, dir_fd=self.fd)
        listener.listen(8)
        return listener, (bound.st_dev, bound.st_ino)

    def connect(self, name: str, timeout: float):
        """Connect to the unix socket ``name``, never through a link, only if it is a
        socket lelect (or a member of the directory's group) made."""
        import socket as sockets

        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        try:
            self.check(fd, name, stat.S_ISSOCK)
            sock = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(f"/proc/self/fd/{fd}")
            except BaseException:
                sock.close()
                raise
            return sock
        finally:
            os.close(fd)

    def unlink_if(self, name: str, identity: tuple[int, int]) -> None:
        """Remove ``name`` if it is still the file ``identity`` (dev, inode) names."""
        try:
            info = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            if (info.st_dev, info.st_ino) == identity:
                os.unlink(name, dir_fd=self.fd)
        except OSError:
            pass


def open_state_dir(path: str, create: bool = True, reader: bool = False) -> StateDir | None:
    """:func:`ensure_safe_dir`, then the directory held open (None: it does not exist)."""
    checked = ensure_safe_dir(path, create=create, reader=reader)
    return None if checked is None else StateDir(*checked)


# -- the flock -----------------------------------------------------------------------------


def take_lock(state: StateDir, name: str, nowait: bool) -> int | None:
    """Take the flock of the election's lock file ``name``; return its fd (close-on-exec),
    or None if ``nowait`` and somebody else holds it. Raises ConfigError for a file lelect
    must not use (a link, another user's), OSError if it cannot be opened.

    A cleaner or a user may unlink the file while we wait: then we would hold a lock on
    an inode nobody else will ever look at, so after locking we compare the fd with the
    name and try again if they differ."""
    while True:
        fd = state.open(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if nowait else 0))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if not state.names(name, fd):
            os.close(fd)
            continue
        return fd


def lock_held(state: StateDir, name: str) -> bool:
    """True if somebody holds the flock of the lock file ``name`` (a record alone may be
    stale)."""
    fd = state.open(name, create=False, write=False)
    if fd is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


#: The largest integer SQLite stores: a term must stay below it to have a successor.
MAX_TERM = 2**63 - 1


def next_term(lock_fd: int, conn: sqlite3.Connection, election: str, where: str,
              stored: int | None = None) -> int:
    """The election's next term, written to the lock file ``where`` before anything runs.

    Every leader writes its term into the lock file while holding the flock, and records
    it in the database right after, so the two agree: the database's term, or one more
    (a leader that died before it recorded its term). A new (or emptied) lock file says
    nothing, a new database neither: the other one says where to go on from. Anything
    else means someone changed one of them; going on could hand out a term again (a
    fencing token that went back), so that is refused. ``stored``: the database's term,
    if the caller just read it under this flock (:func:`handover_note`)."""
    content = os.pread(lock_fd, 64, 0)
    text = content.split(b"\n", 1)[0].strip()
    if text and not text.isdigit():
        raise refused(
            f"refusing election {election!r}: its lock file {where} holds"
            f" {text[:24].decode(errors='replace')!r}, not a term; someone wrote it by hand:"
            " write the last term there (lelect leader and history show it)"
        )
    last = int(text) if text else 0
    if stored is None:
        stored = read_term(conn, election)
    if max(last, stored) >= MAX_TERM:
        source = f"its lock file {where}" if last >= stored else "the state database"
        raise refused(
            f"refusing election {election!r}: term {max(last, stored)} in {source} cannot be"
            f" followed by another (terms stop at {MAX_TERM}); someone wrote it by hand:"
            " write the last real term there"
        )
    if last and stored and not stored <= last <= stored + 1:
        raise refused(
            f"refusing election {election!r}: its lock file {where} says term {last} but the"
            f" state database says {stored}; one of them was changed (terms must only grow):"
            f" once you know the right one, write it into {where}"
            f" ({stored} or {stored + 1} go on from the database)"
        )
    term = (last or stored) + 1
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


def refused(message: str) -> ConfigError:
    """A ConfigError: lelect.errors is imported once one is raised."""
    from lelect.errors import ConfigError

    return ConfigError(message)


def corrupt(path: str, detail: str) -> ConfigError:
    detail = " ".join(detail.replace("*", "").split())  # SQLite's checks span lines
    return refused(
        f"state database {path} is corrupt ({detail}); move it aside (terms must never"
        " restart, so lelect will not recreate it silently) and start again"
    )


BUSY_TIMEOUT = 10.0


class _Contended(Exception):
    """Another process holds the new database's lock right now."""


def _retrying(what: str, attempt):
    """``attempt()`` until it stops raising _Contended, backing off, for up to the busy
    timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    pause = 0.002
    while True:
        try:
            return attempt()
        except _Contended as exc:
            if time.monotonic() + pause > deadline:
                raise refused(f"{what} stays locked: {exc}") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


class _Creation:
    """The directory's flock, held while a process creates the state database: an empty
    database seen while nobody holds it was not just made, it was emptied."""

    def __init__(self, state: StateDir, exclusive: bool) -> None:
        self.fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=state.fd)
        flag = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH

        def attempt() -> None:
            try:
                fcntl.flock(self.fd, flag | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _Contended("another process is creating it") from None

        try:
            _retrying(f"state database {state.where(DB_NAME)}", attempt)
        except BaseException:
            os.close(self.fd)
            raise

    def __enter__(self) -> _Creation:
        return self

    def __exit__(self, *_) -> None:
        os.close(self.fd)  # lets go of the flock


# -- one process, several connections ---------------------------------------------------
# Closing ANY descriptor of a file drops every POSIX lock this process holds on it,
# SQLite's own included. A connection whose locks are gone looks absent to other
# processes: the last of them to close checkpoints and deletes the WAL, and every commit
# that connection makes afterwards goes to the deleted file (seen: a campaign's
# heartbeats, written and never seen again). So while this process has a connection to
# the database, open_db never opens (and closes) a descriptor of it itself: a further
# connection goes to SQLite directly.

_connected: dict[tuple[int, int], int] = {}
_connected_lock = _thread.allocate_lock()  # not threading: see the module's docstring


class _Tracked(sqlite3.Connection):
    """A connection open_db made: counted in ``_connected`` until it is closed."""

    identity: tuple[int, int] | None = None

    def close(self) -> None:
        identity, self.identity = self.identity, None
        if identity is not None:
            with _connected_lock:
                left = _connected.get(identity, 0) - 1
                if left > 0:
                    _connected[identity] = left
                else:
                    _connected.pop(identity, None)
        super().close()


def _counted(conn: sqlite3.Connection, info: os.stat_result) -> sqlite3.Connection:
    identity = (info.st_dev, info.st_ino)
    if isinstance(conn, _Tracked) and conn.identity is None:
        conn.identity = identity
        with _connected_lock:
            _connected[identity] = _connected.get(identity, 0) + 1
    return conn


def _already_connected(state: StateDir) -> os.stat_result | None:
    """The database file, if this process has a connection to it (checked when that one
    was opened; the same inode, still under its name)."""
    try:
        info = os.stat(DB_NAME, dir_fd=state.fd, follow_symlinks=False)
    except OSError:
        return None
    with _connected_lock:
        known = (info.st_dev, info.st_ino) in _connected
    return info if known and stat.S_ISREG(info.st_mode) and info.st_size else None


def open_db(state: StateDir, *, create: bool = True, check: bool = False
            ) -> sqlite3.Connection | None:
    """Open the state database; refuse a corrupt, emptied or planted one.

    ``create``: a writer, who makes it if it is missing. A reader makes nothing (None:
    there is no database) and opens it read-only if it may not write it. ``check``: run
    SQLite's quick_check too (lelect does before it campaigns, so a corrupt database
    stops it before any job runs).

    Several processes may create it at once: the first to create the file (O_EXCL)
    holds the directory's flock until it has made it a WAL database with its schema;
    the others wait for that flock. The database file is opened by us first, without
    following links, and checked; SQLite must then find that very file."""
    path = state.where(DB_NAME)
    known = _already_connected(state)
    if known is not None:
        writable = create or os.access(DB_NAME, os.W_OK, dir_fd=state.fd)
        return _retrying(f"state database {path}",
                         lambda: _connect(state, known, writable, False, settled=True))
    try:
        fd, writable = _open_db_file(state, create)
        if fd is None and not create:
            return None
        info = None
        if fd is not None:
            try:
                info = os.fstat(fd)
            finally:
                os.close(fd)  # before SQLite opens it: any close drops its POSIX locks
        if info is not None and info.st_size:
            return _retrying(f"state database {path}",
                             lambda: _connect(state, info, writable, check))
        with _Creation(state, exclusive=create):
            if create:
                try:
                    fd = os.open(DB_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS,
                                 state.mode_for(DB_NAME), dir_fd=state.fd)
                except FileExistsError:
                    fd = None
                else:
                    try:
                        os.fchmod(fd, state.mode_for(DB_NAME))
                        info = state.check(fd, DB_NAME)
                    finally:
                        os.close(fd)
                    return _retrying(f"state database {path}",
                                     lambda: _connect(state, info, True, check, new=True))
            fd, writable = _open_db_file(state, create)
            if fd is None:
                return None
            try:
                info = os.fstat(fd)
            finally:
                os.close(fd)
            if not info.st_size:
                raise refused(
                    f"state database {path} is empty (0 bytes): its terms and history are"
                    f" gone; move it aside (mv {path} {path}.empty), check who can write to"
                    f" {state.path}, and start again"
                )
            return _retrying(f"state database {path}",
                             lambda: _connect(state, info, writable, check, settled=True))
    except PermissionError as exc:
        raise refused(f"cannot open state database {path}: {exc.strerror}") from None
    except OSError as exc:
        raise refused(f"cannot open state database {path}: {exc.strerror}") from None


def _open_db_file(state: StateDir, create: bool) -> tuple[int | None, bool]:
    """The database file opened (and checked) by us, or None if it is missing; and
    whether we may write it (a reader of another user's directory may not)."""
    try:
        return state.open(DB_NAME, create=False), True
    except PermissionError:
        if create:
            raise
        return state.open(DB_NAME, create=False, write=False), False


def _connect(state: StateDir, checked: os.stat_result, writable: bool, check: bool,
             new: bool = False, settled: bool = False) -> sqlite3.Connection:
    """SQLite's connection to the database file we ``checked``. ``new``: we just created
    it (and hold the directory's flock); ``settled``: we hold that flock, so nobody is
    creating it."""
    path = state.where(DB_NAME)
    uri = "file:" + path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    try:
        conn = sqlite3.connect(f"{uri}?mode={'rw' if writable else 'ro'}", uri=True, factory=_Tracked,
                               timeout=BUSY_TIMEOUT, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise refused(f"cannot open state database {path}: {exc}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.OperationalError as exc:
            if writable or "readonly" not in str(exc) and "unable to open" not in str(exc):
                raise
            # Nobody has it open, so its WAL is gone, and we may not create the -shm
            # index a read-only WAL reader needs: read the file as it is.
            conn.close()
            conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, factory=_Tracked, isolation_level=None,
                                   check_same_thread=False)
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        _same_file(state, conn, checked)
        if not _TABLES <= tables and not (new or settled):
            with _Creation(state, exclusive=False):  # its creator may be making them now
                tables = {r[0] for r in
                          conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if writable:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            if not _TABLES | _LATER_TABLES <= tables:
                conn.execute("BEGIN IMMEDIATE")
                conn.executescript(_SCHEMA)
                if not conn.execute("SELECT 1 FROM schema").fetchone():
                    conn.execute("INSERT INTO schema(version) VALUES (?)", (SCHEMA_VERSION,))
                if conn.in_transaction:
                    conn.execute("COMMIT")
        elif not _TABLES <= tables:
            raise sqlite3.DatabaseError("it has no lelect tables")
        if check and not new:
            verdict = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
            if verdict != "ok":
                raise sqlite3.DatabaseError(verdict)
    except sqlite3.DatabaseError as exc:
        conn.close()
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            raise _Contended(str(exc)) from None
        raise corrupt(path, str(exc)) from None
    except BaseException:
        conn.close()
        raise
    return _counted(conn, checked)


def _same_file(state: StateDir, conn: sqlite3.Connection, checked: os.stat_result) -> None:
    """SQLite follows a link to the database file (and opens it without following one):
    the file it opened must be the one we checked, still under its own name."""
    opened = conn.execute("PRAGMA database_list").fetchone()[2]
    identity = (checked.st_dev, checked.st_ino)
    try:
        listed = os.stat(opened, follow_symlinks=False)
        named = os.stat(DB_NAME, dir_fd=state.fd, follow_symlinks=False)
    except OSError:
        listed = named = None
    if listed is None or named is None or (listed.st_dev, listed.st_ino) != identity \
            or (named.st_dev, named.st_ino) != identity:
        raise refused(f"refusing state database {state.where(DB_NAME)}: it was replaced"
                          f" while lelect opened it; someone who can write to {state.path}"
                          " did that: check the directory")


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


def handover_note(conn: sqlite3.Connection, election: str) -> tuple[bytes | None, int]:
    """The live handover note beside ``election`` (None: none) and the last term the
    election handed out, read in one statement (one snapshot). The keeper reads them
    under the flock, before it settles a term."""
    from lelect.backends.notes import HANDOVER_KEY

    try:
        row = conn.execute(
            "SELECT (SELECT data FROM notes WHERE election=?1 AND key=?2"
            " AND (expires IS NULL OR expires >= ?3)),"
            " (SELECT term FROM terms WHERE election=?1)",
            (election, HANDOVER_KEY, now()),
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        raise corrupt(_path(conn), str(exc)) from None
    data = row[0] if isinstance(row[0], bytes) else None
    return data, int(row[1] or 0)


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
    handover_spent: bool = False,
) -> None:
    """Record ``term`` (terms only grow), the new leader, and its history entry; close
    an earlier entry still "running" as "vanished"; with ``handover_spent`` (the leader
    is the node a handover named), forget the handover note. Called while holding the
    flock."""
    entry = new_entry(election, term, node_id, host, pid, since)
    with transaction(conn):
        if handover_spent:
            from lelect.backends.notes import HANDOVER_KEY

            conn.execute("DELETE FROM notes WHERE election=? AND key=?", (election, HANDOVER_KEY))
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
            import json

            _write_entry(conn, {**json.loads(older), "outcome": "vanished", "ended": since,
                                 "reason": VANISHED_REASON})
        conn.execute(
            "INSERT OR IGNORE INTO history(election, term, entry, outcome) VALUES (?, ?, ?, ?)",
            (election, term, _dumps(entry), entry["outcome"]),
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
    import json

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


def _dumps(entry: dict) -> str:
    """``json.dumps(entry, separators=(",", ":"))`` without importing json (its decoder
    brings ``re``: ~4 ms of CPU the keeper would spend beside the job it just started):
    :func:`lelect.json_text.compact_json`. What that has no form for goes to json."""
    from lelect.json_text import compact_json

    try:
        return compact_json(entry)
    except (TypeError, ValueError):
        import json

        return json.dumps(entry, separators=(",", ":"))


def _write_entry(conn: sqlite3.Connection, entry: dict) -> None:
    conn.execute(
        "UPDATE history SET entry=?, outcome=? WHERE election=? AND term=?",
        (_dumps(entry), entry["outcome"], entry["election"],
         entry["term"]),
    )


def now() -> float:
    """The file backend's clock: the local wall clock (one host)."""
    return time.time()
