"""`lelect campaign` on the embedded backend, with real lelect processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests.helpers import (
    LELECT,
    assert_one_line,
    blocked_on_flock,
    leader_json,
    lelect_env,
    pid_alive,
    run_lelect,
    spawn_lelect,
    wait_until,
)


def lock_of(backend: str, name: str) -> Path:
    return Path(backend.removeprefix("file://")) / f"{name}.lock"


def test_stop_while_lelect_awaits_the_keepers_news_still_gives_the_grace(backend, tmp_path):
    """SIGTERM to lelect after the keeper started the job but before it told lelect
    (the leader record is held up by a busy database): the job still gets the stop
    signal and SIGKILL only after --grace."""
    state = Path(backend.removeprefix("file://"))
    assert run_lelect("campaign", "slow", "--", "true", backend=backend).returncode == 0
    db = sqlite3.connect(state / "lelect.db", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    started, pids = tmp_path / "started", tmp_path / "pids"
    proc = spawn_lelect(
        "campaign", "slow", "--heartbeat-interval", "0", "--grace", "0.5s", "--", "sh", "-c",
        f"trap 'echo TERM >> {started}' TERM; echo $$ > {pids}; touch {started};"
        " while :; do sleep 0.05; done",
        backend=backend,
    )
    wait_until(lambda: started.exists() and pids.exists() and pids.read_text().strip(),
               what="job started")
    job = int(pids.read_text())
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM  # lelect ends by the signal it got
    assert 0.4 < time.monotonic() - sent < 5
    assert "TERM" in started.read_text()
    assert not pid_alive(job)
    db.close()


def test_sigint_while_waiting_exits_and_leaves_nothing_behind(backend, tmp_path):
    started = tmp_path / "started"
    leader = spawn_lelect("campaign", "wait", "--", "sh", "-c", f"touch {started}; sleep 30", backend=backend)
    wait_until(started.exists, what="leader's job")
    waiter = spawn_lelect("campaign", "wait", "--", "true", backend=backend)
    wait_until(lambda: blocked_on_flock(lock_of(backend, "wait")), what="the waiter to queue")
    waiter.send_signal(signal.SIGINT)
    assert waiter.wait(timeout=10) == -signal.SIGINT
    leader.terminate()
    leader.wait(timeout=10)
    assert run_lelect("campaign", "wait", "--no-wait", "--", "true", backend=backend).returncode == 0


def test_interactive_job_reads_the_terminal(backend):
    child = pexpect.spawn(
        LELECT[0], [*LELECT[1:], "campaign", "tty", "--", "sh", "-c", 'read line; echo "got $line"'],
        env=lelect_env(backend), timeout=15,
    )
    child.expect("elected leader")
    child.sendline("hello")
    child.expect("got hello")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


# -- bad input: one clear line, the documented status, no traceback -----------------


@pytest.mark.parametrize("name", ["a/b", "..", ".", "-x", "", "x" * 200, "_private"])
def test_bad_election_names_are_refused(backend, name):
    # After "--" even "-x" is taken as the name (as a user would have to write it).
    assert_one_line(run_lelect("campaign", "--", name, "true", backend=backend), 2, "election name")
    assert_one_line(run_lelect("leader", "--", name, backend=backend), 2, "election name")


@pytest.mark.parametrize(
    "url, words",
    [
        ("foo://x", ["unknown backend scheme"]),
        ("nonsense", ["malformed backend URL"]),
        ("redis://host:99999/0", ["bad port"]),
        ("file://somehost/x", ["local directory"]),
    ],
)
def test_bad_urls_are_refused(url, words):
    assert_one_line(run_lelect("leader", "x", backend=url), 2, *words)


def test_bad_duration_missing_command_and_unknown_command(backend):
    assert_one_line(run_lelect("campaign", "x", "--timeout", "3x", "--", "true", backend=backend), 2,
                    "--timeout", "500ms")
    assert_one_line(run_lelect("campaign", "x", backend=backend), 2, "missing the command")
    assert_one_line(run_lelect("campaign", "x", "--", "no-such-command-xyz", backend=backend), 127, "not found")
    assert_one_line(run_lelect("campaign", "x", "--", "/etc/passwd", backend=backend), 127, "not executable")


@pytest.fixture
def readonly_dir(tmp_path):
    """A directory we own on a read-only bind mount (unwritable even for root)."""
    source = tmp_path / "source"
    (source / "state").mkdir(parents=True, mode=0o700)
    target = tmp_path / "ro"
    target.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(target)], check=True)
    yield target
    subprocess.run(["umount", str(target)], check=True)


def test_unsafe_directories_are_refused(tmp_path, readonly_dir):
    campaign = ("campaign", "x", "--", "true")
    group_writable = tmp_path / "gw"
    group_writable.mkdir(mode=0o700)
    group_writable.chmod(0o770)
    assert_one_line(run_lelect("leader", "x", backend=f"file://{group_writable}"), 78,
                    "group writable", "setgid", f"chmod 3770 {group_writable}")
    group_writable.chmod(0o2770)  # setgid without the sticky bit: members could swap files
    for args in (campaign, ("leader", "x")):
        assert_one_line(run_lelect(*args, backend=f"file://{group_writable}"), 78,
                        "not setgid and sticky", f"chmod 3770 {group_writable}")
    world = tmp_path / "world"
    world.mkdir(mode=0o700)
    world.chmod(0o2777)
    assert_one_line(run_lelect("leader", "x", backend=f"file://{world}"), 78, "world writable")

    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, os.geteuid() + 1, os.getegid())
    assert_one_line(run_lelect(*campaign, backend=f"file://{foreign}"), 78, "owned by")
    assert run_lelect("leader", "x", backend=f"file://{foreign}").returncode == 1  # a reader

    assert_one_line(run_lelect(*campaign, backend=f"file://{readonly_dir}/state"), 78,
                    "not writable")
    assert_one_line(run_lelect(*campaign, backend=f"file://{readonly_dir}/new"), 78, "cannot create")
    (tmp_path / "afile").write_text("")
    assert_one_line(run_lelect(*campaign, backend=f"file://{tmp_path}/afile/sub"), 78, "cannot create")


def test_corrupt_database_is_refused_never_recreated(tmp_path):
    state = tmp_path / "state"
    backend = f"file://{state}"
    assert run_lelect("campaign", "c", "--", "true", backend=backend).returncode == 0
    db = state / "lelect.db"
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    assert_one_line(run_lelect("campaign", "c", "--", "true", backend=backend), 78, "corrupt", "move it aside")
    assert_one_line(run_lelect("leader", "c", backend=backend), 78, "corrupt")
    assert db.read_bytes().startswith(b"this is not a database")


def test_terms_survive_a_deleted_database(tmp_path):
    state = tmp_path / "state"
    backend = f"file://{state}"
    first = run_lelect("campaign", "d", "--", "sh", "-c", "echo $LELECT_TERM", backend=backend)
    for path in state.glob("lelect.db*"):
        path.unlink()
    second = run_lelect("campaign", "d", "--", "sh", "-c", "echo $LELECT_TERM", backend=backend)
    assert int(second.stdout) > int(first.stdout)


def test_concurrent_first_start_creates_the_database_once(tmp_path):
    backend = f"file://{tmp_path / 'fresh'}"
    procs = [
        subprocess.Popen([*LELECT, "campaign", f"e{i}", "--", "true"], env=lelect_env(backend),
                         stderr=subprocess.PIPE, text=True)
        for i in range(6)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    conn = sqlite3.connect(tmp_path / "fresh" / "lelect.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT count(*) FROM terms").fetchone()[0] == 6


def test_lock_fd_does_not_leak_into_the_job(backend, tmp_path):
    out = run_lelect("campaign", "fds", "--", "sh", "-c", "ls -l /proc/$$/fd", backend=backend)
    assert out.returncode == 0
    assert ".lock" not in out.stdout and "lelect.db" not in out.stdout


def test_help_imports_no_backend_client():
    code = (
        "import sys; from lelect.cli import cli; import lelect.backends.file.backend;"
        "bad = [m for m in ('redis', 'kazoo', 'rich', 'psutil') if m in sys.modules];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("db_busy", [False, True], ids=["db-free", "db-busy"])
def test_keeper_killed_takes_the_job_with_it(backend, tmp_path, db_busy):
    """SIGKILL of the keeper while the job runs: the job and its child die, and the
    election is free again. With the state database busy, the keeper has started the
    job but not yet told lelect (it tells once the leader record is written), so only
    the kernel (PR_SET_PDEATHSIG) and lelect's subreaper can catch them."""
    state = Path(backend.removeprefix("file://"))
    assert run_lelect("campaign", "kk", "--", "true", backend=backend).returncode == 0
    db = sqlite3.connect(state / "lelect.db", isolation_level=None)
    if db_busy:
        db.execute("BEGIN IMMEDIATE")
    pids = tmp_path / "pids"
    proc = spawn_lelect(
        "campaign", "kk", "--heartbeat-interval", "0", "--",
        "sh", "-c", f"sleep 60 & echo $$ $! > {pids}; wait",
        backend=backend,
    )
    wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, what="job started")
    job, grandchild = (int(p) for p in pids.read_text().split())
    keeper = int(open(f"/proc/{job}/stat").read().rsplit(")", 1)[1].split()[1])
    os.kill(keeper, signal.SIGKILL)
    assert proc.wait(timeout=10) == 73
    wait_until(lambda: not pid_alive(job) and not pid_alive(grandchild), timeout=5,
               what="job and its child gone")
    db.close()
    out = run_lelect("campaign", "kk", "--no-wait", "--", "true", backend=backend)
    assert out.returncode == 0, out.stderr


