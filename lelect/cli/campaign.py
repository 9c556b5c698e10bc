"""``lelect campaign NAME [options] [--] CMD [ARGS...]``: the click command (``--help``,
errors, ``--status-listen``; the common form runs without click: lelect.cli.quick)."""

from __future__ import annotations

import click

from lelect.cli import EXIT_STATUSES, backend_url
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
    from lelect.cli.quick import campaign_body

    log = StderrLog(log_format, election, quiet)  # errors from here on are in its format
    if not command:
        raise click.UsageError("missing the command to run: lelect campaign NAME [OPTIONS] -- CMD [ARGS]...")
    return campaign_body(backend_url(ctx), election, tuple(command), log, status_listen, values)
