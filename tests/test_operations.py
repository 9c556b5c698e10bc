"""Operating lelect: the Prometheus exporter (scraped and parsed by prometheus_client's
own parser, through a failover) and systemd's notify protocol (READY, STATUS, WATCHDOG,
STOPPING on a real NOTIFY_SOCKET). History and once-per slots are in the contract suite."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    LELECT,
    OutputTail,
    free_port,
    lelect_env,
    run_lelect,
    spawn_lelect,
    wait_until,
)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_exporter_follows_a_failover(backend, processes, tmp_path):
    port = free_port()
    exporter = spawn_lelect("exporter", "--listen", f"127.0.0.1:{port}", "--interval", "200ms",
                            "ha", backend=backend)
    processes.append(exporter)
    OutputTail(exporter.stderr).wait_for("serving metrics")
    first = spawn_lelect("campaign", "ha", "--id", "first", "--heartbeat-interval", "100ms",
                         "--", "sleep", "30", backend=backend)
    second = spawn_lelect("campaign", "ha", "--id", "second", "--heartbeat-interval", "100ms",
                          "--", "sleep", "30", backend=backend)
    processes += [first, second]

    def settled():
        samples = scrape(port)
        return (value(samples, "lelect_members", election="ha", status="alive") == 2
                and value(samples, "lelect_has_leader", election="ha") == 1
                and value(samples, "lelect_health_status", election="ha") == 0)

    wait_until(settled, timeout=30, what="a leader and two alive members")
    samples = scrape(port)
    term = value(samples, "lelect_leader_term", election="ha")
    changes = value(samples, "lelect_leader_changes_total", election="ha")
    assert term >= 1 and changes >= 1
    assert value(samples, "lelect_member_heartbeat_age_seconds", election="ha", node_id="first") < 5
    leader = first if run_lelect("leader", "ha", backend=backend).stdout.startswith("first") else second
    leader.kill()  # the keeper hands the leadership to the other at once
    wait_until(lambda: (value(scrape(port), "lelect_leader_term", election="ha") or 0) > term,
               timeout=30, what="the new leader's term")
    samples = scrape(port)
    assert value(samples, "lelect_leader_changes_total", election="ha") == changes + 1
    assert value(samples, "lelect_backend_up") == 1
    exporter.send_signal(signal.SIGTERM)
    assert exporter.wait(timeout=30) == 0


def test_an_election_without_leader_or_members_stays_listed(backend, processes):
    """docs/operations.md's `lelect_has_leader == 0` alert: an election whose leader exited (or
    was killed) stays in /metrics and in `health` with no name (was: dropped at once)."""
    port = free_port()
    exporter = spawn_lelect("exporter", "--listen", f"127.0.0.1:{port}", "--interval", "200ms",
                            backend=backend)
    processes.append(exporter)
    OutputTail(exporter.stderr).wait_for("serving metrics")
    job = spawn_lelect("campaign", "nightly", "--", "sleep", "30", backend=backend)
    wait_until(lambda: value(scrape(port), "lelect_has_leader", election="nightly") == 1,
               timeout=30, what="the leader in /metrics")
    job.kill()
    wait_until(lambda: value(scrape(port), "lelect_has_leader", election="nightly") == 0,
               timeout=30, what="has_leader 0")
    time.sleep(0.5)  # a few exporter looks later, it is still there
    assert value(scrape(port), "lelect_has_leader", election="nightly") == 0
    out = run_lelect("health", "--json", backend=backend)
    assert '"nightly"' in out.stdout and out.returncode == 2, out


def test_exporter_without_prometheus_client_says_what_to_install(backend, tmp_path):
    hide = tmp_path / "hide"
    (hide / "prometheus_client").mkdir(parents=True)
    (hide / "prometheus_client" / "__init__.py").write_text("raise ImportError('hidden')\n")
    env = {**lelect_env(backend), "PYTHONPATH": str(hide)}
    out = subprocess.run([*LELECT, "exporter"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2
    assert "pip install 'lelect[metrics]'" in out.stderr and out.stderr.count("\n") == 1


class NotifySocket:
    """What systemd listens on: a unix datagram socket; collects every message."""

    def __init__(self, path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.path = str(path)
        self.messages: list[str] = []

    def collect(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages

    def has(self, fragment: str) -> bool:
        return any(fragment in m for m in self.collect())


def test_systemd_hears_ready_status_watchdog_and_stopping(backend, tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    holder = spawn_lelect("campaign", "svc", "--id", "web-1", "--", "sleep", "30", backend=backend)
    wait_until(lambda: run_lelect("leader", "svc", backend=backend).returncode == 0, timeout=30,
               what="web-1 to lead")
    env = {**lelect_env(backend), "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"}
    standby = subprocess.Popen([*LELECT, "campaign", "svc", "--id", "web-2", "--", "sh", "-c",
                                "echo $NOTIFY_SOCKET; sleep 30"], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: notify.has("READY=1"), timeout=30, what="READY=1 from a standby")
        wait_until(lambda: notify.has("STATUS=waiting: web-1 leads (term"), timeout=30,
                   what="the waiting status")
        pings = sum(m == "WATCHDOG=1" for m in notify.collect())
        wait_until(lambda: sum(m == "WATCHDOG=1" for m in notify.collect()) >= pings + 3,
                   timeout=30, what="watchdog pings while waiting")
        holder.terminate()
        wait_until(lambda: notify.has("STATUS=leading (term"), timeout=30, what="leading status")
        assert notify.has(", job pid ")
        pings = sum(m == "WATCHDOG=1" for m in notify.collect())
        wait_until(lambda: sum(m == "WATCHDOG=1" for m in notify.collect()) >= pings + 3,
                   timeout=30, what="watchdog pings while leading")
        time.sleep(0.1)
        standby.send_signal(signal.SIGTERM)
        out, err = standby.communicate(timeout=30)
        assert standby.returncode == -signal.SIGTERM, err
        assert notify.has("STOPPING=1")
        assert out.strip() == ""  # the job does not get lelect's NOTIFY_SOCKET
    finally:
        for proc in (holder, standby):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        notify.sock.close()
