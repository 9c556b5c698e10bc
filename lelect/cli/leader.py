"""``lelect leader NAME [--json] [--term N]``"""

from __future__ import annotations

import json

import click

from lelect.cli import open_backend
from lelect.cli.params import ELECTION, backend_option


@click.command("leader")
@backend_option
@click.argument("election", type=ELECTION)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--term", type=int, metavar="N",
              help="Exit 0 only if term N still leads (a job can check its LELECT_TERM).")
@click.pass_context
def leader(ctx, election, as_json, term):
    """Print who leads ELECTION; exit 1 when nobody does (or not --term N)."""
    from lelect.backends.base import iso8601

    with open_backend(ctx) as backend:
        info = backend.leader(election)
    if as_json:
        click.echo(json.dumps({"election": election, "leader": info.to_json() if info else None}))
    elif info is None:
        click.echo(f"{election}: no leader")
    else:
        where = f" on {info.host}" if info.host else ""
        pid = f" pid {info.pid}" if info.pid else ""
        since = f", since {iso8601(info.since)}" if info.since else ""
        click.echo(f"{info.node_id} (term {info.term}{since}{where}{pid})")
    if info is None:
        return 1
    if term is not None and info.term != term:
        return 1
    return 0