def test_job_dies_with_its_keeper_even_when_lelect_dies_too(backend, tmp_path):
    """SIGKILL of lelect and its keeper together: the kernel kills the job
    (PR_SET_PDEATHSIG), and the election is free."""
    pids = tmp_path / "pids"
    proc = spawn_lelect("campaign", "both", "--", "sh", "-c", f"echo $$ > {pids}; exec sleep 60",
                        backend=backend)
    wait_until(lambda: pids.exists() and pids.read_text().strip(), what="job started")
    job = int(pids.read_text())
    keeper = int(open(f"/proc/{job}/stat").read().rsplit(")", 1)[1].split()[1])
    os.kill(proc.pid, signal.SIGKILL)
    os.kill(keeper, signal.SIGKILL)
    proc.wait(timeout=10)
    wait_until(lambda: not pid_alive(job), timeout=5, what="the job to die with its keeper")
    out = run_lelect("campaign", "both", "--no-wait", "--", "true", backend=backend)
    assert out.returncode == 0, out.stderr


def test_a_waiting_candidate_is_lelect_and_its_keeper_and_imports_no_other_commands(
        backend, tmp_path):
    """While it waits, a candidate is two processes: lelect and its keeper (the job is
    forked only when the keeper wins); lelect has imported nothing that only other
    commands (or other backends) need: not even click (lelect.cli.quick reads its options)."""
    release = tmp_path / "release"
    leader = spawn_lelect("campaign", "lean", "--", "sh", "-c",
                          f"while [ ! -e {release} ]; do sleep 0.02; done", backend=backend)
    wait_until(lambda: leader_json(backend, "lean"), what="the leader")
    trace = tmp_path / "imports"
    with open(trace, "w") as stderr:
        waiter = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "lelect",
                                   "campaign", "lean", "--", "true"],
                                  env=lelect_env(backend), stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_until(lambda: blocked_on_flock(lock_of(backend, "lean")), what="the waiter in line")
        (keeper,) = [int(pid) for pid in
                     Path(f"/proc/{waiter.pid}/task/{waiter.pid}/children").read_text().split()]
        assert Path(f"/proc/{keeper}/task/{keeper}/children").read_text().split() == []

        def imported() -> set[str]:
            return {line.rsplit("|", 1)[-1].strip() for line in trace.read_text().splitlines()
                    if line.startswith("import time:")}

        # Heartbeats (on by default) are published from the first beat on: its figures too.
        wait_until(lambda: "lelect.hostload" in imported(), what="the first heartbeat")
        assert "lelect.campaign" in imported()
        assert not imported() & {"rich", "shutil", "lelect.exporter", "lelect.httpserve",
                                 "lelect.cli.render", "lelect.cli.watch", "lelect.cli.history",
                                 "lelect.sim", "redis", "kazoo", "psycopg", "ssl",
                                 "lelect.health", "psutil", "statistics", "click"}, imported()
    finally:
        waiter.kill()
        waiter.wait(timeout=10)
    release.touch()
    assert leader.wait(timeout=30) == 0


