"""``lelect campaign NAME [options] [--] CMD [ARGS...]``"""

from __future__ import annotations

import click

from lelect.cli import EXIT_STATUSES, open_client
from lelect.cli.params import (
    DURATION,
    ELECTION,
    LISTEN,
    NODE_ID,
    SIGNAL,
    CommandAfterName,
    Duration,
    backend_option,
)


@click.command(
    "campaign",
    cls=CommandAfterName,
    epilog=EXIT_STATUSES,
    context_settings={"max_content_width": 100},
)
@backend_option
@click.argument("election", type=ELECTION)
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[--] CMD [ARGS]...")
@click.option("--id", "node_id", type=NODE_ID, metavar="ID", help="Node id shown to people (default: hostname:pid).")
@click.option("--no-wait", "-n", is_flag=True, help="If someone else leads, exit at once (status 75), like flock -n.")
@click.option("--conflict-exit-code", "-E", type=click.IntRange(0, 255), default=75, show_default=True,
              help="Exit status for --no-wait when someone else leads.")
@click.option("--timeout", "-w", type=DURATION, metavar="DUR",
              help="Give up waiting for leadership after DUR (status 124); 0 tries once, like flock -w 0.")
@click.option("--ttl", type=DURATION, metavar="DUR",
              help="Lease length on lease backends (redis, zookeeper, etcd, postgresql); renewed every ttl/3.")
@click.option("--stop-signal", type=SIGNAL, default="TERM", show_default=True,
              help="Signal that asks the job to stop; SIGKILL follows after --grace.")
@click.option("--grace", type=DURATION, metavar="DUR",
              help="Time between the stop signal and SIGKILL [default: 10s, or what fits the lease].")
@click.option("--max-runtime", type=DURATION, metavar="DUR",
              help="Stop the job after it ran for DUR (status 79).")
@click.option("--hold-at-least", type=DURATION, metavar="DUR", default="0s", show_default=True,
              help="Keep the leadership for DUR even if the job ends sooner (cron on skewed clocks).")
@click.option("--once-per", type=Duration("once-per"), metavar="DUR",
              help="Run the job successfully at most once per DUR slot of the backend's clock"
              " (UTC, from the epoch); a failed run leaves the slot open.")
@click.option("--once-key", metavar="KEY",
              help="Like --once-per, with the slot named by KEY (e.g. \"$(date -u +%F)\").")
@click.option("--restart", is_flag=True,
              help="Stay in the race: after the job ends, campaign again (a failing job backs off).")
@click.option("--restart-delay", type=DURATION, metavar="DUR", default="1s", show_default=True,
              help="With --restart: a job runs at most once per DUR (at least 100ms); a failing"
              " job backs off from DUR, doubling up to 30s.")
@click.option("--resign-cooldown", type=DURATION, metavar="DUR", default="10s", show_default=True,
              help="With --restart, wait this long after a resign request before rejoining.")
@click.option("--heartbeat-interval", type=DURATION, metavar="DUR", default="2s", show_default=True,
              help="Publish a heartbeat this often (0 disables).")
@click.option("--forget-after", type=DURATION, metavar="DUR", default="1h", show_default=True,
              help="How long a dead member stays listed.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Format of the leadership changes logged to stderr.")
@click.option("--quiet", "-q", is_flag=True, help="Log only losses and failures (cron: mail only when it matters).")
@click.option("--status-listen", type=LISTEN, metavar="ADDR:PORT",
              help="Serve GET / over HTTP: 200 with the leadership as JSON while this candidate"
              " leads, 503 while it does not (load balancers, readiness probes).")
@click.pass_context
def campaign(ctx, election, command, node_id, no_wait, conflict_exit_code, timeout, ttl,
             stop_signal, grace, max_runtime, hold_at_least, once_per, once_key, restart,
             restart_delay, resign_cooldown, heartbeat_interval, forget_after, log_format, quiet,
             status_listen):
    """Run CMD only while this node leads ELECTION.

    CMD starts once leadership is won, in its own process group, with LELECT_ELECTION,
    LELECT_NODE_ID, LELECT_TERM (the fencing token), LELECT_BACKEND (and LELECT_SLOT with
    --once-per) in its environment. When it exits, the election is released and lelect
    exits with its status. If leadership is lost, the job is stopped before its lease
    could expire. Options end at CMD, as with flock(1): `--` is optional.

    \b
      lelect campaign nightly -- ./report.sh
      lelect campaign nightly -q --once-per 1d -- ./report.sh      # cron, every host
    """
    if not command:
        raise click.UsageError("missing the command to run: lelect campaign NAME [OPTIONS] -- CMD [ARGS]...")
    from lelect.campaign import CampaignOptions
    from lelect.cli.logs import StderrLog
    from lelect.supervisor import adopt_orphans

    options = CampaignOptions(
        election=election,
        command=tuple(command),
        node_id=node_id,
        stop_signal=stop_signal,
        grace=grace,
        ttl=ttl,
        max_runtime=max_runtime,
        no_wait=no_wait,
        conflict_exit_code=conflict_exit_code,
        timeout=timeout,
        hold_at_least=hold_at_least,
        restart=restart,
        restart_delay=restart_delay,
        resign_cooldown=resign_cooldown,
        heartbeat_interval=heartbeat_interval,
        forget_after=forget_after,
        once_per=once_per,
        once_key=once_key,
    )
    options.check()  # out-of-range options are refused before anything connects
    log = StderrLog(log_format, election, quiet)
    status = probe = None
    if status_listen is not None:
        from lelect.campaign import CampaignStatus
        from lelect.httpserve import ProbeServer

        status = CampaignStatus()
        probe = ProbeServer(*status_listen, status_route(status)).start()
    try:
        with open_client(ctx) as client:
            election_handle = client.election(election, node_id)
            log.node_id = election_handle.candidate.node_id
            adopt_orphans()  # what a killed keeper leaves behind comes to us, and is killed
            return election_handle.run_options(options, log, systemd=True, status=status)
    finally:
        if probe is not None:
            probe.close()


def status_route(status):
    """``--status-listen``'s answers: GET / is 200 with the leadership while leading,
    503 while waiting (or stopping)."""
    import time

    from lelect.backends.records import iso8601
    from lelect.httpserve import Response

    def route(path: str) -> Response:
        if path != "/":
            return Response.json(404, {"error": "GET / only"})
        record = {"election": status.election, "node_id": status.node_id}
        leadership = status.leading()
        if leadership is None:
            return Response.json(503, {**record, "leading": False, "term": None})
        deadline = leadership.lease_deadline
        return Response.json(200, {
            **record, "leading": True, "term": leadership.term,
            "since": iso8601(leadership.since),
            "lease_left_s": None if deadline is None else round(deadline - time.monotonic(), 3),
        })

    return route
