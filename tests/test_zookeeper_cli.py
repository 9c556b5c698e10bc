"""`lelect campaign` on ZooKeeper, with real lelect processes, a real ZooKeeper and
kazoo's Election recipe on the other side."""

from __future__ import annotations

import shlex
import signal
import socket
import threading
import time
from pathlib import Path

from kazoo.client import KazooClient

from tests.helpers import (
    leader_json,
    pid_alive,
    read_intervals,
    run_lelect,
    spawn_lelect,
    wait_until,
    zk_queue,
    zk_watchers,
)

SESSION = 2.0  # seconds: the session timeout (lease) of these tests


def trapping_job(record: Path) -> list[str]:
    """A job that runs until stopped, recording its start and (on SIGTERM) its end."""
    f = shlex.quote(str(record))
    line = '"$1 $(date +%s%N) $LELECT_TERM $$"'
    return [
        "sh", "-c",
        f"stamp() {{ echo {line} >> {f}; }}; stamp start; trap 'stamp end; exit 0' TERM;"
        " while :; do sleep 0.05; done",
    ]  # fmt: skip


def running(record: Path) -> list:
    return [i for i in read_intervals(record) if i.end_ns is None and pid_alive(i.pid)] if record.exists() else []


def started(record: Path, count: int) -> bool:
    return record.exists() and len(read_intervals(record)) >= count


def stop(proc, timeout: float = 10) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=timeout)


def wait_for_waiter(server, path: str) -> None:
    """A second contender is queued under the election znode ``path`` and watches the
    first, which (a lelect leader) watches itself too: the second waits its turn."""
    kazoo = KazooClient(server.hosts, timeout=2)
    kazoo.start(10)
    try:
        wait_until(
            lambda: len(queue := zk_queue(kazoo, path)) >= 2
            and zk_watchers(server, f"{path}/{queue[0]}") >= 2,
            timeout=15,
            what=f"a second contender waiting under {path}",
        )
    finally:
        kazoo.stop()
        kazoo.close()


def test_kazoo_election_and_lelect_campaign_exclude_each_other(
    zk_url, zk_path, zookeeper_server, tmp_path
):
    kazoo = KazooClient(zookeeper_server.hosts, timeout=2)
    kazoo.start(10)
    election = kazoo.Election(f"{zk_path}/shared", "kazoo-user")
    record = tmp_path / "record"
    kazoo_leads, kazoo_done = threading.Event(), threading.Event()
    kazoo_runs: list[tuple[int, int]] = []

    def kazoo_job():
        kazoo_runs.append((time.time_ns(), 0))
        kazoo_leads.set()
        kazoo_done.wait(30)
        kazoo_runs[-1] = (kazoo_runs[-1][0], time.time_ns())

    runner = threading.Thread(target=election.run, args=(kazoo_job,), daemon=True)
    runner.start()
    lelect = None
    try:
        assert kazoo_leads.wait(10)
        busy = run_lelect("campaign", "shared", "--no-wait", "--", "true", backend=zk_url)
        assert busy.returncode == 75, busy.stderr
        assert election.contenders() == ["kazoo-user"]
        shown = leader_json(zk_url, "shared")
        assert (shown["node_id"], shown["host"], shown["pid"]) == ("kazoo-user", None, None)

        lelect = spawn_lelect(
            "campaign", "shared", "--id", "lelect-1", "--", *trapping_job(record), backend=zk_url
        )
        wait_until(lambda: election.contenders() == ["kazoo-user", "lelect-1"], what="lelect queued")
        time.sleep(0.3)  # a window: lelect's job must not start while kazoo's Election leads
        assert not record.exists(), "lelect's job ran while kazoo's Election led"
        kazoo_done.set()
        runner.join(10)
        wait_until(lambda: started(record, 1), what="lelect's job")
        assert read_intervals(record)[0].start_ns > kazoo_runs[0][1]
        # A lelect leader's host and pid come from its heartbeat record.
        wait_until(lambda: leader_json(zk_url, "shared")["pid"] == lelect.pid, what="host and pid")
        assert leader_json(zk_url, "shared")["host"] == socket.gethostname()

        # And the other way round: kazoo's Election waits behind lelect's job.
        second = threading.Thread(target=election.run, args=(lambda: kazoo_runs.append((time.time_ns(), 0)),))
        second.start()
        wait_until(lambda: election.contenders() == ["lelect-1", "kazoo-user"], what="kazoo queued")
        time.sleep(0.3)  # a window: kazoo's Election must not run while lelect leads
        assert len(kazoo_runs) == 1
        stop(lelect)
        second.join(10)
        assert len(kazoo_runs) == 2
        assert kazoo_runs[1][0] > read_intervals(record)[0].end_ns
    finally:
        kazoo_done.set()
        if lelect is not None and lelect.poll() is None:
            stop(lelect)
        kazoo.stop()
        kazoo.close()


