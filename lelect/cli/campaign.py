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
from lelect.names import MAX_HOLDERS


def campaign_options(function):
    """Every option of :data:`lelect.options.CAMPAIGN`, as click options (declared once)."""
    from lelect.options import CAMPAIGN

    types = {"duration": DURATION, "signal": SIGNAL, "node-id": NODE_ID,
             "exit-code": click.IntRange(0, 255), "text": None,
             "count": click.IntRange(1, MAX_HOLDERS)}
    for option in reversed(CAMPAIGN):
        kwargs = {"help": option.help, "metavar": option.metavar}
        if option.kind == "flag":
            kwargs = {"help": option.help, "is_flag": True, "default": None}
        else:
            kwargs["type"] = types[option.kind]
            if option.name == "once_per":
                kwargs["type"] = Duration("once-per")
            if option.shown is not None:
                kwargs["default"], kwargs["show_default"] = option.shown, True
        function = click.option(*option.flags, option.name, **kwargs)(function)
    return function


@click.command(
    "campaign",
    cls=CommandAfterName,
    epilog=EXIT_STATUSES,
    context_settings={"max_content_width": 100},
)
@backend_option
@click.argument("election", type=ELECTION)
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[--] CMD [ARGS]...")
@campaign_options
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Format of the leadership changes logged to stderr.")
@click.option("--quiet", "-q", is_flag=True, help="Log only losses and failures (cron: mail only when it matters).")
@click.option("--status-listen", type=LISTEN, metavar="ADDR:PORT",
              help="Serve GET / over HTTP: 200 with the leadership as JSON while this candidate"
              " leads, 503 while it does not (load balancers, readiness probes).")
@click.pass_context
def campaign(ctx, election, command, log_format, quiet, status_listen, **values):
    """Run CMD only while this node leads ELECTION.

    CMD starts once leadership is won, in its own process group, with LELECT_ELECTION,
    LELECT_NODE_ID, LELECT_TERM (the fencing token), LELECT_BACKEND (and LELECT_SLOT with
    --once-per, LELECT_VALUE with --value) in its environment. When it exits, the election is released and lelect
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

    code = values.pop("conflict_exit_code", None)  # -E: like flock's, for --timeout too
    given = {name: value for name, value in values.items() if value is not None}
    if code is not None:
        given.update(conflict_exit_code=code, timeout_exit_code=code)
    options = CampaignOptions(election=election, command=tuple(command), **given)
    options.check()  # out-of-range options are refused before anything connects
    status = probe = None
    if status_listen is not None:
        from lelect.campaign import CampaignStatus
        from lelect.httpserve import ProbeServer

        status = CampaignStatus()
        probe = ProbeServer(*status_listen, status_route(status)).start()
    try:
        with open_client(ctx) as client:
            election_handle = client.election(election, values.get("node_id"))
            log.node_id = election_handle.candidate.node_id
            ttl = values.get("ttl")
            if ttl is not None and not client.backend.lease_based:
                log("warning", f"--ttl {format_duration(ttl)} is ignored: the embedded backend"
                    " has no lease (its flock is held for as long as the job runs)")
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
