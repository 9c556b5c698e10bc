"""``lelect exporter [--listen ADDR:PORT] [ELECTION...]``"""

from __future__ import annotations

import click

from lelect.cli import open_client
from lelect.cli.params import ELECTION, Duration, backend_option
from lelect.errors import BackendUnavailable, LelectError


def _listen(text: str) -> tuple[str, int]:
    from lelect.backends.urls import parse_port

    host, sep, port_text = text.rpartition(":")
    port = parse_port(port_text) if sep else None
    if port is None:
        raise click.BadParameter(f"{text[:80]!r}: use ADDR:PORT, e.g. 127.0.0.1:9464 or [::]:9464")
    return host.strip("[]") or "0.0.0.0", port


@click.command("exporter")
@backend_option
@click.argument("elections", nargs=-1, type=ELECTION, metavar="[ELECTION]...")
@click.option("--listen", default="127.0.0.1:9464", show_default=True, metavar="ADDR:PORT",
              help="Where to serve /metrics.")
@click.option("--interval", type=Duration("interval"), default="5s", show_default=True,
              metavar="DUR", help="Refresh heartbeat ages this often (leader changes show at once).")
@click.pass_context
def exporter(ctx, elections, listen, interval):
    """Serve Prometheus metrics of ELECTION(s) (default: every election) on /metrics.

    Needs prometheus_client: pip install 'lelect[metrics]'.

    \b
      lelect exporter --listen 0.0.0.0:9464 nightly scheduler
    """
    import signal
    import threading

    from lelect.exporter import Exporter, _prometheus, serve

    _prometheus()  # one clear line if prometheus_client is missing, before connecting
    host, port = _listen(listen)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    with open_client(ctx, create=False) as client:
        metrics = Exporter(client, elections, interval=interval, on_stop=done.set)
        metrics.start()
        server = serve(metrics, host, port)
        click.echo(f"lelect: serving metrics on http://{listen}/metrics", err=True)
        done.wait()
        server.shutdown()
        metrics.close()
    if metrics.failure is not None:
        # Stale metrics are worse than none: exit so a supervisor restarts the exporter.
        failure = metrics.failure
        if isinstance(failure, LelectError):
            raise failure
        raise BackendUnavailable(f"the exporter stopped following the elections:"
                                 f" {type(failure).__name__}: {failure}")
    return 0