def test_refused_credentials_and_acl_are_69(zookeeper_server, zk_path):
    owner = zookeeper_server.url(zk_path, session_timeout="2s", auth="digest:ops:s3cret")
    out = run_lelect("campaign", "guarded", "--", "true", backend=owner)
    assert out.returncode == 0, out.stderr
    intruder = zookeeper_server.url(zk_path, session_timeout="2s")
    out = run_lelect("campaign", "guarded", "--", "true", backend=intruder)
    assert out.returncode == 69, out.stderr
    assert "ACL" in out.stderr and "Traceback" not in out.stderr, out.stderr
    refused = zookeeper_server.url(zk_path, auth="sasl-ish:whoever")
    out = run_lelect("campaign", "guarded", "--", "true", backend=refused)
    assert out.returncode == 69, out.stderr
    assert "refused the credentials" in out.stderr and "whoever" not in out.stderr, out.stderr


# -- connecting keeps its bound (issue 9) -------------------------------------------------

#: Python's start-up and a busy machine, on top of a bound; what this replaces took 10-40 s.
SLACK = 3.0


def unreachable_within(args: list[str], url: str, bound: str, seconds: float) -> str:
    """Run lelect ARGS against ``url``: status 69, one line naming ``bound``, in time."""
    started = time.monotonic()
    out = run_lelect(*args, backend=url)
    took = time.monotonic() - started
    assert out.returncode == 69, out.stderr
    assert f"within {bound}" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len([line for line in out.stderr.splitlines() if "error" in line]) == 1, out.stderr
    assert took < seconds + SLACK, f"{args} took {took:.1f}s"
    return out.stderr


def test_redis_port_typo_is_unreachable_within_the_bound(redis_server):
    url = f"zookeeper://{redis_server.host_port}/lelect?connect_timeout=1s"
    for args in (["leader", "x"], ["campaign", "x", "--", "true"]):
        error = unreachable_within(args, url, "1s", 1.0)
        assert "is that a ZooKeeper port?" in error


def test_timeout_zero_and_one_ms_win_a_free_election(zk_url):
    for timeout in ("0", "1ms"):
        out = run_lelect("campaign", f"free-{timeout}", "-w", timeout, "--", "true",
                         backend=zk_url)  # fmt: skip
        assert out.returncode == 0, out.stderr


# -- the agreement on --holders, kept by the sessions (issue 21) ---------------------------


def _claims(kazoo, zk_path: str, election: str) -> list[str]:
    path = f"{zk_path}/_holders/{election}"
    return sorted(kazoo.get_children(path)) if kazoo.exists(path) else []


def _session_counters(server, session_id: int) -> tuple[int, int]:
    """(packets received, last client xid) of one session, by the server's ``cons``: a
    ping is a packet with no xid of its own, so lcxid moves only with a request."""
    for line in server.command("cons").splitlines():
        if f"sid=0x{session_id:x}," in line:
            fields = dict(part.split("=", 1) for part in line.split("(", 1)[1].rstrip(")").split(",")
                          if "=" in part)
            return int(fields["recved"]), int(fields["lcxid"], 16)
    raise AssertionError(f"no connection of session 0x{session_id:x} in cons")


