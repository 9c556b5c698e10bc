"""Redis with Sentinel (``redis+sentinel://``): lelect finds the master through the
sentinels, follows a failover, and never runs two jobs across one (a promoted replica
grants nothing until the longest lease the old master could have granted has run out).
Real redis-server and redis-sentinel processes, real lelect campaigns."""

from __future__ import annotations

import time

import pytest

from lelect.backends import connect
from lelect.backends.base import Candidate
from lelect.errors import BackendUnavailable, ElectionBusy, UsageError
from tests.helpers import (
    assert_one_at_a_time,
    free_port,
    read_ticks,
    run_lelect,
    ticking_job,
    wait_until,
)
from tests.plugins.redis_sentinel import lelect_clients
from tests.test_redis_cli import TTL, campaign, wait_for_candidates, wait_for_waiter

#: The ttl of the planned-failover tests. The promoted replica's copy of the lease is as
#: old as the last renew replicated before ``REPLICAOF NO ONE`` (up to a renew interval,
#: ttl/3), and the sentinel names the new master only once its INFO shows the new role
#: (up to a second later); the leader moves at its next renew after that. A 2 s ttl left
#: about 1.3 s for all of it, and a loaded CI host once took longer (the leader lost,
#: safely). 4 s leaves 2.7 s; docs/redis.md gives the rule to users.
FAILOVER_TTL = 4.0


def leader_and_waiter(setup, election: str, record, processes, ttl: float = TTL):
    url = setup.url()
    leader = campaign(url, election, ticking_job(record), "--ttl", f"{ttl}s")
    processes.append(leader)
    wait_until(lambda: read_ticks(record), timeout=15, what="the first job")
    waiter = campaign(url, election, ticking_job(record), "--ttl", f"{ttl}s")
    processes.append(waiter)
    wait_for_candidates(url, election, 2)
    wait_for_waiter(setup.master, election)
    return leader, waiter


def test_sentinel_failover_under_a_running_job(redis_sentinels, tmp_path, processes):
    """``SENTINEL FAILOVER`` while a leader's job runs. The old master stays a master
    for seconds after the sentinels switched; the leader's renews must follow the
    sentinels there at once (its token was replicated, so it keeps leading). When it
    steps down, the waiter wins on the promoted replica only once the longest lease the
    old master could have granted has run out."""
    setup = redis_sentinels
    record = tmp_path / "record"
    leader, _ = leader_and_waiter(setup, "fo", record, processes, FAILOVER_TTL)
    new = failover_and_follow(setup, "fo")
    time.sleep(FAILOVER_TTL * 1.5)  # nothing may happen for longer than a ttl
    assert new.client().pttl("lelect:{fo}:leader") > 0, "the leader did not renew on the new master"
    assert len(read_ticks(record)) == 1 and leader.poll() is None
    # One connection to the master each, the leader and the waiter (RESP3: their
    # subscriptions share it).
    assert lelect_clients(new) == 2
    resign_and_expect_the_next_job_a_ttl_later(setup, "fo", leader, record)


def failover_and_follow(setup, election: str):
    """``SENTINEL FAILOVER``; returns the new master once the candidates moved there and
    the leader renewed there. The old master is still a master (Sentinel demotes it
    seconds later), but the candidates move at once."""
    setup.failover()
    new = setup.wait_for_new_master()
    wait_until(lambda: lelect_clients(new) >= 2, timeout=5, what="lelect on the new master")
    key = f"lelect:{{{election}}}:leader"
    seen = [new.client().pttl(key)]

    def renewed() -> bool:
        seen.append(new.client().pttl(key))
        assert seen[-1] > 0, "the leader key ran out on the new master"
        return seen[-1] > seen[-2]

    wait_until(renewed, timeout=FAILOVER_TTL, interval=0.05, what="a renew on the new master")
    return new


