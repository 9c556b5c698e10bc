"""Load that idle waiters put on Redis: N ``lelect campaign`` processes wait behind one
leader; INFO commandstats counts what the server ran during a quiet window.

    python bench/redis_idle.py                      # 50 waiters, ttl 10s, 60 s window
    python bench/redis_idle.py --waiters 50 --ttl 2 --window 30

Heartbeats are turned off (--heartbeat-interval 0) so only the election's own traffic
is counted. "requests" are commands clients sent (EVALSHA, EVAL, PTTL, SUBSCRIBE, connection
set-up); "all commands" adds the commands the Lua scripts ran inside Redis. The leader's
renews (one EVALSHA every ttl/3) are shown apart. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import LELECT  # noqa: E402

from lelect.backends import connect  # noqa: E402
from tests.helpers import lelect_env  # noqa: E402
from tests.plugins.redis_server import RedisServer  # noqa: E402

ELECTION = "idle-bench"
#: Commands a client sends itself; everything else in commandstats ran inside a script.
REQUESTS = {"evalsha", "eval", "subscribe", "hello", "client|setname", "client|setinfo", "ping",
            "auth", "select", "pttl"}  # fmt: skip


def command_calls(backend) -> dict[str, int]:
    text = backend.link.call(5.0, "INFO", "commandstats")
    calls = {}
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line.removeprefix("cmdstat_").partition(":")
            calls[name] = int(dict(f.split("=") for f in fields.split(","))["calls"])
    return calls


def subscribers(url: str) -> int:
    backend = connect(url)
    try:
        channel = f"{backend.options.prefix}:{{{ELECTION}}}:resign-requests"
        return int(backend.link.call(5.0, "PUBSUB", "NUMSUB", channel)[1])
    finally:
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a Redis to use (default: start a redis-server)")
    parser.add_argument("--waiters", type=int, default=50)
    parser.add_argument("--ttl", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=60.0, help="seconds to count")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lelect-bench-") as tmp:
        server = None if args.url else RedisServer(Path(tmp) / "redis")
        url = args.url or server.url
        started = Path(tmp) / "started"
        job = ["sh", "-c", f"touch {shlex.quote(str(started))}; exec sleep 3600"]
        command = [*LELECT, "campaign", ELECTION, "--ttl", f"{args.ttl}s",
                   "--heartbeat-interval", "0", "--", *job]  # fmt: skip
        processes = []
        quiet = subprocess.DEVNULL
        try:
            processes.append(subprocess.Popen(command, env=lelect_env(url), stderr=quiet))
            while not started.exists():
                time.sleep(0.01)
            for _ in range(args.waiters):
                processes.append(subprocess.Popen(command, env=lelect_env(url), stderr=quiet))
            while subscribers(url) < args.waiters + 1:  # + the leader's own
                time.sleep(0.1)
            time.sleep(min(args.ttl, 5.0))  # let start-up traffic pass
            stats = connect(url)
            before = command_calls(stats)
            time.sleep(args.window)
            after = command_calls(stats)
            stats.close()
        finally:
            for process in processes:
                process.kill()
                process.wait()
            if server is not None:
                server.remove()

    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    delta["info"] = 0  # our own
    renews = args.window / (args.ttl / 3)
    requests = sum(n for name, n in delta.items() if name in REQUESTS)
    total = sum(n for name, n in delta.items() if name != "info")
    per = lambda n: n / args.waiters / args.window  # noqa: E731
    print(f"{args.waiters} idle waiters, ttl {args.ttl:g}s, window {args.window:g}s")
    print(f"{'what':<34} {'count':>8} {'per waiter per s':>18}")
    print(f"{'requests (all clients)':<34} {requests:>8} {per(requests):>18.3f}")
    print(f"{'  of which leader renews (approx)':<34} {renews:>8.0f}")
    print(f"{'requests by waiters':<34} {requests - renews:>8.0f} {per(requests - renews):>18.3f}")
    print(f"{'all commands incl. inside scripts':<34} {total:>8} {per(total):>18.3f}")
    busy = ", ".join(f"{name}={n}" for name, n in sorted(delta.items(), key=lambda x: -x[1]) if n)
    print(f"by command: {busy}")


if __name__ == "__main__":
    main()
