"""What is specific to the PostgreSQL backend (the contract suite covers the rest):
faults of the server and the link, bad input, the schema's creation, libpq's password
sources, the documented GRANTs, and the keeper's standard-library hand-back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from lelect.backends import connect
from lelect.backends.base import Heartbeat
from lelect.backends.records import HAND_BACK_REASON
from lelect.errors import BackendUnavailable, ConfigError
from tests.helpers import (
    assert_one_at_a_time,
    campaigns_in_turn,
    candidate,
    lelect_env,
    read_ticks,
    run_lelect,
    spawn_lelect,
    ticking_job,
    wait_until,
    wakeups,
)
from tests.plugins.hostile import read_some
from tests.plugins.postgres_server import PASSWORD, PostgresCluster, fresh_name

TTL = 2.0
ROOT = Path(__file__).resolve().parent.parent
BACKENDS_DOC = ROOT / "docs" / "backends.md"


def campaign(url: str, election: str, job: list[str], *options: str) -> subprocess.Popen:
    return spawn_lelect("campaign", election, "--ttl", f"{TTL}s", "--heartbeat-interval", "0",
                        *options, "--", *job, backend=url,
                        stdout=subprocess.DEVNULL)  # fmt: skip


def leader_and_waiter(cluster: PostgresCluster, db: str, schema: str, election: str,
                      record: Path, processes: list,
                      leader_url: str | None = None) -> subprocess.Popen:  # fmt: skip
    """A leader running a ticking job (through ``leader_url``, if given) and a second
    candidate queued behind it, seen waiting by the server; returns the leader."""
    url = cluster.url(db, schema=schema)
    leader = campaign(leader_url or url, election, ticking_job(record))
    processes.append(leader)
    wait_until(lambda: read_ticks(record), timeout=20, what="the first job")
    processes.append(campaign(url, election, ticking_job(record)))
    wait_until(lambda: cluster.waiting(db, schema, election) >= 1, timeout=20,
               what="the second candidate to wait")  # fmt: skip
    return leader


# -- faults -----------------------------------------------------------------------------


def test_server_restart_mid_leadership_never_runs_two_jobs(
    postgres_private_cluster, tmp_path, processes
):
    cluster = postgres_private_cluster
    db = cluster.create_database("restart")
    record = tmp_path / "record"
    leader_and_waiter(cluster, db, "lelect", "restart", record, processes)
    cluster.restart()
    restarted_ns = time.time_ns()
    # Somebody leads again after the restart: the old leader (its renew reconnected in
    # time) or the waiter (the old leader lost its lease and stopped its job).
    wait_until(lambda: read_ticks(record)[-1].last_ns > restarted_ns + 1e9, timeout=TTL + 10,
               what="a job running after the restart")  # fmt: skip
    assert run_lelect("leader", "restart", backend=cluster.url(db)).returncode == 0
    for process in processes:
        process.kill()
        process.wait(10)
    assert_one_at_a_time(read_ticks(record))


def test_terminated_backend_is_replaced_and_the_leader_keeps_its_lease(
    postgres_cluster, postgres_database, tmp_path, processes
):
    record = tmp_path / "record"
    leader = leader_and_waiter(postgres_cluster, postgres_database, "lelect", "term", record,
                               processes)  # fmt: skip
    db = postgres_database
    killed = postgres_cluster.leader_backend_pid(db, "lelect", "term")
    postgres_cluster.sql(f"SELECT pg_terminate_backend({killed})")
    # The next renew reconnects and records its new server process.
    wait_until(lambda: postgres_cluster.leader_backend_pid(db, "lelect", "term") not in
               (None, killed), timeout=TTL + 3, what="a renew on a new connection")  # fmt: skip
    terminated_at = time.time_ns()
    wait_until(lambda: read_ticks(record)[-1].last_ns > terminated_at + TTL * 1e9,
               timeout=TTL + 5, what="the job to run on past one more ttl")  # fmt: skip
    assert leader.poll() is None
    assert len(read_ticks(record)) == 1  # the waiter never ran
    assert postgres_cluster.waiting(db, "lelect", "term") == 1


def test_renew_stuck_behind_a_lock_gives_up_by_the_deadline(
    postgres_cluster, postgres_database, tmp_path, processes
):
    record = tmp_path / "record"
    db = postgres_database
    leader = leader_and_waiter(postgres_cluster, db, "lelect", "locked", record, processes)
    with postgres_cluster.connect(db) as locker:
        with locker.transaction():
            locker.execute("SELECT * FROM lelect.lease WHERE election = 'locked' FOR UPDATE")
            locked_ns = time.time_ns()
            # The leader's renews wait for the row lock: it must give up by its deadline
            # although the lock is held longer than that.
            assert leader.wait(TTL + 5) == 73
            given_up_ns = time.time_ns()
            assert read_ticks(record)[0].last_ns <= locked_ns + TTL * 1e9
            assert len(read_ticks(record)) == 1
        assert given_up_ns - locked_ns < (TTL + 3) * 1e9
    wait_until(lambda: len(read_ticks(record)) == 2, timeout=TTL + 5, what="the next job")
    assert_one_at_a_time(read_ticks(record))


# -- bad input --------------------------------------------------------------------------


def test_unreachable_server_fails_within_the_bound(postgres_cluster, silent_listener,
                                                   refused_port):  # fmt: skip
    silent = postgres_cluster.url("x", port=silent_listener, connect_timeout="1s")
    started = time.monotonic()
    out = run_lelect("leader", "x", backend=silent)
    assert out.returncode == 69
    assert "within 1s" in out.stderr and PASSWORD not in out.stderr
    assert time.monotonic() - started < 5
    slow = postgres_cluster.url("x", port=silent_listener, connect_timeout="10s")
    with connect(slow) as backend:  # the campaign's timeout is the shorter bound
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="within 700ms"):
            backend.campaign("x", candidate("a"), timeout=0.7)
        assert time.monotonic() - started < 2.5
    with connect(postgres_cluster.url("x", port=refused_port)) as backend:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="connection refused"):
            backend.campaign("x", candidate("a"), timeout=30)
        assert time.monotonic() - started < 2


def test_wrong_password_says_authentication_failed_without_the_password(
    postgres_cluster, postgres_database
):
    wrong = "not-the-Pa55word"
    out = run_lelect("leader", "x",
                     backend=postgres_cluster.url(postgres_database, password=wrong))  # fmt: skip
    assert out.returncode == 69
    assert "authentication failed" in out.stderr
    assert wrong not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_role_without_create_on_a_fresh_database_is_refused_naming_the_privilege(
    postgres_cluster
):
    db = postgres_cluster.create_database(fresh_name("nocreate"), owner="postgres")
    postgres_cluster.sql(f"DROP ROLE IF EXISTS plain; CREATE ROLE plain LOGIN PASSWORD '{PASSWORD}'")
    url = postgres_cluster.url(db, user="plain")
    out = run_lelect("campaign", "x", "--", "true", backend=url)
    assert out.returncode == 78, out.stderr
    (line,) = out.stderr.strip().splitlines()[-1:]
    assert "CREATE privilege on database" in line and "GRANT CREATE ON DATABASE" in line


@pytest.mark.parametrize("option", ["sslmode=bogus", "nope=1", "schema=Bad", "ttl=0s",
                                    "history=many", "connect_timeout=0"])  # fmt: skip
def test_bad_options_are_usage_errors(postgres_cluster, postgres_database, option):
    url = postgres_cluster.url(postgres_database) + "?" + option
    out = run_lelect("leader", "x", backend=url)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and PASSWORD not in out.stderr


def unix_url(cluster: PostgresCluster, db: str, **options: str) -> str:
    """The test cluster through its socket directory (percent-encoded): trust there."""
    directory = str(cluster.root).replace("/", "%2F")
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"postgresql://lelect@{directory}:{cluster.port}/{db}" + (f"?{query}" if query else "")


def test_without_psycopg_a_postgresql_url_works(postgres_cluster, postgres_database, tmp_path):
    """lelect speaks PostgreSQL's protocol itself: psycopg is the tests' client only."""
    # A python path with everything of site-packages but psycopg: the real package hidden.
    site = Path(psycopg.__file__).resolve().parent.parent
    hidden = tmp_path / "site"
    hidden.mkdir()
    for entry in site.iterdir():
        if not entry.name.startswith("psycopg"):
            (hidden / entry.name).symlink_to(entry)
    out = subprocess.run(
        [sys.executable, "-S", "-m", "lelect", "-b", postgres_cluster.url(postgres_database),
         "campaign", "nopsycopg", "--", "sh", "-c", "echo term=$LELECT_TERM"],
        env={**lelect_env(), "PYTHONPATH": f"{hidden}{os.pathsep}{ROOT}"},
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("term="), out.stdout


@pytest.mark.parametrize("through", ["unix-socket-trust", "tcp-scram"])
def test_a_waiting_candidate_imports_neither_psycopg_nor_ssl_nor_hashlib(
        postgres_cluster, postgres_database, tmp_path, processes, through):  # fmt: skip
    """Without TLS a candidate waiting in line has not mapped OpenSSL's libraries (ssl,
    hashlib, hmac), nor psycopg: not with trust, nor with SCRAM (Python's own SHA-256)."""
    url = (unix_url(postgres_cluster, postgres_database) if through == "unix-socket-trust"
           else postgres_cluster.url(postgres_database))  # fmt: skip
    record = tmp_path / "record"
    processes.append(campaign(url, "lean", ticking_job(record)))
    wait_until(lambda: read_ticks(record), timeout=20, what="the first job")
    trace = tmp_path / "imports"
    with open(trace, "w") as stderr:
        waiter = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "lelect",
                                   "campaign", "lean", "--", "true"],
                                  env=lelect_env(url), stdout=subprocess.DEVNULL,
                                  stderr=stderr)  # fmt: skip
    processes.append(waiter)
    wait_until(lambda: postgres_cluster.waiting(postgres_database, "lelect", "lean") >= 1,
               timeout=20, what="the candidate in line")  # fmt: skip
    imported = {line.rsplit("|", 1)[-1].strip() for line in trace.read_text().splitlines()
                if line.startswith("import time:")}
    assert "lelect.backends.postgres.wire" in imported, sorted(imported)
    heavy = {m for m in imported if m.split(".")[0] in
             ("psycopg", "psycopg_binary", "ssl", "_ssl", "hashlib", "_hashlib", "hmac")}
    assert not heavy, heavy


