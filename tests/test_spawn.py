"""The keeper's three ways to start a job: lelect's vfork spawn (lelect/libspawn.so, built
from lelect/_spawn.c when lelect is installed), the process the same library forks for
the next in line to wait at lelect's gate ("gated": lelect itself lets it run), and the
Python fork the keeper falls back to (LELECT_SPAWN=fork here). Each must hand the job the
same process: its own group, the kernel's PR_SET_PDEATHSIG, default signal dispositions,
no signal blocked, no descriptor but 0-2, exactly the environment it was given (its
LELECT_TERM replaced, never doubled), and the same answers when it cannot run."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest

from lelect import _keeper
from lelect import keeper_protocol as proto
from lelect.supervisor import KeeperConfig, KeeperHandle
from tests.helpers import pid_alive, wait_until, written_line

MODES = ["vfork", "gated", "fork"]


def test_the_vfork_spawn_is_built_and_loads_here():
    """This checkout was installed with a C compiler (tests/run.sh): without the
    library every job would be forked in Python, silently slower."""
    here = Path(_keeper.__file__).parent
    assert (here / _keeper.SPAWN_LIBRARY).exists()
    assert os.access(here / _keeper.GATE_PROGRAM, os.X_OK)
    saved = _keeper.SPAWN, _keeper.SPAWN_GATE
    try:
        assert _keeper.load_spawn()
        assert _keeper.SPAWN_GATE is not None
    finally:
        _keeper.SPAWN, _keeper.SPAWN_GATE = saved


def keeper(mode: str, command: tuple[str, ...], env: dict[str, str] | None = None,
           program: str | None = None) -> KeeperHandle:
    env = dict(os.environ if env is None else env)
    env.pop("LELECT_SPAWN", None)
    if mode == "fork":
        env["LELECT_SPAWN"] = "fork"
    handle = KeeperHandle(KeeperConfig(command=command, program=program), env)
    handle.spawn()
    if mode == "gated":
        handle.prepare()  # next in line: the keeper forks the job's process to wait
        handle.gated_pid = gated_child(handle)
    return handle


def gated_child(handle: KeeperHandle) -> int:
    """The pid of the job's process waiting at the keeper's gate (its only child)."""
    def child():
        kids = psutil.Process(handle.process.pid).children()
        return kids[0].pid if kids else None

    return wait_until(child, timeout=10, what="the keeper to fork the job's process")


def first_event(handle: KeeperHandle):
    return handle.events.get(timeout=10)


def status_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


@pytest.mark.parametrize("mode", MODES)
def test_the_job_gets_a_clean_process_of_its_own(mode):
    # LELECT_TERM from outside (lelect run by a job of another lelect) is replaced.
    env = dict(os.environ, **{"odd.name": "kept", "EMPTY": "", "LELECT_TERM": "99"})
    handle = keeper(mode, ("sleep", "60"), env, program=shutil.which("sleep"))
    try:
        handle.start(7)
        started = first_event(handle)
        assert isinstance(started, proto.Started), started
        job = started.pid
        if mode == "gated":
            assert job == handle.gated_pid  # the process forked early runs the job
        wait_until(lambda: status_of(job).get("Name") == "sleep", what="the job's exec")
        status = status_of(job)
        assert int(status["PPid"]) == handle.process.pid and os.getpgid(job) == job
        assert int(status["SigIgn"], 16) == 0 and int(status["SigBlk"], 16) == 0, status
        # Only 0-2 (sleep's loader opens its libraries for a moment after the exec).
        wait_until(lambda: sorted(os.listdir(f"/proc/{job}/fd")) == ["0", "1", "2"],
                   timeout=5, what=lambda: f"fds 0-2 only: {os.listdir(f'/proc/{job}/fd')}")
        def environ() -> set[bytes]:
            with open(f"/proc/{job}/environ", "rb") as f:
                return set(f.read().split(b"\0"))

        # Read once the exec has laid out the new environment (empty for a moment after
        # the new name shows).
        given = wait_until(lambda: environ() - {b""}, timeout=5, what="the job's environment")
        assert {b"odd.name=kept", b"EMPTY=", b"LELECT_TERM=7"} <= given
        assert b"LELECT_TERM=99" not in given
        assert b"LELECT_SPAWN=fork" not in given or mode == "fork"
        # The kernel kills the job when its keeper dies, even by SIGKILL.
        os.kill(handle.process.pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(job), timeout=5, what="the job to die with its keeper")
    finally:
        handle.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_program_is_found_on_the_jobs_path_and_keeps_its_argv0(mode, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "shadow").mkdir()
    (tmp_path / "shadow" / "probe").write_text("#!/bin/sh\necho wrong\n")  # not executable
    probe = bin_dir / "probe"
    out = tmp_path / "argv0"
    probe.write_text(f'#!/bin/sh\necho "$0" > {out}\n')
    probe.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path / 'missing'}:{tmp_path / 'shadow'}:{bin_dir}")
    handle = keeper(mode, ("probe",), env)
    try:
        handle.start(1)
        assert isinstance(first_event(handle), proto.Started)
        assert written_line(out, what="the probe's $0").strip() == str(probe)
    finally:
        handle.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_text_without_a_hash_bang_runs_under_sh(mode, tmp_path):
    script, out = tmp_path / "plain", tmp_path / "ran"
    script.write_text(f"echo ran $1 > {out}\n")
    script.chmod(0o755)
    handle = keeper(mode, (str(script), "arg"), program=str(script))
    try:
        handle.start(1)
        assert isinstance(first_event(handle), proto.Started)
        assert written_line(out, what="the script's line").strip() == "ran arg"
    finally:
        handle.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case, reason", [
    ("missing", "No such file or directory"),
    ("not executable", "Permission denied"),
    ("garbage binary", "Exec format error"),
    ("not on PATH", "No such file or directory"),
])
def test_a_job_that_cannot_run_is_one_clear_failure(mode, case, reason, tmp_path):
    target = tmp_path / "target"
    program: str | None = str(target)
    command: tuple[str, ...] = (str(target),)
    if case == "not executable":
        target.write_text("#!/bin/sh\ntrue\n")
    elif case == "garbage binary":
        target.write_bytes(b"\x00\x01binary\x00" * 8)
        target.chmod(0o755)
    elif case == "not on PATH":
        program, command = None, ("lelect-no-such-program",)
    handle = keeper(mode, command, program=program)
    try:
        handle.start(1)
        failed = first_event(handle)
        assert isinstance(failed, proto.ExecFailed), failed
        assert failed.message == f"{command[0]}: {reason}"
    finally:
        handle.close()


# -- the gate: what the process waiting at it does when lelect's word is late or never comes


def test_a_gated_job_told_after_its_lease_could_run_out_never_runs(tmp_path):
    """The lease's deadline less its grace had passed when lelect opened the gate (it
    stalled between its renew and the start): the process exits unrun, and the keeper
    says so as it would have for its own spawn."""
    ran = tmp_path / "ran"
    handle = keeper("gated", ("touch", str(ran)))
    try:
        handle.lease(time.monotonic() + 5, grace=10, hold=True)  # stop at: 5 s ago
        handle.start(3)
        exited = first_event(handle)
        assert exited == proto.Exited(0, "unstarted"), exited
        assert not ran.exists()
        wait_until(lambda: not pid_alive(handle.gated_pid), timeout=5, what="the process to go")
    finally:
        handle.close()


def test_a_gate_that_never_opens_runs_nothing_and_the_process_goes_at_the_lease_end(tmp_path):
    """The keeper has the start but the gate never opened: the keeper waits no longer
    than the lease, kills the waiting process and reports the job unstarted; a word
    that comes later finds nobody to run."""
    ran = tmp_path / "ran"
    handle = keeper("gated", ("touch", str(ran)))
    gate = handle._gate
    handle._gate = None  # held back: start() opens nothing
    try:
        handle.lease(time.monotonic() + 1.0, grace=0.5, hold=True)
        handle.start(3)
        exited = handle.events.get(timeout=30)
        assert exited == proto.Exited(0, "unstarted"), exited
        assert not pid_alive(handle.gated_pid)
        try:
            os.write(gate, _keeper.gate_word(None, None, 3))
        except BrokenPipeError:
            pass  # nobody reads the gate any more
        assert not ran.exists()
    finally:
        os.close(gate)
        handle.close()


def test_a_gated_job_that_ends_before_the_keeper_reads_its_start_ran_once(tmp_path):
    """The job ran and exited while its keeper was stopped: the keeper, continued, reaps
    it as the early process, then reads the start: the job's status, and no second run."""
    runs = tmp_path / "runs"
    handle = keeper("gated", ("sh", "-c", f"echo ran >> {runs}; exit 3"))
    try:
        os.kill(handle.process.pid, signal.SIGSTOP)
        try:
            handle.start(4)
            written_line(runs, what="the job's run")
            wait_until(lambda: psutil.Process(handle.gated_pid).status() == psutil.STATUS_ZOMBIE,
                       timeout=10, what="the job to end")
        finally:
            os.kill(handle.process.pid, signal.SIGCONT)
        started = first_event(handle)
        assert started == proto.Started(handle.gated_pid), started
        assert first_event(handle) == proto.Exited(3, "exit")
        assert runs.read_text() == "ran\n"
    finally:
        handle.close()