def test_a_candidate_with_other_holders_is_refused_and_leaves_no_claim(
        zk_url, zk_path, zookeeper_server, tmp_path):
    """On ZooKeeper each candidate's word on --holders is an ephemeral node of its own
    session: another --holders is refused (78, one line) and withdraws its node; the
    holders' nodes tell `lelect leader` the count, and go with a clean exit at once."""
    from tests.test_contract import leading

    target = type("T", (), {"url": zk_url})
    kazoo = KazooClient(zookeeper_server.hosts, timeout=2)
    kazoo.start(10)
    held = [leading(target, "pinned", tmp_path, f"h{i}", "--holders", "2") for i in range(2)]
    try:
        claims = _claims(kazoo, zk_path, "pinned")
        assert len(claims) == 2 and all(c.startswith("n2-") for c in claims), claims
        ran = tmp_path / "ran"
        for other in (("--holders", "3"), ()):
            out = run_lelect("campaign", "pinned", *other, "--no-wait", "--", "touch", str(ran),
                             backend=zk_url)
            assert out.returncode == 78, (out.returncode, out.stderr)
            assert "--holders 2" in out.stderr and out.stderr.count("\n") == 1, out.stderr
        assert not ran.exists()
        assert _claims(kazoo, zk_path, "pinned") == claims  # the refused left nothing
        shown = run_lelect("leader", "pinned", "--json", backend=zk_url)
        assert shown.returncode == 0, shown.stderr
        import json

        assert len(json.loads(shown.stdout)["holders"]) == 2
    finally:
        for proc, release in held:
            release.touch()
            proc.communicate(timeout=30)
    try:
        assert _claims(kazoo, zk_path, "pinned") == []  # a clean exit ends the session
        out = run_lelect("campaign", "pinned", "--holders", "3", "--", "true", backend=zk_url)
        assert out.returncode == 0, out.stderr
    finally:
        kazoo.stop()
        kazoo.close()


def test_a_waiting_candidate_pings_and_sends_no_request_in_a_quiet_window(
        zk_url, zk_path, zookeeper_server, tmp_path):
    """Issue 21: a waiting candidate's load on ZooKeeper is its session's pings (as
    kazoo's Election's): no refresh of its --holders claim, which its session keeps.
    The window is longer than a third of the note's 30 s life (its refresh interval)."""
    from lelect.seats import PIN_TTL
    from tests.test_contract import leading

    target = type("T", (), {"url": zk_url})
    quiet = ("--heartbeat-interval", "0", "--ttl", "2s")
    leader, release = leading(target, "quiet", tmp_path, "leader", *quiet)
    waiter = spawn_lelect("campaign", "quiet", "--id", "waiter", *quiet, "--", "true",
                          backend=zk_url)
    kazoo = KazooClient(zookeeper_server.hosts, timeout=2)
    kazoo.start(10)
    try:
        wait_for_waiter(zookeeper_server, f"{zk_path}/quiet")
        node = zk_queue(kazoo, f"{zk_path}/quiet")[1]
        session = kazoo.exists(f"{zk_path}/quiet/{node}").ephemeralOwner
        assert len(_claims(kazoo, zk_path, "quiet")) == 2
        received, xid = _session_counters(zookeeper_server, session)
        time.sleep(PIN_TTL / 3 + 1)  # a quiet window (time itself is the test)
        received_after, xid_after = _session_counters(zookeeper_server, session)
        assert xid_after == xid, "a waiting candidate sent requests"
        assert received_after > received, "a waiting candidate's session did not ping"
        assert waiter.poll() is None
    finally:
        release.touch()
        leader.communicate(timeout=30)
        assert waiter.wait(timeout=30) == 0
        kazoo.stop()
        kazoo.close()


def test_a_waiting_candidate_maps_no_tls_or_hash_library(zk_url, zk_path, zookeeper_server,
                                                         tmp_path):
    """Issue 21 (a waiting candidate <= 30 MB): kazoo imports ssl and hashlib at once, for
    TLS and digest ACLs; each maps OpenSSL's libcrypto (4-5 MB of RSS). A candidate that
    uses neither loads neither (lelect.backends.defer_imports)."""
    from tests.test_contract import leading

    target = type("T", (), {"url": zk_url})
    leader, release = leading(target, "lean", tmp_path, "leader", "--heartbeat-interval", "0")
    waiter = spawn_lelect("campaign", "lean", "--id", "waiter", "--", "true", backend=zk_url)
    try:
        wait_for_waiter(zookeeper_server, f"{zk_path}/lean")
        maps = Path(f"/proc/{waiter.pid}/maps").read_text()
        assert not [line for line in maps.splitlines()
                    if "libcrypto" in line or "/_ssl." in line or "/_hashlib." in line]
        assert waiter.poll() is None
    finally:
        release.touch()
        leader.communicate(timeout=30)
        waiter.communicate(timeout=30)
