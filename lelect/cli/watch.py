"""``lelect watch [ELECTION...] [--once] [--json] [--on-change CMD]``"""

from __future__ import annotations

import click

from lelect.cli import open_client
from lelect.cli.params import DURATION, ELECTION, Duration, backend_option
from lelect.names import printable
from lelect.status import ExitStatus

THRESHOLD = click.FloatRange(min=0, min_open=True)


class ChangeCommand:
    """Runs the --on-change command once per leader change, in order, in a worker
    thread (like keepalived's notify scripts), so the table keeps refreshing. Each run
    has its own process group, so that a stopped watch can stop all of it."""

    #: How long a hook may take to end after watch passed it its stop signal.
    GRACE = 5.0

    def __init__(self, command: str, backend_url: str) -> None:
        import queue
        import threading

        self.command = command
        self.backend_url = backend_url
        self.changes: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.running = None  # the subprocess.Popen of the hook now running
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="on-change", daemon=True)
        self.thread.start()

    def __call__(self, change) -> None:
        self.changes.put(change)

    def _run(self) -> None:
        import os
        import subprocess
        import sys

        while (change := self.changes.get()) is not None:
            env = {**os.environ, **change.environ(self.backend_url)}
            with self.lock:
                if self.stopped:
                    return
                try:
                    # The command's output goes to stderr: stdout may be NDJSON for a script.
                    self.running = subprocess.Popen(
                        ["/bin/sh", "-c", self.command], env=env, stdin=subprocess.DEVNULL,
                        stdout=sys.stderr.fileno(), process_group=0,
                    )
                except (OSError, ValueError) as exc:
                    click.echo(f"lelect: --on-change could not run: {printable(exc)}", err=True)
                    continue
            status = self.running.wait()
            with self.lock:
                self.running = None
                if self.stopped:
                    return
            if status != 0:
                click.echo(f"lelect: --on-change command exited with status {status}", err=True)

    def close(self, timeout: float = 10.0) -> None:
        """Let the changes already seen run (up to ``timeout``)."""
        self.changes.put(None)
        self.thread.join(timeout)

    def stop(self, signum: int) -> None:
        """watch was told to stop: the running hook's group gets the same signal (SIGKILL
        after GRACE), and changes not yet run are dropped."""
        import os
        import signal
        import subprocess

        with self.lock:
            self.stopped = True
            hook = self.running
        self.changes.put(None)
        if hook is None:
            return
        try:
            os.killpg(hook.pid, signum)
            try:
                hook.wait(self.GRACE)
            except subprocess.TimeoutExpired:
                click.echo(f"lelect: --on-change command still running after {self.GRACE:g}s:"
                           " killed", err=True)
            # What it started in its group goes too (a shell ends before its children).
            os.killpg(hook.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        hook.wait()


@click.command("watch")
@backend_option
@click.argument("elections", nargs=-1, type=ELECTION, metavar="[ELECTION]...")
@click.option("--once", is_flag=True, help="Print the table once and exit.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per line (NDJSON): one per election, again on every"
              " change; for scripts and jq.")
@click.option("--interval", type=DURATION, metavar="DUR", default="1s", show_default=True,
              help="Refresh the members this often (leader changes show at once).")
@click.option("--on-change", metavar="CMD",
              help="Run CMD (with sh -c) on every leader change, with LELECT_ELECTION,"
              " LELECT_LEADER (also as LELECT_NODE_ID), LELECT_TERM, LELECT_PREVIOUS_LEADER,"
              " LELECT_PREVIOUS_TERM and LELECT_EVENT (elected|vacant) in its environment.")
@click.option("--threshold", type=THRESHOLD, metavar="PHI", default=8.0, show_default=True,
              help="Phi at which a member counts as dead (suspect at a quarter of it).")
@click.option("--heartbeat-interval", type=Duration("interval"), metavar="DUR", default="2s",
              show_default=True,
              help="How often members publish; assumed until a member has 3 heartbeats.")
@click.pass_context
def watch(ctx, elections, once, as_json, interval, on_change, threshold, heartbeat_interval):
    """Show the leader and members of each ELECTION (default: all), refreshed in place.

    One row per member: role, age of its last heartbeat, cpu, memory and status
    (alive / suspect / dead, from a phi accrual failure detector). When stdout is not
    a terminal, a new table (or JSON line) is printed only when something changes:
    the leader, a member's role or status. Ctrl-C exits with status 0.

    \b
      lelect watch nightly
      lelect watch --json | jq .leader.node_id
      lelect watch vip --on-change './move-vip.sh "$LELECT_LEADER"'
    """
    import signal
    import sys

    from lelect.cli import render
    from lelect.health import PhiAccrualDetector

    detector = PhiAccrualDetector(threshold=threshold, expected_interval=heartbeat_interval)
    client = open_client(ctx, create=False)
    watcher = client.watch(elections, detector, interval)
    hook = None
    try:
        if once:
            snapshot = watcher.snapshot()
            if as_json:
                for group in snapshot.groups:
                    click.echo(render.dumps(render.group_json(group)))
            else:
                render.console().print(render.groups_table(snapshot.groups))
            return ExitStatus.OK
        # SIGTERM ends a viewer as cleanly as Ctrl-C: status 0, terminal restored; a
        # running --on-change command gets the same signal.
        received = [signal.SIGINT]

        def stop(signum, frame):
            received[0] = signum
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        hook = ChangeCommand(on_change, client.url) if on_change else None
        try:
            if not as_json and sys.stdout.isatty():
                _live(watcher, hook)
            else:
                _stream(watcher, hook, as_json)
        except KeyboardInterrupt:
            if hook is not None:
                hook.stop(received[0])
        return ExitStatus.OK
    finally:
        watcher.close()
        if hook is not None:
            hook.close()
        client.close()


def _live(watcher, hook) -> None:
    """A terminal: one table, redrawn in place on every look."""
    from rich.live import Live

    from lelect.cli import render

    console = render.console()
    with Live(console=console, auto_refresh=False, redirect_stdout=False,
              redirect_stderr=False) as live:
        for snapshot in watcher.run():
            for change in snapshot.changes:
                if hook is not None:
                    hook(change)
            live.update(render.groups_table(snapshot.groups, error=snapshot.error), refresh=True)


def _stream(watcher, hook, as_json: bool) -> None:
    """Not a terminal (or --json): print a group again only when it changed."""
    from lelect.cli import render
    from lelect.cli.streams import reader_gone

    console = None if as_json else render.console()
    printed: dict[str, tuple] = {}
    last_error = None
    empty_shown = False
    for snapshot in watcher.run():
        for change in snapshot.changes:
            if hook is not None:
                hook(change)
        if snapshot.error != last_error:
            last_error = snapshot.error
            if snapshot.error:
                click.echo(f"lelect: backend error (retrying): {printable(snapshot.error)}",
                           err=True)
        if snapshot.error:
            continue
        if not snapshot.groups:
            if console is not None and not empty_shown:
                console.print(render.groups_table(()))
            empty_shown = True
            continue
        empty_shown = False
        changed = [g for g in snapshot.groups if printed.get(g.election) != g.change_key()]
        for group in changed:
            printed[group.election] = group.change_key()
            if as_json:
                click.echo(render.dumps(render.group_json(group)))
        if console is not None and changed:
            console.print(render.groups_table(changed))
        if reader_gone():  # `watch --json | head -1`: the reader has what it wanted
            return
