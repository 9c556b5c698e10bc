"""The keeper's two ways to start a job: lelect's vfork spawn (lelect/libspawn.so, built
from lelect/_spawn.c when lelect is installed) and the Python fork it falls back to
(LELECT_SPAWN=fork here). Both must hand the job the same process: its own group, the
kernel's PR_SET_PDEATHSIG, default signal dispositions, no signal blocked, no descriptor
but 0-2, exactly the environment it was given, and the same answers when it cannot run."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from lelect import _keeper
from lelect import keeper_protocol as proto
from lelect.supervisor import KeeperConfig, KeeperHandle
from tests.helpers import pid_alive, wait_until, written_line

MODES = ["vfork", "fork"]


def test_the_vfork_spawn_is_built_and_loads_here():
    """This checkout was installed with a C compiler (tests/run.sh): without the
    library every job would be forked in Python, silently slower."""
    assert (Path(_keeper.__file__).parent / _keeper.SPAWN_LIBRARY).exists()
    saved = _keeper.SPAWN
    try:
        assert _keeper.load_spawn()
    finally:
        _keeper.SPAWN = saved


def keeper(mode: str, command: tuple[str, ...], env: dict[str, str] | None = None,
           program: str | None = None) -> KeeperHandle:
    env = dict(os.environ if env is None else env)
    env.pop("LELECT_SPAWN", None)
    if mode == "fork":
        env["LELECT_SPAWN"] = "fork"
    handle = KeeperHandle(KeeperConfig(command=command, program=program), env)
    handle.spawn()
    return handle


def first_event(handle: KeeperHandle):
    return handle.events.get(timeout=10)


def status_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


@pytest.mark.parametrize("mode", MODES)
def test_the_job_gets_a_clean_process_of_its_own(mode):
    env = dict(os.environ, **{"odd.name": "kept", "EMPTY": ""})
    handle = keeper(mode, ("sleep", "60"), env, program=shutil.which("sleep"))
    try:
        handle.start(7)
        started = first_event(handle)
        assert isinstance(started, proto.Started), started
        job = started.pid
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
