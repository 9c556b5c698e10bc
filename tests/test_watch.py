"""`lelect watch` and `lelect health` against real `lelect campaign` processes on the
embedded backend."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

from tests.helpers import LELECT, lelect_env, pid_alive, run_lelect, spawn_lelect, wait_until

BEAT = "0.2s"


def candidate(processes, backend: str, election: str, node_id: str, *job: str) -> subprocess.Popen:
    proc = spawn_lelect(
        "campaign", election, "--id", node_id, "--heartbeat-interval", BEAT, "--",
        *(job or ("sleep", "60")),
        backend=backend, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    processes.append(proc)
    return proc


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def watch_once(backend: str, *names: str) -> list[dict]:
    out = run_lelect("watch", *names, "--once", "--json", backend=backend)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return [strict_json(line) for line in out.stdout.splitlines()]


def settled(backend: str, election: str, count: int) -> dict | None:
    """The group once it has a leader and ``count`` members, all alive, with a few
    heartbeats each (from three on, the detector goes by their history)."""
    (group,) = watch_once(backend, election)
    members = group["members"]
    if (group["leader"] and len(members) == count
            and all(m["status"] == "alive" and m["seq"] >= 3 for m in members)):
        return group
    return None


def health(backend: str, *args: str) -> subprocess.CompletedProcess:
    out = run_lelect("health", *args, backend=backend)
    assert "Traceback" not in out.stderr
    return out


def test_watch_once_json_names_the_leader_and_three_alive_members(backend, processes):
    for node in ("n1", "n2", "n3"):
        candidate(processes, backend, "trio", node)
    group = wait_until(lambda: settled(backend, "trio", 3), timeout=30, what="three alive members")
    assert set(group) >= {"election", "leader", "members"}
    assert group["election"] == "trio"
    leader = group["leader"]
    assert leader["node_id"] in {"n1", "n2", "n3"} and leader["term"] >= 1
    assert leader["pid"] in {p.pid for p in processes} and leader["host"] and leader["since"]
    members = {m["node_id"]: m for m in group["members"]}
    assert set(members) == {"n1", "n2", "n3"}
    assert [n for n, m in members.items() if m["role"] == "leader"] == [leader["node_id"]]
    assert {m["role"] for n, m in members.items() if n != leader["node_id"]} == {"follower"}
    for member in members.values():
        assert isinstance(member["cpu_percent"], float) and 0 <= member["cpu_percent"] <= 100
        assert isinstance(member["memory_percent"], float) and 0 < member["memory_percent"] <= 100
        assert isinstance(member["last_seen_s"], float) and member["last_seen_s"] < 5

    # The same group as a table, and health agrees.
    table = run_lelect("watch", "trio", "--once", backend=backend)
    assert table.returncode == 0
    assert f"leader {leader['node_id']}" in table.stdout and "alive" in table.stdout
    assert health(backend, "trio").returncode == 0
    # With no ELECTION, every election of the backend.
    assert [g["election"] for g in watch_once(backend)] == ["trio"]


def test_killed_follower_turns_suspect_then_dead_and_group_goes_critical(backend, processes, tmp_path):
    procs = {node: candidate(processes, backend, "crash", node) for node in ("n1", "n2", "n3")}
    group = wait_until(lambda: settled(backend, "crash", 3), timeout=30, what="three alive members")
    stream = tmp_path / "stream"
    with stream.open("w") as out:
        watcher = subprocess.Popen(
            [*LELECT, "watch", "crash", "--json", "--interval", "0.05s"],
            env=lelect_env(backend), stdout=out, stderr=subprocess.PIPE, text=True,
        )
    processes.append(watcher)
    wait_until(lambda: stream.read_text(), what="watch's first line")

    victim = next(n for n in procs if n != group["leader"]["node_id"])
    procs[victim].kill()

    def victim_status(line: str) -> str:
        return next(m["status"] for m in strict_json(line)["members"] if m["node_id"] == victim)

    wait_until(lambda: victim_status(stream.read_text().splitlines()[-1]) == "dead", timeout=15,
               what=f"{victim} dead")
    out = wait_until(lambda: (h := health(backend, "crash")).returncode == 1 and h, timeout=15,
                     what="health degraded")
    assert "degraded" in out.stdout
    report = strict_json(health(backend, "crash", "--json").stdout)
    assert report["status"] == "degraded"
    assert {m["node_id"]: m["status"] for m in report["members"]}[victim] == "dead"
    assert all(isinstance(m["phi"], float) for m in report["members"])

    # NDJSON: one line per change; the victim went alive -> suspect -> dead, in order.
    lines = stream.read_text().splitlines()
    seen = [victim_status(line) for line in lines]
    transitions = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]
    assert transitions[0] == "alive" and transitions[-3:] == ["alive", "suspect", "dead"], seen
    assert all(a != b for a, b in zip(lines, lines[1:]))  # no line repeats an unchanged group

    for proc in procs.values():
        proc.kill()
    out = wait_until(lambda: (h := health(backend, "crash")).returncode == 2 and h, timeout=15,
                     what="health critical")
    assert "critical" in out.stdout and "no leader" in out.stdout
    assert health(backend).returncode == 2  # no ELECTION: the worst group wins

    watcher.send_signal(signal.SIGINT)
    assert watcher.wait(timeout=10) == 0
    assert "Traceback" not in watcher.stderr.read()


def test_watch_in_a_terminal_redraws_in_place_and_follows_a_failover(backend, processes, tmp_path):
    alpha = candidate(processes, backend, "tty", "alpha")
    wait_until(lambda: settled(backend, "tty", 1), timeout=30, what="alpha leads")
    candidate(processes, backend, "tty", "beta")
    wait_until(lambda: settled(backend, "tty", 2), timeout=30, what="beta waits")

    sock = str(tmp_path / "tmux.sock")
    command = f"{sys.executable} -m lelect watch tty --interval 0.1s; echo WATCH-EXIT=$?; sleep 60"
    subprocess.run(
        ["tmux", "-S", sock, "new-session", "-d", "-x", "100", "-y", "30",
         "-e", f"LELECT_BACKEND={backend}", command],
        env=lelect_env(backend), check=True, cwd=os.getcwd(),
    )
    try:
        def screen() -> str:
            return subprocess.run(["tmux", "-S", sock, "capture-pane", "-p"], capture_output=True,
                                  text=True, check=True).stdout

        wait_until(lambda: "leader alpha" in screen(), timeout=20, what="table with alpha")
        assert "alive" in screen() and "NODE" in screen()

        alpha.terminate()  # a clean exit: its job stops, beta takes over
        wait_until(lambda: "leader beta" in screen(), timeout=20, what="table with beta")
        shown = screen()
        # Redrawn in place: one table on the screen, the old leader's header gone.
        assert "leader alpha" not in shown
        assert shown.count("NODE") == 1

        subprocess.run(["tmux", "-S", sock, "send-keys", "C-c"], check=True)
        wait_until(lambda: "WATCH-EXIT=0" in screen(), timeout=10, what="watch exits 0 on Ctrl-C")
    finally:
        subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True)


def test_on_change_runs_once_per_leader_change_with_the_environment(backend, processes, tmp_path):
    log = tmp_path / "changes"
    stream = tmp_path / "stream"
    hook = (
        'printf "%s|%s|%s|%s|%s|%s\\n" "$LELECT_ELECTION" "$LELECT_EVENT" "$LELECT_LEADER"'
        f' "$LELECT_TERM" "$LELECT_PREVIOUS_LEADER" "$LELECT_PREVIOUS_TERM" >> {log}'
    )
    with stream.open("w") as out:
        watcher = subprocess.Popen(
            [*LELECT, "watch", "vip", "--json", "--interval", "0.1s", "--on-change", hook],
            env=lelect_env(backend), stdout=out, stderr=subprocess.PIPE, text=True,
        )
    processes.append(watcher)
    wait_until(lambda: stream.read_text(), what="watch running")

    def changes() -> list[list[str]]:
        return [line.split("|") for line in log.read_text().splitlines()] if log.exists() else []

    alpha = candidate(processes, backend, "vip", "alpha")
    wait_until(lambda: len(changes()) >= 1, timeout=20, what="first change")
    beta = candidate(processes, backend, "vip", "beta")
    wait_until(lambda: settled(backend, "vip", 2), timeout=30, what="beta waiting")
    alpha.terminate()
    wait_until(lambda: changes() and changes()[-1][2] == "beta", timeout=20, what="beta elected")
    beta.terminate()
    wait_until(lambda: changes()[-1][1] == "vacant", timeout=20, what="no leader")
    watcher.send_signal(signal.SIGINT)
    assert watcher.wait(timeout=10) == 0

    rows = changes()
    assert all(row[0] == "vip" for row in rows)
    # A chain: each change starts where the one before ended; none is repeated.
    assert rows[0][4:] == ["", ""]
    for before, after in zip(rows, rows[1:]):
        assert after[4:] == before[2:4]
        assert after[2:4] != before[2:4]
    elected = [row for row in rows if row[1] == "elected"]
    assert [row[2] for row in elected] == ["alpha", "beta"]
    assert int(elected[1][3]) > int(elected[0][3])
    assert rows[-1][1:4] == ["vacant", "", ""] and rows[-1][4] == "beta"
    # The hook's output never mixes into the NDJSON on stdout.
    for line in stream.read_text().splitlines():
        strict_json(line)


def test_unknown_election_is_an_empty_group_not_an_error(backend):
    table = run_lelect("watch", "nobody-here", "--once", backend=backend)
    assert table.returncode == 0 and table.stderr == ""
    assert "no candidates" in table.stdout
    assert watch_once(backend, "nobody-here") == [
        {"election": "nobody-here", "status": "critical", "leader": None, "members": []}]
    out = health(backend, "nobody-here")
    assert out.returncode == 2 and "unknown election 'nobody-here'" in out.stderr
    assert watch_once(backend) == []
    assert run_lelect("watch", "--once", backend=backend).stdout.strip() == "no elections"


def test_garbage_heartbeat_records_are_shown_as_such(backend, processes, tmp_path):
    candidate(processes, backend, "junk", "good")
    wait_until(lambda: settled(backend, "junk", 1), timeout=30, what="good member")
    db = sqlite3.connect(tmp_path / "state" / "lelect.db", timeout=10)
    nasty = json.dumps({"election": "junk", "node_id": "x", "host": "\x1b[2J\x07", "pid": 1,
                        "role": "leader", "term": None, "seq": 1, "time": 1.0,
                        "cpu_percent": float("nan"), "memory_percent": float("inf")})
    with db:
        db.executemany(
            "INSERT INTO members(election, node_id, data, arrivals, expires) VALUES (?, ?, ?, ?, ?)",
            [
                ("junk", "not-json", "{{{ not json", "also not json", 1e12),
                ("junk", "wrong-types", '{"node_id": [1], "pid": "many"}', '[1, "x", null]', 1e12),
                ("junk", "a-list", "[1, 2, 3]", "[NaN, Infinity, 5]", 1e12),
                ("junk", "nasty", nasty, "7", 1e12),
                ("junk", "blob", b"\x00\xff\xfe", b"\x00", 1e12),
            ],
        )
    db.close()

    (group,) = watch_once(backend, "junk")
    members = {m["node_id"]: m for m in group["members"]}
    assert set(members) == {"good", "not-json", "wrong-types", "a-list", "nasty", "blob"}
    assert members["good"]["status"] == "alive" and group["leader"]["node_id"] == "good"
    for name in ("not-json", "wrong-types", "a-list", "blob"):
        assert members[name]["error"].startswith("unreadable member record"), members[name]
        assert members[name]["status"] == "dead" and members[name]["cpu_percent"] is None
    assert members["nasty"]["cpu_percent"] is None and members["nasty"]["role"] == "follower"

    for args, status in ((["watch", "junk", "--once"], 0), (["watch", "--once", "--json"], 0),
                         (["health", "junk"], 1), (["health"], 1), (["health", "--json"], 1)):
        out = run_lelect(*args, backend=backend)
        assert out.returncode == status, (args, out.stderr)
        assert out.stderr == "" and "Traceback" not in out.stdout
    table = run_lelect("watch", "junk", "--once", backend=backend).stdout
    assert "unreadable member record" in table and "\x1b[2J" not in table and "\x07" not in table
    report = strict_json(health(backend, "junk", "--json").stdout)
    assert report["status"] == "degraded"


def test_health_publish_joins_as_observer_and_a_clean_exit_removes_it(backend, processes):
    candidate(processes, backend, "obs", "leader-1")
    publisher = spawn_lelect("health", "--publish", "obs", "--id", "monitor", "--heartbeat-interval", BEAT,
                             backend=backend, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    processes.append(publisher)
    group = wait_until(lambda: settled(backend, "obs", 2), timeout=30, what="observer listed")
    roles = {m["node_id"]: m["role"] for m in group["members"]}
    assert roles == {"leader-1": "leader", "monitor": "observer"}
    publisher.send_signal(signal.SIGTERM)
    assert publisher.wait(timeout=10) == 0
    assert "Traceback" not in publisher.stderr.read()
    (group,) = watch_once(backend, "obs")
    assert [m["node_id"] for m in group["members"]] == ["leader-1"]


def test_dead_member_is_forgotten_after_forget_after(backend, processes):
    publisher = spawn_lelect("health", "--publish", "gone", "--id", "brief", "--heartbeat-interval", BEAT,
                             "--forget-after", "2s", backend=backend,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    processes.append(publisher)
    def beats() -> int:
        listed = watch_once(backend, "gone")[0]["members"]
        return listed[0]["seq"] if listed else 0

    wait_until(lambda: beats() >= 4, timeout=30, what="a few heartbeats")
    publisher.kill()
    wait_until(lambda: watch_once(backend, "gone")[0]["members"][0]["status"] == "dead", timeout=15,
               what="member dead")
    wait_until(lambda: not watch_once(backend, "gone")[0]["members"], timeout=15, what="member forgotten")
    assert watch_once(backend) == []


def test_health_publish_needs_an_election(backend):
    out = run_lelect("health", "--publish", backend=backend)
    assert out.returncode == 2 and "ELECTION" in out.stderr and "Traceback" not in out.stderr


def test_a_running_on_change_hook_ends_with_watch(backend, processes, tmp_path):
    """SIGTERM to watch while the hook runs: the hook's group gets it and watch ends
    at once (was: exit 0 after 10 s, `sh -c` and its child left running)."""
    pids = tmp_path / "pids"
    hook = f"sleep 100 & echo $! > {pids}; wait"
    watcher = subprocess.Popen(
        [*LELECT, "watch", "hooked", "--json", "--interval", "0.1s", "--on-change", hook],
        env=lelect_env(backend), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    processes.append(watcher)
    # Its first look (no leader yet) is printed before the candidate starts: a leader
    # already there at the first look is no change, and runs no hook (a race, under load).
    assert json.loads(watcher.stdout.readline())["leader"] is None
    candidate(processes, backend, "hooked", "alpha")
    wait_until(lambda: pids.exists() and pids.read_text().strip(), timeout=20, what="the hook")
    sleeper = int(pids.read_text())
    started = time.monotonic()
    watcher.send_signal(signal.SIGTERM)
    assert watcher.wait(timeout=20) == 0
    assert time.monotonic() - started < 5
    wait_until(lambda: not pid_alive(sleeper), timeout=5, what="the hook's child to end")
    assert "Traceback" not in watcher.stderr.read()
