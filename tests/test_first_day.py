"""What a new user tripped over on a first day with lelect (each was a bug or a
friction; each test failed before its fix). Real lelect processes, embedded backend;
the backend-independent ones (timeouts, exit by signal, --max-runtime's status) are in
the contract suite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import click
import pexpect
import pytest

from lelect.cli import COMMANDS, cli
from lelect.cli.params import Duration
from tests.helpers import (
    LELECT,
    OutputTail,
    lelect_env,
    read_intervals,
    recording_job,
    run_lelect,
    spawn_lelect,
    wait_until,
)


def test_options_end_at_the_command_like_flock(backend):
    """`lelect campaign fx echo -n hi`: -n is echo's, not --no-wait."""
    out = run_lelect("campaign", "fx", "echo", "-n", "hi", backend=backend)
    assert (out.returncode, out.stdout) == (0, "hi")
    out = run_lelect("campaign", "fx", "-q", "--timeout", "5s", "sh", "-c", "exit 3", backend=backend)
    assert out.returncode == 3 and out.stderr == ""
    out = run_lelect("campaign", "fx", "-qw5s", "--", "printf", "%s", "--help", backend=backend)
    assert (out.returncode, out.stdout) == (0, "--help")


def test_every_duration_option_of_every_command_refuses_absurd_values(backend, tmp_path):
    """Out of range is a usage error (2, one line), never a traceback nor found out
    after winning."""
    marker = tmp_path / "ran"
    checked = 0
    for name in COMMANDS:
        command = cli.get_command(click.Context(cli), name)
        for param in command.params:
            if not isinstance(param, click.Option) or not isinstance(param.type, Duration):
                continue
            args = [name]
            if name in ("campaign", "leader", "resign"):
                args.append("absurd")
            args += [param.opts[0], "99999999999h"]
            if name == "campaign":
                args += ["--", "touch", str(marker)]
            if name == "watch":
                args.append("--once")
            out = run_lelect(*args, backend=backend)
            lines = [line for line in out.stderr.splitlines() if line.strip()]
            assert out.returncode == 2, (args, out.stderr)
            assert len(lines) == 1 and "out of range" in lines[0], (args, out.stderr)
            checked += 1
    assert checked >= 14
    assert not marker.exists()


def test_help_shows_durations_as_people_write_them():
    text = " ".join(run_lelect("campaign", "--help").stdout.split())
    assert "[default: 1s]" in text and "[default: 1h]" in text
    assert "1.0]" not in text and "3600.0" not in text
    for command in ("watch", "health"):
        assert "NDJSON" in run_lelect(command, "--help").stdout


def test_elected_is_logged_before_the_jobs_output_and_once(backend):
    out = run_lelect("campaign", "order", "--", "sh", "-c", "echo JOB-SAYS >&2", backend=backend)
    lines = out.stderr.splitlines()
    assert [i for i, line in enumerate(lines) if "elected" in line] == [0], lines
    assert lines[1] == "JOB-SAYS" and len(lines) == 3, lines


def test_json_logs_name_the_node(backend):
    out = run_lelect("campaign", "js", "--id", "web-1", "--log-format", "json", "--", "true",
                     backend=backend)
    records = [json.loads(line) for line in out.stderr.splitlines()]
    assert records and all(r["node_id"] == "web-1" for r in records)
    assert {"elected", "released"} <= {r["event"] for r in records}


def test_leftover_processes_are_announced_before_the_grace(backend):
    out = run_lelect("campaign", "left", "--grace", "300ms", "--", "sh", "-c",
                     "trap '' TERM; (trap '' TERM; sleep 30) & exit 0", backend=backend)
    assert out.returncode == 0, out.stderr
    assert "left 1 process behind" in out.stderr


