"""`lelect resign` with real `lelect campaign` processes on the embedded backend."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.helpers import leader_json, run_lelect, spawn_lelect, wait_until


def members(backend: str, election: str) -> set[str]:
    out = run_lelect("watch", election, "--once", "--json", backend=backend)
    return {m["node_id"] for m in json.loads(out.stdout)["members"]}


def trapping_job(record: Path) -> list[str]:
    """Records 'start TERM', and 'stopped-by-TERM TERM' when SIGTERM arrives."""
    return ["sh", "-c", f'echo "start $LELECT_TERM" >> {record}; '
            f'trap \'echo "stopped-by-TERM $LELECT_TERM" >> {record}; exit 0\' TERM; '
            "while :; do sleep 0.05; done"]


def test_resign_hands_leadership_to_another_candidate_with_a_larger_term(backend, processes, tmp_path):
    record = tmp_path / "record"
    alpha = spawn_lelect("campaign", "job", "--id", "alpha", "--heartbeat-interval", "0.2s", "--",
                         *trapping_job(record), backend=backend)
    processes.append(alpha)
    wait_until(lambda: record.exists() and record.read_text(), timeout=20, what="alpha's job")
    old_term = int(record.read_text().split()[1])
    beta = spawn_lelect("campaign", "job", "--id", "beta", "--heartbeat-interval", "0.2s", "--",
                        *trapping_job(record), backend=backend)
    processes.append(beta)
    wait_until(lambda: members(backend, "job") == {"alpha", "beta"}, timeout=20, what="beta campaigning")

    out = run_lelect("resign", "job", "--wait", "20s", backend=backend)
    assert out.returncode == 0, out.stderr
    assert f"asked alpha (term {old_term}) to step down" in out.stdout
    match = re.search(r"new leader: beta \(term (\d+)\)", out.stdout)
    assert match, out.stdout
    new_term = int(match.group(1))
    assert new_term > old_term

    # alpha stopped its job with the stop signal and left the race (exit 0, no --restart).
    assert alpha.wait(timeout=20) == 0
    lines = record.read_text().splitlines()
    assert f"stopped-by-TERM {old_term}" in lines
    assert lines.index(f"stopped-by-TERM {old_term}") < lines.index(f"start {new_term}")
    assert leader_json(backend, "job")["node_id"] == "beta"

    # A request for the old term changes nothing.
    stale = run_lelect("resign", "job", "--term", str(old_term), backend=backend)
    assert stale.returncode != 0
    assert f"term {old_term} does not lead" in stale.stderr and "nothing changed" in stale.stderr
    assert len(stale.stderr.strip().splitlines()) == 1 and "Traceback" not in stale.stderr
    assert leader_json(backend, "job")["term"] == new_term
    assert beta.poll() is None and f"stopped-by-TERM {new_term}" not in record.read_text()

    # --term of the current leadership is honoured.
    current = run_lelect("resign", "job", "--term", str(new_term), backend=backend)
    assert current.returncode == 0, current.stderr
    assert beta.wait(timeout=20) == 0
    assert f"stopped-by-TERM {new_term}" in record.read_text()


def test_resign_without_a_leader_says_so(backend):
    out = run_lelect("resign", "empty", backend=backend)
    assert out.returncode == 1
    assert out.stderr.strip() == "lelect: empty: no leader; nothing to resign"
    assert out.stdout == ""


def test_resign_wait_fails_when_nobody_takes_over(backend, processes, tmp_path):
    record = tmp_path / "record"
    alone = spawn_lelect("campaign", "solo", "--", *trapping_job(record), backend=backend)
    processes.append(alone)
    wait_until(lambda: record.exists() and record.read_text(), timeout=20, what="job started")
    out = run_lelect("resign", "solo", "--wait", "1s", backend=backend)
    assert out.returncode == 124
    assert "no new leader within 1s" in out.stderr
    assert alone.wait(timeout=20) == 0


def test_resign_with_restart_rejoins_after_the_cooldown(backend, processes, tmp_path):
    record = tmp_path / "record"
    node = spawn_lelect("campaign", "back", "--restart", "--resign-cooldown", "0.5s", "--",
                        *trapping_job(record), backend=backend)
    processes.append(node)
    wait_until(lambda: record.exists() and record.read_text(), timeout=20, what="job started")
    first = int(record.read_text().split()[1])
    out = run_lelect("resign", "back", "--wait", "20s", backend=backend)
    assert out.returncode == 0, out.stderr
    term = int(re.search(r"new leader: .* \(term (\d+)\)", out.stdout).group(1))
    assert term > first
    assert f"stopped-by-TERM {first}" in record.read_text()
    assert node.poll() is None


def test_resign_reaches_a_leader_whose_state_directory_has_a_long_path(tmp_path, processes):
    """A unix socket's path must fit in 108 bytes; a deep LELECT_HOME must not matter."""
    home = tmp_path / ("d" * 60) / ("e" * 60)
    backend = f"file://{home}"
    record = tmp_path / "record"
    name = "n" * 70  # a long election name too (its socket gets a hashed name)
    alpha = spawn_lelect("campaign", name, "--heartbeat-interval", "0", "--", *trapping_job(record),
                         backend=backend)
    processes.append(alpha)
    wait_until(lambda: record.exists() and record.read_text(), timeout=20, what="the job")
    wait_until(lambda: any(p.suffix == ".sock" for p in home.iterdir()), what="the resign socket")
    out = run_lelect("resign", name, backend=backend)
    assert out.returncode == 0, out.stderr
    assert alpha.wait(timeout=20) == 0
    assert "stopped-by-TERM" in record.read_text()