def resign_and_expect_the_next_job_a_ttl_later(setup, election: str, leader, record) -> None:
    """The leader resigns: its job is gone before the waiter's starts, with a larger
    term, and no sooner than a ttl later: the promoted replica had not granted before,
    so it waits out one ttl from the first attempt it saw (after the resignation)."""
    resign_ns = time.time_ns()
    out = run_lelect("resign", election, backend=setup.url())
    assert out.returncode == 0, out.stderr
    leader.wait(15)
    wait_until(lambda: len(read_ticks(record)) >= 2, timeout=FAILOVER_TTL + 10,
               what="the next job")
    first, second = read_ticks(record)[:2]
    assert_one_at_a_time([first, second])
    assert second.first_ns - resign_ns >= FAILOVER_TTL * 1e9, (
        f"the next job started {(second.first_ns - resign_ns) / 1e9:.3f}s after the resign")
    assert len(read_ticks(record)) == 2


def test_master_killed_under_a_running_job(redis_sentinels, tmp_path, processes):
    """kill -9 of the master: the leader cannot renew and its job is dead by its
    deadline; the sentinels promote the replica; the waiter wins there once the rule
    allows (not before a ttl from the kill), and exactly one job runs."""
    setup = redis_sentinels
    record = tmp_path / "record"
    leader, _ = leader_and_waiter(setup, "k9", record, processes)
    killed_ns = time.time_ns()
    setup.kill_master()
    assert leader.wait(TTL + 10) == 73
    setup.wait_for_new_master()
    wait_until(lambda: len(read_ticks(record)) >= 2, timeout=TTL + 20, what="the next job")
    first, second = read_ticks(record)[:2]
    assert first.last_ns <= killed_ns + TTL * 1e9, "the old job outlived its lease"
    assert_one_at_a_time([first, second])
    assert second.first_ns - killed_ns >= TTL * 1e9
    time.sleep(0.5)  # a second job would show by now
    assert len(read_ticks(record)) == 2


def test_a_replica_promoted_twice_waits_out_the_leases_it_may_have_missed(
    redis_server_factory,
):
    """The restart guard told instances apart by run id alone: a master demoted to a
    replica and promoted back keeps its run id, so it took its old boot record as its
    own and granted at once, though the master in between may have granted a lease it
    never received. Here A is promoted again after B granted a lease A never got."""
    ttl = 1.0
    a = redis_server_factory(restart_guard=True)
    b = redis_server_factory(restart_guard=True)
    who = Candidate("x", "here", 1)
    on_a = connect(f"{a.url}?ttl=1s")
    on_a.campaign("e", who, ttl=ttl, timeout=10).release()  # A's boot record: A's run id
    b.client().replicaof("127.0.0.1", a.port)
    wait_until(lambda: b.client().info("replication")["master_link_status"] == "up",
               what="B in sync with A")
    # The failover: B is promoted, A follows B.
    b.client().replicaof("NO", "ONE")
    a.client().replicaof("127.0.0.1", b.port)
    wait_until(lambda: a.client().info("replication")["master_link_status"] == "up",
               what="A in sync with B")
    # A loses its link to B (B's next writes never reach A) ...
    a.client().replicaof("127.0.0.1", free_port())
    on_b = connect(f"{b.url}?ttl=1s")
    held = on_b.campaign("e", Candidate("y", "there", 2), ttl=ttl, timeout=10)
    # ... and is promoted while B's lease runs: A must not grant before it ran out.
    a.client().replicaof("NO", "ONE")
    try:
        with pytest.raises(ElectionBusy):
            on_a.campaign("e", Candidate("z", "else", 3), ttl=ttl, no_wait=True)
    finally:
        held.release()
        on_a.close()
        on_b.close()


