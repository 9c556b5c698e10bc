"""``lelect campaign`` processes on the Redis backend: exclusion, failover, handoff,
partitions and freezes, judged from what the jobs record."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lelect.backends import connect
from tests.helpers import (
    assert_exclusive,
    campaigns_in_turn,
    free_port,
    pid_alive,
    read_intervals,
    recording_job,
    redis_listeners,
    run_lelect,
    spawn_lelect,
    wait_until,
)

TTL = 2.0


def ticking_job(record: Path, every: float = 0.05) -> list[str]:
    """A job that appends 'tick NS TERM PID' to ``record`` every ``every`` seconds until
    it is killed: its last tick bounds when it was last alive."""
    f = shlex.quote(str(record))
    return [
        "sh",
        "-c",
        f'while :; do echo "tick $(date +%s%N) $LELECT_TERM $$" >> {f}; sleep {every}; done',
    ]


@dataclass(frozen=True)
class Activity:
    pid: int
    term: int
    first_ns: int
    last_ns: int


def read_ticks(record: Path) -> list[Activity]:
    seen: dict[int, Activity] = {}
    if not record.exists():
        return []
    for line in record.read_text().splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue  # a line cut short by SIGKILL
        ns, term, pid = int(parts[1]), int(parts[2]), int(parts[3])
        earlier = seen.get(pid)
        seen[pid] = Activity(pid, term, earlier.first_ns if earlier else ns, ns)
    return sorted(seen.values(), key=lambda a: a.first_ns)


def assert_one_at_a_time(activities: list[Activity]) -> None:
    for before, after in zip(activities, activities[1:]):
        assert before.last_ns < after.first_ns, f"jobs overlap: {before} and {after}"
        assert after.term > before.term, f"term did not grow: {before} then {after}"


def campaign(url: str, election: str, job: list[str], *options: str) -> subprocess.Popen:
    return spawn_lelect(
        "campaign", election, "--ttl", f"{TTL}s", *options, "--", *job, backend=url,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def wait_for_candidates(url: str, election: str, count: int) -> None:
    """Every candidate publishes a heartbeat as it starts campaigning."""
    backend = connect(url)
    wait_until(
        lambda: len(backend.members(election).records) >= count,
        timeout=10,
        what=f"{count} candidates of {election}",
    )


def wait_for_waiter(server, election: str) -> None:
    """The second candidate is waiting: it subscribes to the election's released channel
    (before its first attempt) beside the leader's listener."""
    client = server.client()
    wait_until(
        lambda: redis_listeners(client, election) >= 2,
        timeout=10,
        what=f"a candidate waiting for {election}",
    )


def leader_and_waiter(redis_server, election: str, record: Path, processes: list,
                      leader_url: str | None = None) -> subprocess.Popen:
    """A leader running a ticking job (through ``leader_url``, if given) and a second
    candidate queued behind it; returns the leader's process."""
    leader = campaign(leader_url or redis_server.url, election, ticking_job(record))
    processes.append(leader)
    wait_until(lambda: read_ticks(record), timeout=10, what="the first job")
    processes.append(campaign(redis_server.url, election, ticking_job(record)))
    wait_for_candidates(redis_server.url, election, 2)
    wait_for_waiter(redis_server, election)
    return leader


def test_five_concurrent_campaigns_run_one_at_a_time(redis_server, tmp_path):
    campaigns_in_turn(redis_server.url, "five", tmp_path / "record", options=("--ttl", f"{TTL}s"))


def test_killed_leader_is_replaced_within_ttl(redis_server, tmp_path, processes):
    record = tmp_path / "record"
    leader = leader_and_waiter(redis_server, "crash", record, processes)
    leader.kill()
    killed_ns = time.time_ns()
    old_job = read_ticks(record)[0]
    wait_until(lambda: len(read_ticks(record)) == 2, timeout=TTL + 3, what="the next job")
    wait_until(lambda: not pid_alive(old_job.pid), timeout=2, what="the old job to die")
    first, second = read_ticks(record)
    assert second.first_ns - killed_ns < (TTL + 1) * 1e9
    assert_one_at_a_time([first, second])


def test_graceful_exit_hands_over_within_200ms(redis_server, tmp_path, processes):
    record = tmp_path / "record"
    processes.append(campaign(redis_server.url, "handoff", recording_job(record, hold=2.0)))
    wait_until(lambda: record.exists(), timeout=10, what="the first job")
    processes.append(campaign(redis_server.url, "handoff", recording_job(record, hold=0.1)))
    wait_for_candidates(redis_server.url, "handoff", 2)
    wait_for_waiter(redis_server, "handoff")
    assert read_intervals(record)[0].end_ns is None, "the second candidate came too late"
    assert [p.wait(30) for p in processes] == [0, 0]
    first, second = read_intervals(record)
    assert_exclusive([first, second])
    assert second.start_ns - first.end_ns < 200e6


def test_partitioned_leader_job_is_dead_by_its_lease_deadline(
    redis_server, tmp_path, processes, partition_proxy
):
    record = tmp_path / "record"
    proxy = partition_proxy("127.0.0.1", redis_server.port)
    leader = leader_and_waiter(redis_server, "part", record, processes,
                               leader_url=f"redis://{proxy.address}/0?connect_timeout=1s")
    proxy.block()
    blocked_ns = time.time_ns()
    wait_until(lambda: len(read_ticks(record)) == 2, timeout=TTL + 3, what="the next job")
    assert leader.wait(15) == 73
    first, second = read_ticks(record)
    assert first.last_ns <= blocked_ns + TTL * 1e9
    assert second.first_ns - blocked_ns < (TTL + 1) * 1e9
    assert_one_at_a_time([first, second])


