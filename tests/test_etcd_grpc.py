"""etcd over gRPC (lelect/backends/etcd/h2.py, proto.py, rpc.py): HPACK against RFC 7541's
examples, the protobuf codec, and hostile HTTP/2 servers on loopback (a bad frame, bad
HPACK, an oversize message, no trailers, GOAWAY, silence): one line, status 69, in time."""

from __future__ import annotations

import base64
import socket
import struct
import threading
import time

import pytest

from lelect.backends.etcd import h2, proto
from lelect.backends.etcd.gateway import Endpoint, Garbled, GatewayError
from lelect.backends.etcd.rpc import GrpcGateway
from tests.helpers import wait_until
from tests.plugins.hostile import read_some, send_and_hold
from tests.test_hostile_servers import assert_one_line_69, run_measured

# -- HPACK (RFC 7541 Appendix C) ------------------------------------------------------------


def test_hpack_huffman_and_dynamic_table_follow_rfc7541_c4():
    decoder = h2.Decoder()
    assert decoder.decode(bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff")) == [
        (":method", "GET"), (":scheme", "http"), (":path", "/"),
        (":authority", "www.example.com")]
    assert decoder.decode(bytes.fromhex("828684be5886a8eb10649cbf"))[-1] == (
        "cache-control", "no-cache")
    third = decoder.decode(bytes.fromhex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"))
    assert third[-1] == ("custom-key", "custom-value")
    assert decoder.size == 164


def test_hpack_eviction_follows_rfc7541_c6():
    decoder = h2.Decoder(256)
    decoder.max_size = 256
    decoder.decode(bytes.fromhex(
        "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad"
        "171863c78f0b97c8e9ae82ae43d3"))
    assert decoder.decode(bytes.fromhex("4883640effc1c0bf"))[0] == (":status", "307")
    assert decoder.size == 222


def test_hpack_table_size_update_and_integers():
    decoder = h2.Decoder()
    # A size update to 0 empties the table; then a literal with a long (multi-byte) value.
    value = "v" * 300
    block = b"\x20" + b"\x00\x01a" + h2.encode_int(len(value), 7) + value.encode()
    assert decoder.decode(block) == [("a", value)]
    assert decoder.max_size == 0
    assert h2.Decoder().decode(h2.encode_headers([("x-name", "é" * 200)])) == [("x-name", "é" * 200)]


@pytest.mark.parametrize("block, match", [
    (b"\xc0", "no table entry"),  # index 64: the dynamic table is empty
    (b"\x80", "index 0"),
    (b"\x3f\xe2\x1f", "table size"),  # a size update above the 4096 we allow
    (b"\x00\x85\xff\xff\xff\xff\xff", "Huffman"),  # EOS in a string
    (b"\x00\x7f\xff\xff\xff\xff\x0f", "longer than its block"),
    (b"\x82\x20", "after a field"),
    (b"\xff\xff\xff\xff\xff\xff\xff", "bad integer"),
])
def test_hpack_refuses_garbage(block, match):
    with pytest.raises(Garbled, match=match):
        h2.Decoder().decode(block)


def test_hpack_caps_the_header_list():
    block = h2.encode_headers([("x", "y" * 1000)] * 100)
    with pytest.raises(Garbled, match="header list longer"):
        h2.Decoder().decode(block)


# -- protobuf ----------------------------------------------------------------------------------


def test_proto_takes_the_gateways_forms_and_gives_bytes_and_ints():
    request = {"compare": [{"key": base64.b64encode(b"k").decode(), "target": "CREATE",
                            "result": "GREATER", "create_revision": "5", "range_end": b"l"}],
               "success": [{"request_range": {"key": b"a", "limit": "1", "sort_order": "DESCEND",
                                              "sort_target": "CREATE", "count_only": True}}],
               "failure": [{"request_put": {"key": b"p", "value": b"", "lease": "7"}}]}
    decoded = proto.decode("TxnRequest", proto.encode("TxnRequest", request))
    assert decoded == {
        "compare": [{"key": b"k", "target": "CREATE", "result": "GREATER", "create_revision": 5,
                     "range_end": b"l"}],
        "success": [{"request_range": {"key": b"a", "limit": 1, "sort_order": "DESCEND",
                                       "sort_target": "CREATE", "count_only": True}}],
        "failure": [{"request_put": {"key": b"p", "lease": 7}}]}


def test_proto_negative_int64_and_unknown_fields():
    data = proto.encode("ResponseHeader", {"revision": -1}) + b"\xa8\x06\x01" + b"\xb2\x06\x01z"
    assert proto.decode("ResponseHeader", data) == {"revision": -1}


def test_proto_unknown_name_is_refused():
    with pytest.raises(ValueError, match="no field"):
        proto.encode("PutRequest", {"kye": b"x"})


@pytest.mark.parametrize("data, match", [
    (b"\x0a\x05ab", "longer than its message"),
    (b"\x18" + b"\xff" * 11, "varint"),
    (b"\x1b", "wire type"),
    (b"\x0a\x01", "longer than its message"),
])
def test_proto_refuses_garbage(data, match):
    with pytest.raises(Garbled, match=match):
        proto.decode("RangeResponse", data)


def test_proto_caps_nesting():
    # A TxnResponse inside a ResponseOp inside a TxnResponse …, 40 deep.
    nested = b""
    for _ in range(40):
        op = b"\x22" + proto._varint(len(nested)) + nested
        nested = b"\x1a" + proto._varint(len(op)) + op
    with pytest.raises(Garbled, match="nested deeper"):
        proto.decode("TxnResponse", nested)


# -- hostile HTTP/2 servers ----------------------------------------------------------------------


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">IBI", (len(payload) << 8) | kind, flags, stream) + payload