@pytest.mark.parametrize("url, words", [
    ("redis+sentinel://127.0.0.1:1", "MASTER"),
    ("redis+sentinel://127.0.0.1:1/", "MASTER"),
    ("redis+sentinel://127.0.0.1:1/a*b/0", "MASTER"),
    ("redis+sentinel://127.0.0.1:1/m/x", "database"),
    ("redis+sentinel://127.0.0.1:1/m/0/1", "MASTER"),
    ("redis+sentinel:///m/0", "sentinel"),
    ("redis+sentinel://127.0.0.1:1/m/0?ssl_ca_certs=/x", r"needs a rediss\+sentinel://"),
    ("rediss+sentinel://127.0.0.1:1/m/0?ssl_ca_certs=/no/such/ca.pem", "no such file"),
    ("rediss+sentinel://127.0.0.1:1/m/0?ssl_keyfile=/x", "no such file"),
    ("rediss+sentinel://127.0.0.1:1/m/0?nope=1", "unknown option"),
    ("rediss+sentinel://127.0.0.1:1", "MASTER"),
    ("redis+sentinel://127.0.0.1:1/m/0?nope=1", "unknown option"),
])
def test_bad_sentinel_urls_are_usage_errors(url, words):
    with pytest.raises(UsageError, match=words):
        connect(url)


def test_sentinel_url_masks_both_passwords_and_reports_no_master_in_one_line(tmp_path):
    dead = free_port()
    url = (f"redis+sentinel://:masterpw@127.0.0.1:{dead}/m/0?sentinel_password=sentpw"
           "&connect_timeout=300ms")
    out = run_lelect("leader", "e", backend=url)
    assert out.returncode == 69, out.stderr
    assert "masterpw" not in out.stderr and "sentpw" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert f"sentinel 127.0.0.1:{dead}" in out.stderr and "'m'" in out.stderr


@pytest.mark.parametrize("sentinels", ["redis_sentinels", "redis_tls_sentinels"],
                         ids=["plain", "tls"])
def test_the_keeper_hands_back_through_a_sentinel(sentinels, request, tmp_path, processes):
    """lelect dies (SIGKILL): its job's keeper asks a sentinel for the master and
    releases there, long before the 30 s lease would run out. With rediss+sentinel://
    it reaches the sentinel (with the sentinels' password) and the master by TLS."""
    setup = request.getfixturevalue(sentinels)
    url = setup.url(restart_guard="off")  # a fresh master would hold a 30 s lease back
    record = tmp_path / "record"
    leader = campaign(url, "hb", ticking_job(record), "--ttl", "30s")
    processes.append(leader)
    wait_until(lambda: read_ticks(record), timeout=15, what="the job")
    backend = connect(url)
    assert backend.leader("hb") is not None
    leader.kill()
    _, err = leader.communicate(timeout=30)
    assert "handed the leadership of 'hb' back: released" in err, err
    assert backend.leader("hb") is None
    for secret in (setup.password, setup.sentinel_password):
        assert secret is None or secret not in err
    backend.close()


def test_notes_are_read_and_written_on_the_master_the_sentinels_name(redis_sentinels):
    """Notes take the backend's one path to the master: after a failover they are read
    and written on the promoted replica, not on the old master (a master for seconds)."""
    setup = redis_sentinels
    backend = connect(setup.url(restart_guard="off"))
    assert backend.put_note("n", "holders", b"3", create=True) is True
    assert setup.master.client().get("lelect:{n}:note:holders") == "3"
    wait_until(lambda: setup.replica.client().get("lelect:{n}:note:holders") == "3",
               what="the note on the replica")
    setup.failover()
    new = setup.wait_for_new_master()

    def read_on_the_new_master() -> bool:
        try:
            return backend.get_note("n", "holders") == b"3" and \
                backend.link.master == ("127.0.0.1", new.port)
        except BackendUnavailable:
            return False  # a call that met the switch

    wait_until(read_on_the_new_master, timeout=10, what="notes read on the new master")
    assert backend.put_note("n", "holders", b"2", create=True) is False
    assert backend.put_note("n", "value:1", b"v") is True
    assert new.client().get("lelect:{n}:note:value:1") == "v"
    backend.close()


