"""Herd-free handoff on Redis and PostgreSQL, against real servers: a release wakes the
head of the line only, a candidate killed in line is skipped at once, and a lost wake-up
costs at most what was left of the lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from lelect.backends import connect
from lelect.backends.base import Candidate
from lelect.backends.postgres.sql import bell_key
from lelect.backends.redis.scripts import RELEASE
from lelect.errors import CampaignCancelled
from tests.helpers import wait_until
from tests.plugins.postgres_server import fresh_name, waiting_sql

ELECTION = "herd"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Line:
    """One backend's view of an election's line, from the server's side."""

    url: str
    #: Candidates in the line.
    length: Callable[[], int]
    #: A mark (server side) to count acquires after.
    mark: Callable[[], object]
    #: Acquire attempts made since ``mark``.
    acquires_since: Callable[[object], int]
    #: Lose every wake-up of the next release.
    drop: Callable[[], None]
    #: Server connections of the candidates (excluding the test's own).
    connections: Callable[[], int]


@pytest.fixture(params=["redis", "postgres"])
def line(request) -> Iterator[Line]:
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        client = server.client()
        client.script_load(RELEASE.text)  # so the release is one EVALSHA
        key = f"lelect:{{{ELECTION}}}:line"

        def calls(_: object = None) -> int:
            counts = server.command_calls()
            return counts.get("evalsha", 0) + counts.get("eval", 0)

        yield Line(
            url=server.url,
            length=lambda: client.zcard(key),
            mark=calls,
            # Every script call since the mark, less the release itself and the winner's
            # one look at the election's handover note (resign --to).
            acquires_since=lambda before: calls() - before - 2,  # type: ignore[operator]
            drop=lambda: client.delete(key, key + "-expiry"),
            connections=lambda: sum(1 for c in client.client_list()
                                    if c.get("name") == "lelect"),
        )
        return
    cluster = request.getfixturevalue("postgres_cluster")
    db = request.getfixturevalue("postgres_contract_db")
    schema = fresh_name("h")
    url = cluster.url(db, schema=schema)
    key = bell_key(schema, ELECTION) & 0xFFFFFFFFFFFFFFFF
    on_bell = (f"locktype = 'advisory' AND classid = {key >> 32}"
               f" AND objid = {key & 0xFFFFFFFF} AND objsubid = 1")
    squatters: list = []

    def stamp() -> object:
        return cluster.sql("SELECT clock_timestamp()", db)[0][0]

    def acquires_since(since: object) -> int:
        # The woken waiter's attempt: waiters block in a "lelect wait" statement.
        return cluster.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            f" AND query LIKE '%lelect acquire%' AND query_start > '{since}'", db)[0][0]

    def lose_wake_ups() -> None:
        """A squatter queues for the doorbell, and the waiters' waits are cancelled so
        they queue again behind it: the release frees the doorbell to the squatter, which
        never lets go (a stuck holder), and no waiter hears of the release."""
        squatter = cluster.connect(db)
        squatters.append(squatter)
        pid = squatter.execute("SELECT pg_backend_pid()").fetchone()[0]
        threading.Thread(target=lambda: squatter.execute(
            f"SELECT pg_advisory_lock({bell_key(schema, ELECTION)})"), daemon=True).start()
        wait_until(lambda: cluster.sql(
            f"SELECT count(*) FROM pg_locks WHERE {on_bell} AND pid = {pid} AND NOT granted",
            db)[0][0] == 1, timeout=10, what="the squatter in the lock queue")
        cancelled = cluster.sql(
            f"SELECT count(pg_cancel_backend(pid)) FROM pg_locks WHERE {on_bell}"
            f" AND NOT granted AND pid <> {pid}", db)[0][0]
        assert cancelled >= 1
        wait_until(lambda: cluster.sql(
            f"SELECT count(*) FROM pg_locks l WHERE {on_bell} AND NOT granted AND pid <> {pid}"
            " AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.pid"
            "   AND a.query_start > (SELECT query_start FROM pg_stat_activity"
            f"                        WHERE pid = {pid}))", db)[0][0] == cancelled,
            timeout=10, what="the waiters queued again behind the squatter")

    yield Line(
        url=url,
        length=lambda: cluster.sql(waiting_sql(schema, ELECTION), db)[0][0],
        mark=stamp,
        acquires_since=acquires_since,
        drop=lose_wake_ups,
        connections=lambda: cluster.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND usename = 'lelect'", db)[0][0],
    )
    for squatter in squatters:
        squatter.close()


@contextmanager
def candidates(url: str):
    """Campaign in threads, one backend (its own connections) per candidate; every
    campaign still waiting is cancelled at the end."""
    cancel = threading.Event()
    backends = []
    with ThreadPoolExecutor(max_workers=32) as pool:

        def start(name: str, ttl: float) -> Future:
            backend = connect(url)
            backends.append(backend)
            return pool.submit(backend.campaign, ELECTION, Candidate(name, "h", 1), ttl=ttl,
                               cancel=cancel)

        try:
            yield start
        finally:
            cancel.set()
    for backend in backends:
        for leadership in list(backend.leaderships):
            leadership.release()
        backend.close()


def first_done(futures: list[Future], timeout: float) -> Future:
    done, _ = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
    assert done, f"nobody was elected within {timeout}s"
    return done.pop()


def test_a_release_wakes_only_the_head_of_a_line_of_20(line):
    with candidates(line.url) as start:
        leader = start("leader", 30.0).result(timeout=30)
        waiters = [start(f"w{i}", 30.0) for i in range(20)]
        wait_until(lambda: line.length() == 20, timeout=60, what="20 candidates in line")
        # One connection per candidate (Redis: a command connection and a subscription).
        per_candidate = 2 if line.url.startswith("redis") else 1
        assert line.connections() <= 21 * per_candidate
        mark = line.mark()
        leader.release()
        successor = first_done(waiters, timeout=20).result()
        assert line.acquires_since(mark) == 1
        successor.release()