@pytest.mark.parametrize("option, named", [
    ("gssencmode=require", "gssencmode"),
    ("channel_binding=require", "channel_binding"),
    ("service=prod", "service"),
    ("krbsrvname=postgres", "krbsrvname"),
    ("sslcrl=%2Ftmp%2Fcrl.pem", "sslcrl"),
    ("requirepeer=postgres", "requirepeer"),
])
def test_libpq_options_lelects_client_lacks_are_refused_naming_them(option, named):
    out = run_lelect("leader", "x", backend=f"postgresql://u@127.0.0.1:1/db?{option}")
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert named in line and "lelect's PostgreSQL client does not support" in line


def test_an_unsupported_libpq_variable_in_the_environment_is_refused():
    env = {**lelect_env("postgresql://u@127.0.0.1:1/db"), "PGSERVICE": "prod"}
    out = subprocess.run([*LELECT, "leader", "x"], env=env, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "PGSERVICE=prod" in line and "does not support" in line


def test_pg_variables_complete_the_url(postgres_cluster, postgres_database):
    """PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD and PGAPPNAME, as libpq reads them."""
    env = {**lelect_env("postgresql://"), "PGHOST": "127.0.0.1",
           "PGPORT": str(postgres_cluster.port), "PGUSER": "lelect",
           "PGDATABASE": postgres_database, "PGPASSWORD": PASSWORD,
           "PGAPPNAME": "from-env", "PGSSLMODE": "disable"}  # fmt: skip
    out = subprocess.run([*LELECT, "campaign", "fromenv", "--", "true"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_target_session_attrs_read_write_skips_a_standby(postgres_cluster, postgres_database,
                                                         hostile_server):  # fmt: skip
    """The first host says it is a hot standby (in_hot_standby=on, as PostgreSQL 14+
    reports at start-up): with target_session_attrs=read-write the next host is used."""
    from tests.test_hostile_servers import pg_message, pg_startup

    def standby(conn, stopped):
        pg_startup(conn)
        conn.sendall(pg_message(b"R", b"\0\0\0\0")
                     + pg_message(b"S", b"in_hot_standby\0on\0")
                     + pg_message(b"S", b"default_transaction_read_only\0on\0")
                     + pg_message(b"Z", b"I"))
        read_some(conn)  # a Terminate, or nothing: the client hangs up

    fake = hostile_server(standby)
    url = (f"postgresql://lelect:{PASSWORD}@127.0.0.1:{fake.port},127.0.0.1:"
           f"{postgres_cluster.port}/{postgres_database}")
    out = run_lelect("campaign", "rw", "--", "true",
                     backend=url + "?target_session_attrs=read-write&connect_timeout=5s")
    assert out.returncode == 0, out.stderr
    assert fake.connections >= 1
    refused = run_lelect("leader", "rw",
                         backend=f"postgresql://lelect:{PASSWORD}@127.0.0.1:{fake.port}/db"
                                 "?target_session_attrs=read-write&connect_timeout=2s")
    assert refused.returncode == 69 and "session is read-only" in refused.stderr


# -- the schema -------------------------------------------------------------------------


def test_five_candidates_at_once_on_a_fresh_database_create_the_schema_once(
    postgres_cluster, postgres_database, tmp_path
):
    url = postgres_cluster.url(postgres_database)
    campaigns_in_turn(url, "fresh", tmp_path / "record", hold=0.1,
                      options=("--ttl", f"{TTL}s"))  # fmt: skip
    rows = postgres_cluster.sql("SELECT version FROM lelect.schema_version", postgres_database)
    assert rows == [(1,)]


def test_a_schema_newer_than_lelect_is_refused(postgres_cluster, postgres_database):
    url = postgres_cluster.url(postgres_database)
    with connect(url) as backend:
        backend.campaign("v", candidate("a"), timeout=5).release()
    postgres_cluster.sql("UPDATE lelect.schema_version SET version = 99", postgres_database)
    with connect(url) as backend, pytest.raises(ConfigError, match="version 99"):
        backend.campaign("v", candidate("a"), timeout=5)


def test_a_schema_made_before_notes_gains_the_note_table(postgres_cluster, postgres_database):
    url = postgres_cluster.url(postgres_database)
    with connect(url) as backend:
        backend.campaign("v", candidate("a"), timeout=5).release()
    postgres_cluster.sql("DROP TABLE lelect.note", postgres_database)  # as an older lelect left it
    with connect(url) as backend:
        assert backend.get_note("v", "holders") is None
        assert backend.put_note("v", "holders", b"3") is True
        assert backend.get_note("v", "holders") == b"3"


def test_an_oversized_note_stored_behind_lelects_back_reads_as_none(
    postgres_cluster, postgres_database
):
    with connect(postgres_cluster.url(postgres_database)) as backend:
        assert backend.put_note("big", "value:1", b"small") is True
        postgres_cluster.sql("UPDATE lelect.note SET data = decode(repeat('78', 1 << 20), 'hex')",
                             postgres_database)  # fmt: skip
        assert backend.get_note("big", "value:1") is None


# -- credentials and privileges -----------------------------------------------------------


def test_password_from_pgpassword_or_pgpass(postgres_cluster, postgres_database, tmp_path):
    url = postgres_cluster.url(postgres_database, password=None)
    assert run_lelect("leader", "x", backend=url).returncode == 69  # no password known
    env = {**lelect_env(url), "PGPASSWORD": PASSWORD}
    out = subprocess.run([*LELECT, "campaign", "x", "--", "true"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{postgres_cluster.port}:*:lelect:{PASSWORD}\n")
    pgpass.chmod(0o600)
    env = {**lelect_env(url), "PGPASSFILE": str(pgpass)}
    env.pop("PGPASSWORD", None)
    out = subprocess.run([*LELECT, "campaign", "x", "--", "true"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr


LELECT = [sys.executable, "-m", "lelect"]


def documented_grants() -> list[str]:
    """The ```sql blocks of the PostgreSQL section of docs/backends.md, in order."""
    text = BACKENDS_DOC.read_text()
    section = text[text.index("\n## PostgreSQL"):]
    following = section.find("\n## ", 1)
    section = section if following < 0 else section[:following]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def test_the_documented_grants_suffice(postgres_cluster, postgres_database, tmp_path):
    db = postgres_database
    owner = postgres_cluster.url(db)
    assert run_lelect("campaign", "setup", "--timeout", "0", "--", "true",
                      backend=owner).returncode == 0  # fmt: skip
    # Roles live in the whole (shared) cluster: each test makes its own.
    roles = {"lelect_campaigner": fresh_name("campaigner"), "lelect_reader": fresh_name("reader")}
    for role in roles.values():
        postgres_cluster.sql(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")

    def as_roles(statements: str) -> str:
        for documented, made in roles.items():
            statements = statements.replace(documented, made)
        return statements

    campaign_grants, read_grants, resign_grant = map(as_roles, documented_grants())
    postgres_cluster.sql(campaign_grants + read_grants, db)
    campaigner = postgres_cluster.url(db, user=roles["lelect_campaigner"])
    reader = postgres_cluster.url(db, user=roles["lelect_reader"])

    with connect(campaigner) as backend:  # heartbeats, history and a once-per slot
        backend.publish(heartbeat("x", "a"), ttl=60)
        leadership = backend.campaign("x", candidate("a"), timeout=10)
        leadership.release("exited", 0, slot="2026-01-01")
        assert backend.slot_done("x", "2026-01-01").term == leadership.term
        backend.remove_member("x", "a")
        assert backend.put_note("x", "holders", b"2", 30, create=True) is True
        assert backend.get_note("x", "holders") == b"2"
    with connect(reader) as backend:
        assert backend.get_note("x", "holders") == b"2"
    with connect(campaigner) as backend:
        backend.delete_note("x", "holders")
    record = tmp_path / "record"
    leader = campaign(campaigner, "held", ticking_job(record), "--heartbeat-interval", "0.1")
    try:
        wait_until(lambda: read_ticks(record), timeout=20, what="the campaigner's job")
        wait_until(lambda: run_lelect("leader", "held", backend=reader).returncode == 0,
                   timeout=10, what="the reader to see the leader")  # fmt: skip
        for command in (["watch", "held", "--once"], ["health", "held"],
                        ["leader", "held", "--json"]):  # fmt: skip
            out = run_lelect(*command, backend=reader)
            assert out.returncode in (0, 1), (command, out.stderr)
            assert "lelect: error" not in out.stderr, (command, out.stderr)
        refused = run_lelect("campaign", "other", "--timeout", "0", "--", "true", backend=reader)
        assert refused.returncode == 78 and "privilege" in refused.stderr
        # Was: "heartbeat not published" every interval, for ever.
        observer = run_lelect("health", "--publish", "held", backend=reader, timeout=30)
        assert observer.returncode == 78 and "privilege" in observer.stderr, observer.stderr
        assert run_lelect("resign", "held", backend=reader).returncode == 78
        postgres_cluster.sql(resign_grant, db)
        assert run_lelect("resign", "held", backend=reader).returncode == 0
        assert leader.wait(20) == 0
    finally:
        if leader.poll() is None:
            leader.kill()
        leader.wait(10)


# -- the keeper's hand-back -----------------------------------------------------------------


def test_an_observer_of_an_idle_election_sleeps_until_the_server_notifies(
        postgres_cluster, postgres_database, tmp_path):  # fmt: skip
    """``lelect leader --wait`` on an election nobody leads (a 12 s lease) sleeps on the
    server's notifications, with one look per lease in case one is lost: a few wake-ups
    in 5 s (a look every 0.25 s made 20 and more), and a win wakes it at once."""
    url = postgres_cluster.url(postgres_database, ttl="12s")
    observer = spawn_lelect("leader", "idle", "--wait", backend=url)
    time.sleep(1.0)  # let the start-up settle: the interpreter, the connection
    assert observer.poll() is None
    before = wakeups(observer.pid)
    time.sleep(5.0)
    woke = wakeups(observer.pid) - before
    assert woke <= 8, f"an observer of an idle election woke {woke} times in 5 s"
    record = tmp_path / "won"
    leader = campaign(url, "idle", ["sh", "-c", f"touch {record}; sleep 5"])
    wait_until(record.exists, timeout=30, what="the leader's job")
    won = time.monotonic()
    assert observer.wait(timeout=10) == 0
    assert time.monotonic() - won < 3.0, "the observer did not wake on the win"
    assert leader.wait(timeout=30) == 0


def keeper_hand_back(params: dict, budget: float, exit_status: int | None = 137) -> subprocess.CompletedProcess:
    """Run the hand-back as the keeper does: ``python -S -I`` (no site-packages), the
    recipe's module imported by name, params over a pipe (never argv or the environment)."""
    code = (
        "import importlib, json, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "request = json.loads(sys.stdin.read())\n"
        "module = importlib.import_module(request['module'])\n"
        "word = module.hand_back(request['params'], request['budget'], request['status'])\n"
        "print(json.dumps({'word': word, 'modules': sorted(sys.modules)}))\n"
    )
    request = {"module": "lelect.backends.postgres.handback", "params": params,
               "budget": budget, "status": exit_status}  # fmt: skip
    return subprocess.run([sys.executable, "-S", "-I", "-c", code], input=json.dumps(request),
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def heartbeat(election: str, node_id: str) -> Heartbeat:
    return Heartbeat(election=election, node_id=node_id, host="host", pid=4242, role="leader",
                     term=None, seq=1, time=time.time())  # fmt: skip


def dead_leader(backend, election: str, node_id: str = "a"):
    """A leadership whose lelect "died": it no longer renews, nobody released it, and its
    connection is gone (as the kernel closes a dead process's sockets: the election's
    doorbell goes with it)."""
    leadership = backend.campaign(election, candidate(node_id), timeout=10)
    backend.publish(heartbeat(election, node_id), ttl=60)
    leadership.stop()
    leadership.session.drop()
    return leadership


@pytest.mark.parametrize("user", ["lelect", "lelect_md5", "lelect_trust"])
def test_hand_back_frees_the_election_at_once_for_a_waiting_candidate(
    postgres_cluster, postgres_database, user
):
    """scram-sha-256, md5 and trust authentication, over TCP."""
    if user != "lelect":
        postgres_cluster.sql(f"SET password_encryption = 'md5'; DROP ROLE IF EXISTS {user};"
                             f" CREATE ROLE {user} LOGIN PASSWORD '{PASSWORD}'")  # fmt: skip
        postgres_cluster.sql(f"GRANT ALL ON DATABASE {postgres_database} TO {user}")
    url = postgres_cluster.url(postgres_database, user=user, ttl="10s")
    with connect(url) as backend, connect(url) as other:
        old = dead_leader(backend, "back")
        params = backend.hand_back(old).params
        won = {}
        waiter = threading.Thread(target=lambda: won.setdefault(
            "b", other.campaign("back", candidate("b"), timeout=30)))
        waiter.start()
        wait_until(lambda: postgres_cluster.waiting(postgres_database, "lelect", "back") >= 1,
                   what="the waiter")  # fmt: skip
        started = time.monotonic()
        out = keeper_hand_back(params, budget=5.0, exit_status=137)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["word"] == "released"
        assert not [m for m in result["modules"] if "psycopg" in m or m == "lelect.backends.postgres.backend"]
        waiter.join(10)
        assert time.monotonic() - started < 5.0 < old.ttl  # long before the lease ran out
        assert won["b"].term == old.term + 1
        entry = backend.history("back")[0]
        assert (entry.term, entry.outcome, entry.exit_status, entry.reason) == (
            old.term, "lost", 137, HAND_BACK_REASON)
        assert [r.node_id for r in backend.members("back").records] == []
        won["b"].release()


def test_hand_back_never_touches_another_leaders_row(postgres_cluster, postgres_database):
    url = postgres_cluster.url(postgres_database, ttl="500ms")
    with connect(url) as backend:
        old = dead_leader(backend, "theirs")
        params = backend.hand_back(old).params
        new = backend.campaign("theirs", candidate("b"), timeout=10)  # after the lease ran out
        out = keeper_hand_back(params, budget=5.0)
        assert json.loads(out.stdout)["word"] == "not ours", out.stderr
        assert new.is_leader() and backend.leader("theirs").node_id == "b"
        first, second = backend.history("theirs")
        assert (first.outcome, second.outcome) == ("vanished", "running")
        new.release()


def test_hand_back_gives_up_within_its_budget_when_unreachable(
    postgres_cluster, postgres_database, silent_listener, refused_port
):
    with connect(postgres_cluster.url(postgres_database)) as backend:
        params = backend.hand_back(dead_leader(backend, "cut")).params
    for port, bound in ((silent_listener, 1.0), (refused_port, 1.0)):
        started = time.monotonic()
        out = keeper_hand_back({**params, "port": port}, budget=bound)
        assert out.returncode != 0  # raised: the keeper swallows it, the lease expires
        assert time.monotonic() - started < bound + 1.5  # + a python's start-up


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    from tests.plugins.redis_server import make_test_certs

    certs = make_test_certs(tmp_path_factory.mktemp("pg-tls"))
    cluster = PostgresCluster(tls=certs)
    cluster.sql(f"CREATE ROLE lelect_tls LOGIN PASSWORD '{PASSWORD}'")
    cluster.create_database("tls", owner="lelect_tls")
    yield cluster, certs
    cluster.remove()


@pytest.mark.xdist_group("postgres-tls")  # one worker starts the TLS cluster
@pytest.mark.parametrize("sslmode", ["require", "verify-full"])
def test_hand_back_speaks_tls_as_the_url_asks(tls_cluster, sslmode):
    cluster, certs = tls_cluster
    url = cluster.url("tls", user="lelect_tls", sslmode=sslmode, sslrootcert=str(certs["ca"]))
    with connect(url) as backend:
        old = dead_leader(backend, f"tls-{sslmode}")
        params = backend.hand_back(old).params
        assert params["tls"] is True
        out = keeper_hand_back(params, budget=5.0)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["word"] == "released"
        assert backend.leader(f"tls-{sslmode}") is None


@pytest.mark.xdist_group("postgres-tls")
def test_hand_back_refuses_a_server_whose_certificate_it_cannot_verify(tls_cluster, tmp_path):
    from tests.plugins.redis_server import make_test_certs

    cluster, certs = tls_cluster
    url = cluster.url("tls", user="lelect_tls", sslmode="verify-full",
                      sslrootcert=str(certs["ca"]))  # fmt: skip
    with connect(url) as backend:
        params = backend.hand_back(dead_leader(backend, "tls-other-ca")).params
        other_ca = make_test_certs(tmp_path / "other")["ca"]
        out = keeper_hand_back({**params, "sslrootcert": str(other_ca)}, budget=5.0)
        assert out.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in out.stderr
        assert backend.leader("tls-other-ca") is not None  # nothing changed


def test_hand_back_over_the_unix_socket(postgres_cluster, postgres_database):
    """A URL naming the socket directory (percent-encoded): libpq and the keeper's client
    both go through the unix socket (trust there, in the test cluster)."""
    directory = str(postgres_cluster.root).replace("/", "%2F")
    url = f"postgresql://lelect@{directory}:{postgres_cluster.port}/{postgres_database}"
    with connect(url) as backend:
        old = dead_leader(backend, "unix")
        params = backend.hand_back(old).params
        assert params["host"] == str(postgres_cluster.root) and params["tls"] is False
        out = keeper_hand_back(params, budget=5.0)
        assert json.loads(out.stdout)["word"] == "released", out.stderr
        assert backend.leader("unix") is None


@pytest.mark.parametrize("password, prepared", [
    ("user", b"user"),  # RFC 4013 section 3's examples
    ("I\u00adX", b"IX"),  # soft hyphen: mapped to nothing
    ("\u00aa", b"a"),  # NFKC
    ("\u2168", b"IX"),
    ("a\u00a0b", b"a b"),  # a non-ASCII space becomes a space
    ("a\u0007b\u00e9", "a\u0007b\u00e9".encode()),  # prohibited (a control): the raw bytes
    ("\u0627\u0031", "\u0627\u0031".encode()),  # bidi rule broken: the raw bytes
    ("\u00ad", "\u00ad".encode()),  # empty after mapping: the raw bytes
    ("pass\udcffword", b"pass\xffword"),  # not UTF-8 (from argv): the raw bytes
    ("tab\there", b"tab\there"),  # ASCII is taken as it is, controls too (as PostgreSQL)
])
def test_saslprep_as_postgresql_does(password, prepared):
    from lelect.backends.postgres.handback import saslprep

    assert saslprep(password) == prepared


def test_hand_back_with_a_password_saslprep_changes(postgres_cluster, postgres_database):
    """The server stores SCRAM secrets of the SASLprepped password (U+00AD is mapped to
    nothing); libpq connects with it, and so must the hand-back."""
    from urllib.parse import quote

    password = "soft\u00adhyphen-\u2168-pw"
    role = "lelect_saslprep"
    postgres_cluster.sql(f"DROP ROLE IF EXISTS {role}")
    postgres_cluster.sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    postgres_cluster.sql(f"GRANT ALL ON DATABASE {postgres_database} TO {role}")
    url = postgres_cluster.url(postgres_database, user=role, password=quote(password), ttl="10s")
    with connect(url) as backend:
        old = dead_leader(backend, "prep")
        params = backend.hand_back(old).params
        assert params["password"] == password
        out = keeper_hand_back(params, budget=5.0)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["word"] == "released"


def test_hand_back_carries_require_auth(postgres_cluster, postgres_database):
    url = postgres_cluster.url(postgres_database, ttl="10s", require_auth="scram-sha-256")
    with connect(url) as backend:
        old = dead_leader(backend, "required")
        params = backend.hand_back(old).params
        assert params["require_auth"] == "scram-sha-256"
        out = keeper_hand_back(params, budget=5.0)
        assert json.loads(out.stdout)["word"] == "released", out.stderr


# -- ~/.pgpass, as libpq reads it ----------------------------------------------------------


def pgpass(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "pgpass"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("lines, params, password", [
    ("db.example:5432:app:alice:one\n", {}, "one"),
    ("*:*:*:*:any\n", {}, "any"),
    ("db.example:5433:app:alice:no\n*:5432:*:alice:yes\n", {}, "yes"),  # first match wins
    ("#db.example:5432:app:alice:commented\n*:*:*:alice:two\n", {}, "two"),
    ("db.example:5432:app:alice:a\\:b\\\\c:d\n", {}, "a:b\\c:d"),  # escapes; ':' in the rest
    ("db\\:x:5432:app:alice:escaped-host\n", {"host": "db:x"}, "escaped-host"),
    ("localhost:5432:app:alice:local\n", {"host": None}, "local"),  # no host: localhost
    ("db.example:5432:app:bob:other-user\n", {}, None),
    ("db.example:5432:app:alice\n", {}, None),  # too few fields
    ("", {}, None),
])
def test_pgpass_lines_match_as_libpq_matches_them(tmp_path, lines, params, password):
    from lelect.backends.postgres.wire import find_password

    wanted = {"host": "db.example", "port": 5432, "dbname": "app", "user": "alice",
              "passfile": str(pgpass(tmp_path, lines)), **params}  # fmt: skip
    assert find_password(wanted) == password


def test_a_pgpass_others_may_read_is_ignored_with_a_warning(tmp_path, caplog):
    from lelect.backends.postgres.wire import find_password

    path = pgpass(tmp_path, "*:*:*:*:secret\n", mode=0o640)
    params = {"host": "h", "port": 5432, "dbname": "d", "user": "u", "passfile": str(path)}
    with caplog.at_level("WARNING", logger="lelect.postgres"):
        assert find_password(params) is None
    assert "group or world access" in caplog.text and "secret" not in caplog.text
    path.chmod(0o600)
    assert find_password(params) == "secret"
    assert find_password({**params, "passfile": str(tmp_path)}) is None  # not a file


def test_notifications_are_kept_whenever_they_arrive_and_a_wait_sleeps_on_the_socket(
        postgres_cluster, postgres_database):  # fmt: skip
    """A notification that arrives during a statement is handed to the next wait; a wait
    returns at a notification, at ``wake``, or at its timeout, never earlier."""
    import socket as socket_module

    from lelect.backends.postgres.link import PgSession, PostgresOptions
    from lelect.backends.urls import parse_url

    session = PgSession(PostgresOptions.from_url(parse_url(postgres_cluster.url(postgres_database))))
    try:
        session.listen("lelect_test_ch", 5.0)
        postgres_cluster.sql("NOTIFY lelect_test_ch, 'one'", postgres_database)
        assert session.run("SELECT 1::int2, true, 1.5::float8, 'x'::text, '\\x01'::bytea", 5.0) == [
            (1, True, 1.5, "x", b"\x01")]
        assert [(n.channel, n.payload) for n in session.wait(0.0)] == [("lelect_test_ch", "one")]
        started = time.monotonic()
        assert session.wait(0.3) == []
        assert 0.25 < time.monotonic() - started < 2.0
        threading.Timer(0.2, postgres_cluster.sql,
                        ("NOTIFY lelect_test_ch, 'two'", postgres_database)).start()
        started = time.monotonic()
        got = []
        while not got and time.monotonic() - started < 5:
            got = session.wait(5.0)
        assert [n.payload for n in got] == ["two"] and time.monotonic() - started < 3
        wake_r, wake_w = socket_module.socketpair()
        threading.Timer(0.2, wake_w.send, (b"x",)).start()
        started = time.monotonic()
        assert session.wait(5.0, wake=wake_r) == []
        assert time.monotonic() - started < 3
        wake_r.close()
        wake_w.close()
    finally:
        session.close()


def test_lelect_asks_the_server_for_short_keepalives_with_its_first_statement(
    postgres_cluster, postgres_database
):
    """A session of a host cut off by a partition keeps its advisory lock (the election's
    doorbell) until the server notices: lelect asks for keepalives after 10 s idle, every
    5 s, 3 probes, set with its first statement (a startup parameter would be refused by
    PgBouncer), and again after a reconnect."""
    with connect(postgres_cluster.url(postgres_database)) as backend:
        session = backend._command
        show = "SELECT current_setting('tcp_keepalives_idle'), current_setting("\
               "'tcp_keepalives_interval'), current_setting('tcp_keepalives_count')"
        assert session.run(show, 5.0) == [("10", "5", "3")]
        session.drop()
        assert session.run(show, 5.0) == [("10", "5", "3")]
        assert session.connection.configured


def test_the_server_ends_a_silent_leaders_session_a_ttl_later(postgres_cluster, postgres_database):
    """TCP keepalives do not see a frozen lelect (its kernel answers them), and its
    session would hold the election's doorbell until it thaws: each renew sets the
    leader's idle_session_timeout to its ttl and 10 s more (PostgreSQL 14 and later)."""
    with connect(postgres_cluster.url(postgres_database)) as backend:
        leadership = backend.campaign("idle", candidate("a"), timeout=5, ttl=3.5)
        try:
            leadership.begin()
            wait_until(lambda: leadership.session.run(
                "SELECT current_setting('idle_session_timeout')", 5.0)[0][0] == "14s",
                timeout=10, what="a renew")
        finally:
            leadership.release()
