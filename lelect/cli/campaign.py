"""``lelect campaign NAME [options] [--] CMD [ARGS...]``"""

from __future__ import annotations

import click

from lelect.cli import EXIT_STATUSES, open_client
from lelect.cli.params import DURATION, ELECTION, SIGNAL, CommandAfterName, Duration, backend_option


@click.command(
    "campaign",
    cls=CommandAfterName,
    epilog=EXIT_STATUSES,
    context_settings={"max_content_width": 100},
)
@backend_option
@click.argument("election", type=ELECTION)
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[--] CMD [ARGS]...")
@click.option("--id", "node_id", metavar="ID", help="Node id shown to people (default: hostname:pid).")
@click.option("--no-wait", "-n", is_flag=True, help="If someone else leads, exit at once (status 75), like flock -n.")
@click.option("--conflict-exit-code", "-E", type=click.IntRange(0, 255), metavar="N",
              help="Exit status when someone else leads with --no-wait, and when --timeout runs"
              " out, like flock -E [default: 75 and 124].")
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
@click.pass_context
def campaign(ctx, election, command, node_id, no_wait, conflict_exit_code, timeout, ttl,
             stop_signal, grace, max_runtime, hold_at_least, once_per, once_key, restart,
             restart_delay, resign_cooldown, heartbeat_interval, forget_after, log_format, quiet):
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
    from lelect.cli.logs import StderrLog

    log = StderrLog(log_format, election, quiet)  # errors from here on are in its format
    if not command:
        raise click.UsageError("missing the command to run: lelect campaign NAME [OPTIONS] -- CMD [ARGS]...")
    from lelect.campaign import CampaignOptions
    from lelect.durations import format_duration
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
        conflict_exit_code=75 if conflict_exit_code is None else conflict_exit_code,
        timeout_exit_code=124 if conflict_exit_code is None else conflict_exit_code,
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
    with open_client(ctx) as client:
        election_handle = client.election(election, node_id)
        log.node_id = election_handle.candidate.node_id
        if ttl is not None and not client.backend.lease_based:
            log("warning", f"--ttl {format_duration(ttl)} is ignored: the embedded backend has"
                " no lease (its flock is held for as long as the job runs)")
        adopt_orphans()  # what a killed keeper leaves behind comes to us, and is killed
        return election_handle.run_options(options, log, systemd=True)