def test_a_waiting_candidate_imports_neither_dataclasses_nor_typing_nor_json(backend, tmp_path):
    """The start of a waiting candidate (heartbeats off) makes its records without
    dataclasses (inspect, ast: ~25 ms of CPU per start with the classes it defined),
    and needs neither typing nor json nor datetime nor urllib.parse: 200 candidates on
    one host start within seconds."""
    release = tmp_path / "release"
    leader = spawn_lelect("campaign", "light", "--", "sh", "-c",
                          f"while [ ! -e {release} ]; do sleep 0.02; done", backend=backend)
    wait_until(lambda: leader_json(backend, "light"), what="the leader")
    trace = tmp_path / "imports"
    with open(trace, "w") as stderr:
        waiter = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "lelect",
                                   "campaign", "light", "--heartbeat-interval", "0", "--", "true"],
                                  env=lelect_env(backend), stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_until(lambda: blocked_on_flock(lock_of(backend, "light")), what="the waiter in line")
        wait_until(lambda: "waiting for" in trace.read_text(), what="the waiting line")
        imported = {line.rsplit("|", 1)[-1].strip() for line in trace.read_text().splitlines()
                    if line.startswith("import time:")}
        assert "lelect.campaign" in imported
        assert not imported & {"dataclasses", "inspect", "ast", "typing", "json", "datetime",
                               "sqlite3", "urllib.parse", "ipaddress"}, imported
    finally:
        waiter.kill()
        waiter.wait(timeout=10)
    release.touch()
    assert leader.wait(timeout=30) == 0


