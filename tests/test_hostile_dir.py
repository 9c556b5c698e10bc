"""The embedded backend among hostile neighbours (issue 19 §1, issue 20 bugs 2 and 3).

A member of a shared state directory's group (here: nobody, in group nogroup, by
setpriv) plants links, swaps the resign socket and rewrites terms; root's lelect must
refuse with one line (78) and touch nothing outside the directory. A corrupt, emptied or
absurd state is refused before any job runs. Readers may read another user's directory.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import assert_one_line, lelect_env, run_lelect, spawn_lelect, wait_until

NOBODY = 65534


def as_other(group: int, *command: str) -> list[str]:
    """``command`` run as another local user (nobody) in ``group`` only."""
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={group}", "--clear-groups", "--", *command]


def other_does(group: int, script: str, *args: str) -> None:
    """The other user runs a Python ``script`` (Debian's python, standard library)."""
    out = subprocess.run(as_other(group, "/usr/bin/python3", "-c", script, *args),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.fixture
def victim(shared_dir) -> Path:
    """A file only root may change, outside the shared directory."""
    shared, _, _ = shared_dir
    path = shared.parent / "victim"
    path.write_text("precious\n")
    path.chmod(0o600)
    return path


def untouched(victim: Path) -> bool:
    return victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o600


def marker_job(marker: Path) -> list[str]:
    return ["sh", "-c", f"echo $LELECT_TERM > {marker}"]


def test_a_lock_file_linked_elsewhere_is_refused_and_the_target_untouched(shared_dir, victim):
    shared, group, _ = shared_dir
    other_does(group, "import os, sys; os.symlink(sys.argv[1], sys.argv[2])",
               str(victim), str(shared / "x.lock"))
    marker = shared.parent / "ran"
    out = run_lelect("campaign", "x", "--", *marker_job(marker), backend=f"file://{shared}")
    assert_one_line(out, 78, "x.lock", "symbolic link", "remove it")
    assert untouched(victim) and not marker.exists()


def test_a_dangling_database_link_is_refused_and_nothing_created(shared_dir):
    shared, group, _ = shared_dir
    planted = shared.parent / "planted.db"
    other_does(group, "import os, sys; os.symlink(sys.argv[1], sys.argv[2])",
               str(planted), str(shared / "lelect.db"))
    out = run_lelect("campaign", "x", "--", "true", backend=f"file://{shared}")
    assert_one_line(out, 78, "lelect.db", "symbolic link")
    assert not planted.exists()


#: The other user swaps the election's resign socket for a link to the victim, as fast
#: as it can, until killed.
SWAPPER = """
import os, sys
target, sock = sys.argv[1], sys.argv[2]
spare = os.path.join(os.path.dirname(sock), ".swap")
while True:
    try:
        os.symlink(target, spare)
    except FileExistsError:
        pass
    try:
        os.rename(spare, sock)
    except OSError:
        pass
"""


@pytest.mark.parametrize("mode", [0o2770, 0o3770], ids=["setgid-only", "sticky"])
def test_a_swapped_resign_socket_never_makes_lelect_chmod_another_file(shared_dir, victim, mode):
    """The issue's race: the socket replaced by a link between bind and chmod(path).
    A setgid directory without the sticky bit is refused now; in a sticky one the socket
    only appears, already 0660, by a rename."""
    shared, group, _ = shared_dir
    shared.chmod(mode)
    backend = f"file://{shared}"
    swapper = subprocess.Popen(as_other(group, "/usr/bin/python3", "-c", SWAPPER, str(victim),
                                        str(shared / "sw.sock")))
    try:
        for _ in range(15):
            out = run_lelect("campaign", "sw", "--", "sleep", "0.05", backend=backend)
            if mode == 0o2770:
                assert_one_line(out, 78, "not setgid and sticky", f"chmod 3770 {shared}")
            assert untouched(victim)
    finally:
        swapper.kill()
        swapper.wait(timeout=10)
    assert untouched(victim)


def test_the_group_can_ask_roots_leader_to_resign_in_a_sticky_directory(shared_dir):
    shared, group, src = shared_dir
    backend = f"file://{shared}"
    started = shared.parent / "started"
    leader = spawn_lelect("campaign", "rs", "--", "sh", "-c", f"touch {started}; sleep 30",
                          backend=backend)
    wait_until(started.exists, timeout=20, what="root's job")
    sock = shared / "rs.sock"
    wait_until(sock.exists, timeout=10, what="the resign socket")
    assert stat.S_IMODE(sock.lstat().st_mode) == 0o660 and sock.lstat().st_uid == 0
    out = subprocess.run(as_other(group, sys.executable, "-m", "lelect", "resign", "rs"),
                         capture_output=True, text=True, timeout=60,
                         env={**lelect_env(backend), "PYTHONPATH": str(src)})
    assert out.returncode == 0, out.stderr
    assert leader.wait(timeout=30) == 0  # asked to step down, its job stopped
    assert not sock.exists()


#: The other user rewrites the election's term in the lock file or in the database.
REWRITE_LOCK = "import sys; open(sys.argv[1], 'w').write(sys.argv[2] + '\\n')"
REWRITE_DB = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("UPDATE terms SET term=? WHERE election='t'", (int(sys.argv[2]),))
db.close()
"""


@pytest.mark.parametrize("where", ["lock file", "database"])
def test_a_rewritten_term_is_refused_before_anything_runs(shared_dir, where):
    shared, group, _ = shared_dir
    backend = f"file://{shared}"
    for _ in range(3):
        assert run_lelect("campaign", "t", "--", "true", backend=backend).returncode == 0
    assert (shared / "t.lock").read_text().strip() == "3"
    if where == "lock file":  # back to 1: the next leader would be term 2 again
        other_does(group, REWRITE_LOCK, str(shared / "t.lock"), "1")
    else:  # the database forgets: once the lock file goes too, terms restart
        other_does(group, REWRITE_DB, str(shared / "lelect.db"), "1")
    marker = shared.parent / "ran"
    out = run_lelect("campaign", "t", "--", *marker_job(marker), backend=backend)
    assert_one_line(out, 78, "election 't'", "says term", "terms must only grow")
    assert not marker.exists()


def test_a_term_that_cannot_be_stored_is_refused_before_anything_runs(backend, tmp_path):
    state = Path(backend.removeprefix("file://"))
    assert run_lelect("campaign", "big", "--", "true", backend=backend).returncode == 0
    (state / "big.lock").write_text("9223372036854775807\n")
    marker = tmp_path / "ran"
    out = run_lelect("campaign", "big", "--", *marker_job(marker), backend=backend)
    assert_one_line(out, 78, "term 9223372036854775807", "cannot be followed")
    assert not marker.exists()


def test_the_state_files_are_private_in_a_private_directory(backend):
    state = Path(backend.removeprefix("file://"))
    old = os.umask(0o022)
    try:
        assert run_lelect("campaign", "p", "--", "true", backend=backend).returncode == 0
    finally:
        os.umask(old)
    for name in ("lelect.db", "p.lock"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name


def test_the_state_files_are_the_groups_in_a_shared_directory(shared_dir):
    shared, group, _ = shared_dir
    assert run_lelect("campaign", "g", "--", "true", backend=f"file://{shared}").returncode == 0
    for name in ("lelect.db", "g.lock"):
        info = (shared / name).stat()
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == group, name


def test_another_user_reads_roots_open_directory(shared_dir):
    """`leader`, `history`, `watch` and `health` of root's 0755 directory work for another
    user, while a job runs (the WAL is open) and after (it is gone)."""
    shared, group, src = shared_dir
    open_dir = shared.parent / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    backend = f"file://{open_dir}"
    env = {**lelect_env(backend), "PYTHONPATH": str(src)}

    def other(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(as_other(group, sys.executable, "-m", "lelect", *args),
                              capture_output=True, text=True, timeout=60, env=env)

    started = shared.parent / "started"
    leader = spawn_lelect("campaign", "o", "--id", "root-job", "--", "sh", "-c",
                          f"touch {started}; sleep 30", backend=backend)
    wait_until(started.exists, timeout=20, what="root's job")
    wait_until(lambda: run_lelect("leader", "o", backend=backend).returncode == 0, timeout=10,
               what="the leader record")
    shown = other("leader", "o")
    assert shown.returncode == 0 and "root-job" in shown.stdout, shown.stderr
    for args in (("history", "o"), ("watch", "o", "--once"), ("health", "o")):
        out = other(*args)
        assert out.returncode in (0, 1) and "Traceback" not in out.stderr, (args, out.stderr)
        assert "root-job" in out.stdout, (args, out.stdout)
    leader.terminate()
    leader.wait(timeout=30)
    wait_until(lambda: not (open_dir / "lelect.db-wal").exists(), timeout=10,
               what="the last writer to close the database")
    after = other("history", "o")
    assert after.returncode == 0 and "root-job" in after.stdout, after.stderr
    assert other("leader", "o").returncode == 1  # nobody leads: read, not refused
    assert stat.S_IMODE((open_dir / "lelect.db").stat().st_mode) == 0o644


def _corrupt(db: Path) -> None:
    """Random bytes after the first page (the header and the schema still read well)."""
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    data = bytearray(db.read_bytes())
    assert len(data) > 4096
    data[4096:] = os.urandom(len(data) - 4096)
    db.write_bytes(bytes(data))


def _empty(db: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"")


@pytest.mark.parametrize("damage", [_corrupt, _empty], ids=["random-bytes", "zero-bytes"])
def test_a_damaged_database_is_refused_before_any_job_runs(backend, tmp_path, damage):
    state = Path(backend.removeprefix("file://"))
    for _ in range(3):
        assert run_lelect("campaign", "d", "--", "true", backend=backend).returncode == 0
    db = state / "lelect.db"
    damage(db)
    before = db.read_bytes()
    marker = tmp_path / "ran"
    out = run_lelect("campaign", "d", "--", *marker_job(marker), backend=backend)
    assert_one_line(out, 78, "lelect.db", "move it aside")
    assert not marker.exists()
    for reader in (("leader", "d"), ("history", "d")):
        assert_one_line(run_lelect(*reader, backend=backend), 78, "lelect.db", "move it aside")
    assert db.read_bytes() == before  # never recreated


def test_a_database_made_by_several_processes_at_once_is_not_taken_for_emptied(tmp_path):
    """The first process to create the database holds the directory's flock until it is
    a database; the others (and readers) wait for it instead of refusing an empty file."""
    backend = f"file://{tmp_path / 'fresh'}"
    procs = [spawn_lelect("campaign", f"e{i}", "--", "true", backend=backend) for i in range(8)]
    readers = [spawn_lelect("history", "e0", backend=backend) for _ in range(4)]
    for proc in procs + readers:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    conn = sqlite3.connect(tmp_path / "fresh" / "lelect.db")
    assert conn.execute("SELECT count(*) FROM terms").fetchone()[0] == 8
