"""A broken or malicious server: every read has a deadline and a size cap, and a garbled
answer is status 69 with one line, never 70, never a hang, never unbounded memory."""

from __future__ import annotations

import struct
import subprocess
import time
from dataclasses import dataclass

import psutil
import pytest

from tests.helpers import LELECT, lelect_env
from tests.plugins.hostile import answering, read_some, send_and_hold, stream_forever

#: Far below what the attacks reached before the caps (208 MB and 2.1 GB RSS).
RSS_BOUND = 150 * 1024 * 1024


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int


def run_measured(*args: str, backend: str, limit: float = 30.0) -> Outcome:
    """Run lelect, sampling its RSS; kill it (and fail) if it outlives ``limit``."""
    start = time.monotonic()
    proc = subprocess.Popen([*LELECT, *args], env=lelect_env(backend), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watched = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            pass
        if time.monotonic() - start > limit:
            proc.kill()
            proc.communicate()
            pytest.fail(f"lelect {' '.join(args)} still ran after {limit}s, RSS {peak >> 20} MiB")
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    return Outcome(proc.returncode, stdout, stderr, time.monotonic() - start, peak)


def assert_one_line_69(out: Outcome, within: float) -> None:
    assert out.status == 69, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert out.seconds < within, out.seconds
    assert out.peak_rss < RSS_BOUND, out.peak_rss >> 20


# -- Redis ------------------------------------------------------------------------------


def test_redis_endless_status_line_is_69_within_the_timeout(hostile_server):
    server = hostile_server(lambda conn, stopped: (
        read_some(conn), stream_forever(conn, stopped, b"+")))
    out = run_measured("campaign", "-w", "2s", "x", "--", "true",
                       backend=f"redis://127.0.0.1:{server.port}/0")
    assert_one_line_69(out, within=10)
    assert "redis" in out.stderr


@pytest.mark.parametrize("reply", [
    pytest.param(b"$" + str(1 << 40).encode() + b"\r\n", id="huge-bulk"),
    pytest.param(b"*" + str(1 << 40).encode() + b"\r\n", id="huge-array"),
    pytest.param(b"*1\r\n" * 5000, id="deep-array"),
    pytest.param(b"?what\r\n", id="unknown-type"),
    pytest.param(b":12x\r\n", id="bad-integer"),
])
def test_redis_malformed_reply_is_69(hostile_server, reply):
    server = hostile_server(answering(reply))
    out = run_measured("leader", "x", backend=f"redis://127.0.0.1:{server.port}/0?connect_timeout=3s")
    assert_one_line_69(out, within=10)


def test_redis_slow_drip_reply_ends_by_the_deadline(hostile_server):
    def script(conn, stopped):
        read_some(conn)
        conn.sendall(b"+")
        while not stopped.wait(0.05):
            conn.sendall(b"A")  # every recv gets a byte: only an overall deadline helps

    server = hostile_server(script)
    out = run_measured("leader", "x", backend=f"redis://127.0.0.1:{server.port}/0?connect_timeout=1s")
    assert_one_line_69(out, within=6)


#: A RESP3 server's answer to HELLO 3 (lelect asks for RESP3, to share one connection).
HELLO_3 = b"%1\r\n+proto\r\n:3\r\n"


@pytest.mark.parametrize("reply", [
    pytest.param(b">" + str(1 << 40).encode() + b"\r\n", id="huge-push"),
    pytest.param(b">1\r\n" + b"*1\r\n" * 5000, id="deep-push"),
    pytest.param(b">3\r\n+message\r\n+ch\r\n>1\r\n+x\r\n", id="push-in-push"),
    pytest.param(b"%" + str(1 << 40).encode() + b"\r\n", id="huge-map"),
    pytest.param(b"%1\r\n+k\r\n" * 5000, id="deep-map"),
    pytest.param(b"%1\r\n*1\r\n+k\r\n+v\r\n", id="array-as-map-key"),
    pytest.param(b"~2\r\n" + b"*1000000\r\n" + b":1\r\n" * 10, id="too-many-elements"),
    pytest.param(b"|1\r\n+a\r\n+b\r\n+OK\r\n", id="attribute"),
])
def test_redis_hostile_resp3_frame_is_69(hostile_server, reply):
    """A server that agreed to RESP3 and then sends an oversized or deeply nested push,
    map or set: cut off by the caps, one line, status 69."""
    def script(conn, stopped):
        read_some(conn)  # HELLO 3
        conn.sendall(HELLO_3)
        read_some(conn)  # the command
        send_and_hold(conn, stopped, reply)

    server = hostile_server(script)
    out = run_measured("leader", "x", backend=f"redis://127.0.0.1:{server.port}/0?connect_timeout=3s")
    assert_one_line_69(out, within=10)


def test_redis_push_flood_while_waiting_is_bounded(hostile_server):
    """Endless pushes between the answers (a hostile server): a call still ends by its
    budget, memory stays bounded, one line, status 69."""
    def script(conn, stopped):
        read_some(conn)  # HELLO 3
        conn.sendall(HELLO_3)
        read_some(conn)
        push = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4096\r\n" + b"A" * 4096 + b"\r\n"
        conn.settimeout(1.0)
        end = time.monotonic() + 30
        while not stopped.is_set() and time.monotonic() < end:
            try:
                conn.sendall(push * 64)
            except TimeoutError:
                continue
            except OSError:
                return

    server = hostile_server(script)
    out = run_measured("leader", "x", backend=f"redis://127.0.0.1:{server.port}/0?connect_timeout=2s")
    assert_one_line_69(out, within=10)


@pytest.mark.parametrize("reply", [
    pytest.param(None, id="endless-line"),
    pytest.param(b"$" + str(1 << 40).encode() + b"\r\n", id="huge-bulk"),
    pytest.param(b"*1\r\n" * 5000, id="deep-array"),
    pytest.param(b":1e999\r\n", id="bad-integer"),
])
def test_redis_hand_back_refuses_a_malformed_reply_in_time(hostile_server, reply):
    from lelect.backends.redis import handback as _handback_redis

    def endless(conn, stopped):
        read_some(conn)
        stream_forever(conn, stopped, b"+")

    server = hostile_server(endless if reply is None else answering(reply))
    params = {"address": {"host": "127.0.0.1", "port": server.port}, "argv": [], "keys": [],
              "sha": "0" * 40, "script": "return 1"}
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="not a Redis reply"):
        _handback_redis.hand_back(params, 5.0, 0)
    assert time.monotonic() - started < 2.0