def test_frozen_server_stops_the_job_within_ttl_and_one_job_runs_after(
    redis_server, tmp_path, processes
):
    record = tmp_path / "record"
    leader = leader_and_waiter(redis_server, "frozen", record, processes)
    redis_server.freeze()
    frozen_ns = time.time_ns()
    try:
        time.sleep(TTL + 0.5)  # a window: the job stops by the deadline; no other starts meanwhile
        assert read_ticks(record)[0].last_ns <= frozen_ns + TTL * 1e9
        assert len(read_ticks(record)) == 1
    finally:
        redis_server.thaw()
    thawed_ns = time.time_ns()
    assert leader.wait(10) == 73
    wait_until(lambda: len(read_ticks(record)) == 2, timeout=5, what="the next job")
    time.sleep(1.0)  # a window: the old job must not tick again beside the new one
    running = {a.pid for a in read_ticks(record) if a.last_ns > thawed_ns + 0.5e9}
    assert running == {read_ticks(record)[1].pid}
    assert_one_at_a_time(read_ticks(record))


def test_frozen_lelect_loses_its_job_by_the_deadline_and_exits_73(
    redis_server, tmp_path, processes
):
    record = tmp_path / "record"
    leader = leader_and_waiter(redis_server, "stopped", record, processes)
    os.kill(leader.pid, signal.SIGSTOP)  # lelect only: its keeper and job run on
    stopped_ns = time.time_ns()
    try:
        wait_until(lambda: len(read_ticks(record)) == 2, timeout=TTL + 3, what="the next job")
    finally:
        os.kill(leader.pid, signal.SIGCONT)
    assert leader.wait(10) == 73
    first, second = read_ticks(record)
    assert first.last_ns <= stopped_ns + TTL * 1e9
    assert_one_at_a_time([first, second])


def test_password_never_shown(redis_server_factory, tmp_path, processes):
    server = redis_server_factory(password="s3cret-pw")
    url = server.url
    job = run_lelect(
        "campaign", "pw", "--", "sh", "-c", 'echo "backend=$LELECT_BACKEND"', backend=url
    )
    assert job.returncode == 0, job.stderr
    assert f"backend=redis://:***@{server.host_port}/0" in job.stdout
    record = tmp_path / "record"
    processes.append(campaign(url, "pw", ticking_job(record)))
    wait_until(lambda: read_ticks(record), timeout=10, what="the job")
    leader = run_lelect("leader", "pw", "--json", backend=url)
    assert json.loads(leader.stdout)["leader"]["term"] == read_ticks(record)[0].term
    shown = [job, leader]
    shown += [run_lelect(*args, backend=url) for args in (["--help"], ["campaign", "--help"])]
    for result in shown:
        assert "s3cret" not in result.stdout + result.stderr

    wrong = run_lelect("campaign", "pw", "--", "true", backend=url.replace("s3cret-pw", "wrong-pw"))
    assert wrong.returncode == 69
    error = [line for line in wrong.stderr.splitlines() if "error" in line]
    assert len(error) == 1 and "password" in error[0]
    assert "wrong-pw" not in wrong.stderr and "Traceback" not in wrong.stderr


def test_tls_campaign(redis_server_factory, redis_test_certs):
    server = redis_server_factory(tls=redis_test_certs)
    job = run_lelect(
        "campaign", "tls", "--", "sh", "-c", "echo term=$LELECT_TERM", backend=server.tls_url
    )
    assert job.returncode == 0, job.stderr
    assert "term=" in job.stdout


@pytest.mark.parametrize(
    "url, status",
    [("redis://127.0.0.1:{port}/zero", 2), ("redis://127.0.0.1:{free}/0", 69)],
)
def test_bad_url_and_unreachable_server_exit_statuses(redis_server, url, status):
    url = url.format(port=redis_server.port, free=free_port())
    result = run_lelect("campaign", "e", "--", "true", backend=url)
    assert result.returncode == status
    assert "Traceback" not in result.stderr


def test_watch_health_and_resign_work_on_redis(redis_server, tmp_path, processes):
    record = tmp_path / "record"
    url = redis_server.url
    leader = campaign(url, "group", ticking_job(record))
    processes.append(leader)
    wait_until(lambda: read_ticks(record), timeout=10, what="the first job")
    processes.append(campaign(url, "group", ticking_job(record)))
    wait_for_candidates(url, "group", 2)
    old_term = read_ticks(record)[0].term

    watch = run_lelect("watch", "group", "--once", "--json", backend=url)
    assert watch.returncode == 0, watch.stderr
    table = json.loads(watch.stdout)
    assert table["leader"]["term"] == old_term
    assert sorted(m["role"] for m in table["members"]) == ["follower", "leader"]
    assert run_lelect("health", "group", "--json", backend=url).returncode == 0

    assert run_lelect("resign", "group", "--term", str(old_term - 1), backend=url).returncode == 1
    resign = run_lelect("resign", "group", "--term", str(old_term), "--wait", "5s", backend=url)
    assert resign.returncode == 0, resign.stderr
    assert leader.wait(5) == 0
    wait_until(lambda: len(read_ticks(record)) == 2, timeout=5, what="the next job")
    first, second = read_ticks(record)
    assert_one_at_a_time([first, second])
    assert (
        json.loads(run_lelect("leader", "group", "--json", backend=url).stdout)["leader"]["term"]
        == second.term
    )