def test_a_waiting_keeper_leaves_the_line_when_lelect_is_killed(backend, tmp_path):
    """lelect killed (SIGKILL) while its keeper waits on the flock: the kernel wakes the
    keeper (its control socket reaches EOF), which leaves at once, and the dead
    candidate's job never runs when the election is freed."""
    release, ran = tmp_path / "release", tmp_path / "ran"
    leader = spawn_lelect("campaign", "gone", "--", "sh", "-c",
                          f"while [ ! -e {release} ]; do sleep 0.02; done", backend=backend)
    wait_until(lambda: leader_json(backend, "gone"), what="the leader")
    waiter = spawn_lelect("campaign", "gone", "--", "touch", str(ran), backend=backend)
    wait_until(lambda: blocked_on_flock(lock_of(backend, "gone")), what="the waiter in line")
    (keeper,) = [int(pid) for pid in
                 Path(f"/proc/{waiter.pid}/task/{waiter.pid}/children").read_text().split()]
    os.kill(waiter.pid, signal.SIGKILL)
    waiter.wait(timeout=10)
    wait_until(lambda: not pid_alive(keeper), timeout=2, what="the keeper to leave the line")
    assert not blocked_on_flock(lock_of(backend, "gone"))
    release.touch()
    assert leader.wait(timeout=30) == 0
    assert not ran.exists()


def started_job(keeper) -> int:
    from lelect import keeper_protocol as proto

    started = keeper.events.get(timeout=10)
    assert isinstance(started, proto.Started), started
    return started.pid


def test_killing_a_keeper_handle_never_orphans_its_job():
    from lelect.supervisor import KeeperConfig, KeeperHandle

    keeper = KeeperHandle(KeeperConfig(command=("sh", "-c", "sleep 60 & exec sleep 60")))
    keeper.spawn()
    keeper.start(1)
    job = started_job(keeper)
    keeper.kill()
    wait_until(lambda: not pid_alive(job), timeout=2, what="the job to die with its keeper")


def test_a_job_dies_with_its_keeper_in_a_library_process_too():
    """No subreaper here (the library leaves its host process alone): SIGKILL of the
    keeper still takes the job, by the kernel's PR_SET_PDEATHSIG."""
    from lelect.supervisor import KeeperConfig, KeeperHandle

    keeper = KeeperHandle(KeeperConfig(command=("sleep", "60")))
    keeper.spawn()
    keeper.start(1)
    job = started_job(keeper)
    keeper.process.kill()
    wait_until(lambda: not pid_alive(job), timeout=5, what="the job to die with its keeper")
    keeper.close()


def test_exec_failure_after_winning_is_127_and_frees_the_election(backend, tmp_path):
    broken = tmp_path / "broken"
    broken.write_bytes(b"\x7fELF not really")
    broken.chmod(0o755)
    out = run_lelect("campaign", "bad", "--", str(broken), backend=backend)
    assert out.returncode == 127
    assert "Exec format error" in out.stderr and "Traceback" not in out.stderr
    assert run_lelect("campaign", "bad", "--no-wait", "--", "true", backend=backend).returncode == 0


def _open_state(directory: str, start, results) -> None:
    from lelect.backends.file import state as filestate

    start.wait()
    try:
        filestate.open_db(filestate.open_state_dir(directory)).close()
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(repr(exc))