# -- etcd (its v3 JSON gateway) ------------------------------------------------------------


def http_answer(body: bytes, status: bytes = b"200 OK") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


@pytest.mark.parametrize("answer", [
    pytest.param(b"garbage\r\n\r\n", id="not-http"),
    pytest.param(http_answer(b"[" * 100000), id="deep-json"),
    pytest.param(http_answer(b'{"header": [1, 2], "kvs": "x", "count": {}}'), id="wrong-types"),
    pytest.param(http_answer(b"\xff\xfe not json"), id="not-json"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999\r\n\r\n", id="huge-body"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX: " + b"A" * (1 << 20), id="endless-head"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="bad-chunk"),
])
def test_etcd_garbled_answer_is_69(hostile_server, answer):
    server = hostile_server(answering(answer))
    out = run_measured("leader", "x",
                       backend=f"etcd://127.0.0.1:{server.port}/lelect?connect_timeout=3s")
    assert_one_line_69(out, within=10)
    assert "etcd" in out.stderr


def watch_answer(*lines: bytes) -> bytes:
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in lines)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks


CREATED = b'{"result":{"header":{"revision":"5"},"created":true}}\n'


@pytest.mark.parametrize("after", [
    pytest.param(b"[1,2]\n", id="array-line"),
    pytest.param(b'{"result": [1]}\n', id="array-result"),
    pytest.param(b'{"result": {"events": [{"kv": {"key": 5, "create_revision": "x"}}]}}\n',
                 id="wrong-types"),
    pytest.param(b"[" * 100000 + b"\n", id="deep-json"),
])
def test_etcd_garbled_watch_line_ends_the_watch_with_a_gateway_error(hostile_server, after):
    from lelect.backends.etcd.gateway import Endpoint, Gateway, GatewayError

    server = hostile_server(answering(watch_answer(CREATED, after)))
    gateway = Gateway([Endpoint("127.0.0.1", server.port)])
    stream = gateway.watch("/lelect/x", budget=3.0)
    with pytest.raises(GatewayError, match="ended"):
        stream.next(3.0)