def test_ctrl_z_stops_lelect_and_its_job_and_fg_resumes_both(backend, tmp_path):
    ticks = tmp_path / "ticks"
    # A job that never forks. dash vforks a loop's `sleep`: a Ctrl-Z that stops the child
    # before its exec leaves dash itself in the kernel (state D, kernel_clone), not
    # stopped, until a SIGCONT, so the job never reports a stop (seen under load).
    job = tmp_path / "tick.py"
    job.write_text("import time\nwhile True:\n"
                   f"    with open({str(ticks)!r}, 'a') as f:\n        f.write('tick\\n')\n"
                   "    time.sleep(0.1)\n")
    shell = pexpect.spawn("bash", ["--norc", "--noprofile", "-i"], env={
        **lelect_env(backend), "PS1": "PROMPT> ", "TERM": "dumb"}, timeout=20, encoding="utf-8")
    shell.expect("PROMPT> ")
    command = " ".join([*LELECT, "campaign", "tz", "--", sys.executable, str(job)])
    shell.sendline(command)
    wait_until(lambda: ticks.exists() and ticks.read_text().count("tick") >= 2, timeout=20,
               what="the job to run")
    shell.sendcontrol("z")
    shell.expect("Stopped")
    shell.expect("PROMPT> ")  # the shell has its terminal back
    count = ticks.read_text().count("tick")
    time.sleep(0.5)  # a window in which a stopped job must not tick
    assert ticks.read_text().count("tick") <= count + 1
    shell.sendline("fg")
    wait_until(lambda: ticks.read_text().count("tick") >= count + 3, timeout=20,
               what="the job to run again")
    shell.sendcontrol("c")
    shell.expect("PROMPT> ")
    shell.sendline("echo status=$?")
    shell.expect(r"status=(\d+)")
    assert shell.match.group(1) == "130"
    shell.sendline("exit")
    shell.expect(pexpect.EOF)


def test_restart_candidates_hand_over_in_milliseconds(backend, tmp_path):
    """Three --restart candidates with short clean jobs never leave the election
    leaderless for long: back-off is for failing jobs."""
    record = tmp_path / "record"
    procs = [spawn_lelect("campaign", "rr", "--restart", "--", *recording_job(record, 0.3),
                          backend=backend) for _ in range(3)]
    wait_until(lambda: record.exists() and record.read_text().count("end") >= 8, timeout=60,
               what="eight runs")
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(timeout=30)
    runs = [r for r in read_intervals(record) if r.end_ns is not None]
    gaps = [(b.start_ns - a.end_ns) / 1e9 for a, b in zip(runs, runs[1:])]
    assert max(gaps) < 1.0, gaps  # was up to the 30 s back-off


def test_restart_delay_zero_keeps_a_floor(backend, tmp_path):
    record = tmp_path / "runs"
    proc = spawn_lelect("campaign", "spin", "--restart", "--restart-delay", "0", "--",
                        "sh", "-c", f"echo run >> {record}; exit 1", backend=backend)
    time.sleep(1.5)  # the window whose number of runs the floor bounds
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert record.read_text().count("run") <= 12  # 100 ms floor, doubling (was ~50)


def test_readers_create_nothing(tmp_path):
    missing = tmp_path / "typo"
    out = run_lelect("leader", "x", backend=f"file://{missing}")
    assert out.returncode == 1 and "no leader" in out.stdout
    for args in (("watch", "--once"), ("health", "x"), ("resign", "x")):
        run_lelect(*args, backend=f"file://{missing}")
    assert not missing.exists()


def test_health_of_an_unknown_election_says_so(backend):
    assert run_lelect("campaign", "known", "--", "true", backend=backend).returncode == 0
    out = run_lelect("health", "typo", backend=backend)
    assert out.returncode == 2
    assert "unknown election 'typo'" in out.stderr


def test_health_of_an_election_with_only_a_history_is_no_leader(backend):
    assert run_lelect("campaign", "past", "--", "true", backend=backend).returncode == 0
    out = run_lelect("health", "past", backend=backend)
    assert "unknown election" not in out.stderr
    assert "no leader" in out.stdout and out.returncode == 2


