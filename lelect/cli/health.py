"""``lelect health [ELECTION]... [--json] [--threshold PHI]``, ``lelect health --publish ELECTION``"""

from __future__ import annotations

import click

from lelect.cli import open_client
from lelect.cli.params import DURATION, ELECTION, NODE_ID, Duration, backend_option
from lelect.cli.watch import THRESHOLD
from lelect.status import ExitStatus

HEALTH_STATUSES = """\b
Exit statuses (Nagios convention; with no ELECTION the worst group wins):
  0   healthy: a leader, and every member alive
  1   degraded: a leader, but some member suspect or dead
  2   critical: no leader, the leader itself dead, or no election at all
      (2 is also a usage error)
  69  backend unreachable or failing
  78  configuration refused (unsafe directory, corrupt state)"""


@click.command("health", epilog=HEALTH_STATUSES, context_settings={"max_content_width": 100})
@backend_option
@click.argument("elections", nargs=-1, type=ELECTION, metavar="[ELECTION]...")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per election, one per line (NDJSON), for jq.")
@click.option("--threshold", type=THRESHOLD, metavar="PHI", default=8.0, show_default=True,
              help="Phi at which a member counts as dead (suspect at a quarter of it).")
@click.option("--heartbeat-interval", type=Duration("interval"), metavar="DUR", default="2s",
              show_default=True,
              help="How often members publish (assumed until a member has 3 heartbeats);"
              " with --publish, how often to publish.")
@click.option("--publish", is_flag=True,
              help="Instead of checking: publish this node's heartbeats into ELECTION (role"
              " observer) until interrupted.")
@click.option("--id", "node_id", type=NODE_ID, metavar="ID",
              help="With --publish: node id (default: hostname:pid).")
@click.option("--forget-after", type=DURATION, metavar="DUR", default="1h", show_default=True,
              help="With --publish: how long this node stays listed as dead if it dies.")
@click.pass_context
def health(ctx, elections, as_json, threshold, heartbeat_interval, publish, node_id, forget_after):
    """Judge the heartbeats of each ELECTION's members (default: every election).

    Each member is alive, suspect or dead by a phi accrual failure detector over the
    arrival times of its last ~20 heartbeats, judged by the backend's clock: suspect
    from phi >= threshold/4 (about 3 heartbeat intervals of silence), dead from
    phi >= threshold (about 5 intervals).

    \b
      lelect health nightly || page-someone
      lelect health --json | jq -r '.members[] | select(.status != "alive") | .node_id'
      lelect health --publish nightly --id monitor-1     # appear in the group
    """
    if publish:
        if len(elections) != 1:
            raise click.UsageError("--publish needs the one ELECTION to publish into")
        return _publish(ctx, elections[0], node_id, heartbeat_interval, forget_after)

    from lelect.cli import render
    from lelect.health import CRITICAL, EXIT_STATUS, PhiAccrualDetector, worst

    detector = PhiAccrualDetector(threshold=threshold, expected_interval=heartbeat_interval)
    with open_client(ctx, create=False) as client:
        known = client.elections()
        names = list(dict.fromkeys(elections)) or known
        groups = [client.election(name).health(detector) for name in names]
    unknown = [g.election for g in groups
               if elections and g.election not in known and not g.members and g.leader is None]
    if unknown:
        shown = ", ".join(known[:8]) + (" …" if len(known) > 8 else "") if known else "none"
        for name in unknown:
            click.echo(f"lelect: unknown election {name!r}: nobody campaigns in it, it has no"
                       f" members and no history (known: {shown})", err=True)
        return EXIT_STATUS[CRITICAL]
    if as_json:
        for group in groups:
            click.echo(render.dumps(render.group_json(group, phi=True)))
    else:
        render.console().print(render.groups_table(groups, phi=True))
    return EXIT_STATUS[worst(groups)]


def _publish(ctx, election: str, node_id: str | None, interval: float, forget_after: float) -> int:
    """Publish observer heartbeats until Ctrl-C / SIGTERM; a clean exit removes the member."""
    import signal
    import time

    from lelect.backends.base import Candidate
    from lelect.durations import format_duration
    from lelect.errors import ConfigError
    from lelect.heartbeats import HeartbeatPublisher
    from lelect.names import printable

    candidate = Candidate.local(node_id)
    with open_client(ctx) as client:
        publisher = HeartbeatPublisher(client.backend, election, candidate, interval=interval,
                                       forget_after=forget_after, role="observer")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        signal.signal(signal.SIGHUP, signal.default_int_handler)
        # The first beat is published here: a role that may not publish (78), a URL that
        # cannot work, fail now with their own status instead of a warning per interval.
        publisher.publish_once()
        publisher.start()
        click.echo(
            f"lelect: publishing heartbeats into {election!r} as {printable(candidate.node_id)} every"
            f" {format_duration(interval)} (Ctrl-C to stop)",
            err=True,
        )
        reported = None
        try:
            while True:
                time.sleep(min(interval, 0.5))
                if isinstance(publisher.last_exception, ConfigError):
                    raise publisher.last_exception  # a privilege taken away: no retry helps
                if publisher.last_error != reported:
                    reported = publisher.last_error
                    if reported:
                        click.echo(f"lelect: heartbeat not published: {printable(reported)}",
                                   err=True)
        except KeyboardInterrupt:
            pass
        finally:
            publisher.stop()
    return ExitStatus.OK