def test_processes_opening_a_new_database_together_all_succeed(tmp_path):
    """Switching a new database to WAL fails at once with "database is locked" for
    one of two processes that both read it first (SQLite will not wait into a
    deadlock); open_db backs off and retries instead of failing."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")  # forks from a process without threads
    failures = []
    for i in range(40):
        directory = tmp_path / str(i)
        directory.mkdir()
        start, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_state, args=(str(directory), start, results))
                 for _ in range(4)]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=30) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        failures += [o for o in outcomes if o != "ok"]
    assert failures == []


def test_backend_option_works_after_the_command_name_too(backend, tmp_path):
    """`lelect campaign NAME -b URL -- CMD` and `lelect leader NAME -b URL`: the option
    a user types after the command means what the global one means, and wins over
    LELECT_BACKEND."""
    elsewhere = f"file://{tmp_path / 'elsewhere'}"
    out = run_lelect("campaign", "here", "-b", backend, "--", "sh", "-c", "echo $LELECT_BACKEND",
                     backend=elsewhere)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == backend
    shown = run_lelect("leader", "here", "--backend", backend, "--json", backend=elsewhere)
    assert shown.returncode == 1 and '"leader": null' in shown.stdout
    assert not (tmp_path / "elsewhere" / "here.lock").exists()
    assert (Path(backend.removeprefix("file://")) / "here.lock").exists()


def test_a_flood_of_signals_never_deadlocks_the_campaign(backend, tmp_path):
    """Forwarded signals are queued by a signal handler while the main loop may be inside
    the queue's get: a queue whose put takes a lock the interrupted get holds hung lelect
    (seen as a SIGTERM that never ended a campaign). A flood makes that window likely;
    after it, SIGTERM still stops the job and lelect."""
    for round_number in range(3):
        started = tmp_path / f"started-{round_number}"
        proc = spawn_lelect("campaign", "flood", "--", "sh", "-c",
                            f"trap '' USR1; touch {started}; while :; do sleep 0.05; done",
                            backend=backend)  # fmt: skip
        wait_until(started.exists, timeout=30, what="the job")
        for sent in range(20_000):
            os.kill(proc.pid, signal.SIGUSR1)
            if sent % 200 == 0:
                time.sleep(0.0005)  # let the loop take some: its get is where it hung
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"round {round_number}: SIGTERM did not end lelect") from None
        assert proc.returncode == -signal.SIGTERM, (proc.returncode, err[-2000:])
        assert "Traceback" not in err


def test_once_per_counts_one_success_per_slot_and_seat(backend, tmp_path):
    """--holders 2 --once-key K: each seat runs the job once for K; a third run of
    either seat finds it done."""
    runs, hold = tmp_path / "runs", tmp_path / "hold"
    once = ("--holders", "2", "--once-key", "k1", "--")
    first = spawn_lelect("campaign", "shifts", *once, "sh", "-c",
                         f'echo "$LELECT_SEAT" >> {runs}; while [ ! -e {hold} ]; do sleep 0.02; done',
                         backend=backend)
    wait_until(runs.exists, what="the first seat's job")
    second = run_lelect("campaign", "shifts", *once, "sh", "-c", f'echo "$LELECT_SEAT" >> {runs}',
                        backend=backend)
    assert second.returncode == 0, second.stderr
    third = run_lelect("campaign", "shifts", *once, "sh", "-c", f'echo "$LELECT_SEAT" >> {runs}',
                       backend=backend)
    assert third.returncode == 0 and "already succeeded" in third.stderr, third.stderr
    hold.touch()
    assert first.wait(timeout=30) == 0
    assert sorted(runs.read_text().split()) == ["0", "1"]
    again = run_lelect("campaign", "shifts", *once, "sh", "-c", f'echo "$LELECT_SEAT" >> {runs}',
                       backend=backend)
    assert again.returncode == 0 and "already succeeded" in again.stderr, again.stderr
    assert sorted(runs.read_text().split()) == ["0", "1"]


def test_a_second_connection_in_one_process_never_loses_the_first_ones_commits(backend):
    """Closing any descriptor of the database drops every POSIX lock the process holds
    on it, SQLite's own included: a second connection (observe(), a second client) that
    opened and closed one made the first look absent, the next process to close deleted
    the WAL, and the first one's later commits went to the deleted file."""
    import lelect
    from lelect.backends.file.backend import FileBackend
    from lelect.backends.records import Heartbeat

    def beat(seq: int) -> Heartbeat:
        return Heartbeat("e", "n", "h", 1, "follower", None, seq, time.time())

    def seen() -> int:
        with lelect.connect(backend, create=False) as other:  # another process's view
            out = subprocess.run(
                [sys.executable, "-c", "import sqlite3, sys, json;"
                 " c = sqlite3.connect(sys.argv[1]);"
                 " print(json.loads(c.execute('select data from members').fetchone()[0])"
                 "['heartbeat']['seq'])", str(Path(other.backend.directory) / "lelect.db")],
                capture_output=True, text=True, check=True)
        return int(out.stdout)

    with lelect.connect(backend) as first:
        first.backend.publish(beat(1), 60)
        second = FileBackend(first.backend.url)
        assert seen() == 1  # that process opened and closed the database
        first.backend.publish(beat(2), 60)
        assert seen() == 2
        second.close()
        first.backend.publish(beat(3), 60)
        assert seen() == 3