SETTINGS = frame(h2.SETTINGS, 0, 0, b"")
OK_HEADERS = h2.encode_headers([(":status", "200"), ("content-type", "application/grpc")])
OK_TRAILERS = h2.encode_headers([("grpc-status", "0")])


def grpc_message(payload: bytes) -> bytes:
    return b"\0" + len(payload).to_bytes(4, "big") + payload


def has_headers(data: bytes) -> bool:
    """Whether the client's bytes so far hold its preface and a HEADERS frame."""
    if not data.startswith(h2.PREFACE):
        return False
    pos = len(h2.PREFACE)
    while pos + 9 <= len(data):
        length, kind = int.from_bytes(data[pos:pos + 3], "big"), data[pos + 3]
        if kind == h2.HEADERS:
            return True
        pos += 9 + length
    return False


def answering_h2(*answer: bytes):
    """A fake server: reads the client's preface and first request, sends SETTINGS and
    ``answer`` (frames for stream 1), and holds the connection."""
    def script(conn: socket.socket, stopped: threading.Event) -> None:
        data = b""
        while not has_headers(data):
            chunk = read_some(conn)
            if not chunk:
                return
            data += chunk
        send_and_hold(conn, stopped, SETTINGS + b"".join(answer))

    return script


RANGE_ANSWER = grpc_message(proto.encode("RangeResponse", {"header": {"revision": 3}}))


