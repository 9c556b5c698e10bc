"""Secrets (issue 19 §2): never echoed by a malformed URL, never in the job's
environment, kept out of argv with a password file or LELECT_BACKEND_FILE, and the
job's own fencing check (`lelect leader NAME --term "$LELECT_TERM"`) still works."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from lelect.backends.urls import parse_url
from tests.helpers import LELECT, lelect_env, run_lelect
from tests.plugins.postgres_server import PASSWORD as PG_PASSWORD

REDIS_PASSWORD = "pw-XYZ-redis"

#: The job: its environment, then its own fencing check, as the README tells a job to do.
JOB = ('env > "$OUT/env"; "$LELECT_PY" -m lelect leader "$LELECT_ELECTION" --term "$LELECT_TERM"'
       ' > "$OUT/leader" 2>&1; echo $? > "$OUT/status"')


@pytest.mark.parametrize("url, secret", [
    ("redis://user:WRONG/pw-XYZ@h:6379/0", "pw-XYZ"),
    ("postgresql://u:pa#ss-XYZ@h/db", "ss-XYZ"),
    ("etcd://u:p?w-XYZ@h:2379/x", "w-XYZ"),
    ("redis://h:6379/0?password=S3cret&x", "S3cret"),
    ("zookeeper://h:2181/l?auth=digest:u:S3cret&pw", "S3cret"),
    ("zookeeper://h:2181/l?auth=digest:u:S3&cret-XYZ", "cret-XYZ"),
    ("redis://h:S3cret/0", "S3cret"),  # the password where the port goes
    ("redis:/:S3cret@h", "S3cret"),
])
def test_a_malformed_url_never_shows_its_password(url, secret):
    out = run_lelect("-b", url, "leader", "x")
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "malformed" in out.stderr, out.stderr
    assert secret not in out.stderr and secret not in out.stdout


@pytest.mark.parametrize("url", ["redis://h:²/0", "redis://h:６３７９/0",
                                 "redis://h:" + "9" * 5000 + "/0",
                                 "redis://h:6379/0?history=" + "9" * 5000,
                                 "redis://h:6379/" + "9" * 5000])
def test_numbers_in_urls_are_ascii_digits_of_bounded_length(url):
    out = run_lelect("-b", url, "leader", "x")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "internal error" not in out.stderr and len(out.stderr) < 400, out.stderr


@pytest.mark.parametrize("listen", ["127.0.0.1:²", "127.0.0.1:６３７９", "127.0.0.1:" + "9" * 5000])
def test_exporter_listen_port_is_ascii_digits(backend, listen):
    out = run_lelect("exporter", "--listen", listen, backend=backend)
    assert out.returncode == 2 and "internal error" not in out.stderr, out.stderr


def test_lelect_home_with_a_hash_is_a_directory_not_a_fragment(tmp_path):
    home = tmp_path / "team#1"
    env = {**lelect_env(), "LELECT_HOME": str(home)}
    out = subprocess.run([*LELECT, "campaign", "e", "--", "true"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (home / "lelect.db").exists() and not (tmp_path / "team").exists()


def secret_file(path, text: str, mode: int = 0o600):
    path.write_text(text + "\n")
    path.chmod(mode)
    return str(path)


def test_password_file_is_read_and_never_shown(tmp_path):
    pw = secret_file(tmp_path / "pw", "S3cret")
    url = parse_url(f"redis://h:1/0?password_file={pw}")
    assert url.password == "S3cret" and not url.has_inline_secret
    assert url.masked == f"redis://h:1/0?password_file={pw}"
    zk = parse_url(f"zookeeper://h:1/l?auth=digest:u&password_file={pw}")
    assert zk.query["auth"] == "digest:u:S3cret" and not zk.has_inline_secret
    assert "S3cret" not in zk.masked and parse_url(zk.masked).query["auth"] == "digest:u:S3cret"
    # A file every user can read (or another user can write) is refused: 78.
    os.chmod(pw, 0o644)
    out = run_lelect("-b", f"redis://127.0.0.1:1/0?password_file={pw}", "leader", "x")
    assert out.returncode == 78 and "chmod 600" in out.stderr, out.stderr
    os.chmod(pw, 0o640)  # group-readable (a deploy group, systemd credentials): fine
    assert parse_url(f"redis://h:1/0?password_file={pw}").password == "S3cret"
    out = run_lelect("-b", f"redis://127.0.0.1:1/0?password_file={tmp_path}/missing",
                     "leader", "x")
    assert out.returncode == 2 and "cannot read password file" in out.stderr, out.stderr
    big = secret_file(tmp_path / "big", "x" * 10_000)
    out = run_lelect("-b", f"redis://127.0.0.1:1/0?password_file={big}", "leader", "x")
    assert out.returncode == 2 and "larger than" in out.stderr, out.stderr


def run_job(tmp_path, *args: str, env: dict[str, str]) -> tuple[dict[str, str], str, int]:
    """Run JOB under `lelect campaign e`; return its environment, what its own
    `lelect leader --term` printed, and that command's status."""
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    full = {**lelect_env(), **env, "OUT": str(out_dir), "LELECT_PY": sys.executable}
    done = subprocess.run([*LELECT, *args, "campaign", "e", "--", "sh", "-c", JOB], env=full,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    job_env = dict(line.split("=", 1) for line in (out_dir / "env").read_text().splitlines()
                   if "=" in line)
    return job_env, (out_dir / "leader").read_text(), int((out_dir / "status").read_text())


def assert_no_secret(job_env: dict[str, str], secret: str) -> None:
    for name, value in job_env.items():
        assert secret not in value, name
    if "LELECT_BACKEND_FILE" in job_env:  # a private copy: this user only, gone with lelect
        path = job_env["LELECT_BACKEND_FILE"]
        assert path.startswith("/proc/") and not os.path.exists(path)


def test_redis_password_inline_stays_out_of_the_job_and_its_check_works(tmp_path,
                                                                         redis_server_factory):
    server = redis_server_factory(password=REDIS_PASSWORD)
    # -b with the password: a warning (ps shows argv), the job's check works.
    job_env, said, status = run_job(tmp_path, "-b", server.url, env={})
    assert_no_secret(job_env, REDIS_PASSWORD)
    assert status == 0, said
    assert "***" in job_env["LELECT_BACKEND"] and job_env["LELECT_BACKEND_FILE"]
    # LELECT_BACKEND with the password, REDISCLI_AUTH and PGPASSWORD in lelect's own.
    job_env, said, status = run_job(tmp_path, env={"LELECT_BACKEND": server.url,
                                                   "REDISCLI_AUTH": REDIS_PASSWORD,
                                                   "PGPASSWORD": REDIS_PASSWORD})
    assert_no_secret(job_env, REDIS_PASSWORD)
    assert status == 0, said


def test_redis_password_file_and_backend_file(tmp_path, redis_server_factory):
    server = redis_server_factory(password=REDIS_PASSWORD)
    pw = secret_file(tmp_path / "pw", REDIS_PASSWORD)
    url = f"redis://{server.host_port}/0?password_file={pw}"
    job_env, said, status = run_job(tmp_path, env={"LELECT_BACKEND": url})
    assert_no_secret(job_env, REDIS_PASSWORD)
    assert status == 0, said
    assert job_env["LELECT_BACKEND"] == url and "LELECT_BACKEND_FILE" not in job_env
    # The whole URL in a file: it wins over LELECT_BACKEND.
    holder = secret_file(tmp_path / "url", server.url)
    job_env, said, status = run_job(tmp_path, env={"LELECT_BACKEND_FILE": holder,
                                                   "LELECT_BACKEND": "redis://127.0.0.1:1/0"})
    assert_no_secret(job_env, REDIS_PASSWORD)
    assert status == 0, said
    # No warning about argv when the password is not in argv; one line when it is.
    out = run_lelect("-b", url, "leader", "e")
    assert "warning" not in out.stderr, out.stderr
    out = run_lelect("-b", server.url, "leader", "e")
    assert out.stderr.count("warning: the password in -b") == 1, out.stderr
    assert REDIS_PASSWORD not in out.stderr


def test_postgres_password_stays_out_of_the_job_and_its_check_works(tmp_path, postgres_cluster,
                                                                    postgres_database):
    inline = postgres_cluster.url(postgres_database)
    job_env, said, status = run_job(tmp_path, env={"LELECT_BACKEND": inline})
    assert_no_secret(job_env, PG_PASSWORD)
    assert status == 0, said
    # PGPASSWORD (as psql takes it): not passed on, and the job's check still works.
    bare = postgres_cluster.url(postgres_database, password=None)
    job_env, said, status = run_job(tmp_path, env={"LELECT_BACKEND": bare,
                                                   "PGPASSWORD": PG_PASSWORD})
    assert_no_secret(job_env, PG_PASSWORD)
    assert "PGPASSWORD" not in job_env and status == 0, said
    # A password file.
    pw = secret_file(tmp_path / "pgpw", PG_PASSWORD)
    job_env, said, status = run_job(tmp_path, env={"LELECT_BACKEND": f"{bare}?password_file={pw}"})
    assert_no_secret(job_env, PG_PASSWORD)
    assert status == 0, said
    assert json.loads(run_lelect("leader", "e", "--json",
                                 backend=f"{bare}?password_file={pw}").stdout)["election"] == "e"


def test_the_backend_file_is_private(tmp_path):
    holder = secret_file(tmp_path / "url", "redis://:x@127.0.0.1:1/0", mode=0o604)
    env = {**lelect_env(), "LELECT_BACKEND_FILE": holder}
    out = subprocess.run([*LELECT, "leader", "e"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 78 and "LELECT_BACKEND_FILE" in out.stderr, out.stderr
    assert stat.S_IMODE(os.stat(holder).st_mode) == 0o604  # refused, not "fixed"
