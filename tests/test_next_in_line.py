"""The candidate next in line (only the leader ahead of it) has its keeper fork the job
early, so that a win costs no fork: on etcd and ZooKeeper, whose waiters each watch their
predecessor. With lelect/libspawn.so (the default) the early process waits at lelect's
gate, and lelect itself lets it run (no keeper's wake-up between a win and its job);
where the keeper forks in Python (here LELECT_SPAWN=fork) it waits for its keeper's word.
The others fork nothing: they wait without a keeper at all (it is spawned once they are
next in line). The early process runs nothing before the win and never outlives the
candidate's place, its keeper or lelect."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from tests.helpers import (
    OutputTail,
    lelect_env,
    pid_alive,
    spawn_lelect,
    wait_until,
    written_line,
)


@pytest.fixture(params=["etcd", "zookeeper"])
def queue_target(request):
    return request.getfixturevalue(f"target_{request.param}")


def keeper_now(proc) -> psutil.Process | None:
    """The keeper of a `lelect campaign` process, if it has one now."""
    try:
        kids = psutil.Process(proc.pid).children()
    except psutil.NoSuchProcess:
        return None
    keepers = [p for p in kids if "lelect._keeper" in " ".join(p.cmdline())]
    return keepers[0] if keepers else None


def keeper_of(proc) -> psutil.Process:
    """The keeper of a `lelect campaign` process (waited for)."""
    return wait_until(lambda: keeper_now(proc), timeout=30, what="the candidate's keeper")


def early_children(proc) -> list[int]:
    """The job processes a waiting candidate's keeper forked early (its children); none
    without a keeper."""
    keeper = keeper_now(proc)
    try:
        return [] if keeper is None else [
            child.pid for child in keeper.children() if pid_alive(child.pid)]
    except psutil.NoSuchProcess:
        return []


def job(tmp_path, name: str) -> list[str]:
    """A job that writes its pid to NAME.started and runs until NAME.release exists."""
    started, release = tmp_path / f"{name}.started", tmp_path / f"{name}.release"
    return ["--", "sh", "-c",
            f'echo $$ > {started}; while [ ! -e {release} ]; do sleep 0.02; done']


def candidate(target, tmp_path, name: str, *options: str, spawn: str = "fork"):
    """A candidate whose keeper forks its job in Python (``spawn="fork"``), or starts it
    with lelect's vfork spawn (``spawn="vfork"``)."""
    env = lelect_env(target.url)
    if spawn == "fork":
        env["LELECT_SPAWN"] = "fork"
    proc = spawn_lelect("campaign", "line", "--id", name, *options, *job(tmp_path, name),
                        env=env)
    return proc, OutputTail(proc.stderr)


def test_with_the_vfork_spawn_the_next_in_line_waits_at_the_gate_and_the_win_runs_it(
        queue_target, tmp_path):
    leader, _ = candidate(queue_target, tmp_path, "leader", spawn="vfork")
    leader_pid = started_pid(tmp_path, "leader")
    first, first_log = candidate(queue_target, tmp_path, "first", spawn="vfork")
    first_log.wait_for("waiting for")
    second, second_log = candidate(queue_target, tmp_path, "second", spawn="vfork")
    second_log.wait_for("waiting for")
    early = wait_until(lambda: early_children(first), timeout=30,
                       what="the next in line's keeper to fork the job")
    assert len(early) == 1, early
    keeper = keeper_of(first)
    assert "libspawn.so" in open(f"/proc/{keeper.pid}/maps").read()
    # It waits as the gate program, not as a fork of the keeper (whose pages it would count).
    assert psutil.Process(early[0]).cmdline()[0].endswith("/lelect-gate")
    assert keeper_now(second) is None  # further back: it waits without a keeper
    assert not (tmp_path / "first.started").exists()  # forked, not run
    (tmp_path / "leader.release").touch()
    assert leader.wait(timeout=30) == 0
    pid = started_pid(tmp_path, "first")
    assert pid == early[0] and pid != leader_pid and os.getpgid(pid) == pid
    wait_until(lambda: len(early_children(second)) == 1, timeout=30,
               what="the new next in line's keeper to fork the job")
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) != 0
    (tmp_path / "first.release").touch()
    assert first.wait(timeout=30) == 0


def started_pid(tmp_path, name: str) -> int:
    return int(written_line(tmp_path / f"{name}.started", what=f"{name}'s job"))