def test_a_candidate_killed_in_line_is_skipped_at_once(line):
    code = (
        "import sys; from lelect.backends import connect; from lelect.backends.base import"
        f" Candidate; connect(sys.argv[1]).campaign({ELECTION!r}, Candidate('doomed', 'h', 1),"
        " ttl=30.0); print('elected', flush=True)"
    )
    with candidates(line.url) as start:
        leader = start("leader", 30.0).result(timeout=30)
        doomed = subprocess.Popen([sys.executable, "-c", code, line.url], cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)},
                                  stdout=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: line.length() == 1, timeout=30, what="the doomed one in line")
            survivor = start("survivor", 30.0)
            wait_until(lambda: line.length() == 2, timeout=30, what="two in line")
            before = line.connections()
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(10)
            wait_until(lambda: line.connections() < before, timeout=10,
                       what="the server to see the doomed candidate gone")
            released = time.monotonic()
            leader.release()
            survivor.result(timeout=10).release()
            # Far less than the 30s a ticket (and a lease) lasts.
            assert time.monotonic() - released < 5
        finally:
            if doomed.poll() is None:
                doomed.kill()
                doomed.wait()
            doomed.stdout.close()


def test_a_lost_wake_up_costs_at_most_what_was_left_of_the_lease(line):
    ttl = 2.0
    with candidates(line.url) as start:
        leader = start("leader", ttl).result(timeout=30)
        leader.begin()  # keep renewing, so the waiter sleeps on a fresh lease
        waiter = start("waiter", ttl)
        wait_until(lambda: line.length() == 1, timeout=30, what="the waiter in line")
        line.drop()  # the wake-up is lost
        released = time.monotonic()
        leader.release()
        waiter.result(timeout=3 * ttl).release()
        assert time.monotonic() - released <= ttl + 1.0


def test_a_waiter_cancelled_in_line_leaves_no_one_behind(line):
    with candidates(line.url) as start:
        leader = start("leader", 30.0).result(timeout=30)
        cancel_me = threading.Event()
        quitter_backend = connect(line.url)
        quitter = ThreadPoolExecutor(1).submit(
            quitter_backend.campaign, ELECTION, Candidate("quitter", "h", 1), ttl=30.0,
            cancel=cancel_me)
        wait_until(lambda: line.length() == 1, timeout=30, what="the quitter in line")
        waiter = start("waiter", 30.0)
        wait_until(lambda: line.length() == 2, timeout=30, what="two in line")
        cancel_me.set()
        with pytest.raises(CampaignCancelled):
            quitter.result(timeout=10)
        # Its backend (and connection) lives on: it left the line itself.
        released = time.monotonic()
        leader.release()
        waiter.result(timeout=10).release()
        assert time.monotonic() - released < 5
        quitter_backend.close()


def test_postgres_waiters_sleep_in_the_lock_queue_and_beat_between_pieces(
    postgres_cluster, postgres_contract_db
):
    """Waiting PostgreSQL candidates block in the server's lock queue for the election's
    doorbell, not LISTENing (up to PostgreSQL 18 every NOTIFY wakes every listening
    server process of the database: the herd moved into the server). A waiter's
    heartbeats still get through on its one connection: its wait is cut in pieces that
    end as the next beat is due."""
    cluster, db = postgres_cluster, postgres_contract_db
    url = cluster.url(db, schema=fresh_name("q"))
    with candidates(url) as start:
        leader = start("leader", 30.0).result(timeout=30)
        waiters = [start(f"w{i}", 30.0) for i in range(3)]

        def blocked_on_the_doorbell() -> int:
            return cluster.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
                " AND query LIKE '%lelect wait%'", db)[0][0]

        wait_until(lambda: blocked_on_the_doorbell() == 3, timeout=30,
                   what="three waiters in the lock queue")
        # Nobody but the leader (resign requests) listens.
        assert cluster.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'LISTEN%'", db)[0][0] <= 1
        # A waiter publishing heartbeats: each beat gets through while it waits.
        beater = connect(url)
        try:
            from lelect.backends.base import Candidate, Heartbeat

            beats: list[float] = []

            def beat(seq: int) -> None:
                beater.publish(Heartbeat(election=ELECTION, node_id="b", host="h", pid=1,
                                         role="candidate", term=None, seq=seq,
                                         time=time.time(), interval=0.3), ttl=5.0)
                beats.append(time.monotonic())

            beat(1)  # as lelect's first beat: the cadence is known before the long waits
            cancel = threading.Event()
            waiting = ThreadPoolExecutor(1).submit(
                beater.campaign, ELECTION, Candidate("b", "h", 1), ttl=30.0, cancel=cancel)
            wait_until(lambda: blocked_on_the_doorbell() == 4, timeout=30, what="the beater in line")
            for seq in range(2, 7):
                time.sleep(0.3)  # the heartbeat thread's own cadence
                beat(seq)
            gaps = [b - a for a, b in zip(beats[1:], beats[2:])]
            # A beat waits for a piece at most (0.33 s); without pieces it would wait for
            # the lease (30 s). The rest is slack for a loaded host.
            assert max(gaps) < 1.5, gaps
            cancel.set()
            with pytest.raises(CampaignCancelled):
                waiting.result(timeout=10)
        finally:
            beater.close()
        leader.release()
        first_done(waiters, timeout=20).result().release()
