"""The keeper's way from lelect's "start" to the job's exec on the network backends:
one write carries the win (the lease, the start), the hand-back recipe follows (after
the job's gate, when there is one), and the recipe's module loads only once the job is
under way, not beside its start."""

from __future__ import annotations

import os
import socket
import time

import pytest

from lelect import keeper_protocol as proto
from lelect.backends.records import HandBack
from lelect.supervisor import KeeperConfig, KeeperHandle
from tests.helpers import pid_alive, wait_until, written_line

RECIPE = HandBack(module="tests._handback_probe", params={"election": "probe"}, budget=2.0,
                  election="probe")


def test_a_win_is_one_write_to_the_keeper_lease_first_then_the_recipe():
    """Held back, the lease goes with the start: the keeper reads the whole win at once
    (one record on a SOCK_SEQPACKET pair is one write). The recipe comes next, on its
    own: nothing the job's start waits for."""
    handle = KeeperHandle(KeeperConfig(command=("true",)))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    handle._sock = ours
    theirs.setblocking(False)
    try:
        handle.lease(1234.5, 0.25, hold=True)
        try:
            early = theirs.recv(65536)
        except BlockingIOError:
            early = None
        assert early is None, f"the lease went out alone: {early!r}"
        handle.start(7)
        handle.hand_back_with(RECIPE)
        assert proto.LineReader().feed(theirs.recv(65536)) == [
            proto.Lease(1234.5, 0.25), proto.Start(7, "-", -1),
        ]
        assert proto.LineReader().feed(theirs.recv(65536)) == [
            proto.Recipe('{"module":"tests._handback_probe","params":{"election":"probe"},'
                         '"budget":2.0,"election":"probe"}'),
        ]
        try:
            rest = theirs.recv(65536)
        except BlockingIOError:
            rest = None
        assert rest is None, f"a second write: {rest!r}"
        handle.lease(1240.0, 0.25)  # a renew goes at once
        assert proto.LineReader().feed(theirs.recv(65536)) == [proto.Lease(1240.0, 0.25)]
    finally:
        ours.close()
        theirs.close()


def _started(tmp_path, job):
    probe = tmp_path / "probe"
    env = {**os.environ, "LELECT_TEST_PROBE": str(probe)}
    handle = KeeperHandle(KeeperConfig(command=("sh", "-c", job)), env=env)
    handle.spawn()
    handle.start(1)
    handle.hand_back_with(RECIPE)
    started = handle.events.get(timeout=10)
    assert isinstance(started, proto.Started), started
    return handle, probe


def test_the_recipe_module_loads_once_the_job_is_under_way(tmp_path):
    """json, importlib and the backend's hand-back module cost 10-25 ms of CPU: loaded
    right after the exec, they competed with the job's own start on a 2-core host."""
    first_line = tmp_path / "first"
    handle, probe = _started(tmp_path, f"date +%s%N > {first_line}; exec sleep 60")
    try:
        text = wait_until(lambda: probe.exists() and probe.read_text(), timeout=10,
                          what="the recipe's module to load while lelect lives")
        imported = int(text.split()[1])
        job = int(wait_until(lambda: first_line.exists() and first_line.read_text().strip(),
                             what="the job's first line"))
        assert imported - job > 100_000_000, (
            f"the recipe's module loaded {(imported - job) / 1e6:.1f} ms after the job's"
            " first line: beside its start")
    finally:
        handle.close()


def test_lelect_dying_before_the_recipe_loaded_still_hands_back(tmp_path):
    handle, probe = _started(tmp_path, "exec sleep 60")
    assert not probe.exists()  # not yet loaded
    handle._sock.shutdown(socket.SHUT_RDWR)  # lelect is gone: EOF on the keeper's socket
    handle.process.wait(timeout=10)
    handle.close()
    lines = probe.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["imported", "handed"], lines
    assert lines[1] == "handed probe 137", lines  # the job was SIGKILLed


