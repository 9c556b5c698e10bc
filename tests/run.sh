#!/bin/sh
# Install everything the test suite needs (Debian packages; Python packages into the
# project's own virtual environment, .venv — never into the system interpreter), then
# run ruff and the whole suite, on pytest-xdist workers: one more than the cores, at most
# four (LELECT_TEST_WORKERS=N to choose, 0 for one process).
# Usage: sh tests/run.sh [pytest args...]
set -eu
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
PYTHON="${PYTHON:-python3}"
need=""
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
command -v redis-sentinel >/dev/null 2>&1 || need="$need redis-sentinel"
[ -f /usr/share/java/zookeeper.jar ] || need="$need zookeeper"
command -v java >/dev/null 2>&1 || need="$need default-jre-headless"
command -v etcd >/dev/null 2>&1 || need="$need etcd-server"
command -v etcdctl >/dev/null 2>&1 || need="$need etcd-client"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"
command -v mariadbd >/dev/null 2>&1 || need="$need mariadb-server"
command -v tmux >/dev/null 2>&1 || need="$need tmux"
command -v flock >/dev/null 2>&1 || need="$need util-linux"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
command -v cc >/dev/null 2>&1 || need="$need gcc"  # lelect/libspawn.so (tests/test_spawn.py)
command -v zsh >/dev/null 2>&1 || need="$need zsh"
command -v fish >/dev/null 2>&1 || need="$need fish"
[ -x /usr/bin/python3 ] || need="$need python3"  # another user's interpreter, in one test
"$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1 || need="$need python3-venv"
if [ -n "$need" ]; then
    echo "installing Debian packages:$need"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
fi

VENV="${LELECT_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
"$VENV/bin/python" -m ruff check lelect tests bench
# Byte-compile once: with PYTHONDONTWRITEBYTECODE set, every lelect the tests start would
# compile lelect from source again (about 30 ms of CPU each).
"$VENV/bin/python" -m compileall -q lelect tests bench >/dev/null
# Each worker starts its own servers (session fixtures on free ports); xdist_group marks
# keep a module's costly fixture on one worker. Most tests wait (on a lease, a timeout,
# a server): on 2 cores the suite took 513 s on 2 workers, 377 s on 3 (the CPU 50%
# busy) and 305-318 s on 4 (60-62% busy). One more worker than the cores, then: 4
# workers on 2 cores also made test races likelier (one fired in two runs, since fixed).
cores="$(nproc 2>/dev/null || echo 1)"
workers="${LELECT_TEST_WORKERS:-$((cores + 1))}"
[ "$workers" -le 4 ] || workers=4
exec "$VENV/bin/python" -m pytest -q -n "$workers" --dist loadgroup "$@"