def test_a_gated_process_dropped_before_the_win_leaves_the_start_to_the_keeper(tmp_path):
    """No longer next in line (Unprepare): the waiting process is killed unrun; a later
    win is started by the keeper's own spawn (the gate went with that process)."""
    runs = tmp_path / "runs"
    handle = keeper("gated", ("sh", "-c", f"echo $$ >> {runs}"))
    try:
        early = handle.gated_pid
        handle.prepare(False)
        wait_until(lambda: not pid_alive(early), timeout=10, what="the early process to go")
        handle.start(5)
        started = first_event(handle)
        assert isinstance(started, proto.Started) and started.pid != early, started
        assert written_line(runs, what="the job's run").strip() == str(started.pid)
    finally:
        handle.close()


def test_the_dead_man_switch_has_the_lease_from_the_gated_job_itself(tmp_path):
    """lelect opens the gate before it tells its keeper the start (the job's exec waits
    on no wake-up of the keeper): the process at the gate gives the keeper the lease
    before it execs. lelect frozen right after its gate (here: nothing more sent), the
    keeper still stops the job by the lease, and says so."""
    handle = keeper("gated", ("sleep", "60"), program=shutil.which("sleep"))
    try:
        handle.lease(time.monotonic() + 1.5, grace=0.5, hold=True)  # held: never sent
        handle._open_gate(9, None, None)
        started = first_event(handle)
        assert started == proto.Started(handle.gated_pid), started
        exited = handle.events.get(timeout=30)
        assert exited == proto.Exited(128 + signal.SIGTERM, "lease"), exited
        assert not pid_alive(handle.gated_pid)
    finally:
        handle.close()