def test_watch_keeps_node_ids_whole_on_a_narrow_terminal(backend, tmp_path):
    node = "web-frontend-03.example.internal"
    proc = spawn_lelect("campaign", "narrow", "--id", node, "--", "sleep", "30", backend=backend)
    wait_until(lambda: run_lelect("leader", "narrow", backend=backend).returncode == 0,
               timeout=20, what="leader")
    out = subprocess.run([*LELECT, "watch", "narrow", "--once"], capture_output=True, text=True,
                         env={**lelect_env(backend), "COLUMNS": "50"}, timeout=30)
    assert node in out.stdout, out.stdout
    proc.terminate()
    proc.wait(timeout=30)


def node_column(table: str) -> list[str]:
    """The NODE cells of a piped watch/health table, a folded cell's lines joined."""
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("NODE"))
    width = lines[header].index("ROLE")
    cells: list[str] = []
    for line in lines[header + 1:]:
        if not line.strip() or line.startswith("  "):
            break
        cell, rest = line[:width].strip(), line[width:].strip()
        if rest and not rest.startswith(("follower", "leader")):
            raise AssertionError(f"not a member row: {line!r}")
        if rest:
            cells.append(cell)
        else:
            cells[-1] += cell
    return cells


def test_node_ids_are_never_cut_and_no_column_is_dropped(backend):
    """Two FQDNs that differ after character 48: piped, at 200 and at 80 columns, both
    are shown whole and every column is there (was: cut with "…", LOAD and STATUS
    dropped at 80)."""
    base = "web-frontend-03.eu-west-1.compute.internal.example.com-"
    nodes = [base + "primary", base + "secondary"]
    for node in nodes:
        spawn_lelect("campaign", "wide", "--id", node, "--heartbeat-interval", "100ms", "--",
                     "sleep", "30", backend=backend)
    wait_until(lambda: run_lelect("watch", "wide", "--once", "--json", backend=backend)
               .stdout.count('"alive"') == 2, timeout=20, what="two members")
    for columns in ("200", "80"):
        for command in ("watch", "health"):
            out = subprocess.run([*LELECT, command, "wide", *(["--once"] * (command == "watch"))],
                                 capture_output=True, text=True, timeout=30,
                                 env={**lelect_env(backend), "COLUMNS": columns})
            assert "…" not in out.stdout, out.stdout
            assert sorted(node_column(out.stdout)) == nodes, out.stdout
            header = next(line for line in out.stdout.splitlines() if line.startswith("NODE"))
            assert header.split() == ["NODE", "ROLE", "LAST", "BEAT", "CPU", "MEM", "LOAD",
                                      "STATUS", *(["PHI"] * (command == "health"))], out.stdout
            assert all(len(line) <= int(columns) for line in out.stdout.splitlines())
            assert [line for line in out.stdout.splitlines() if line != line.rstrip()] == []


def test_piped_history_tables_have_no_trailing_spaces(backend):
    assert run_lelect("campaign", "trail", "--", "true", backend=backend).returncode == 0
    out = run_lelect("history", "trail", backend=backend)
    assert "exited" in out.stdout
    assert [line for line in out.stdout.splitlines() if line != line.rstrip()] == []


def test_two_candidates_with_one_node_id_are_warned(backend):
    first = spawn_lelect("campaign", "dup", "--id", "same", "--heartbeat-interval", "100ms",
                         "--", "sleep", "30", backend=backend)
    wait_until(lambda: '"same"' in run_lelect("watch", "dup", "--once", "--json",
                                              backend=backend).stdout, timeout=20,
               what="the first candidate's heartbeat")
    second = spawn_lelect("campaign", "dup", "--id", "same", "--", "true", backend=backend)
    tail = OutputTail(second.stderr)
    tail.wait_for("another live candidate uses the node id 'same'")
    for proc in (first, second):
        proc.terminate()
        proc.wait(timeout=30)


#: What the other user does with the shared directory: take the election's flock
#: (without waiting) and, if it won, settle the next term and record itself as leader.
OTHER_USER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from lelect.backends.file import state as filestate
directory = sys.argv[1]
state = filestate.open_state_dir(directory, create=False)
assert state.shared is True
fd = filestate.take_lock(state, "both.lock", True)
if fd is None:
    print("busy")