def test_bad_sentinels_are_skipped_within_the_budget(redis_sentinels, hostile_server):
    """A sentinel that never answers, one that streams garbage and one that names a
    replica are each given their share of the budget and skipped; the real sentinel
    after them names the master, checked with ROLE."""
    from tests.plugins.hostile import answering, send_and_hold, stream_forever

    setup = redis_sentinels
    silent = hostile_server(lambda conn, stopped: send_and_hold(conn, stopped, b""))
    garbage = hostile_server(lambda conn, stopped: stream_forever(conn, stopped, b"+"))
    port = str(setup.replica.port).encode()
    liar = hostile_server(answering(b"*2\r\n$9\r\n127.0.0.1\r\n$%d\r\n%s\r\n" % (len(port), port)))
    real = setup.sentinels[0].port
    hosts = ",".join(f"127.0.0.1:{p}" for p in (silent.port, garbage.port, liar.port, real))
    backend = connect(f"redis+sentinel://{hosts}/lelect-test/0?connect_timeout=4s"
                      "&restart_guard=off")
    started = time.monotonic()
    assert backend.leader("e") is None
    assert time.monotonic() - started < 4.0
    assert backend.link.master == ("127.0.0.1", setup.master.port)
    assert liar.connections == 1 and silent.connections == 1 and garbage.connections == 1
    backend.close()


# -- rediss+sentinel://: TLS to the sentinels and to the master ---------------------------
# The sentinels listen on a TLS port only, the servers are monitored and replicate on
# their TLS ports, and both have passwords: nothing here works over plain TCP.


def test_tls_sentinel_campaign_runs_a_job_and_shows_no_secret(redis_tls_sentinels):
    setup = redis_tls_sentinels
    url = setup.url(restart_guard="off")  # a fresh master would make the first win wait
    out = run_lelect("campaign", "tls", "--", "sh", "-c", "echo term=$LELECT_TERM; env",
                     backend=url)
    assert out.returncode == 0, out.stderr
    assert "term=" in out.stdout and "LELECT_BACKEND=rediss+sentinel://:***@" in out.stdout
    for secret in (setup.password, setup.sentinel_password):
        assert secret not in out.stdout and secret not in out.stderr
    leader = run_lelect("leader", "tls", "--json", backend=url)
    assert leader.returncode != 0 or "null" in leader.stdout, leader.stdout  # released


def test_tls_sentinel_failover_under_a_running_job(redis_tls_sentinels, tmp_path, processes):
    """``SENTINEL FAILOVER`` over TLS while a leader's job runs: the leader follows the
    sentinels to the promoted replica and renews there (one job all along); after it
    resigns, its job is gone before the next one starts, with a larger term, no sooner
    than a ttl later (the promoted replica's rule)."""
    setup = redis_tls_sentinels
    record = tmp_path / "record"
    leader, _ = leader_and_waiter(setup, "fo", record, processes, FAILOVER_TTL)
    failover_and_follow(setup, "fo")
    assert len(read_ticks(record)) == 1 and leader.poll() is None
    resign_and_expect_the_next_job_a_ttl_later(setup, "fo", leader, record)


def test_tls_sentinel_mistakes_are_one_line(redis_tls_sentinels, tmp_path):
    """A CA that did not sign the sentinels' certificates: 69 (as rediss:// says), one
    line saying TLS failed; a CA file that is no CA: 2, as for rediss://; plain
    redis+sentinel:// at TLS sentinels: 69 with the hint to use rediss+sentinel://."""
    from tests.helpers import assert_one_line
    from tests.test_redis_backend import other_ca

    setup = redis_tls_sentinels
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in setup.sentinels)
    plain = f"redis+sentinel://{hosts}/lelect-test/0?connect_timeout=2s"
    cases = [
        (setup.url(ssl_ca_certs=str(other_ca(tmp_path)), connect_timeout="2s"), 69,
         "TLS failed", "certificate verify failed"),
        (setup.url(ssl_ca_certs=str(garbage)), 2, "ssl_ca_certs", "rediss+sentinel://"),
        (setup.url(ssl_certfile=str(setup.tls["client_cert"])), 2, "ssl_keyfile"),
        (plain, 69, "rediss+sentinel://"),
    ]
    for url, status, *words in cases:
        out = run_lelect("leader", "x", backend=url)
        assert_one_line(out, status, *words)
        assert setup.password not in out.stderr and setup.sentinel_password not in out.stderr
