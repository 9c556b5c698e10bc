"""What is specific to the MySQL/MariaDB backend (the contract suite covers the rest):
its tables, the documented GRANTs and a password file, the doorbell waiters block on,
the keeper's standard-library hand-back, and hostile servers."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lelect.backends import connect
from lelect.backends.base import Heartbeat
from tests.helpers import LELECT, assert_one_line, candidate, lelect_env, run_lelect, wait_until
from tests.plugins.hostile import read_some, send_and_hold
from tests.plugins.mysql_server import DATABASE, GRANTS, RUN_GRANTS, fresh_prefix
from tests.plugins.proxy import Wiretap

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def url(mysql_server) -> str:
    return mysql_server.url(ttl="2s", prefix=fresh_prefix())


def prefix_of(url: str) -> str:
    return re.search(r"prefix=([a-z0-9_]+)", url).group(1)


# -- the tables ---------------------------------------------------------------------------


def test_tables_are_created_on_first_use_and_versioned(mysql_server, url):
    prefix = prefix_of(url)
    with connect(url) as backend:
        assert backend.leader("e") is None  # a read creates nothing
        assert not mysql_server.sql(f"SHOW TABLES FROM {DATABASE} LIKE '{prefix}%'")
        backend.campaign("e", candidate("a"), timeout=5).release()
    tables = {name for (name,) in mysql_server.sql(f"SHOW TABLES FROM {DATABASE} LIKE '{prefix}%'")}
    assert tables == {prefix + t for t in
                      ("lease", "term", "history", "slot", "member", "note", "schema_version")}
    assert mysql_server.sql(f"SELECT version FROM {DATABASE}.{prefix}schema_version") == [(1,)]
    mysql_server.sql(f"UPDATE {DATABASE}.{prefix}schema_version SET version = 99")
    out = run_lelect("campaign", "e", "--", "true", backend=url)
    assert_one_line(out, 78, "version 99", "upgrade lelect")


def test_expiry_is_by_the_servers_clock_in_utc(mysql_server, url):
    """The lease row's expiry is NOW(6) + ttl in UTC, whatever the server's time zone."""
    mysql_server.sql("SET GLOBAL time_zone = '+05:00'")
    try:
        with connect(url) as backend:
            leadership = backend.campaign("tz", candidate("a"), timeout=5)
            (left,) = mysql_server.sql(
                f"SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) / 1e6"
                f" FROM {DATABASE}.{prefix_of(url)}lease")[0]
            assert 0 < float(left) <= 2.0
            leadership.release()
    finally:
        mysql_server.sql("SET GLOBAL time_zone = SYSTEM")


def test_terms_never_go_back_when_the_lease_rows_are_deleted(mysql_server, url):
    with connect(url) as backend:
        first = backend.campaign("t", candidate("a"), timeout=5)
        first.release()
        mysql_server.sql(f"DELETE FROM {DATABASE}.{prefix_of(url)}lease")
        second = backend.campaign("t", candidate("b"), timeout=5)
        assert second.term == first.term + 1
        second.release()


def test_tables_made_before_notes_gain_the_note_table(mysql_server, url):
    with connect(url) as backend:
        backend.campaign("n", candidate("a"), timeout=5).release()
    mysql_server.sql(f"DROP TABLE {DATABASE}.{prefix_of(url)}note")  # as an older lelect left them
    with connect(url) as backend:
        assert backend.get_note("n", "holders") is None
        assert backend.put_note("n", "holders", b"3") is True
        assert backend.get_note("n", "holders") == b"3"
    (expires,), = mysql_server.sql(f"SELECT expires_at FROM {DATABASE}.{prefix_of(url)}note")
    assert expires is None  # no ttl: until deleted


def test_an_oversized_note_stored_behind_lelects_back_reads_as_none(mysql_server, url):
    with connect(url) as backend:
        assert backend.put_note("big", "value:1", b"small") is True
        mysql_server.sql(f"UPDATE {DATABASE}.{prefix_of(url)}note SET data = REPEAT('x', 60000)")
        assert backend.get_note("big", "value:1") is None


# -- least privilege and secrets ------------------------------------------------------------


def documented_grants() -> list[str]:
    text = (ROOT / "docs" / "mysql.md").read_text()
    return [m.group(1) for m in re.finditer(r"^GRANT (.+?) ON ", text, re.M)]


def test_the_documented_grants_are_the_ones_the_tests_use():
    assert documented_grants() == [GRANTS, RUN_GRANTS]


def test_a_user_with_only_the_run_grants_and_a_password_file_runs_a_campaign(
        mysql_server, url, tmp_path):  # fmt: skip
    with connect(url) as backend:  # the tables exist (created by the full user)
        backend.campaign("ready", candidate("a"), timeout=5).release()
    user = f"run{os.getpid()}_{time.monotonic_ns() % 10**6}"
    mysql_server.create_user(user, "run-pw-1", RUN_GRANTS, DATABASE)
    pw = tmp_path / "pw"
    pw.write_text("run-pw-1\n")
    pw.chmod(0o600)
    run_url = mysql_server.url(user=user, password=None, ttl="2s", prefix=prefix_of(url),
                               password_file=str(pw))  # fmt: skip
    out = run_lelect("campaign", "least", "--", "sh", "-c", 'echo "term=$LELECT_TERM"',
                     backend=run_url)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "term=1" in out.stdout
    assert "run-pw-1" not in out.stdout + out.stderr
    with connect(run_url) as backend:  # notes, for seats, values and handovers
        assert backend.put_note("least", "value.7", b"2", 30, create=True) is True
        assert backend.get_note("least", "value.7") == b"2"
        backend.delete_note("least", "value.7")
    # Without CREATE, a fresh prefix cannot be set up: 78, naming the GRANT.
    fresh = mysql_server.url(user=user, password=None, prefix=fresh_prefix(), password_file=str(pw))
    out = run_lelect("campaign", "least", "--", "true", backend=fresh)
    assert_one_line(out, 78, "GRANT", "docs/mysql.md")


def test_a_wrong_password_is_69_in_one_line_without_the_password(mysql_server):
    out = run_lelect("leader", "x", backend=mysql_server.url(password="not-the-pw-77"))
    assert_one_line(out, 69, "access denied")
    assert "not-the-pw-77" not in out.stderr


def test_without_pymysql_mysql_urls_say_how_to_install_it(tmp_path):
    import pymysql

    site = Path(pymysql.__file__).resolve().parent.parent
    hidden = tmp_path / "site"
    hidden.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith("pymysql"):
            (hidden / entry.name).symlink_to(entry)
    out = subprocess.run(
        [sys.executable, "-S", "-m", "lelect", "-b", "mysql://u@127.0.0.1/db", "leader", "x"],
        env={**lelect_env(), "PYTHONPATH": f"{hidden}{os.pathsep}{ROOT}"},
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert_one_line(out, 2, "PyMySQL", "lelect[mysql]")


# -- waiting ------------------------------------------------------------------------------------


def test_waiters_block_on_the_leaders_lock_and_the_next_in_line_is_woken(mysql_server, url):
    """Three waiters behind a leader: they sit in GET_LOCK (no polling), and a release
    hands over to one of them at once."""
    with connect(url) as backend:
        first = backend.campaign("bell", candidate("a"), timeout=5, ttl=30)
        won: list = []

        def wait(name: str) -> None:
            won.append(backend.campaign("bell", candidate(name), timeout=30, ttl=30))

        threads = [threading.Thread(target=wait, args=(n,)) for n in ("b", "c", "d")]
        for thread in threads:
            thread.start()

        def blocked() -> int:
            return mysql_server.sql(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
                " WHERE INFO LIKE '%GET_LOCK(%' AND USER = 'lelect'")[0][0]

        wait_until(lambda: blocked() == 3, timeout=10, what="three waiters in GET_LOCK")
        released_at = time.monotonic()
        first.release()
        wait_until(lambda: won, timeout=5, what="the next in line")
        assert time.monotonic() - released_at < 1.0
        assert len(won) == 1 and blocked() == 2
        for leadership in list(won):
            leadership.release()
        for thread in threads:
            thread.join(10)
        for leadership in won:
            leadership.release()


class Statements(Wiretap):
    """The SQL clients send a real server through a proxy, read off the wire: the text
    of each COM_QUERY, in order."""

    def size(self, header: bytes) -> int:
        return int.from_bytes(header[:3], "little")

    def read(self, number: int, header: bytes, body: bytes) -> str | None:
        if header[3] == 0 and body[:1] == b"\x03":  # a command's first packet: COM_QUERY
            return body[1:].decode(errors="replace")
        return None


def test_a_waiter_behind_a_renewing_leader_reads_the_lease_at_its_expiry_and_acquires_nothing(
        mysql_server, url, partition_proxy):  # fmt: skip
    """At the lease's expiry a waiter reads how long the lease has now (a renewed lease:
    it waits on until then); it runs the acquire's transaction only when the lease is
    gone: about once per lease, one read and one wait, never a write."""
    statements = Statements()
    proxy = partition_proxy("127.0.0.1", mysql_server.port, statements)
    watched = url.replace(f"127.0.0.1:{mysql_server.port}", proxy.address)
    assert watched != url
    with connect(url.replace("ttl=2s", "ttl=1s")) as leading, connect(watched) as waiting:
        leader = leading.campaign("renewing", candidate("a"), timeout=5)
        won: list = []
        thread = threading.Thread(target=lambda: won.append(
            waiting.campaign("renewing", candidate("b"), timeout=30)))
        thread.start()
        try:
            wait_until(lambda: any("GET_LOCK" in text for text in statements.since()),
                       timeout=10, what="the waiter in GET_LOCK")
            began = statements.mark()
            time.sleep(4.0)  # four leases of 1 s, each renewed
            quiet = statements.since(began)
            assert not [text for text in quiet if "lelect acquire" in text], len(quiet)
            assert 2 <= sum("GET_LOCK" in text for text in quiet) <= 12, quiet
            assert not won
        finally:
            leader.release()
            thread.join(10)
            for leadership in won:
                leadership.release()
        assert won, "the waiter took over after the release"
    # (The wire shows the acquire: its absence above is no blind spot of the proxy's.)
    assert any("lelect acquire" in text for text in statements.since(began))


def test_a_waiting_candidate_loads_no_openssl(mysql_server, url, processes):
    """Without TLS a candidate waiting in line has not loaded OpenSSL's libraries (ssl,
    _hashlib: megabytes of memory): PyMySQL is imported without them, and lelect's
    tokens and lock names use none."""
    leader = subprocess.Popen([*LELECT, "campaign", "lean", "--", "sleep", "60"],
                              env=lelect_env(url), stdout=subprocess.DEVNULL)  # fmt: skip
    processes.append(leader)
    with connect(url) as backend:
        wait_until(lambda: backend.leader("lean"), timeout=20, what="the leader")
    waiter = subprocess.Popen([*LELECT, "campaign", "lean", "--", "true"], env=lelect_env(url),
                              stdout=subprocess.DEVNULL)  # fmt: skip
    processes.append(waiter)

    def blocked() -> int:
        return mysql_server.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST"
                                " WHERE INFO LIKE '%GET_LOCK(%' AND USER = 'lelect'")[0][0]

    wait_until(lambda: blocked() >= 1, timeout=20, what="the candidate in line")
    maps = Path(f"/proc/{waiter.pid}/maps").read_text()
    assert not [line for line in maps.splitlines() if "libssl" in line or "libcrypto" in line
                or "_ssl." in line or "_hashlib." in line]


TLS_AFTER_A_LEAN_IMPORT = """
import sys, json
import lelect.backends.mysql.backend
from lelect.backends import connect
from tests.helpers import candidate
lean = not {"_ssl", "_hashlib"} & set(sys.modules)  # ssl may be a deferred stand-in
tls_url, plain_url = sys.argv[1:]
sockets = []
for url in (tls_url, plain_url):
    with connect(url) as backend:
        leadership = backend.campaign("tls", candidate("a"), timeout=5)
        sockets.append(type(leadership.session.connection._sock).__name__)
        leadership.release()
