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
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from lelect.backends import connect
from lelect.backends.base import Candidate
from lelect.backends.redis.scripts import RELEASE
from lelect.errors import CampaignCancelled
from tests.helpers import wait_until
from tests.plugins.postgres_server import fresh_name

ELECTION = "herd"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Line:
    """One backend's view of an election's line, from the server's side."""

    url: str
    #: Tickets in the line.
    length: Callable[[], int]
    #: A mark (server side) to count acquires after.
    mark: Callable[[], object]
    #: Acquire attempts made since ``mark``.
    acquires_since: Callable[[object], int]
    #: Forget every ticket (as if every wake-up were lost).
    drop: Callable[[], None]
    #: Server connections of the candidates (excluding the test's own).
    connections: Callable[[], int]


@pytest.fixture(params=["redis", "postgres"])
def line(request) -> Line:
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        client = server.client()
        client.script_load(RELEASE.text)  # so the release is one EVALSHA
        key = f"lelect:{{{ELECTION}}}:line"

        def calls(_: object = None) -> int:
            counts = server.command_calls()
            return counts.get("evalsha", 0) + counts.get("eval", 0)

        return Line(
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
    cluster = request.getfixturevalue("postgres_cluster")
    db = request.getfixturevalue("postgres_contract_db")
    schema = fresh_name("h")
    url = cluster.url(db, schema=schema)

    def stamp() -> object:
        return cluster.sql("SELECT clock_timestamp()", db)[0][0]

    def acquires_since(since: object) -> int:
        return cluster.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            f" AND query LIKE '%lelect acquire%' AND query_start > '{since}'", db)[0][0]

    return Line(
        url=url,
        length=lambda: cluster.sql(f"SELECT count(*) FROM {schema}.queue", db)[0][0],
        mark=stamp,
        acquires_since=acquires_since,
        drop=lambda: cluster.sql(f"DELETE FROM {schema}.queue", db),
        connections=lambda: cluster.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND usename = 'lelect'", db)[0][0],
    )


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
