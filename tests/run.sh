#!/bin/sh
# Install everything the test suite needs (Debian packages, Python packages), then run it all.
# Usage: sh tests/run.sh [pytest args...]
set -eu
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
need=""
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
[ -f /usr/share/java/zookeeper.jar ] || need="$need zookeeper"
command -v java >/dev/null 2>&1 || need="$need default-jre-headless"
command -v tmux >/dev/null 2>&1 || need="$need tmux"
command -v flock >/dev/null 2>&1 || need="$need util-linux"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"
command -v zsh >/dev/null 2>&1 || need="$need zsh"
command -v fish >/dev/null 2>&1 || need="$need fish"
command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1 || need="$need etcd-server etcd-client"
if [ -n "$need" ]; then
    echo "installing Debian packages:$need"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]'
"$PYTHON" -m ruff check lelect tests bench
exec "$PYTHON" -m pytest -q "$@"
