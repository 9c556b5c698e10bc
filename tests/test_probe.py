"""HTTP: ``campaign --status-listen`` (200 while leading, 503 while not), the exporter's
/leader/NAME and /healthz, and the one server's rules (read timeout, connection cap)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest

from lelect.httpserve import ProbeServer, Response, parse_listen
from tests.helpers import OutputTail, free_port, spawn_lelect, wait_for_port, wait_until


def get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, dict | str]:
    """(status, body as JSON or text); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            status, body = reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode()
    except OSError:
        return 0, ""
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def test_two_candidates_behind_probes_flip_200_503_through_a_failover(target):
    ports = {"a": free_port(), "b": free_port()}
    procs = {
        node: spawn_lelect("campaign", "probed", "--id", node, "--status-listen",
                           f"127.0.0.1:{port}", "--", "sleep", "60", backend=target.url)
        for node, port in ports.items()
    }
    for port in ports.values():
        wait_for_port(port)

    def statuses() -> dict[str, int]:
        return {node: get(port)[0] for node, port in ports.items()}

    tails = {node: OutputTail(proc.stderr) for node, proc in procs.items()}

    def why() -> str:
        return "one probe 200, the other 503; " + "; ".join(
            f"{node}: status {get(port)[0]}, exit {procs[node].poll()}, stderr {tails[node].text!r}"
            for node, port in ports.items())

    wait_until(lambda: sorted(statuses().values()) == [200, 503], timeout=30, what=why)
    leader = next(node for node, status in statuses().items() if status == 200)
    other = "b" if leader == "a" else "a"
    status, body = get(ports[leader])
    assert body["leading"] is True and body["node_id"] == leader and body["election"] == "probed"
    assert get(ports[other])[1]["leading"] is False
    term = body["term"]
    procs[leader].kill()  # kill -9: its keeper hands the leadership back
    wait_until(lambda: get(ports[other])[0] == 200, timeout=30, what="the other probe to say 200")
    status, body = get(ports[other])
    assert body["node_id"] == other and body["term"] > term
    assert get(ports[leader])[0] == 0  # the dead one answers nothing
    procs[other].send_signal(signal.SIGTERM)
    procs[other].wait(30)


def test_status_listen_is_refused_with_one_line_when_malformed(tmp_path):
    from tests.helpers import run_lelect

    out = run_lelect("campaign", "x", "--status-listen", "nowhere", "--", "true",
                     backend=f"file://{tmp_path}")
    assert out.returncode == 2 and "ADDR:PORT" in out.stderr and "Traceback" not in out.stderr


def test_listen_addresses_default_to_loopback():
    assert parse_listen(":9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_listen("0.0.0.0:9464") == ("0.0.0.0", 9464)


@pytest.fixture
def small_server():
    server = ProbeServer("127.0.0.1", 0, lambda path: Response.json(200, {"path": path}),
                         read_timeout=1.0, max_connections=8).start()
    yield server
    server.close()


def slow_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    return sock


def test_slow_loris_connections_do_not_block_a_request(small_server):
    slow = [slow_client(small_server.port) for _ in range(5)]
    started = time.monotonic()
    assert get(small_server.port, "/ok")[0] == 200
    assert time.monotonic() - started < 0.5
    # A client that trickles a header byte every 0.2 s is still cut at the read timeout.
    cut_after = None
    started = time.monotonic()
    for _ in range(50):
        try:
            slow[0].sendall(b"X")
            slow[0].settimeout(0.2)
            if slow[0].recv(100) == b"":
                cut_after = time.monotonic() - started
                break
        except TimeoutError:
            continue
        except OSError:
            cut_after = time.monotonic() - started
            break
    assert cut_after is not None and cut_after < 2.0, cut_after
    for sock in slow:
        sock.close()


def test_connections_over_the_cap_are_closed_at_once_then_served_again(small_server):
    held = [slow_client(small_server.port) for _ in range(8)]
    wait_until(lambda: small_server._slots._value == 0, what="every slot taken")
    extra = socket.create_connection(("127.0.0.1", small_server.port), timeout=5)
    extra.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert extra.recv(100) == b""  # closed without an answer, without a thread
    extra.close()
    # The held ones are cut at the read timeout; then requests are answered again.
    wait_until(lambda: get(small_server.port)[0] == 200, timeout=5, what="a free slot")
    for sock in held:
        sock.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_exporter_leader_healthz_and_metrics_survive_half_open_connections(backend_url):
    port = free_port()
    exporter = spawn_lelect("exporter", "--listen", f"127.0.0.1:{port}", "--interval", "200ms",
                            backend=backend_url)
    OutputTail(exporter.stderr).wait_for("serving metrics")
    assert get(port, "/healthz")[0] == 200
    status, body = get(port, "/leader/nobody-here")
    assert status == 404 and body["election"] == "nobody-here"
    holder = spawn_lelect("campaign", "served", "--id", "holder", "--", "sleep", "60",
                          backend=backend_url)
    wait_until(lambda: get(port, "/leader/served")[0] == 200, timeout=30, what="a leader")
    status, body = get(port, "/leader/served")
    assert body["leader"]["node_id"] == "holder" and body["election"] == "served"
    assert set(body["leader"]) >= {"node_id", "term", "since", "host", "pid"}
    holder.send_signal(signal.SIGTERM)
    holder.wait(30)
    wait_until(lambda: get(port, "/leader/served")[0] == 503, timeout=30, what="no leader")
    assert get(port, "/leader/served")[1]["leader"] is None
    # prometheus_client's own server kept every half-open connection (1023 of them
    # stopped every scrape); ours caps them and cuts them at the read timeout.
    before = open_fds(exporter.pid)
    half_open = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    wait_until(lambda: get(port, "/metrics", timeout=2)[0] == 200, timeout=10,
               what="a scrape answered despite 200 half-open connections")
    # Connections are accepted in order: all 200 were taken (held or closed) by now.
    assert open_fds(exporter.pid) < before + 64 + 10
    status, text = get(port, "/metrics")
    assert "lelect_backend_up 1.0" in text
    for sock in half_open:
        sock.close()
    exporter.send_signal(signal.SIGTERM)
    assert exporter.wait(timeout=30) == 0


@pytest.fixture
def backend_url(tmp_path):
    return f"file://{tmp_path / 'state'}"
