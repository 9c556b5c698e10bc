"""``lelect`` processes on the Redis backend, for what only Redis does: partitions and
frozen servers judged from what the jobs record, TLS, AUTH, and the time-outs of issue 9.
What every backend does is in tests/test_contract.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lelect.backends import connect
from lelect.backends.records import HAND_BACK_REASON
from tests.helpers import (
    assert_one_at_a_time,
    lelect_env,
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


def test_a_waiting_candidate_imports_no_client_library_and_no_ssl(redis_server, tmp_path,
                                                                   processes):
    """lelect speaks RESP itself: a candidate waiting in line has imported neither
    redis-py nor (without TLS) ssl."""
    record = tmp_path / "record"
    processes.append(campaign(redis_server.url, "lean", ticking_job(record)))
    wait_until(lambda: read_ticks(record), timeout=10, what="the first job")
    trace = tmp_path / "imports"
    with open(trace, "w") as stderr:
        waiter = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "lelect",
                                   "campaign", "lean", "--", "true"],
                                  env=lelect_env(redis_server.url), stdout=subprocess.DEVNULL,
                                  stderr=stderr)
    processes.append(waiter)
    client = redis_server.client()
    wait_until(lambda: client.zcard("lelect:{lean}:line") >= 1, timeout=10,
               what="the candidate in line")
    imported = {line.rsplit("|", 1)[-1].strip() for line in trace.read_text().splitlines()
                if line.startswith("import time:")}
    assert "lelect.backends.redis.link" in imported, sorted(imported)
    assert not {m for m in imported if m.split(".")[0] in ("redis", "ssl", "_ssl")}, imported


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
        url += "&ttl=99999999999999h"
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


# -- the delayed-restart rule: a Redis that forgot its leases grants none for a ttl --------


def test_no_job_starts_across_a_restart_that_lost_the_data_until_the_old_lease_ran_out(
    redis_server_factory, tmp_path, processes
):
    """Redis without persistence restarts under a leader: its waiter must not win on the
    empty server while the old leader's job may still run (its lease, as the old server
    granted it, could last a ttl from the restart)."""
    server = redis_server_factory(restart_guard=True)
    record = tmp_path / "record"
    leader_and_waiter(server, "boot", record, processes)
    restarted_ns = time.time_ns()
    server.restart()
    wait_until(lambda: len(read_ticks(record)) >= 2, timeout=20, what="the next job")
    first, second = read_ticks(record)[:2]
    assert_one_at_a_time([first, second])
    assert second.first_ns - restarted_ns >= TTL * 1e9, (
        f"the next job started {(second.first_ns - restarted_ns) / 1e9:.3f}s after the restart,"
        f" within the old lease's {TTL}s")


def test_restart_guard_costs_a_new_redis_one_ttl_once_and_can_be_turned_off(
    redis_server_factory,
):
    from lelect.backends.base import Candidate

    server = redis_server_factory(restart_guard=True)
    who = Candidate("a", "here", 1)
    guarded, unguarded = connect(f"{server.url}?prefix=g"), connect(f"{server.url}?prefix=u"
                                                                    "&restart_guard=off")
    started = time.monotonic()
    unguarded.campaign("e", who, ttl=TTL, timeout=10).release()
    assert time.monotonic() - started < 1.0
    guarded.campaign("e", who, ttl=TTL, timeout=10).release()
    # It waited until the instance was a ttl old (its uptime counts whole seconds).
    assert int(server.client().info("server")["uptime_in_seconds"]) >= TTL - 1
    started = time.monotonic()
    guarded.campaign("e", who, ttl=TTL, timeout=10).release()  # the same instance: no wait
    assert time.monotonic() - started < 1.0


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