else:
    conn = filestate.open_db(state)
    term = filestate.next_term(fd, conn, "both", directory + "/both.lock")
    filestate.record_leader(conn, "both", term=term, node_id="nobody", token="t", host="h",
                            pid=1, since=time.time(), history_limit=10)
    print("won", term)
"""


def test_root_and_another_user_share_an_election_in_a_setgid_group_directory(shared_dir):
    shared, group, src = shared_dir
    backend = f"file://{shared}"
    as_other = ["setpriv", "--reuid=65534", f"--regid={group}", "--clear-groups", "--",
                "/usr/bin/python3", "-c", OTHER_USER, str(shared), str(src)]
    started = shared / "started"
    leader = spawn_lelect("campaign", "both", "--", "sh", "-c", f"touch {started}; sleep 30",
                          backend=backend)
    wait_until(started.exists, timeout=20, what="root's job")
    busy = subprocess.run(as_other, capture_output=True, text=True, timeout=60)
    assert busy.stdout.strip() == "busy", busy.stderr
    leader.terminate()
    leader.wait(timeout=30)
    won = subprocess.run(as_other, capture_output=True, text=True, timeout=60)
    assert won.stdout.split()[0] == "won", won.stderr
    assert int(won.stdout.split()[1]) == 2
    after = run_lelect("campaign", "both", "--", "sh", "-c", "echo $LELECT_TERM", backend=backend)
    assert after.stdout.strip() == "3", after.stderr
    for path in shared.iterdir():
        if path.is_file() and path.name != "started":
            assert path.stat().st_mode & 0o060 == 0o060, path  # the group's too


#: A job that counts each delivery of SIGTERM (the wakeup fd gets one byte per delivery,
#: where a Python handler may run once for two) and writes the count when it ends. It
#: waits on the wakeup fd, not in signal.pause(): a SIGTERM handled just before pause()
#: would leave it paused until the grace ran out (seen once under load).
COUNT_TERMS = """
import os, select, signal, sys, time
r, w = os.pipe()
os.set_blocking(w, False)
signal.signal(signal.SIGTERM, lambda *_: None)
signal.set_wakeup_fd(w)
open(sys.argv[1], "w").close()
select.select([r], [], [])
time.sleep(0.3)
with open(sys.argv[2], "a") as f:
    f.write(f"{os.read(r, 100).count(bytes([signal.SIGTERM]))}\\n")
