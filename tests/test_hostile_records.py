"""Records written by others are data (issue 19 §4): a member row nested 100000 deep, a
pid of 1e999, history entries with a term of 1e999 or a start of NaN, written straight
into the backend, cost `health`, `watch` and `history` one warning, never status 70."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from tests.helpers import run_lelect

DEEP = "[" * 100_000
HEARTBEAT = {"election": "junk", "node_id": "big-pid", "host": "h", "pid": 1, "role": "follower",
             "term": None, "seq": 1, "time": 1.0}
#: A member whose pid is 1e999 (json.dumps cannot write it: the text is made by hand).
BIG_PID = json.dumps({"heartbeat": HEARTBEAT, "arrivals": [1.0]}).replace('"pid": 1', '"pid": 1e999')
NOT_FINITE = [
    '{"election": "junk", "term": 1e999, "node_id": "huge-term", "host": null, "pid": null,'
    ' "started": 1.0}',
    '{"election": "junk", "term": 5, "node_id": "nan-start", "host": null, "pid": null,'
    ' "started": NaN}',
    DEEP,
]


def assert_readers_survive(backend: str) -> None:
    """Every reader of the election answers with its usual status and no internal error."""
    for args, statuses in ((["watch", "junk", "--once"], {0}),
                           (["watch", "--once", "--json"], {0}),
                           (["health", "junk"], {1, 2}), (["health", "junk", "--json"], {1, 2}),
                           (["history", "junk"], {0}), (["history", "junk", "--json"], {0}),
                           (["leader", "junk", "--json"], {0, 1})):
        out = run_lelect(*args, backend=backend)
        assert out.returncode in statuses, (args, out.returncode, out.stderr)
        assert "internal error" not in out.stderr and "Traceback" not in out.stderr, args
    members = {m["node_id"]: m for m in
               json.loads(run_lelect("watch", "junk", "--once", "--json", backend=backend).stdout)[
                   "members"]}
    for name in ("deep", "big-pid"):
        assert members[name]["error"].startswith("unreadable member record"), members[name]
        assert members[name]["cpu_percent"] is None
    history = run_lelect("history", "junk", "--json", backend=backend)
    assert [json.loads(line)["node_id"] for line in history.stdout.splitlines()] == ["good"]
    # One warning per bad entry, naming the election and (where it can be read) the node.
    warnings = [line for line in history.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 3, history.stderr
    assert all("election 'junk'" in line for line in warnings), warnings
    assert any("node 'huge-term'" in line for line in warnings), warnings
    assert any("node 'nan-start'" in line for line in warnings), warnings


def test_hostile_rows_in_the_embedded_database(backend, tmp_path):
    out = run_lelect("campaign", "junk", "--id", "good", "--heartbeat-interval", "0", "--", "true",
                     backend=backend)
    assert out.returncode == 0, out.stderr
    with sqlite3.connect(tmp_path / "state" / "lelect.db", timeout=10) as db:
        db.executemany(
            "INSERT INTO members(election, node_id, data, arrivals, expires) VALUES (?, ?, ?, ?, ?)",
            [("junk", "deep", DEEP, "[]", 1e12), ("junk", "big-pid", BIG_PID, "[1e999]", 1e12)])
        db.executemany("INSERT INTO history(election, term, entry, outcome) VALUES (?, ?, ?, ?)",
                       [("junk", 100 + n, text, "exited") for n, text in enumerate(NOT_FINITE)])
    db.close()
    assert_readers_survive(backend)


def test_hostile_records_in_redis(redis_server):
    out = run_lelect("campaign", "junk", "--id", "good", "--heartbeat-interval", "0", "--", "true",
                     backend=redis_server.url)
    assert out.returncode == 0, out.stderr
    client = redis_server.client()
    forever = int(time.time() * 1000) + 3_600_000
    for node, record in (("deep", DEEP), ("big-pid", BIG_PID)):
        client.hset("lelect:{junk}:members", node, record)
        client.hset("lelect:{junk}:arrivals", node, "1e999 nan 5")
        client.zadd("lelect:{junk}:members-expiry", {node: forever})
    client.zadd("lelect:{junk}:history", {text: 100 + n for n, text in enumerate(NOT_FINITE)})
    assert_readers_survive(redis_server.url)


def test_hostile_records_in_zookeeper(zookeeper_server, zk_path):
    from kazoo.client import KazooClient

    url = zookeeper_server.url(zk_path, session_timeout="2s")
    out = run_lelect("campaign", "junk", "--id", "good", "--heartbeat-interval", "0", "--", "true",
                     backend=url)
    assert out.returncode == 0, out.stderr
    # Anybody who may write under the path (no ACLs: everybody) writes these.
    kazoo = KazooClient(zookeeper_server.hosts, timeout=2)
    kazoo.start(10)
    try:
        for node, record in (("deep", DEEP), ("big-pid", BIG_PID)):
            kazoo.create(f"{zk_path}/_members/junk/{node}", record.encode(), makepath=True)
        history = [c for c in kazoo.get_children(f"{zk_path}/_history/junk")] \
            if kazoo.exists(f"{zk_path}/_history/junk") else []
        assert history, "lelect keeps no history where this test looks"
        width = len(history[0])
        for n, text in enumerate(NOT_FINITE):
            kazoo.create(f"{zk_path}/_history/junk/{str(100 + n).zfill(width)}", text.encode())
    finally:
        kazoo.stop()
        kazoo.close()
    assert_readers_survive(url)


@pytest.mark.parametrize("bad", ["1e999", "NaN", "-Infinity"])
def test_a_leader_record_with_a_non_finite_number_is_not_an_internal_error(backend, tmp_path, bad):
    from lelect import connect
    from lelect.backends.records import LeaderInfo

    assert LeaderInfo.from_stored("e", "n", bad) is None
    assert LeaderInfo.from_stored("e", "n", 3, since=bad) is None
    assert LeaderInfo.from_stored("e", "n", 3, pid="many") is None
    with connect(backend) as client:
        election = client.election("e", "real")
        with election.campaign():
            with sqlite3.connect(tmp_path / "state" / "lelect.db", timeout=10) as db:
                db.execute("UPDATE leaders SET pid=?, since=? WHERE election='e'", (b"\xff", 1e999))
            db.close()
            assert election.leader() == LeaderInfo("(unknown)", 0)
            out = run_lelect("leader", "e", "--json", backend=backend)
            assert out.returncode == 0 and "unreadable leader record" in out.stderr, out.stderr


def test_an_exporter_whose_watch_died_serves_no_stale_leader(backend):
    """The watch thread dying (a bug, or a record nothing foresaw) must not leave the
    last look served for ever: lelect_backend_up drops to 0, the leader gauges go, and
    the exporter is told to stop (lelect exporter then exits 69)."""
    import threading

    from prometheus_client import CollectorRegistry, generate_latest

    from lelect import connect
    from lelect.exporter import Exporter

    stopped = threading.Event()
    with connect(backend) as client:
        with client.election("e", "real").campaign():
            exporter = Exporter(client, ["e"], interval=0.05, on_stop=stopped.set)
            looks = exporter.watch.run()
            go_on = threading.Event()

            def dies_after_one_look():
                yield next(looks)
                go_on.wait(30)
                raise OverflowError("cannot convert float infinity to integer")

            exporter.watch.run = dies_after_one_look
            registry = CollectorRegistry(auto_describe=False)
            registry.register(exporter)
            exporter.start()
            served = generate_latest(registry).decode()
            assert 'lelect_has_leader{election="e"} 1.0' in served
            assert "lelect_backend_up 1.0" in served
            go_on.set()
            assert stopped.wait(30)
            served = generate_latest(registry).decode()
            assert "lelect_backend_up 0.0" in served
            assert "lelect_has_leader{" not in served and "lelect_health_status{" not in served
            assert isinstance(exporter.failure, OverflowError)
            exporter.close()