def test_only_the_next_in_line_has_its_job_forked_and_the_win_runs_that_process(
        queue_target, tmp_path):
    leader, _ = candidate(queue_target, tmp_path, "leader")
    started_pid(tmp_path, "leader")
    first, first_log = candidate(queue_target, tmp_path, "first")
    first_log.wait_for("waiting for")
    early = wait_until(lambda: early_children(first), timeout=30,
                       what="the next in line's keeper to fork the job")
    assert len(early) == 1, early
    second, second_log = candidate(queue_target, tmp_path, "second")
    second_log.wait_for("waiting for")
    third, third_log = candidate(queue_target, tmp_path, "third")
    third_log.wait_for("waiting for")
    # Further back, they wait without a keeper (spawned once they are next in line).
    assert keeper_now(second) is None and keeper_now(third) is None
    assert not (tmp_path / "first.started").exists()  # forked, not run
    assert early_children(first) == early
    (tmp_path / "leader.release").touch()
    assert leader.wait(timeout=30) == 0
    # The win ran the very process forked early (the exec keeps its pid).
    assert started_pid(tmp_path, "first") == early[0]
    # Now "second" is next in line, and only it.
    wait_until(lambda: len(early_children(second)) == 1, timeout=30,
               what="the new next in line's keeper to fork the job")
    assert keeper_now(third) is None
    for proc in (second, third):
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    (tmp_path / "first.release").touch()
    assert first.wait(timeout=30) == 0


def test_the_early_job_goes_when_its_candidate_gives_up(queue_target, tmp_path):
    leader, _ = candidate(queue_target, tmp_path, "leader")
    started_pid(tmp_path, "leader")
    first, first_log = candidate(queue_target, tmp_path, "first", "--timeout", "3s")
    first_log.wait_for("waiting for")
    keeper = keeper_of(first)
    early = wait_until(lambda: early_children(first), timeout=30, what="the early job")
    assert first.wait(timeout=30) == 124
    wait_until(lambda: not pid_alive(early[0]) and not pid_alive(keeper.pid), timeout=10,
               what="the early job and the keeper to go")
    assert not (tmp_path / "first.started").exists()
    (tmp_path / "leader.release").touch()
    assert leader.wait(timeout=30) == 0


def test_the_early_job_of_a_killed_next_in_line_goes_and_the_next_one_gets_one(
        queue_target, tmp_path):
    leader, _ = candidate(queue_target, tmp_path, "leader")
    started_pid(tmp_path, "leader")
    first, first_log = candidate(queue_target, tmp_path, "first")
    first_log.wait_for("waiting for")
    keeper = keeper_of(first)
    early = wait_until(lambda: early_children(first), timeout=30, what="the early job")
    second, second_log = candidate(queue_target, tmp_path, "second")
    second_log.wait_for("waiting for")
    assert keeper_now(second) is None
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    wait_until(lambda: not pid_alive(early[0]) and not pid_alive(keeper.pid), timeout=10,
               what="the killed candidate's early job and keeper to go")
    # Its place goes with its lease (session): then "second" is next in line.
    wait_until(lambda: len(early_children(second)) == 1, timeout=60,
               what="the new next in line's keeper to fork the job")
    assert not (tmp_path / "first.started").exists()
    assert not (tmp_path / "second.started").exists()
    (tmp_path / "leader.release").touch()
    assert leader.wait(timeout=30) == 0
    assert started_pid(tmp_path, "second") == early_children(second)[0]
    (tmp_path / "second.release").touch()
    assert second.wait(timeout=30) == 0


def test_a_next_in_line_barred_by_a_handover_drops_its_early_job(queue_target, tmp_path):
    """`resign --to` another node: the next in line wins, steps aside before anything
    runs, and goes to the back of the line; its early job goes with its place."""
    from tests.helpers import run_lelect

    leader, _ = candidate(queue_target, tmp_path, "leader")
    started_pid(tmp_path, "leader")
    first, first_log = candidate(queue_target, tmp_path, "first")
    first_log.wait_for("waiting for")
    early = wait_until(lambda: early_children(first), timeout=30, what="the early job")
    chosen, chosen_log = candidate(queue_target, tmp_path, "chosen")
    chosen_log.wait_for("waiting for")
    moved = run_lelect("resign", "line", "--to", "chosen", "--wait", "30s",
                       backend=queue_target.url)
    assert moved.returncode == 0, (moved.stdout, moved.stderr)
    started_pid(tmp_path, "chosen")
    wait_until(lambda: not pid_alive(early[0]), timeout=10, what="the early job to go")
    assert not (tmp_path / "first.started").exists()
    # Behind "chosen" now: next in line again, with a new early job.
    again = wait_until(lambda: early_children(first), timeout=30, what="a new early job")
    assert again != early
    (tmp_path / "chosen.release").touch()
    assert chosen.wait(timeout=30) == 0
    assert started_pid(tmp_path, "first") == again[0]
    (tmp_path / "first.release").touch()
    assert first.wait(timeout=30) == 0
    assert leader.wait(timeout=30) == 0
