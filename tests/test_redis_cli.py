"""``lelect`` processes on the Redis backend, for what only Redis does: partitions and
frozen servers judged from what the jobs record, TLS, AUTH, and the time-outs of issue 9.
What every backend does is in tests/test_contract.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lelect.backends import connect
from lelect.backends.records import HAND_BACK_REASON
from tests.helpers import (
    assert_one_at_a_time,
    read_ticks,
    redis_listeners,
    run_lelect,
    spawn_lelect,
    ticking_job,
    wait_until,
)

TTL = 2.0


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


def test_tls_campaign(redis_server_factory, redis_test_certs):
    server = redis_server_factory(tls=redis_test_certs)
    job = run_lelect(
        "campaign", "tls", "--", "sh", "-c", "echo term=$LELECT_TERM", backend=server.tls_url
    )
    assert job.returncode == 0, job.stderr
    assert "term=" in job.stdout




def test_wrong_password_is_one_line_naming_the_password_not_showing_it(redis_server_factory):
    server = redis_server_factory(password="s3cret-pw")
    wrong = run_lelect("campaign", "pw", "--", "true",
                       backend=server.url.replace("s3cret-pw", "wrong-pw"))
    assert wrong.returncode == 69
    error = [line for line in wrong.stderr.splitlines() if "error" in line]
    assert len(error) == 1 and "password" in error[0]
    assert "wrong-pw" not in wrong.stderr and "Traceback" not in wrong.stderr


# -- issue 9: time-outs held, timeout 0, durations in range ----------------------------------

#: What starting a Python process that imports lelect's CLI may take on a loaded machine.
START_UP = 3.0


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def timed_lelect(*args: str) -> tuple[float, object]:
    started = time.monotonic()
    result = run_lelect(*args)
    return time.monotonic() - started, result


def test_campaign_against_a_silent_listener_ends_within_its_timeout(silent_listener):
    took, result = timed_lelect("-b", f"redis://127.0.0.1:{silent_listener}", "campaign", "x",
                                "-w", "500ms", "--", "true")
    assert result.returncode == 69
    assert "within 500ms" in one_error_line(result)
    assert took < 0.5 + START_UP


def test_leader_against_a_silent_listener_ends_within_connect_timeout(silent_listener):
    took, result = timed_lelect("-b", f"redis://127.0.0.1:{silent_listener}?connect_timeout=1s",
                                "leader", "x")
    assert result.returncode == 69
    assert "within 1s" in one_error_line(result)
    assert took < 1.0 + START_UP


def test_refused_connection_fails_at_once(refused_port):
    took, result = timed_lelect("-b", f"redis://127.0.0.1:{refused_port}?connect_timeout=30s",
                                "campaign", "x", "--", "true")
    assert result.returncode == 69
    assert "connection refused" in one_error_line(result)
    assert took < START_UP  # not the 30 s bound


def test_timeout_zero_wins_a_free_election_and_gives_up_on_a_held_one(redis_server, processes):
    free = run_lelect("campaign", "once", "-w", "0", "--", "sh", "-c", "echo term=$LELECT_TERM",
                      backend=redis_server.url)
    assert free.returncode == 0, free.stderr
    assert "term=" in free.stdout
    record = Path(redis_server.directory) / "record"
    processes.append(campaign(redis_server.url, "once", ticking_job(record)))
    wait_until(lambda: read_ticks(record), timeout=10, what="the leader's job")
    held = run_lelect("campaign", "once", "-w", "0", "--", "true", backend=redis_server.url)
    assert held.returncode == 124, held.stderr


@pytest.mark.parametrize("where", ["url", "flag"])
def test_out_of_range_ttl_is_a_usage_error(redis_server, where):
    url, flag = redis_server.url, ()
    if where == "url":
        url += "?ttl=99999999999999h"
    else:
        flag = ("--ttl", "99999999999999h")
    result = run_lelect("campaign", "x", *flag, "--", "true", backend=url)
    assert result.returncode == 2
    line = one_error_line(result)
    assert "out of range" in line and "not an integer" not in line
    assert redis_server.client().keys("*") == []  # refused before anything was written


def test_kill9_hand_back_records_the_leadership_as_lost_and_forgets_the_member(
    redis_server, tmp_path, processes
):
    record = tmp_path / "record"
    leader = campaign(redis_server.url, "k9", ticking_job(record), "--id", "doomed",
                      "--heartbeat-interval", "100ms")
    processes.append(leader)
    wait_until(lambda: read_ticks(record), timeout=10, what="the job")
    backend = connect(redis_server.url)
    wait_until(lambda: backend.members("k9").records, what="the leader's heartbeat")
    term = read_ticks(record)[0].term
    leader.kill()
    wait_until(lambda: backend.leader("k9") is None, what="the keeper to hand back")
    (entry,) = backend.history("k9")
    assert (entry.term, entry.node_id, entry.outcome) == (term, "doomed", "lost")
    assert entry.reason == HAND_BACK_REASON and entry.exit_status == 128 + signal.SIGKILL
    assert backend.members("k9").records == ()


def test_once_key_runs_a_slot_once_across_candidates_and_a_failed_run_leaves_it_open(
    redis_server, tmp_path
):
    runs = tmp_path / "runs"

    def candidates(slot: str, count: int, status: int = 0) -> list[int]:
        job = ["sh", "-c", f'echo "{slot} $LELECT_SLOT $LELECT_TERM" >> {runs}; exit {status}']
        procs = [spawn_lelect("campaign", "nightly", "--once-key", slot, "--", *job,
                              backend=redis_server.url) for _ in range(count)]
        return [proc.wait(60) for proc in procs]

    assert candidates("day-1", 3) == [0, 0, 0]
    assert candidates("day-1", 2) == [0, 0]  # later in the same slot: already done
    assert candidates("day-2", 1, status=3) == [3]  # a failed run leaves the slot open
    assert candidates("day-2", 1) == [0]
    lines = [line.split() for line in runs.read_text().splitlines()]
    assert [line[:2] for line in lines] == [["day-1", "day-1"], ["day-2", "day-2"],
                                            ["day-2", "day-2"]]
    out = run_lelect("history", "nightly", "--json", backend=redis_server.url)
    assert out.returncode == 0, out.stderr
    entries = [json.loads(line) for line in out.stdout.splitlines()]
    done = {e["slot"]: e["term"] for e in entries if e["slot"]}
    assert done == {"day-1": int(lines[0][2]), "day-2": int(lines[2][2])}
    assert [e["term"] for e in entries] == sorted({e["term"] for e in entries})


def test_tls_mistakes_get_a_hint(redis_server_factory, redis_test_certs, tmp_path):
    """Each used to be a raw error (or, for a garbage CA file, 69 where etcd says 2)."""
    certs = redis_test_certs
    server = redis_server_factory(tls=certs, extra=("--tls-auth-clients", "yes"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        # plain redis:// on the TLS port
        (f"redis://127.0.0.1:{server.tls_port}/0?connect_timeout=2s", 69, "rediss://"),
        # the server requires a client certificate
        (server.tls_url, 69, "client certificate"),
        # a certificate without its key
        (f"{server.tls_url}&ssl_certfile={certs['client_cert']}", 2, "ssl_keyfile"),
        # a CA file that is no CA
        (f"rediss://127.0.0.1:{server.tls_port}/0?ssl_ca_certs={garbage}", 2, "ssl_ca_certs"),
    ]
    for url, status, hint in cases:
        out = run_lelect("leader", "x", backend=url)
        assert out.returncode == status and hint in out.stderr, (url, out.stderr)
        assert out.stderr.count("\n") == 1, out.stderr
