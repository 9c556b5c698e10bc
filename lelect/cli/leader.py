"""``lelect leader NAME [--json] [--term N] [--wait [DUR]]``"""

from __future__ import annotations

import json
import math

import click

from lelect.cli import open_client
from lelect.cli.params import ELECTION, Duration, backend_option
from lelect.status import ExitStatus

#: ``--wait DUR`` ran out with nobody leading (as campaign's --timeout).
EXIT_WAIT_RAN_OUT = 124


class WaitDuration(Duration):
    """``--wait`` alone waits for ever; ``--wait 30s`` at most that long."""

    def convert(self, value, param, ctx):
        if value in ("forever", math.inf):
            return math.inf
        return super().convert(value, param, ctx)


@click.command("leader")
@backend_option
@click.argument("election", type=ELECTION)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--term", type=int, metavar="N",
              help="Exit 0 only if term N still leads (a job can check its LELECT_TERM).")
@click.option("--wait", type=WaitDuration("wait"), is_flag=False, flag_value="forever",
              metavar="[DUR]", help="Wait until somebody leads (at most DUR, then status 124) and"
              " print it.")
@click.pass_context
def leader(ctx, election, as_json, term, wait):
    """Print who leads ELECTION; exit 1 when nobody does (or not --term N), 124 when
    --wait ran out."""
    from lelect.backends.records import iso8601
    from lelect.durations import format_duration
    from lelect.names import printable

    with open_client(ctx, create=wait is not None) as client:
        handle = client.election(election)
        if wait is None:
            info = handle.leader()
        else:
            info = handle.wait_for_leader(timeout=None if math.isinf(wait) else wait)
    if as_json:
        click.echo(json.dumps({"election": election, "leader": info.to_json() if info else None}))
    elif info is None:
        within = "" if wait is None else f" within {format_duration(wait)}"
        click.echo(f"{election}: no leader{within}")
    else:
        where = f" on {printable(info.host, 255)}" if info.host else ""
        pid = f" pid {info.pid}" if info.pid else ""
        since = f", since {iso8601(info.since)}" if info.since else ""
        value = "" if info.value is None else f" value {printable(info.value, 200)}"
        click.echo(f"{printable(info.node_id)} (term {info.term}{since}{where}{pid}){value}")
    if info is None:
        # Like campaign -w and resign --wait: a wait that ran out is 124.
        return ExitStatus.NO if wait is None else ExitStatus.TIMEOUT
    if term is not None and info.term != term:
        click.echo(f"lelect: {election}: term {term} does not lead (term {info.term} does)", err=True)
        return ExitStatus.NO
    return ExitStatus.OK
