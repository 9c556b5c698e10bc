"""The click application of the ``lelect`` command line (lelect.cli is click-free, so a
campaign started the common way never imports click: see lelect.cli.quick)."""

from __future__ import annotations

import importlib
import os

import click

from lelect import __version__
from lelect.cli import _ARGV, COMMANDS, EXIT_STATUSES, version_details


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attribute, _ = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    epilog=EXIT_STATUSES,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--backend",
    "-b",
    metavar="URL",
    # No envvar here: lelect.backends.default_url reads LELECT_BACKEND_FILE (first) and
    # LELECT_BACKEND, so the library and the CLI agree on where a URL comes from.
    help="Where elections live: file:///DIR (default: embedded, $LELECT_HOME or"
    f" {'/var/lib/lelect' if os.geteuid() == 0 else '~/.local/state/lelect'}), redis://[user@]host:6379/0?password_file=PATH, rediss://…,"
    " redis+sentinel://s1:26379,s2:26379/MASTER/0 (rediss+sentinel://… for TLS),"
    " zookeeper://h1:2181,h2:2181/lelect, etcd://h1:2379,h2:2379/lelect,"
    " postgresql://user@db:5432/app, mysql://user@db:3306/app. Env: LELECT_BACKEND_FILE (a file holding the URL),"
    " LELECT_BACKEND.",
)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, _param, value: _print_version(ctx, value),
              help="Show the version and exit; with --verbose, Python's and the backends'"
              " client libraries' too.")
@click.option("--verbose", "-v", is_flag=True, expose_value=False,
              help="With --version: name the client libraries' versions.")
@click.pass_context
def cli(ctx: click.Context, backend: str | None) -> None:
    """Leader election for singleton jobs: exactly one copy runs at a time.

    \b
      lelect campaign nightly -- ./report.sh    # guard a singleton job
      lelect leader nightly --json              # who leads, for scripts
      lelect watch nightly                      # live table of the group
      lelect health nightly                     # exit 0/1/2 for monitoring
      lelect resign nightly                     # ask the leader to step down
      lelect history nightly                    # who led when, and how it ended
    """
    ctx.obj = {"backend": backend}


def _print_version(ctx: click.Context, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"lelect, version {__version__}")
    if "--verbose" in _ARGV or "-v" in _ARGV:
        click.echo(version_details())
    ctx.exit(0)