"""


@pytest.mark.parametrize("stop", ["sigterm", "resign"])
def test_the_job_gets_one_stop_signal(backend, tmp_path, stop):
    """One SIGTERM per stop, to the group (was: the group, then the job's pid again)."""
    counts = tmp_path / "counts"
    for run in range(5):
        started = tmp_path / f"started-{run}"
        proc = spawn_lelect("campaign", "once", "--", sys.executable, "-c", COUNT_TERMS,
                            str(started), str(counts), backend=backend)
        wait_until(started.exists, timeout=20, what="the job")
        if stop == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            assert run_lelect("resign", "once", backend=backend).returncode == 0
        proc.wait(timeout=30)
    assert counts.read_text().split() == ["1"] * 5


def test_election_members_is_iterable(backend, tmp_path):
    import lelect

    started = tmp_path / "started"
    proc = spawn_lelect("campaign", "it", "--id", "m-1", "--heartbeat-interval", "100ms", "--",
                        "sh", "-c", f"touch {started}; exec sleep 30", backend=backend)
    with lelect.connect(backend) as client:
        election = client.election("it")
        wait_until(lambda: started.exists() and election.members().records, timeout=20,
                   what="the job and a member record")
        assert [record.node_id for record in election.members()] == ["m-1"]
    proc.terminate()
    proc.wait(timeout=30)


def lelect_in_sh(redirect: str, *args: str, backend: str) -> subprocess.CompletedProcess:
    """`lelect ARGS` run by sh with ``redirect`` (``>&-``, ``2>&-``, ``>/dev/full``)."""
    script = f'exec "$@" {redirect}'
    return subprocess.run(["sh", "-c", script, "sh", *LELECT, *args], env=lelect_env(backend),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("redirect", [">&-", ">/dev/full"])
def test_a_command_that_cannot_write_says_so_in_one_line(backend, redirect):
    assert run_lelect("campaign", "out", "--", "true", backend=backend).returncode == 0
    for args in (("leader", "x"), ("history", "out"), ("watch", "--once"), ("health", "--json")):
        out = lelect_in_sh(redirect, *args, backend=backend)
        assert out.returncode == 74, (args, out)
        assert out.stderr.splitlines() == [
            "lelect: cannot write to stdout: " + ("Bad file descriptor" if redirect == ">&-"
                                                  else "No space left on device")], out.stderr


@pytest.mark.parametrize("redirect", ["2>&-", ">&-", ">&- 2>&-", "2>/dev/full"])
def test_a_campaign_ends_with_its_jobs_status_whatever_its_streams(backend, redirect):
    for quiet in ((), ("-q",)):
        out = lelect_in_sh(redirect, "campaign", "sf", *quiet, "--", "sh", "-c", "exit 7",
                           backend=backend)
        assert out.returncode == 7, (redirect, quiet, out)


def test_a_reader_that_left_ends_the_command_with_its_own_status(backend):
    """`--json | head -1`: the reader has what it wanted; the status is the command's own,
    every time (was 0 or 1 at random)."""
    for name in ("a", "b", "c"):
        assert run_lelect("campaign", name, "--", "true", backend=backend).returncode == 0
    for args, status in ((("health", "--json"), 2), (("watch", "--once", "--json"), 0),
                         (("history", "a", "--json"), 0), (("leader", "a", "--json"), 1)):
        for _ in range(3):
            read, write = os.pipe()
            os.close(read)  # the reader is gone before the first line
            proc = subprocess.run([*LELECT, *args], env=lelect_env(backend), stdout=write,
                                  stderr=subprocess.PIPE, text=True, timeout=60)
            os.close(write)
            assert (proc.returncode, proc.stderr) == (status, ""), (args, proc)


def test_leader_wait_that_runs_out_is_124_like_the_other_waits(backend):
    out = run_lelect("leader", "nobody", "--wait", "300ms", backend=backend)
    assert out.returncode == 124 and "no leader within 300ms" in out.stdout, out


def test_conflict_exit_code_covers_the_timeout_like_flock(backend, tmp_path):
    started = tmp_path / "started"
    spawn_lelect("campaign", "fl", "--", "sh", "-c", f"touch {started}; exec sleep 30",
                 backend=backend)
    wait_until(started.exists, timeout=20, what="the leader's job")
    assert run_lelect("campaign", "fl", "-w", "200ms", "--", "true",
                      backend=backend).returncode == 124
    for how in (("-w", "200ms"), ("-n",)):
        out = run_lelect("campaign", "fl", "-E", "3", *how, "--", "true", backend=backend)
        assert out.returncode == 3, (how, out.stderr)


@pytest.mark.parametrize("sig", ["STOP", "TSTP", "CONT"])
def test_a_stop_signal_that_cannot_stop_a_job_is_refused(backend, sig, tmp_path):
    marker = tmp_path / "ran"
    out = run_lelect("campaign", "ss", "--stop-signal", sig, "--", "touch", str(marker),
                     backend=backend)
    assert out.returncode == 2 and "does not ask a job to stop" in out.stderr
    assert not marker.exists()


def test_ttl_on_the_embedded_backend_is_named_as_ignored_once(backend):
    out = run_lelect("campaign", "tt", "--ttl", "2s", "--grace", "5s", "--", "true",
                     backend=backend)
    assert out.returncode == 0
    assert out.stderr.count("--ttl 2s is ignored") == 1, out.stderr


def test_help_names_the_default_directory_of_whoever_runs_it():
    text = " ".join(run_lelect("--help").stdout.split())
    expected = "/var/lib/lelect" if os.geteuid() == 0 else "~/.local/state/lelect"
    assert f"$LELECT_HOME or {expected}" in text


def test_health_takes_several_elections_like_watch(backend):
    for name in ("one", "two", "three"):
        assert run_lelect("campaign", name, "--", "true", backend=backend).returncode == 0
    out = run_lelect("health", "one", "two", "--json", backend=backend)
    assert [json.loads(line)["election"] for line in out.stdout.splitlines()] == ["one", "two"]
    typo = run_lelect("health", "one", "tow", backend=backend)
    assert typo.returncode == 2 and "unknown election 'tow'" in typo.stderr


def test_a_script_without_a_shebang_runs_through_sh_like_execvp(backend, tmp_path):
    script = tmp_path / "plain"
    script.write_text('echo "ran with $1"\n')
    script.chmod(0o755)
    out = run_lelect("campaign", "sb", "--", str(script), "arg", backend=backend)
    assert (out.returncode, out.stdout) == (0, "ran with arg\n"), out.stderr


def test_commands_that_cannot_run_say_why_before_campaigning(backend, tmp_path):
    bad = tmp_path / "bad"
    bad.write_text("#!/nonexistent/python9 -u\nprint(1)\n")
    bad.chmod(0o755)
    folder = tmp_path / "folder"
    folder.mkdir()
    for command, reason in ((bad, "bad interpreter /nonexistent/python9"),
                            (folder, "is a directory")):
        out = run_lelect("campaign", "why", "--", str(command), backend=backend)
        assert out.returncode == 127 and reason in out.stderr, out.stderr
        assert "elected" not in out.stderr


def test_json_logs_carry_errors_as_json_too(backend, tmp_path):
    for args, status in ((("--", str(tmp_path / "missing")), 127),
                         (("--stop-signal", "STOP", "--", "true"), 2)):
        out = run_lelect("campaign", "je", "--log-format", "json", *args, backend=backend)
        assert out.returncode == status
        (record,) = [json.loads(line) for line in out.stderr.splitlines()]
        assert record["event"] == "error" and record["election"] == "je", record


def test_a_second_stop_signal_says_how_long_and_a_third_kills(backend, tmp_path):
    started = tmp_path / "started"
    proc = spawn_lelect("campaign", "stubborn", "--grace", "30s", "--", "sh", "-c",
                        f"trap '' TERM; touch {started}; while :; do sleep 0.05; done",
                        backend=backend)
    wait_until(started.exists, timeout=20, what="the job")
    tail = OutputTail(proc.stderr)
    proc.send_signal(signal.SIGTERM)
    tail.wait_for("SIGTERM: stopping the job")
    proc.send_signal(signal.SIGTERM)
    tail.wait_for("SIGTERM: waiting up to")
    assert "(SIGTERM again to kill it now)" in tail.text
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == -signal.SIGTERM
    assert time.monotonic() - began < 10  # not the 30 s grace


def test_a_leader_without_heartbeats_is_not_shown_as_no_candidates(backend, tmp_path):
    started = tmp_path / "started"
    spawn_lelect("campaign", "quiet", "--heartbeat-interval", "0", "--", "sh", "-c",
                 f"touch {started}; exec sleep 30", backend=backend)
    wait_until(started.exists, timeout=20, what="the job")
    for command in (("watch", "quiet", "--once"), ("health", "quiet")):
        out = run_lelect(*command, backend=backend)
        assert "no candidates" not in out.stdout, out.stdout
        assert "the leader publishes none" in out.stdout, out.stdout


def test_sigterm_as_the_job_starts_always_ends_lelect(backend, tmp_path):
    """A SIGTERM that came while the keeper was being started was dropped: lelect
    waited for ever, its job running (1 run in ~20)."""
    for run in range(15):
        started = tmp_path / f"started-{run}"
        proc = spawn_lelect("campaign", f"early-{run}", "--", "sh", "-c",
                            f"touch {started}; exec sleep 30", backend=backend)
        wait_until(started.exists, timeout=20, what="the job")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == -signal.SIGTERM