@pytest.mark.parametrize("answer", [
    pytest.param((b"HTTP/1.1 400 Bad Request\r\n\r\n",), id="http1"),
    pytest.param((struct.pack(">IBI", (1 << 20 << 8) | h2.DATA, 0, 1),), id="huge-frame"),
    pytest.param((frame(h2.HEADERS, h2.END_HEADERS, 1, b"\xc0"),), id="bad-hpack"),
    pytest.param((frame(h2.HEADERS, h2.END_HEADERS, 1, OK_HEADERS),
                  frame(h2.DATA, 0, 1, b"\0\x7f\xff\xff\xff")), id="huge-message"),
    pytest.param((frame(h2.HEADERS, h2.END_HEADERS, 1, OK_HEADERS),
                  frame(h2.DATA, h2.END_STREAM, 1, RANGE_ANSWER)), id="no-trailers"),
    pytest.param((frame(h2.HEADERS, h2.END_HEADERS, 1, OK_HEADERS),
                  frame(h2.DATA, 0, 1, grpc_message(b"\x0a\x05ab")),
                  frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, OK_TRAILERS)),
                 id="bad-protobuf"),
    pytest.param((frame(h2.HEADERS, h2.END_HEADERS, 1, OK_HEADERS),
                  frame(h2.DATA, 0, 1, b"\1\0\0\0\0"),
                  frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, OK_TRAILERS)),
                 id="compressed"),
    pytest.param((frame(h2.GOAWAY, 0, 0, struct.pack(">II", 0, 2) + b"bye"),), id="goaway"),
    pytest.param((frame(h2.RST_STREAM, 0, 1, struct.pack(">I", 2)),), id="reset"),
    pytest.param((frame(h2.HEADERS, 0, 1, OK_HEADERS),
                  *(frame(h2.CONTINUATION, 0, 1, b"\x00" * 16384) for _ in range(8))),
                 id="endless-continuation"),
    pytest.param((frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, h2.encode_headers(
        [(":status", "200"), ("grpc-status", "13"), ("grpc-message", "bad%0Athing%ZZ")])),),
        id="grpc-error"),
    pytest.param((frame(h2.PUSH_PROMISE, h2.END_HEADERS, 1, b"\0\0\0\2"),), id="push"),
    pytest.param((), id="silent"),
])
def test_etcd_grpc_garbled_answer_is_69(hostile_server, answer):
    server = hostile_server(answering_h2(*answer))
    out = run_measured("leader", "x",
                       backend=f"etcd://127.0.0.1:{server.port}/lelect?connect_timeout=2s")
    assert_one_line_69(out, within=10)
    assert "etcd" in out.stderr


def test_a_garbled_watch_answer_ends_the_watch_with_a_gateway_error(hostile_server):
    created = grpc_message(proto.encode("WatchResponse", {"header": {"revision": 5},
                                                          "created": True}))
    server = hostile_server(answering_h2(frame(h2.HEADERS, h2.END_HEADERS, 1, OK_HEADERS),
                                         frame(h2.DATA, 0, 1, created),
                                         frame(h2.DATA, 0, 1, grpc_message(b"\x5a\x05ab"))))
    gateway = GrpcGateway([Endpoint("127.0.0.1", server.port)])
    try:
        stream = gateway.watch("/lelect/x", budget=3.0)
        assert stream.revision == 5
        with pytest.raises(GatewayError, match="ended"):
            stream.next(3.0)
    finally:
        gateway.close()