def test_a_keeper_on_demand_is_spawned_by_prepare_or_the_win_and_never_for_nothing(tmp_path):
    """``spawn(on_demand=True)`` (etcd, ZooKeeper: a candidate further back than next in
    line): no keeper while it waits; "no longer next" and the goodbye need none; "next
    in line" spawns one (it forks the job early), and so does a win that came first."""
    ran = tmp_path / "ran"
    config = KeeperConfig(command=("sh", "-c", f"echo $$ > {ran}; exec sleep 60"))
    waiting = KeeperHandle(config)
    waiting.spawn(on_demand=True)
    waiting.prepare(False)
    assert waiting.process is None
    waiting.close()  # Exit: nothing to say it to
    assert waiting.process is None and not waiting._held
    nexts = KeeperHandle(config)
    nexts.spawn(on_demand=True)
    nexts.prepare()
    try:
        assert nexts.process is not None
        early = wait_until(lambda: _children(nexts.process.pid), timeout=10,
                           what="the keeper spawned by Prepare to start the job early")
        assert len(early) == 1 and not ran.exists()
    finally:
        nexts.close()
    winner = KeeperHandle(config)
    winner.spawn(on_demand=True)
    try:
        winner.lease(time.monotonic() + 60, 0.5, hold=True)  # the win, held for the Start
        assert winner.process is not None
        winner.start(5)
        started = winner.events.get(timeout=10)
        assert isinstance(started, proto.Started), started
        assert int(written_line(ran, what="the job's pid")) == started.pid
    finally:
        winner.close()


# -- the job forked early, while its candidate is next in line (Prepare) -----------------


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def python_fork(monkeypatch):
    """The prepared job is the Python fork's (the keeper forks nothing early with
    lelect's vfork spawn): its tests ask for that fork (the keeper inherits this env)."""
    monkeypatch.setenv("LELECT_SPAWN", "fork")


def _prepared(tmp_path, job="exec sleep 60"):
    """A keeper told Prepare, and the job's process it forked (which runs nothing)."""
    marker = tmp_path / "ran"
    handle = KeeperHandle(KeeperConfig(command=("sh", "-c", f"echo $$ > {marker}; {job}")))
    handle.spawn()
    handle.prepare()
    early = wait_until(lambda: _children(handle.process.pid), timeout=10,
                       what="the keeper to fork the job early")
    assert len(early) == 1, early
    return handle, early[0], marker


@pytest.mark.usefixtures("python_fork")
def test_a_prepared_job_runs_only_on_start_and_is_the_process_forked_early(tmp_path):
    handle, early, marker = _prepared(tmp_path)
    try:
        assert not handle._engaged  # a keeper that dies now is replaced, as a waiting one
        handle.prepare()  # again: nothing more is forked
        assert handle.events.empty() and not marker.exists()
        handle.lease(10**9, 0.5, hold=True)
        handle.start(3)
        started = handle.events.get(timeout=10)
        assert started == proto.Started(early)
        assert int(written_line(marker, what="the job's pid")) == early
        assert _children(handle.process.pid) == [early]
    finally:
        handle.close()
    assert not pid_alive(early)


@pytest.mark.usefixtures("python_fork")
def test_an_unprepared_job_exits_unrun_and_is_reaped(tmp_path):
    handle, early, marker = _prepared(tmp_path)
    try:
        handle.prepare(False)
        wait_until(lambda: not pid_alive(early) and not _children(handle.process.pid),
                   timeout=10, what="the early child to exit and be reaped")
        handle.start(4)  # a later win forks anew
        started = handle.events.get(timeout=10)
        assert isinstance(started, proto.Started) and started.pid != early
        assert int(written_line(marker, what="the job's pid")) == started.pid
    finally:
        handle.close()


@pytest.mark.usefixtures("python_fork")
def test_no_prepared_job_outlives_its_keeper_or_lelect(tmp_path):
    import signal

    # lelect killed: EOF on the keeper's socket.
    handle, early, marker = _prepared(tmp_path)
    handle._sock.shutdown(socket.SHUT_RDWR)
    handle.process.wait(timeout=10)
    handle.close()
    wait_until(lambda: not pid_alive(early), timeout=10, what="the early child to go")
    # The keeper itself killed: PR_SET_PDEATHSIG.
    handle, early, marker = _prepared(tmp_path)
    os.kill(handle.process.pid, signal.SIGKILL)
    handle.process.wait(timeout=10)
    wait_until(lambda: not pid_alive(early), timeout=10, what="the early child to go")
    handle.close()
    assert not marker.exists()


@pytest.mark.usefixtures("python_fork")
def test_a_start_after_the_lease_ran_out_drops_the_prepared_job(tmp_path):
    import time

    handle, early, marker = _prepared(tmp_path)
    try:
        handle.lease(time.monotonic() - 1, 0.5, hold=True)
        handle.start(5)
        assert handle.events.get(timeout=10) == proto.Exited(0, "unstarted")
        wait_until(lambda: not pid_alive(early), timeout=10, what="the early child to go")
        assert not marker.exists()
    finally:
        handle.close()