def test_etcd_endless_watch_chunk_is_cut_off(hostile_server):
    from lelect.backends.etcd.gateway import MAX_WATCH_LINE, Endpoint, Gateway, GatewayError

    def script(conn, stopped):
        read_some(conn)
        head = watch_answer(CREATED) + b"fffffff\r\n"  # a 256 MiB chunk, no newline in it
        stream_forever(conn, stopped, head)

    server = hostile_server(script)
    gateway = Gateway([Endpoint("127.0.0.1", server.port)])
    stream = gateway.watch("/lelect/x", budget=3.0)
    before = psutil.Process().memory_info().rss
    started = time.monotonic()
    with pytest.raises(GatewayError, match="longer than"):
        while time.monotonic() - started < 20:
            stream.next(0.5)
    assert psutil.Process().memory_info().rss - before < 4 * MAX_WATCH_LINE


# -- ZooKeeper ----------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [
    pytest.param(b"\x7f\xff\xff\xf0", id="2GB-frame"),
    pytest.param(b"\xff\xff\xff\xf0", id="negative-length"),
    pytest.param(b"\x00\x00\x00\x03abc", id="short-garbage"),
])
def test_zookeeper_hostile_frame_is_69_without_allocating_it(hostile_server, frame):
    def script(conn, stopped):
        read_some(conn)
        stream_forever(conn, stopped, frame, filler=b"\0" * 65536)  # and fill the frame

    server = hostile_server(script)
    out = run_measured("leader", "x",
                       backend=f"zookeeper://127.0.0.1:{server.port}/lelect?connect_timeout=2s")
    assert_one_line_69(out, within=10)
    assert "ZooKeeper" in out.stderr


@pytest.mark.parametrize("frame", [
    pytest.param(b"\x7f\xff\xff\xf0", id="2GB-frame"),
    pytest.param(b"\x00\x00\x00\x0a" + b"\0" * 10, id="short-frame"),
])
def test_zookeeper_hand_back_refuses_a_hostile_frame_in_time(hostile_server, frame):
    from lelect.backends.zookeeper import handback as _handback_zookeeper

    def script(conn, stopped):
        read_some(conn)
        stream_forever(conn, stopped, frame, filler=b"\0" * 65536)

    server = hostile_server(script)
    params = {"hosts": [["127.0.0.1", server.port]], "session_id": 1, "password": "00" * 16,
              "timeout_ms": 10000, "node": "/lelect/x/n", "member": "/lelect/_members/x/n",
              "entry": None}
    started = time.monotonic()
    with pytest.raises(_handback_zookeeper.HandBackFailed, match="not a ZooKeeper answer"):
        _handback_zookeeper.hand_back(params, 5.0, 0)
    assert time.monotonic() - started < 2.0


# -- PostgreSQL ---------------------------------------------------------------------------


def pg_message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def pg_startup(conn) -> bytes:
    """Answer an SSLRequest with "no" and return the start-up message."""
    first = read_some(conn)
    if first[4:8] == struct.pack("!I", 80877103):
        conn.sendall(b"N")
        first = read_some(conn)
    return first


def test_postgres_server_text_is_shown_printable_and_short(hostile_server):
    message = b"FATAL\x1b]0;PWNED\x07 " + b"X" * 5000 + b"\r\nlelect: forged line"

    def script(conn, stopped):
        pg_startup(conn)
        body = b"SFATAL\0C28000\0M" + message + b"\0\0"
        send_and_hold(conn, stopped, pg_message(b"E", body))

    server = hostile_server(script)
    out = run_measured("leader", "x", backend=f"postgresql://u:pw@127.0.0.1:{server.port}/db"
                                              "?connect_timeout=3s&sslmode=disable")
    assert_one_line_69(out, within=10)
    assert "\x1b" not in out.stderr and "\x07" not in out.stderr and "\r" not in out.stderr
    assert len(out.stderr) < 600


#: A session the client may use: authentication done, ready for a query.
PG_READY = (pg_message(b"R", struct.pack("!I", 0)) + pg_message(b"S", b"in_hot_standby\0off\0")
            + pg_message(b"Z", b"I"))
#: One notification, as the flood sends it without end.
PG_NOTIFY = pg_message(b"A", struct.pack("!i", 7) + b"lelect_flood\0payload\0")


def pg_answering(answer: bytes | None, then_stream: bytes = b""):
    """A fake PostgreSQL that lets the client in and answers its first query with
    ``answer`` (None: silence), then streams ``then_stream`` without end, if given."""

    def script(conn, stopped):
        pg_startup(conn)
        conn.sendall(PG_READY)
        read_some(conn)  # the first query
        if then_stream:
            stream_forever(conn, stopped, answer or b"", filler=then_stream * 512)
        elif answer is None:
            send_and_hold(conn, stopped, b"")
        else:
            send_and_hold(conn, stopped, answer)

    return script