def test_a_call_refused_by_a_graceful_goaway_is_made_again_on_a_fresh_connection(hostile_server):
    answered = (frame(h2.HEADERS, h2.END_HEADERS, 1, OK_HEADERS), frame(h2.DATA, 0, 1, RANGE_ANSWER),
                frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, OK_TRAILERS))
    going_away = answering_h2(frame(h2.GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
    scripts = iter([going_away, answering_h2(*answered)])
    server = hostile_server(lambda conn, stopped: next(scripts)(conn, stopped))
    gateway = GrpcGateway([Endpoint("127.0.0.1", server.port)])
    try:
        assert gateway.range("/x", budget=5.0).revision == 3
    finally:
        gateway.close()
    assert server.connections == 2


def test_an_answer_in_full_then_a_no_error_reset_is_the_answer(hostile_server):
    """RFC 9113 8.1: a server that sent its whole answer may reset the stream with
    NO_ERROR (grpc-go does when its handler ends before it has read our END_STREAM: seen
    under load in CI, as "connection lost (the server reset the stream (HTTP/2 error 0))"
    for a get). The answer stands; a NO_ERROR reset before the answer's end is a failure."""
    answered = (frame(h2.HEADERS, h2.END_HEADERS, 1, OK_HEADERS), frame(h2.DATA, 0, 1, RANGE_ANSWER),
                frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, OK_TRAILERS))
    no_error = frame(h2.RST_STREAM, 0, 1, struct.pack(">I", 0))
    for answer, answers in ((answered + (no_error,), True), (answered[:2] + (no_error,), False)):
        server = hostile_server(answering_h2(*answer))
        gateway = GrpcGateway([Endpoint("127.0.0.1", server.port)])
        try:
            if answers:
                assert gateway.range("/x", budget=5.0).revision == 3
            else:
                with pytest.raises(GatewayError, match="reset the stream"):
                    gateway.range("/x", budget=5.0)
        finally:
            gateway.close()


def test_a_frozen_server_keeps_no_caller_past_its_deadline(hostile_server):
    server = hostile_server(answering_h2())  # SETTINGS, then nothing
    gateway = GrpcGateway([Endpoint("127.0.0.1", server.port)])
    took: dict[float, float] = {}

    def call(budget: float) -> None:
        started = time.monotonic()
        with pytest.raises(GatewayError, match="timed out"):
            gateway.range("/x", budget=budget)
        took[budget] = time.monotonic() - started

    threads = [threading.Thread(target=call, args=(budget,)) for budget in (0.5, 1.0, 1.5)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
    finally:
        gateway.close()
    assert sorted(took) == [0.5, 1.0, 1.5]
    for budget, seconds in took.items():  # (one that gave up may close the connection:
        assert seconds < budget + 0.5, took  # the others then end early, never late)


def test_close_wakes_a_call_to_a_frozen_server(hostile_server):
    server = hostile_server(answering_h2())  # SETTINGS, then nothing
    gateway = GrpcGateway([Endpoint("127.0.0.1", server.port)])
    failed: list[BaseException] = []

    def call() -> None:
        try:
            gateway.range("/x", budget=30.0)
        except GatewayError as exc:
            failed.append(exc)

    thread = threading.Thread(target=call)
    started = time.monotonic()
    thread.start()
    wait_until(lambda: any(not c.idle() for c in gateway._connections.values()),
               what="the call waiting on its stream")
    gateway.close()
    thread.join(5)
    assert not thread.is_alive() and failed
    assert time.monotonic() - started < 5


# -- a real etcd ----------------------------------------------------------------------------------


def test_threads_share_one_connection_and_close_wakes_a_watch(etcd_server, etcd_prefix):
    """Calls from several threads at once and a watch are streams of one connection (the
    token in their metadata: the shared server has auth on); closing the client ends a
    watch that waits in another thread at once."""
    import os

    import psutil

    from lelect.backends import connect
    from lelect.backends.etcd import gateway as wire

    with connect(etcd_server.url(etcd_prefix)) as backend:
        gateway = backend.gateway
        assert isinstance(gateway, GrpcGateway)
        prefix = f"/{etcd_prefix}/many/"
        watch = gateway.watch(prefix, range_end=wire.prefix_end(prefix), budget=5.0)
        errors: list[BaseException] = []

        def writer(n: int) -> None:
            try:
                for i in range(20):
                    key = f"{prefix}{n}-{i}"
                    gateway.txn([wire.created_at(key, 0)], [wire.put(key, f"{n}.{i}")], budget=5.0)
                    assert gateway.range(key, budget=5.0).first.value == f"{n}.{i}".encode()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        events = []
        while len(events) < 120:
            got = watch.next(5.0)
            assert got is not None, f"{len(events)} events, then nothing"
            events += got
        for thread in threads:
            thread.join(10)
        assert not errors, errors
        assert len({event.key for event in events}) == 120
        mine = [c for c in psutil.Process(os.getpid()).net_connections("tcp")
                if c.raddr and c.raddr.port == etcd_server.port and c.status == "ESTABLISHED"]
        assert len(mine) == 1

        ended: list[BaseException] = []

        def wait_on_watch() -> None:
            try:
                watch.next(30.0)
            except GatewayError as exc:
                ended.append(exc)

        waiter = threading.Thread(target=wait_on_watch)
        waiter.start()
        closed_at = time.monotonic()
        gateway.close()
        waiter.join(5)
        assert ended and time.monotonic() - closed_at < 1.0