import hashlib  # anyone's later hashlib is OpenSSL's, as ever
print(json.dumps({"lean": lean, "sockets": sockets, "openssl": hasattr(hashlib, "scrypt")}))
"""


def test_tls_after_an_import_without_openssl_and_none_when_not_asked(mysql_tls_server):
    """In a process that imported the backend without OpenSSL, a TLS URL still speaks
    TLS; a URL without TLS speaks none even to a server that offers it (PyMySQL 1.2
    would, building a TLS context on every connection); hashlib imported later is
    OpenSSL's."""
    server, certs = mysql_tls_server
    tls = server.url(ttl="2s", ssl_mode="verify_identity", ssl_ca=str(certs["ca"]))
    plain = server.url(ttl="2s", prefix=fresh_prefix())
    out = subprocess.run([sys.executable, "-c", TLS_AFTER_A_LEAN_IMPORT, tls, plain],
                         capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"lean": True, "sockets": ["SSLSocket", "socket"],
                                      "openssl": True}


def test_a_waiter_heartbeats_and_looks_up_on_its_one_connection(mysql_server):
    """A candidate waiting behind a long lease (12 s) holds one connection: its GET_LOCK
    wait is cut so that its heartbeats (every 0.3 s) still arrive on time, and a lookup
    from another thread is answered within its own bound."""
    url = mysql_server.url(ttl="12s", prefix=fresh_prefix())
    with connect(url) as leading, connect(url) as backend:
        first = leading.campaign("one", candidate("a"), timeout=5)
        won: list = []

        def ids() -> set[int]:
            return {row[0] for row in mysql_server.sql(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'lelect'")}

        def beat(seq: int) -> Heartbeat:
            return Heartbeat(election="one", node_id="b", host="h", pid=1, role="follower",
                             term=None, seq=seq, time=time.time(), interval=0.3)

        before = ids()
        waiter = threading.Thread(
            target=lambda: won.append(backend.campaign("one", candidate("b"), timeout=30)),
            daemon=True)  # fmt: skip
        waiter.start()
        wait_until(lambda: mysql_server.sql(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
            " WHERE INFO LIKE '%GET_LOCK(%' AND USER = 'lelect'")[0][0] == 1,
            timeout=10, what="the waiter in GET_LOCK")  # fmt: skip
        took = []
        for seq in range(12):
            started = time.monotonic()
            backend.publish(beat(seq), 60)
            took.append(time.monotonic() - started)
            time.sleep(0.3)
        started = time.monotonic()
        assert backend.leader("one").node_id == "a"
        took.append(time.monotonic() - started)
        assert not won and waiter.is_alive()
        assert ids() - before == {backend._command.connection.thread_id()}
        arrivals = next(r.arrivals for r in backend.members("one").records if r.node_id == "b")
        gaps = [b - a for a, b in zip(arrivals[2:], arrivals[3:])]
        assert max(gaps) < 0.9, gaps  # no beat waited for a whole 12 s wait
        assert max(took[2:]) < 0.6, took
        first.release()
        waiter.join(10)
        assert won and won[0].node_id == "b"
        won[0].release()


# -- the keeper's hand-back -----------------------------------------------------------------


def keeper_hand_back(params: dict, budget: float, exit_status: int | None = 137):
    """Run the hand-back as the keeper does: ``python -S -I`` (no site-packages)."""
    code = (
        "import importlib, json, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "request = json.loads(sys.stdin.read())\n"
        "module = importlib.import_module(request['module'])\n"
        "word = module.hand_back(request['params'], request['budget'], request['status'])\n"
        "print(json.dumps({'word': word, 'modules': sorted(sys.modules)}))\n"
    )
    request = {"module": "lelect.backends.mysql.handback", "params": params,
               "budget": budget, "status": exit_status}  # fmt: skip
    return subprocess.run([sys.executable, "-S", "-I", "-c", code], input=json.dumps(request),
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_hand_back_releases_by_token_and_never_touches_another_leaders_row(url):
    with connect(url) as backend:
        a = backend.campaign("hb", candidate("a"), timeout=5, ttl=1)
        backend.publish(Heartbeat(election="hb", node_id="a", host="h", pid=1, role="leader",
                                  term=a.term, seq=1, time=time.time()), ttl=60)  # fmt: skip
        recipe = backend.hand_back(a)
        assert recipe is not None and recipe.module == "lelect.backends.mysql.handback"
        a.lease.stop()  # lelect "died": no renews, no release
        wait_until(lambda: backend.leader("hb") is None, timeout=5, what="a's lease to run out")
        b = backend.campaign("hb", candidate("b"), timeout=5, ttl=10)
        out = keeper_hand_back(recipe.params, 5.0)
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["word"] == "not ours"
        assert not [m for m in answer["modules"] if m.startswith(("pymysql", "ssl"))]
        assert backend.leader("hb").node_id == "b"
        assert [h.outcome for h in backend.history("hb")] == ["vanished", "running"]
        recipe_b = backend.hand_back(b)
        b.lease.stop()
        out = keeper_hand_back(recipe_b.params, 5.0)
        assert json.loads(out.stdout)["word"] == "released", out.stderr
        assert backend.leader("hb") is None
        entries = backend.history("hb")
        assert entries[-1].outcome == "lost" and entries[-1].exit_status == 137
        assert entries[-1].reason.startswith("lelect died")


def test_hand_back_scrambles_as_pymysql_does():
    from pymysql import _auth

    from lelect.backends.mysql import handback

    salt = bytes(range(1, 21))
    for password in (b"pw", "pässwörd".encode(), b"x" * 80):
        assert handback.scramble_native(password, salt) == _auth.scramble_native_password(password, salt)
        assert handback.scramble_caching_sha2(password, salt) == _auth.scramble_caching_sha2(password, salt)


def test_hand_back_gives_up_within_its_budget_on_a_silent_server(silent_listener):
    params = {"host": "127.0.0.1", "port": silent_listener, "user": "u", "password": "p",
              "database": "d", "prefix": "lelect_", "election": "x", "token": "t" * 32,
              "term": 1, "node_id": "a", "mariadb": True}
    started = time.monotonic()
    out = keeper_hand_back(params, 1.0)
    assert time.monotonic() - started < 10
    assert "TimeoutError" in out.stderr or "budget" in out.stderr


# -- hostile servers ----------------------------------------------------------------------------


def greeting(plugin: bytes = b"mysql_native_password") -> bytes:
    """A v10 greeting as MariaDB sends it."""
    caps = 0xF7FF | (0x81BF << 16)
    body = (b"\x0a" + b"5.5.5-10.11.0-MariaDB\0" + struct.pack("<I", 7) + b"abcdefgh\0"
            + struct.pack("<H", caps & 0xFFFF) + b"\x2d" + struct.pack("<H", 2)
            + struct.pack("<H", caps >> 16) + b"\x15" + b"\0" * 10 + b"ijklmnopqrst\0"
            + plugin + b"\0")
    return struct.pack("<I", len(body))[:3] + b"\x00" + body


def packet(seq: int, body: bytes) -> bytes:
    return struct.pack("<I", len(body))[:3] + bytes([seq]) + body


@pytest.mark.parametrize("answer", [
    pytest.param(b"\xff\xff\xff\x00" + b"A" * 100, id="huge-packet-announced"),
    pytest.param(b"HTTP/1.1 400 Bad Request\r\n\r\n", id="not-mysql"),
    pytest.param(packet(0, b"\x0a\x00\x00"), id="short-greeting"),
    pytest.param(greeting() + packet(2, b"\xff\x15\x04#28000\x1b]0;PWNED\x07" + b"X" * 3000),
                 id="error-with-escapes"),
    pytest.param(greeting() + packet(2, b"\x07garbage"), id="garbled-auth-answer"),
    pytest.param(greeting() + packet(2, b"\xfe") , id="garbled-auth-switch"),
])
def test_a_hostile_server_is_69_in_one_line(hostile_server, answer):
    def script(conn, stopped):
        conn.sendall(answer)
        read_some(conn)
        send_and_hold(conn, stopped, b"")

    server = hostile_server(script)
    started = time.monotonic()
    out = subprocess.run([*LELECT, "leader", "x"], capture_output=True, text=True, timeout=60,
                         env=lelect_env(f"mysql://u:pw@127.0.0.1:{server.port}/db"
                                        "?connect_timeout=2s"))  # fmt: skip
    assert_one_line(out, 69)
    assert time.monotonic() - started < 15
    assert "\x1b" not in out.stderr and "\x07" not in out.stderr
    assert len(out.stderr) < 600


def test_a_server_that_streams_without_end_is_69_with_bounded_memory(hostile_server):
    from tests.plugins.hostile import stream_forever
    from tests.test_hostile_servers import assert_one_line_69, run_measured

    server = hostile_server(lambda conn, stopped: stream_forever(
        conn, stopped, greeting() + b"\xfe\xff\xff\x02", b"\x00" * 65536))
    out = run_measured("leader", "x", backend=f"mysql://u:pw@127.0.0.1:{server.port}/db"
                                              "?connect_timeout=3s")
    assert_one_line_69(out, within=15)


def test_the_hand_back_refuses_a_hostile_server(hostile_server):
    from lelect.backends.mysql import handback

    server = hostile_server(lambda conn, stopped: send_and_hold(
        conn, stopped, greeting(b"dialog") + packet(2, b"\xfedialog\0xyz\0")))
    params = {"host": "127.0.0.1", "port": server.port, "user": "u", "password": "p",
              "database": "d", "prefix": "lelect_", "election": "x", "token": "t" * 32,
              "term": 1, "node_id": "a", "mariadb": True}
    with pytest.raises(handback.WireError, match="does not speak"):
        handback.hand_back(params, 3.0, 0)


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture
def mysql_tls_server(tmp_path):
    from tests.plugins.mysql_server import MariaDBServer
    from tests.plugins.redis_server import make_test_certs

    certs = make_test_certs(tmp_path / "certs")
    server = MariaDBServer(tls=certs)
    yield server, certs
    server.remove()


def test_tls_verified_campaign_and_no_hand_back_over_tls(mysql_tls_server, mysql_server):
    server, certs = mysql_tls_server
    url = server.url(ttl="2s", ssl_mode="verify_identity", ssl_ca=str(certs["ca"]))
    with connect(url) as backend:
        leadership = backend.campaign("tls", candidate("a"), timeout=5)
        assert type(leadership.session.connection._sock).__name__ == "SSLSocket"
        assert backend.hand_back(leadership) is None  # the keeper's client speaks no TLS
        leadership.release()
    # The wrong CA: refused in one line.
    other = make_other_ca(certs["ca"].parent.parent / "other")
    out = run_lelect("leader", "x", backend=server.url(ssl_mode="verify_ca", ssl_ca=str(other)))
    assert_one_line(out, 69)
    # TLS asked of a server that offers none: refused, never a silent downgrade.
    out = run_lelect("leader", "x", backend=mysql_server.url(ssl_mode="required"))
    assert_one_line(out, 69, "does not offer TLS")


def make_other_ca(directory: Path) -> Path:
    from tests.plugins.redis_server import make_test_certs

    return make_test_certs(directory)["ca"]


def test_the_server_closes_a_silent_leaders_connection_a_ttl_later(url):
    """A leader's host cut off by a partition leaves its connection, and the election's
    doorbell, open on the server for its wait_timeout (8 hours by default): each renew
    sets it to the ttl and 10 s more, so the doorbell goes with a silent leader soon
    after its lease would have."""
    with connect(url) as backend:
        leadership = backend.campaign("idle", candidate("a"), timeout=5, ttl=3.5)
        try:
            leadership.begin()
            wait_until(lambda: leadership.session.run(
                "SELECT @@SESSION.wait_timeout", 5.0)[0][0] == 14, timeout=10,
                what="a renew")
        finally:
            leadership.release()