@pytest.mark.parametrize("answer, flood", [
    pytest.param(pg_message(b"T", b"\0\1"), b"", id="garbled-row-description"),
    pytest.param(b"D" + struct.pack("!I", 1 << 30), b"", id="huge-message"),
    pytest.param(b"D" + struct.pack("!I", 2), b"", id="impossible-length"),
    pytest.param(pg_message(b"?", b"what"), b"", id="unknown-message"),
    pytest.param(pg_message(b"T", struct.pack("!H", 1) + b"c\0" + struct.pack("!IhIhih", 0, 0, 23, 4, -1, 0))
                 + pg_message(b"D", struct.pack("!Hi", 1, 3) + b"1x2") + pg_message(b"Z", b"I"),
                 b"", id="bad-integer"),
    pytest.param(b"", PG_NOTIFY, id="notify-flood"),
    pytest.param(None, b"", id="silence"),
])
def test_postgres_malformed_answer_is_69(hostile_server, answer, flood):
    server = hostile_server(pg_answering(answer, flood))
    out = run_measured("leader", "x", backend=f"postgresql://u:pw@127.0.0.1:{server.port}/db"
                                              "?connect_timeout=2s")
    assert_one_line_69(out, within=10)
    assert "PostgreSQL" in out.stderr and "pw" not in out.stderr.replace("PostgreSQL", "")


def handback_params(port: int, **extra) -> dict:
    return {"host": "127.0.0.1", "hostaddr": "127.0.0.1", "port": port, "user": "u",
            "password": "pw-secret", "dbname": "db", "tls": False, "sslmode": "disable",
            "schema": "lelect", "election": "x", "token": "t" * 32, "term": 1, "node_id": "a",
            **extra}


class AuthScript:
    """A fake PostgreSQL that asks for one kind of authentication and records what the
    client sent back."""

    def __init__(self, request: bytes, then: bytes = b"") -> None:
        self.request, self.then = request, then
        self.received = b""

    def __call__(self, conn, stopped):
        pg_startup(conn)
        conn.sendall(self.request)
        conn.settimeout(0.5)
        while not stopped.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            self.received += data
            if data.startswith(b"p") and self.then:
                conn.sendall(self.then)
                self.then = b""


@pytest.mark.parametrize("require_auth, request_", [
    pytest.param("scram-sha-256", pg_message(b"R", struct.pack("!I", 3)), id="cleartext"),
    pytest.param("scram-sha-256", pg_message(b"R", struct.pack("!I", 5) + b"salt"), id="md5"),
    pytest.param("scram-sha-256", pg_message(b"R", struct.pack("!I", 0)), id="trust"),
    pytest.param("!password", pg_message(b"R", struct.pack("!I", 3)), id="not-cleartext"),
])
def test_postgres_hand_back_honours_require_auth(hostile_server, require_auth, request_):
    from lelect.backends.postgres import handback as _handback_postgres

    script = AuthScript(request_)
    server = hostile_server(script)
    with pytest.raises(_handback_postgres.WireError, match="require_auth"):
        _handback_postgres.hand_back(handback_params(server.port, require_auth=require_auth),
                                     3.0, 0)
    assert b"pw-secret" not in script.received
    assert not script.received.startswith(b"p")


@pytest.mark.parametrize("iterations", [b"2000000000", b"10000000", b"99999999999999999999", b"1"])
def test_postgres_hand_back_refuses_scram_work_beyond_its_budget(hostile_server, iterations):
    from lelect.backends.postgres import handback as _handback_postgres

    def script(conn, stopped):
        pg_startup(conn)
        conn.sendall(pg_message(b"R", struct.pack("!I", 10) + b"SCRAM-SHA-256\0\0"))
        first = read_some(conn)
        nonce = first.split(b"r=", 1)[1]
        server_first = b"r=" + nonce + b"srv,s=c2FsdA==,i=" + iterations
        send_and_hold(conn, stopped, pg_message(b"R", struct.pack("!I", 11) + server_first))

    server = hostile_server(script)
    budget = 0.5  # 10 million rounds take seconds
    started = time.monotonic()
    with pytest.raises(_handback_postgres.WireError, match="SCRAM"):
        _handback_postgres.hand_back(handback_params(server.port), budget, 0)
    assert time.monotonic() - started < budget + 0.5
