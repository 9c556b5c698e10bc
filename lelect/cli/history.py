"""``lelect history ELECTION [--json] [--limit N]``"""

from __future__ import annotations

import click

from lelect.cli import open_client
from lelect.cli.params import ELECTION, backend_option
from lelect.status import ExitStatus


@click.command("history")
@backend_option
@click.argument("election", type=ELECTION)
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per leadership, one per line (NDJSON), oldest first.")
@click.option("--limit", type=click.IntRange(1, 1_000_000), metavar="N",
              help="Only the newest N leaderships.")
@click.pass_context
def history(ctx, election, as_json, limit):
    """Every leadership of ELECTION, oldest first: term, node, start, end, how it ended
    (running, exited, resigned, lost, stopped, vanished) and the job's exit status.

    \b
      lelect history nightly --limit 20
      lelect history nightly --json | jq -r 'select(.outcome != "exited") | .node_id'
    """
    from lelect.cli import render

    with open_client(ctx, create=False) as client:
        entries = client.election(election).history(limit)
    if as_json:
        for entry in entries:
            click.echo(render.dumps(entry.to_json()))
    else:
        render.console().print(render.history_table(election, entries))
    return ExitStatus.OK
